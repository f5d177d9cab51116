"""BiCharRNN: a character model that reads both ways, for judging each character in its context.

Two recurrent stacks, any cell of the registry on the same fast recurrence: the forward stack reads
left to right, the backward stack runs the same scan over the reversed text. Each character x_t is
predicted from the forward state *before* it (x_<t) and the backward state *after* it (x_>t),
concatenated and fed to the output layer: a cloze objective, P(x_t | x_<t, x_>t). The model
defines no left-to-right likelihood, so it cannot sample or score; it can find characters that do
not fit (charrnn.checking).

Windows under truncated BPTT. A window is the characters to predict, `chars` [B, T], and the
`lookahead` characters that follow them, `after` [B, L]:

* the forward state is carried from window to window as for the left-to-right model (its gradient
  stopped at the window edge), so the left context is unbounded;
* the backward stack starts from a zero state at the end of `after` and reads it (right to left)
  before the window: every character has at least L characters of right context, the last of the
  window exactly L. The look-ahead is read without gradient (`frozen`), so it costs a forward pass
  and no backward pass; the window's own characters are read with gradient.

So training does the recurrent work of two models plus L/T of a forward pass. Token -1 in `after`
(or `chars`) means "past the end of the text": the backward state is zeroed before the first real
character read after such padding, and a character followed by padding gets a zero right context.
Document boundaries reset both stacks where they read the boundary character, as in CharRNN.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from charrnn.cells import make_cell
from charrnn.config import ModelConfig
from charrnn.dropout import Dropout
from charrnn.model import Embed, ModelCarry, RecurrentLayer, recurrent_mask, recurrent_weight_mask
from charrnn.recurrence import project


class BiCharRNN(nn.Module):
    """Call with chars [B, T], after [B, L] and the forward carry (`model.initial_carry`)."""

    config: ModelConfig
    unroll: int = 1
    split_batch: bool = False  # trained with the batch split over devices (charrnn.cells.Cell)

    def setup(self) -> None:
        cfg = self.config
        cell = make_cell(cfg.cell, cfg.dtype, self.unroll, self.split_batch)
        self.embed = Embed(cfg.vocab_size, cfg.embed_size, embedding_init=nn.initializers.normal(1.0))

        def stack(prefix: str) -> list[RecurrentLayer]:
            return [
                RecurrentLayer(
                    cell, cfg.embed_size if i == 0 else cfg.hidden_size, cfg.hidden_size, name=f"{prefix}{i}"
                )
                for i in range(cfg.layers)
            ]

        self.layers = stack("layer")  # the forward stack has CharRNN's names, so its weights read the same
        self.backward_layers = stack("backward")
        self.dropout = Dropout(cfg.dropout)
        width = 2 * cfg.hidden_size
        self.head_kernel = self.param("head_kernel", nn.initializers.lecun_normal(), (width, cfg.vocab_size))
        self.head_bias = self.param("head_bias", nn.initializers.zeros_init(), (cfg.vocab_size,))
        if cfg.direction_heads:  # each stack's own output layer: x_t from the forward state, and from the backward
            for name in ("forward_head", "backward_head"):
                shape = (cfg.hidden_size, cfg.vocab_size)
                setattr(self, f"{name}_kernel", self.param(f"{name}_kernel", nn.initializers.lecun_normal(), shape))
                setattr(self, f"{name}_bias", self.param(f"{name}_bias", nn.initializers.zeros_init(), shape[1:]))

    def __call__(
        self,
        chars: jax.Array,
        after: jax.Array,
        carry: ModelCarry,
        *,
        train: bool = False,
        reset_id: int | None = None,
        padded: bool = True,
        directions: bool = False,
    ) -> tuple:
        """chars <int>[B, T], after <int>[B, L] (-1: past the end) -> (logits <f32>[B, T, V] of
        every character of `chars` given both sides, the forward carry after `chars`), and with
        `directions` the stacks' own logits of each character (`direction_logits`) after them, each
        of a state whose gradient reaches its stack scaled by `ModelConfig.direction_weight`.
        `train` enables dropout (rng 'dropout'); `reset_id`: the document boundary's id, if any;
        `padded`: false where no window reaches past the text (training), so the backward scan skips
        resets."""
        left, right, new_carry = self.sides(chars, after, carry, train=train, reset_id=reset_id, padded=padded)
        joined = self.dropout(jnp.concatenate([left, right], axis=-1), deterministic=not train)
        if not directions:
            return self.head(joined), new_carry
        states = (_gradient_scaled(side, self.config.direction_weight) for side in (left, right))
        return self.head(joined), new_carry, self.direction_logits(*states)

    def direction_logits(self, left: jax.Array, right: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The stacks' own output layers (`ModelConfig.direction_heads`): left [..., H] -> logits of
        the character after the forward state (x_t given x_<t), right [..., H] -> of the character
        before the backward state (x_t given x_>t). Each is a language model one way, so together they
        price a missing or an extra character, which a cloze cannot: its pseudo-likelihood has one
        term per character, so a text with one character more is not comparable (charrnn.checking).
        Their gradient reaches the stacks scaled by `ModelConfig.direction_weight` (half by default):
        reading one way as well made the cloze itself better (docs/checking.md)."""
        dtype = self.config.dtype
        return (
            project(left, self.forward_head_kernel, dtype) + self.forward_head_bias,
            project(right, self.backward_head_kernel, dtype) + self.backward_head_bias,
        )

    def head(self, joined: jax.Array) -> jax.Array:
        """[..., 2H] (a left state and a right state) -> logits [..., V] of the character between them."""
        return project(joined, self.head_kernel, self.config.dtype) + self.head_bias

    def head_halves(self, left: jax.Array, right: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The output layer split at the join: left [..., H], right [..., H] -> two [..., V] whose sum
        is `head` of any left state beside any right state. Reading one text's states paired three
        ways (`charrnn.checking`), this is two matmuls and sums instead of three joined copies."""
        hidden = self.config.hidden_size
        from_left = project(left, self.head_kernel[:hidden], self.config.dtype) + self.head_bias
        return from_left, project(right, self.head_kernel[hidden:], self.config.dtype)

    def sides(
        self,
        chars: jax.Array,
        after: jax.Array,
        carry: ModelCarry,
        *,
        train: bool = False,
        reset_id: int | None = None,
        padded: bool = True,
    ) -> tuple[jax.Array, jax.Array, ModelCarry]:
        """(left [B, T, H]: the forward state before each character, right [B, T, H]: the backward
        state after it, the forward carry after `chars`). `charrnn.checking` pairs them otherwise
        to ask what fits where a character is missing or extra."""
        length = chars.shape[1]
        tokens = jnp.concatenate([chars, after], axis=1).T  # [T + L, B], time-major
        present = tokens >= 0
        boundary = None if reset_id is None else tokens == reset_id
        x = self.embed(jnp.maximum(tokens, 0))  # [T + L, B, E]

        # Left to right over the window: the state before each character is the carry, then the outputs.
        keep = None if boundary is None else _keep(~boundary[:length])
        h, new_carry = self._stack(self.layers, x[:length], carry, keep, train)
        left = jnp.concatenate([carry[-1][0][None].astype(h.dtype), h[:-1]], axis=0)  # [T, B, H]

        # Right to left over what follows each character: the look-ahead (frozen), then the window.
        reversed_boundary = None if boundary is None else boundary[1:][::-1]
        reversed_present = present[1:][::-1] if padded else None
        right = self._backward(x[1:][::-1], reversed_present, reversed_boundary, after.shape[1], train)
        if padded:
            follows = jnp.concatenate([present[1:], jnp.zeros_like(present[:1])], axis=0)[:length]
            right = right * follows[:, :, None]  # nothing after the text: no right context
        return jnp.swapaxes(left, 0, 1), jnp.swapaxes(right, 0, 1), new_carry

    def _stack(
        self, layers: list[RecurrentLayer], h: jax.Array, carry: ModelCarry, keep: jax.Array | None, train: bool
    ) -> tuple[jax.Array, ModelCarry]:
        """`layers` read h [T, B, E] on from `carry`, dropout between them when training -> (the top
        layer's states [T, B, H], the carry after the last step)."""
        new_carry = []
        for i, (layer, layer_carry) in enumerate(zip(layers, carry, strict=True)):
            masks = recurrent_mask(self, h.shape[1], train), recurrent_weight_mask(self, layer, train)
            h, layer_carry = layer(h, layer_carry, keep, *masks)
            h = h if i == len(layers) - 1 else self.dropout(h, deterministic=not train)
            new_carry.append(layer_carry)
        return h, tuple(new_carry)

    def read(
        self, tokens: jax.Array, carry: ModelCarry, *, backward: bool = False, reset_id: int | None = None
    ) -> tuple[jax.Array, ModelCarry]:
        """One stack reads tokens <int>[B, T] from `carry`, in the order given (the backward stack
        is handed its text already reversed) -> (its top layer's states [B, T, H], the carry after
        the last token). No dropout: for judging edits (charrnn.checking). Token -1 is padding: the
        state is zeroed before a token read right after it, and where a token is `reset_id`."""
        present = tokens >= 0
        reset = jnp.concatenate([jnp.zeros_like(present[:, :1]), ~present[:, :-1]], axis=1)
        if reset_id is not None:
            reset = reset | (tokens == reset_id)
        keep = _keep(~reset.T)
        h = self.embed(jnp.maximum(tokens, 0).T)  # [T, B, E]
        h, new_carry = self._stack(self.backward_layers if backward else self.layers, h, carry, keep, train=False)
        return jnp.swapaxes(h, 0, 1), new_carry

    def _backward(
        self, x: jax.Array, present: jax.Array | None, boundary: jax.Array | None, lookahead: int, train: bool
    ) -> jax.Array:
        """x [L + T - 1, B, E]: what follows each character, reversed (look-ahead first) -> the
        backward state after reading each character's successor, in text order [T, B, H].
        `present`: None where nothing is padding."""
        cfg, batch = self.config, x.shape[1]
        # Zero the state before a character read right after padding, and before a boundary.
        reset = boundary
        if present is not None:
            after_padding = jnp.concatenate([jnp.zeros_like(present[:1]), ~present[:-1]], axis=0)
            reset = after_padding if boundary is None else after_padding | boundary
        keep = None if reset is None else _keep(~reset)
        xa, xw = x[:lookahead], x[lookahead:]
        ya = yw = None
        for i, layer in enumerate(self.backward_layers):
            masks = recurrent_mask(self, batch, train), recurrent_weight_mask(self, layer, train)
            state = make_cell(cfg.cell).zero_carry(batch, cfg.hidden_size)
            if lookahead:
                ya, state = layer(xa, state, None if keep is None else keep[:lookahead], *masks, frozen=True)
            if xw.shape[0]:
                yw, _ = layer(xw, state, None if keep is None else keep[lookahead:], *masks)
            if i < len(self.backward_layers) - 1:
                xa = self.dropout(ya, deterministic=not train) if lookahead else xa
                xw = self.dropout(yw, deterministic=not train) if xw.shape[0] else xw
        last = ya[-1:] if lookahead else jnp.zeros((1, batch, cfg.hidden_size), jnp.float32)
        return last if yw is None else jnp.concatenate([yw[::-1], last], axis=0)


def _keep(kept: jax.Array) -> jax.Array:
    """bool [T, B] -> float [T, B, 1], the recurrence's `keep`."""
    return kept.astype(jnp.float32)[:, :, None]


def _gradient_scaled(x: jax.Array, weight: float) -> jax.Array:
    """`x`, whose gradient is multiplied by `weight` on the way back (stopped at 0)."""
    stopped = jax.lax.stop_gradient(x)
    return stopped if weight == 0 else stopped + weight * (x - stopped)
