"""CharRNN: embedding -> stacked recurrent layers -> logits, as Flax (Linen) modules.

The model is a function of (tokens, carry) -> (logits, new carry), so training can run window
after window (truncated BPTT) and sampling can run one character after another, with the
recurrent state handed back and forth explicitly.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from charrnn.attention import Attention, Memory, empty_memory
from charrnn.cells import Carry, Cell, make_cell, materialised, row_major
from charrnn.config import ModelConfig
from charrnn.dropout import Dropout, packed_keep_mask
from charrnn.recurrence import operands, project, recurrence, step

ModelCarry = tuple[Carry | Memory, ...]  # one carry per layer, then the attention's memory if any


def orthogonal_blocks(gates: int):
    """Initialise [H, G*H] as G orthogonal H×H blocks: each gate's recurrence starts norm-preserving."""

    def init(key, shape, dtype=jnp.float32):
        hidden = shape[0]
        keys = jax.random.split(key, gates)
        blocks = [nn.initializers.orthogonal()(k, (hidden, hidden), dtype) for k in keys]
        return jnp.concatenate(blocks, axis=1)

    return init


def scatter_adds_in_order() -> bool:
    """Whether the default backend adds a scatter's colliding updates in a fixed order (CPUs do;
    GPUs use atomics, whose order, and so whose rounding, changes from run to run)."""
    return jax.default_backend() == "cpu"


@jax.custom_vjp
def lookup(table: jax.Array, tokens: jax.Array) -> jax.Array:
    """table[tokens], with a gradient that is the same on every run: exact resume needs it.

    A gather's gradient is a scatter-add of the output gradients into the table's rows. Where the
    backend adds those in no fixed order, the gradient is a one-hot matmul instead: the same sums,
    in an order the matmul fixes, at full float32 precision.
    """
    return jnp.take(table, tokens, axis=0)


def _lookup_forward(table, tokens):
    return jnp.take(table, tokens, axis=0), (table, tokens)


def _lookup_backward(residuals, grad):
    table, tokens = residuals
    if scatter_adds_in_order():
        return jnp.zeros_like(table).at[tokens].add(grad.astype(table.dtype)), None
    one_hot = jax.nn.one_hot(tokens, table.shape[0], dtype=grad.dtype)
    return jnp.einsum("...v,...e->ve", one_hot, grad, precision=jax.lax.Precision.HIGHEST).astype(table.dtype), None


lookup.defvjp(_lookup_forward, _lookup_backward)


