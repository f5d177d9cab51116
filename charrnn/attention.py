"""One head of attention over the top layer's recent outputs: a memory that does not fade.

An LSTM's state forgets what it read a few hundred characters ago; text repeats itself at such
distances (names in a play, identifiers in code, refrains). Following SHA-RNN (Merity, "Single
Headed Attention RNN: Stop Thinking With Your Head", 2019), one causal attention head sits after
the top recurrent layer. What we took from it, and why:

* **One head, one projection.** Only the query is a matmul (then layer-normalised); keys and
  values are the layer-normalised outputs themselves, each scaled per feature by a learned gate
  (sigmoid, starting at 0.5). The recurrence already computed good features: projecting keys and
  values again would cost two more [H, H] matmuls per character for little.
* **A residual connection with layer normalisation**: the output is norm(y) + attention, so a model
  can ignore the head, and starts near the recurrent model's output distribution.
* **No positional encoding**: the recurrent state already says where a character is.
* **Not taken**: SHA-RNN's "Boom" feed-forward layer (an extra [H, 4H] pair of matmuls per
  character) and its several attention layers.

Each position attends to the last M (`ModelConfig.attention`) positions, itself included, back to
the last reset (epoch start, document boundary). The memory holds the M normalised outputs before
the window, carried from window to window like the recurrent state (its gradient stopped at the
window edge): a ring of M slots per stream, with a 0/1 `valid` flag per slot and the slot the next
entry goes to, so that adding an entry (one per sampled character) writes one slot instead of
moving the M. Within a window, the attention over the memory and over the window's own positions
is a pair of matmuls over all positions at once under a banded causal mask; the recurrence keeps
its one matmul per step. So windows read one after another give what one pass over their
concatenation gives, whatever their lengths, and sampling runs the same code with windows of one
character.
"""

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from charrnn.recurrence import project

Memory = tuple[jax.Array, jax.Array, jax.Array]  # entries [B, M, H], valid [B, M] (0.0 / 1.0), next slot [B]


def empty_memory(batch: int, size: int, hidden: int, dtype: str = "float32") -> Memory:
    """A memory of `size` slots, none valid yet. Its entries are kept in the compute `dtype`: the
    attention's matmuls read them in it anyway, so a bf16 model's numbers are the same with half
    the memory to copy and read each window (and each sampled character)."""
    return (
        jnp.zeros((batch, size, hidden), jnp.dtype(dtype)),
        jnp.zeros((batch, size), jnp.float32),
        jnp.zeros((batch,), jnp.int32),
    )


