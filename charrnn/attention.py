"""One head of attention over the top layer's recent outputs: a memory that does not fade.

An LSTM's state forgets what it read a few hundred characters ago; text repeats itself at such
distances (names in a play, identifiers in code, refrains). Following SHA-RNN (Merity, "Single
Headed Attention RNN: Stop Thinking With Your Head", 2019), one causal attention head sits after
the top recurrent layer. What we took from it, and why:

* **One head, and keys narrower than the outputs.** The query and the keys are [H, K] projections
  (K = `ModelConfig.key_width`: 128 by default, at most H) of the layer-normalised outputs, the
  query layer-normalised and scaled per feature by two learned gates (sigmoid, starting at 0.5: a
  start of 0.25 as in SHA-RNN; sharper scores from the start made the copy test's head miss the
  copy); the keys start as the normalised outputs' first K features (`_leading_features`: with a
  random start the two kernels learnt their product far slower). The values are the normalised
  outputs themselves, scaled per feature by a third gate: the recurrence already computed good
  features, and a value projection would cost another [H, H] matmul per character. SHA-RNN scores
  against the full-width outputs with only the query projected; on a CPU the scores against M
  remembered positions, and their gradients, were then most of the head's time, and keys of 128
  make them a quarter of that for one more [H, K] matmul per character (written to the memory
  once, not recomputed per query). Runs made before (`attention_keys` 0, what a run's config
  without the field means) keep SHA-RNN's form: the outputs are the keys too, each scaled by a
  second gate, and the query is [H, H].
* **A residual connection with layer normalisation**: the output is norm(y) + attention, so a model
  can ignore the head, and starts near the recurrent model's output distribution.
* **No positional encoding**: the recurrent state already says where a character is.
* **Not taken**: SHA-RNN's "Boom" feed-forward layer (an extra [H, 4H] pair of matmuls per
  character) and its several attention layers.

Each position attends to the last M (`ModelConfig.attention`) positions, itself included, back to
the last reset (epoch start, a restart within a long one, document boundary). The memory holds
the M normalised outputs before the window, carried from window to window like the recurrent
state (its gradient stopped at the window edge): a ring of M slots per stream, with a 0/1 `valid`
flag per slot and the slot the next entry goes to, so that adding an entry (one per sampled
character) writes one slot instead of moving the M. Within a window, the attention over the
memory and over the window's own positions is a pair of matmuls over all positions at once under a
banded causal mask; the recurrence keeps its one matmul per step. So windows read one after
another give what one pass over their concatenation gives, whatever their lengths, and sampling
runs the same code with windows of one character.
"""

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from charrnn.cells import layer_norm, layer_norm_backward, materialised, row_major
from charrnn.dropout import Dropout
from charrnn.recurrence import project

# (keys [B, M, K], values [B, M, H], valid [B, M] (0.0 / 1.0), next slot [B]); without the keys for
# a head whose keys are its values (`keys` 0)
Memory = tuple[jax.Array, ...]
_EPSILON = 1e-6  # the layer norms' (flax's LayerNorm's, which the head used before)