class Embed(nn.Embed):
    """`nn.Embed` (same parameter, so the same checkpoints) whose gradient is reproducible (`lookup`)."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return lookup(self.embedding, inputs)


class RecurrentLayer(nn.Module):
    """One recurrent layer: its input projections and its time loop (charrnn.recurrence).

    Parameters: input_kernel [D, G*H], recurrent_kernel [H, G*H], bias and recurrent_bias [G*H],
    then the cell's own (`Cell.parameters`), created in that order.
    """

    cell: Cell
    input_size: int
    hidden_size: int

    def setup(self) -> None:
        width = self.cell.gates * self.hidden_size
        self.input_kernel = self.param("input_kernel", nn.initializers.glorot_uniform(), (self.input_size, width))
        self.recurrent_kernel = self.param(
            "recurrent_kernel", orthogonal_blocks(self.cell.gates), (self.hidden_size, width)
        )
        self.bias = self.param("bias", self.cell.bias_init(self.hidden_size), (width,))
        self.recurrent_bias = self.param("recurrent_bias", nn.initializers.zeros_init(), (width,))
        self.own = {
            name: self.param(name, init, shape)
            for name, (shape, init) in self.cell.parameters(self.hidden_size).items()
        }

    def __call__(
        self,
        x: jax.Array,
        carry: Carry,
        keep: jax.Array | None = None,
        mask: jax.Array | None = None,
        weight_mask: jax.Array | None = None,
        *,
        frozen: bool = False,
        feature_major: bool = False,
    ) -> tuple[jax.Array, Carry]:
        """x: [T, B, D] time-major -> ([T, B, H], carry); with `feature_major`, x [T, D, B] -> [T, H, B],
        the loop's own layout (a stack of layers passes it on without transposing). carry: [B, H] each;
        keep: None or [T, B, 1], 0 to reset before step t; mask: None or [B, H], recurrent dropout (see
        charrnn.recurrence). `frozen`: no gradient flows to the parameters or inputs, so autodiff runs
        no backward pass over this read (a bidirectional model's look-ahead)."""
        weights = self.weights()
        if weight_mask is not None:
            weights["recurrent_kernel"] = weights["recurrent_kernel"] * weight_mask
        if frozen:
            x, carry, weights = jax.lax.stop_gradient((x, carry, weights))
        x = x if feature_major else _feature_major(x)
        keep, mask = _feature_major(keep), None if mask is None else mask.T
        hs, carry = recurrence(self.cell, weights, x, tuple(c.T for c in carry), keep, mask)
        return (hs if feature_major else _feature_major(hs)), tuple(c.T for c in carry)

    def step(self, x: jax.Array, carry: Carry, prepared: Any = None) -> Carry:
        """x: [B, D], one time step (sampling); `prepared`: `step_operands(B)`, made once for many steps."""
        return tuple(c.T for c in step(self.cell, self.weights(), x.T, tuple(c.T for c in carry), prepared))

    def step_operands(self, batch: int) -> Any:
        """The weights as `step` reads them for `batch` streams (charrnn.recurrence.operands)."""
        return operands(self.cell, self.weights(), batch)

    def weights(self) -> dict[str, jax.Array]:
        """The layer's parameters by name, as charrnn.recurrence reads them."""
        four = {"input_kernel": self.input_kernel, "recurrent_kernel": self.recurrent_kernel}
        return four | {"bias": self.bias, "recurrent_bias": self.recurrent_bias, **self.own}


def _feature_major(x: jax.Array | None) -> jax.Array | None:
    """[T, B, F] <-> [T, F, B]."""
    return None if x is None else jnp.swapaxes(x, 1, 2)


class CharRNN(nn.Module):
    """The character language model. Call with tokens [B, T] and a carry from `initial_carry`."""

    config: ModelConfig
    unroll: int = 1
    split_batch: bool = False  # trained with the batch split over devices (charrnn.cells.Cell)

    def setup(self) -> None:
        cfg = self.config
        cell = make_cell(cfg.cell, cfg.dtype, self.unroll, self.split_batch)
        # N(0, 1) embeddings, as in torch and char-rnn: Flax's default (std 1/sqrt(embed)) makes the
        # input signal so faint that the model sits at the unigram loss for the first ~100 steps.
        self.embed = Embed(cfg.vocab_size, cfg.embed_size, embedding_init=nn.initializers.normal(1.0))
        self.layers = [
            RecurrentLayer(cell, cfg.embed_size if i == 0 else cfg.hidden_size, cfg.hidden_size, name=f"layer{i}")
            for i in range(cfg.layers)
        ]
        self.dropout = Dropout(cfg.dropout)
        if cfg.attention:
            self.attention = Attention(cfg.hidden_size, cfg.dtype, cfg.dropout, cfg.key_width)
        self.head_kernel = self.param("head_kernel", nn.initializers.lecun_normal(), (cfg.hidden_size, cfg.vocab_size))
        self.head_bias = self.param("head_bias", nn.initializers.zeros_init(), (cfg.vocab_size,))

    def __call__(
        self, tokens: jax.Array, carry: ModelCarry, *, train: bool = False, resets: jax.Array | None = None
    ) -> tuple[jax.Array, ModelCarry]:
        """tokens: <int>[B, T] -> (logits <f32>[B, T, V], carry). `train` enables dropout (rng 'dropout').

        resets: None, or bool/float [B, T], true where every layer's state is zeroed before reading
        tokens[:, t] (a document boundary): from there on the outputs are those of a fresh state.
        """
        # Time-major and feature-major between the layers, [T, F, B], the loop's own layout
        # (charrnn.recurrence): each scan step reads contiguous memory, and nothing is transposed
        # between one layer and the next.
        x = jnp.swapaxes(self.embed(tokens.T), 1, 2)  # [T, E, B]
        keep = None if resets is None else (1.0 - jnp.asarray(resets, jnp.float32).T)[:, :, None]  # [T, B, 1]
        new_carry, batch = [], tokens.shape[0]
        for depth, (layer, layer_carry) in enumerate(zip(self.layers, carry[: len(self.layers)], strict=True)):
            masks = recurrent_mask(self, batch, train), recurrent_weight_mask(self, layer, train)
            x, layer_carry = layer(x, layer_carry, keep, *masks, feature_major=True)
            new_carry.append(layer_carry)
            if depth < len(self.layers) - 1 or not self.config.attention:
                x = self.dropout(x, deterministic=not train)
        if not self.config.attention:
            # [T, H, B] -> [T, B, H] is a transpose of each step's small block; the logits' batch and time
            # axes swap after the projection, where each position is V wide, not H.
            return jnp.swapaxes(self._logits(jnp.swapaxes(x, 1, 2)), 0, 1), tuple(new_carry)
        # The head reads the top layer's outputs as they are: its layer norms would scale dropped-out
        # ones differently in training than whole ones in evaluation. The dropout comes after it.
        x, memory = self.attention(batch_first(x), carry[-1], resets, train=train)
        x = self.dropout(x, deterministic=not train)
        return self._logits(x), (*new_carry, memory)  # the memory: the carry's last entry

    def step(self, token: jax.Array, carry: ModelCarry, prepared: tuple | None = None) -> tuple[jax.Array, ModelCarry]:
        """token: <int>[B] -> (logits [B, V], carry): one character, for sampling. `prepared`:
        `step_operands(B)`, made once before a loop of steps (None: each layer makes its own)."""
        x = self.embed(token)
        new_carry, prepared = [], prepared or (None,) * len(self.layers)
        for layer, layer_carry, ready in zip(self.layers, carry[: len(self.layers)], prepared, strict=True):
            layer_carry = layer.step(x, layer_carry, ready)
            x = layer_carry[0]
            new_carry.append(layer_carry)
        if self.config.attention:  # a window of one character
            x, memory = self.attention(x[:, None], carry[-1])
            x = x[:, 0]
            new_carry.append(memory)
        return self._logits(x), tuple(new_carry)

    def step_operands(self, batch: int) -> tuple:
        """Every layer's weights as `step` reads them for `batch` streams: made once, outside a loop of
        steps, not at each."""
        return tuple(layer.step_operands(batch) for layer in self.layers)

    def _logits(self, x: jax.Array) -> jax.Array:
        return project(x, self.head_kernel, self.config.dtype) + self.head_bias


@jax.custom_vjp
def batch_first(x: jax.Array) -> jax.Array:
    """[T, H, B] -> [B, T, H], whose gradient is transposed back into an array of its own: fused into
    its readers (the backward loop's steps), that transpose made each of them a strided read."""
    return row_major(jnp.transpose(x, (2, 0, 1)))  # the head's matmuls run in bf16


batch_first.defvjp(lambda x: (batch_first(x), None), lambda _, d: (materialised(jnp.transpose(d, (1, 2, 0))),))


def initial_carry(config: ModelConfig, batch_size: int) -> ModelCarry:
    """Zero recurrent state for every layer: ((h, c), ...) for the LSTMs, ((h,), ...) otherwise;
    then, with attention, an empty memory. Every leaf has the batch first."""
    cell = make_cell(config.cell)
    carry = tuple(cell.zero_carry(batch_size, config.hidden_size) for _ in range(config.layers))
    if config.attention:
        carry += (empty_memory(batch_size, config.attention, config.hidden_size, config.dtype, config.key_width),)
    return carry


def recurrent_mask(module: nn.Module, batch: int, train: bool) -> jax.Array | None:
    """One variational dropout mask [B, H] per layer and window (rng 'dropout') for `module`'s
    config, scaled by 1 / keep probability; None when not training or without recurrent dropout."""
    rate = module.config.recurrent_dropout
    if not (train and rate):
        return None
    kept = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, (batch, module.config.hidden_size))
    return kept.astype(jnp.float32) / (1.0 - rate)