class Attention(nn.Module):
    """Call with the top layer's outputs y [B, T, H], the memory before them, and `resets` [B, T]
    (None, or true where the state is zeroed before position t) -> (out [B, T, H], memory after)."""

    hidden_size: int
    dtype: str = "float32"
    dropout: float = 0.0

    def setup(self) -> None:
        hidden = self.hidden_size
        self.query_kernel = self.param("query_kernel", nn.initializers.glorot_uniform(), (hidden, hidden))
        self.query_bias = self.param("query_bias", nn.initializers.zeros_init(), (hidden,))
        self.gates = self.param("gates", nn.initializers.zeros_init(), (3, hidden))  # query, key, value scales
        self.input_norm = nn.LayerNorm(epsilon=1e-6, name="input_norm")
        self.memory_norm = nn.LayerNorm(epsilon=1e-6, name="memory_norm")
        self.query_norm = nn.LayerNorm(epsilon=1e-6, name="query_norm")
        self.drop = nn.Dropout(self.dropout)

    def __call__(
        self, y: jax.Array, memory: Memory, resets: jax.Array | None = None, *, train: bool = False
    ) -> tuple[jax.Array, Memory]:
        entries, valid, slot = memory
        size, length = entries.shape[1], y.shape[1]
        new = self.memory_norm(y)  # [B, T, H]: what this window adds to the memory
        h = self.input_norm(y)
        gate_q, gate_k, gate_v = jax.nn.sigmoid(self.gates)
        query = self.query_norm(project(h, self.query_kernel, self.dtype) + self.query_bias) * gate_q
        query = query * gate_k / jnp.sqrt(jnp.float32(self.hidden_size))  # the keys' gate, moved to the query
        scores = jnp.concatenate(
            [_dot(query, entries, "bth,bsh->bts", self.dtype), _dot(query, new, "bth,bsh->bts", self.dtype)], axis=2
        )  # [B, T, M + T]

        # Which position t may attend to: the M ending at itself, none from before a reset. A slot's
        # age: how many positions before the window its entry was written (1 ... M).
        segment = jnp.zeros(y.shape[:2], jnp.int32) if resets is None else jnp.cumsum(resets.astype(jnp.int32), 1)
        t = jnp.arange(length)
        age = (slot[:, None] - 1 - jnp.arange(size)[None, :]) % size + 1  # [B, M]
        recent = age[:, None, :] + t[None, :, None] < size  # [B, T, M]
        before = recent & (segment == 0)[:, :, None] & (valid > 0)[:, None, :]
        band = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - size)  # [T, T]
        within = band[None] & (segment[:, :, None] == segment[:, None, :])
        allowed = jnp.concatenate([before, within], axis=2)
        weights = jax.nn.softmax(jnp.where(allowed, scores, -1e30), axis=-1)  # every row sees itself
        mixed = _dot(weights[..., :size], entries, "bts,bsh->bth", self.dtype)
        mixed = (mixed + _dot(weights[..., size:], new, "bts,bsh->bth", self.dtype)) * gate_v
        out = h + self.drop(mixed, deterministic=not train)
        return out, _written(memory, new, segment)


def _written(memory: Memory, new: jax.Array, segment: jax.Array) -> Memory:
    """The memory after a window: its last min(T, M) entries written to the ring's next slots, and
    every entry from before the window's last reset no longer valid."""
    entries, valid, slot = memory
    size, length = entries.shape[1], new.shape[1]
    kept = min(length, size)
    last = segment[:, -1:]
    valid = valid * (last == 0)
    rows = jnp.arange(entries.shape[0])[:, None]
    slots = (slot[:, None] + length - kept + jnp.arange(kept)[None, :]) % size  # [B, kept]
    # The slots are distinct (kept <= size): saying so spares XLA the pass that orders duplicate writes.
    entries = entries.at[rows, slots].set(new[:, -kept:].astype(entries.dtype), unique_indices=True)
    valid = valid.at[rows, slots].set((segment[:, -kept:] == last).astype(jnp.float32), unique_indices=True)
    return entries, valid, (slot + length) % size


def _dot(a: jax.Array, b: jax.Array, spec: str, dtype: str) -> jax.Array:
    """einsum with operands in `dtype`, float32 accumulation and result (as recurrence.matmul)."""
    if dtype == "float32":
        return jnp.einsum(spec, a, b)
    compute = jnp.dtype(dtype)
    return _low_dot(a.astype(compute), b.astype(compute), spec)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _low_dot(a: jax.Array, b: jax.Array, spec: str) -> jax.Array:
    """`_dot` of operands already in a low precision, with a backward pass in that precision too:
    autodiff would contract the float32 cotangent with an operand cast back up, running both of
    the backward's matmuls at float32 speed. The cotangent is rounded once, as the operands were."""
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _low_dot_forward(a, b, spec):
    return _low_dot(a, b, spec), (a, b)


def _low_dot_backward(spec, operands, d_out):
    a, b = operands
    a_axes, rest = spec.split(",")
    b_axes, out_axes = rest.split("->")  # every axis is in two of the three: each is the others' contraction
    d_out = d_out.astype(a.dtype)
    d_a = jnp.einsum(f"{out_axes},{b_axes}->{a_axes}", d_out, b, preferred_element_type=jnp.float32)
    d_b = jnp.einsum(f"{a_axes},{out_axes}->{b_axes}", a, d_out, preferred_element_type=jnp.float32)
    return d_a.astype(a.dtype), d_b.astype(b.dtype)


_low_dot.defvjp(_low_dot_forward, _low_dot_backward)