def empty_memory(batch: int, size: int, hidden: int, dtype: str = "float32", keys: int = 0) -> Memory:
    """A memory of `size` slots, none valid yet. Its keys and values are kept in the compute `dtype`:
    the attention's matmuls read them in it anyway, so a bf16 model's numbers are the same with half
    the memory to copy and read each window (and each sampled character)."""
    stored = (jnp.zeros((batch, size, keys), jnp.dtype(dtype)),) if keys else ()
    return (
        *stored,
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
    key_size: int = 0  # K; 0: the values are the keys (SHA-RNN's form, runs made before K)

    def setup(self) -> None:
        hidden, width = self.hidden_size, self.key_size or self.hidden_size
        self.query_kernel = self.param("query_kernel", nn.initializers.glorot_uniform(), (hidden, width))
        self.query_bias = self.param("query_bias", nn.initializers.zeros_init(), (width,))
        if self.key_size:
            self.key_kernel = self.param("key_kernel", _leading_features, (hidden, width))
            self.gates = self.param("gates", nn.initializers.zeros_init(), (2, width))  # query and key scales
            self.value_gate = self.param("value_gate", nn.initializers.zeros_init(), (hidden,))
        else:
            self.gates = self.param("gates", nn.initializers.zeros_init(), (3, hidden))  # query, key, value scales
        self.input_norm = _NormAffine(hidden, name="input_norm")
        self.memory_norm = _NormAffine(hidden, name="memory_norm")
        self.query_norm = _NormAffine(width, name="query_norm")
        self.drop = Dropout(self.dropout)

    def __call__(
        self, y: jax.Array, memory: Memory, resets: jax.Array | None = None, *, train: bool = False
    ) -> tuple[jax.Array, Memory]:
        *_, entries, valid, slot = memory  # entries: the values
        keys = memory[0]
        size, length = entries.shape[1], y.shape[1]
        # new [B, T, H]: the values this window adds to the memory; h: the residual path
        new, h = layer_norms(y, (self.memory_norm(), self.input_norm()))
        (query,) = layer_norms(project(h, self.query_kernel, self.dtype) + self.query_bias, (self.query_norm(),))
        gates = jax.nn.sigmoid(self.gates)
        query = query * gates[0] * gates[1] / jnp.sqrt(jnp.float32(query.shape[-1]))  # the keys' gate, moved here
        if self.key_size:
            new_keys = project(new, self.key_kernel, self.dtype)  # [B, T, K]
            written, gate_v = (new_keys, new), jax.nn.sigmoid(self.value_gate)
        else:  # the values are the keys
            new_keys, written, gate_v = new, (new,), gates[2]
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
        if length == 1:  # one row: XLA:CPU ran its matmuls in float32, converting the memory at each step
            query, allowed = (jnp.concatenate([x, x], axis=1) for x in (query, allowed))
        mixed = attend(query, (keys, new_keys), (entries, new), allowed, self.dtype)[:, :length] * gate_v
        # The rings are written in place only where XLA sees that the write comes after every read of
        # them (attend's matmuls); without a path from those reads to the write, it copied the whole
        # memory twice per window (per character in sampling).
        written, mixed = jax.lax.optimization_barrier((written, mixed))
        out = h + self.drop(mixed, deterministic=not train)
        return out, _written(memory, written, segment)


class _NormAffine(nn.Module):
    """A layer norm's scale and bias, named as flax's `nn.LayerNorm` names them (checkpoints keep
    their parameter tree): the normalisation itself is `layer_norms`."""

    features: int

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        scale = self.param("scale", nn.initializers.ones_init(), (self.features,))
        return scale, self.param("bias", nn.initializers.zeros_init(), (self.features,))


@jax.custom_vjp
def layer_norms(y: jax.Array, affines: tuple[tuple[jax.Array, jax.Array], ...]) -> tuple[jax.Array, ...]:
    """z * scale + bias for each (scale, bias) of `affines`, z = y normalised over its last axis.

    One normalisation for several layer norms of the same input (the head's memory and residual
    norms), and a hand-written backward that reads the stored z: autodiff through flax's LayerNorm
    recomputed y - mean in each of its backward's passes, every one a strided read of the loop's
    transposed outputs."""
    return _layer_norms_forward(y, affines)[0]


def _layer_norms_forward(y, affines):
    z, rstd = layer_norm(y, axis=-1, epsilon=_EPSILON)
    return tuple(z * scale + bias for scale, bias in affines), (z, rstd, affines)


def _layer_norms_backward(residuals, d_outs):
    z, rstd, affines = residuals
    shape, width = z.shape, z.shape[-1]
    # As rows [N, H]: the forward's broadcasts of the scales and rstd are [B, T, H]; the same shape
    # here would let XLA share one broadcast between the passes and store it whole.
    z, rstd, d_outs = z.reshape(-1, width), rstd.reshape(-1, 1), [d.reshape(-1, width) for d in d_outs]
    d_z = sum(d * scale for d, (scale, _) in zip(d_outs, affines, strict=True))
    d_y = layer_norm_backward(d_z, z, rstd, axis=-1)
    return d_y.reshape(shape), tuple(((d * z).sum(0), d.sum(0)) for d in d_outs)


layer_norms.defvjp(_layer_norms_forward, _layer_norms_backward)


def cleared(memory: Memory) -> Memory:
    """`memory` emptied: no slot valid, the next entry to slot 0. Its keys and values stay as they are:
    a slot not valid is never read, so rewriting them (a pass over the whole memory) changes nothing."""
    *stored, valid, slot = memory
    return *stored, jnp.zeros_like(valid), jnp.zeros_like(slot)


def _leading_features(key: jax.Array, shape: tuple[int, int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """A kernel that passes on its input's first features (an identity, cut or padded with zeros)."""
    del key
    return jnp.eye(*shape, dtype=dtype)


def _written(memory: Memory, new: tuple[jax.Array, ...], segment: jax.Array) -> Memory:
    """The memory after a window: the last min(T, M) positions of each of `new` (keys and values, or
    values) written to the ring's next slots, and every entry from before the window's last reset
    no longer valid."""
    *stored, valid, slot = memory
    size, length = valid.shape[1], segment.shape[1]
    kept = min(length, size)
    last = segment[:, -1:]
    valid = valid * (last == 0)
    slots = (slot[:, None] + length - kept + jnp.arange(kept)[None, :]) % size  # [B, kept]
    stored = [_write(old, x[:, -kept:].astype(old.dtype), slots) for old, x in zip(stored, new, strict=True)]
    valid = _write(valid, (segment[:, -kept:] == last).astype(jnp.float32), slots)
    return *stored, valid, (slot + length) % size


def _write(rings: jax.Array, entries: jax.Array, slots: jax.Array) -> jax.Array:
    """Each stream's `entries` [B, kept, ...] written to its ring's `slots` [B, kept].

    Mapped over the streams, the write is a scatter whose streams XLA knows for a batch axis, so
    that streams split over several devices each write their own: indexed by explicit rows, XLA
    gathered every stream's entries and slots onto every device first. One stream (a sampled
    character) is never split and keeps the indexed write. The slots are distinct (kept <= size):
    saying so spares XLA the pass that orders duplicate writes."""
    if rings.shape[0] == 1:
        return rings.at[jnp.zeros((1, 1), jnp.int32), slots].set(entries, unique_indices=True)
    return jax.vmap(lambda ring, entry, slot: ring.at[slot].set(entry, unique_indices=True))(rings, entries, slots)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def attend(
    query: jax.Array,
    keys: tuple[jax.Array, jax.Array],
    values: tuple[jax.Array, jax.Array],
    allowed: jax.Array,
    dtype: str,
) -> jax.Array:
    """softmax(query keys^T, where allowed) values: query [B, T, K]; keys ([B, M, K] remembered,
    [B, T, K] the window's), values likewise ([B, M, H], [B, T, H]); allowed [B, T, M + T] -> [B, T, H].

    Matmuls in the compute `dtype` (float32 accumulation), softmax in float32, and a hand-written
    backward whose every matmul contracts the operands' last or middle axes as XLA:CPU runs them in
    bf16: autodiff's transposed forms (weights^T d_out) ran in float32, their operands converted up,
    and so did the products that shared an operand with them."""
    return _attend_forward(query, keys, values, allowed, dtype)[0]


def _attend_forward(query, keys, values, allowed, dtype):
    low = _lowered(dtype)
    kinds = jax.tree.map(lambda x: jnp.zeros((), x.dtype), (query, keys, values))  # the cotangents' dtypes
    query, keys, values = low(query), tuple(map(low, keys)), tuple(map(low, values))
    scores = jnp.concatenate([_matmul(query, k, "btk,bsk->bts") for k in keys], axis=2)
    weights = jax.nn.softmax(jnp.where(allowed, scores, -1e30), axis=-1)  # every row sees itself
    remembered = keys[0].shape[1]
    mixing = low(weights)
    out = _matmul(mixing[..., :remembered], values[0], "bts,bsh->bth")
    out = out + _matmul(mixing[..., remembered:], values[1], "bts,bsh->bth")
    return out, (query, keys, values, weights, mixing, kinds)


def _attend_backward(dtype, residuals, d_out):
    query, keys, values, weights, mixing, kinds = residuals
    low, remembered = _lowered(dtype), keys[0].shape[1]
    d_out = low(d_out)
    d_weights = jnp.concatenate([_matmul(d_out, v, "bth,bsh->bts") for v in values], axis=2)
    d_scores = weights * (d_weights - jnp.sum(d_weights * weights, axis=-1, keepdims=True))
    d_scores = low(d_scores)
    d_query = _matmul(d_scores[..., :remembered], keys[0], "bts,bsk->btk")
    d_query = d_query + _matmul(d_scores[..., remembered:], keys[1], "bts,bsk->btk")
    # [B, s, t] transposes of the [B, t, s] blocks, stored, make these "NN" products. Training never
    # reads the memory's two (its gradient is cut at the window's edge): XLA drops them there.
    parts = (slice(None, remembered), slice(remembered, None))
    d_keys = tuple(_matmul(_transposed(d_scores[..., part]), query, "bst,btk->bsk") for part in parts)
    d_values = tuple(_matmul(_transposed(mixing[..., part]), d_out, "bst,bth->bsh") for part in parts)
    d_inputs = jax.tree.map(lambda d, kind: d.astype(kind.dtype), (d_query, d_keys, d_values), kinds)
    return (*d_inputs, None)


attend.defvjp(_attend_forward, _attend_backward)


def _lowered(dtype: str):
    compute = jnp.dtype(dtype)
    return lambda x: x.astype(compute)


def _matmul(a: jax.Array, b: jax.Array, spec: str) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _transposed(x: jax.Array) -> jax.Array:
    return materialised(row_major(jnp.swapaxes(x, 1, 2)))