def recurrent_weight_mask(module: nn.Module, layer: RecurrentLayer, train: bool) -> jax.Array | None:
    """DropConnect on `layer`'s recurrent kernel (AWD-LSTM's weight drop): one mask [H, G*H] per layer
    and window, shared by every stream, scaled by 1 / keep probability; None when not training or off.
    Unlike dropout on h, it drops single connections, and the step stays one matmul."""
    rate = module.config.weight_drop
    if not (train and rate):
        return None
    return packed_keep_mask(module.make_rng("dropout"), rate, (layer.hidden_size, layer.cell.gates * layer.hidden_size))


def build(config: ModelConfig, unroll: int = 1, split_batch: bool = False) -> nn.Module:
    """The module for `config`: `CharRNN`, or for a bidirectional model `charrnn.bidirectional.BiCharRNN`."""
    if config.bidirectional:
        from charrnn.bidirectional import BiCharRNN

        return BiCharRNN(config, unroll=unroll, split_batch=split_batch)
    return CharRNN(config, unroll=unroll, split_batch=split_batch)


@functools.partial(jax.jit, static_argnums=0)
def init_params(config: ModelConfig, key: jax.Array) -> dict:
    """Fresh parameters for `config`, from `key` alone (compiled: eagerly, every small operation of
    the initialisers would be dispatched and compiled on its own)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    inputs = (tokens, tokens) if config.bidirectional else (tokens,)  # a bidirectional model also reads ahead
    return build(config).init(key, *inputs, initial_carry(config, 1))["params"]


@functools.lru_cache(maxsize=16)
def parameter_shapes(config: ModelConfig) -> dict:
    """The parameter tree of `config` as shapes (`jax.ShapeDtypeStruct`), without computing anything."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def parameter_count(config: ModelConfig) -> int:
    """Number of trainable parameters, from the parameter tree itself."""
    return sum(leaf.size for leaf in jax.tree.leaves(parameter_shapes(config)))
