"""The recurrent cells: one small class each, in a registry. A new cell is a class here and its
parameter shapes in `charrnn.config.CELL_SHAPES` (read by `--help` and `info` without JAX).

Every cell runs on the time loop of `recurrence.py`, which does all that is common:

    xw, hw = W_in^T x_t, W^T h_{t-1}     the step's matmuls (one, over [x_t; h], where the cell
                                         reads them only through their sum)
    xp = project_input(xw, bias, params)
    carry_t = step(carry_{t-1}, xp, hw, b, params)           elementwise, this module

Inside the loop every array is feature-major: [G*H, B] for the gates, [H, B] for each part of the
carry, a parameter of F values applied down the rows (`per_feature`). The state is the matmuls'
right operand, so the weights are their left one, which is what makes the loop fast on a CPU
(charrnn/recurrence.py).

A cell states its gate count (the width of the fused matmuls is gates × hidden), its carry (a
tuple of arrays, the hidden output h first: [B, H] outside the loop, [H, B] inside), its own small
parameters beyond the four every layer has (input_kernel, recurrent_kernel, bias, recurrent_bias),
its forward step and the step's hand-written backward, which returns the gradients the loop needs
(`StepGradients`). Gradients of the cell's own parameters that the step reads (peepholes, norm
gains) are elementwise products, one column per stream; the loop accumulates them over time in its
carry and sums the streams after it, so they never cost a matmul (nor, with the batch split over
devices, a collective per step).

Gate blocks are laid out one after another along the feature axis, each `hidden` wide, in the order
the class docstring gives (in the parameters, along their last axis).

Longer than most modules, for a reason: eight cells, each a forward and a hand-written backward
step, read best beside one another in the one registry.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from charrnn.config import CELL_SHAPES

Carry = tuple[jax.Array, ...]
Params = dict[str, jax.Array]  # a cell's own parameters, by name
Initializer = Callable[..., jax.Array]  # (key, shape, dtype) -> array, as in jax.nn.initializers

LAYER_NORM_EPSILON = 1e-5


def materialised(x: jax.Array) -> jax.Array:
    """`x`, computed once and stored. XLA otherwise recomputes a cheap value inside every fusion that
    reads it: the LSTMs' d(c) fed four gate blocks, so each backward step computed it four times
    (docs/measurements.md, Speed)."""
    return jax.lax.optimization_barrier(x)


def row_major(x: jax.Array) -> jax.Array:
    """`x` (a transpose) marked as laid out row-major from the start. XLA:CPU decides whether a bf16
    matmul runs in bf16 before it assigns layouts, from the layouts its operands carry then; a
    transpose carries the permuted layout that makes it a bitcast, and so does every elementwise op
    after it, and a matmul reading one ran in float32. A sum over a new axis of 1 carries the default
    layout; XLA removes it later, after that decision."""
    return jnp.sum(x[None], axis=0)


class StepGradients(NamedTuple):
    """What one backward step returns, given d(new carry).

    d_hp is the gradient of the recurrent pre-activation hp = norm(W^T h) + b, whose sum over time and
    batch is the gradient of b; d_hw that of W^T h itself, from which the loop takes d h_{t-1} and
    the weight gradient. Where they are equal the cell returns None, so that the loop does not
    store the same [G*H, T, B] array twice.
    """

    d_xp: jax.Array  # [G*H, B]
    d_hp: jax.Array | None  # [G*H, B]; None: equal to d_xp
    d_hw: jax.Array | None  # [G*H, B]; None: equal to d_hp
    d_prev: Carry  # d(previous carry), except the path through W^T h
    d_params: Params = {}  # this step's gradient of each of `step_parameters`, per stream: [..., B]


@dataclass(frozen=True)
class Cell:
    """A recurrent cell, and the precision its matmul operands are fed in. Subclasses set the
    class attributes and override `step` and `step_backward` (and the parameter hooks if they
    have parameters of their own)."""

    name: ClassVar[str]
    gates: ClassVar[int]  # gate blocks: the fused matmuls are [*, gates * hidden] (CELL_SHAPES)
    initializers: ClassVar[dict[str, Callable[..., jax.Array]]] = {}  # of each own parameter in CELL_SHAPES
    carry_size: ClassVar[int] = 1
    default_unroll: ClassVar[int] = 1  # time-loop unroll for training: 1 unless measured faster
    forget_gate: ClassVar[int | None] = None  # gate block whose bias starts at 1
    # The step reads xp and hw only through xp + hw, and project_input only adds the bias: then the
    # loop computes W_in^T x_t + W^T h as one matmul over [x_t; h] and hands the step hw = 0.
    sums_products: ClassVar[bool] = False
    step_parameters: ClassVar[tuple[str, ...]] = ()  # own parameters read inside the loop

    compute_dtype: str = "float32"
    unroll: int = 1
    # The batch is split over devices: the loop's weight gradients then contract time and the batch
    # without merging them (charrnn.recurrence.feature_rows_gradient).
    split_batch: bool = False

    # -- parameters ---------------------------------------------------------------------------
    def parameters(self, hidden: int) -> dict[str, tuple[tuple[int, ...], Initializer]]:
        """The cell's own parameters beyond the four of every layer: name -> (shape, initialiser)."""
        own = CELL_SHAPES[self.name].own(hidden)
        return {name: (shape, self.initializers[name]) for name, shape in own.items()}

    def bias_init(self, hidden: int) -> Initializer:
        """Zeros, except the forget gate at 1: early training remembers rather than forgets."""

        def init(key, shape, dtype=jnp.float32):
            del key
            bias = jnp.zeros(shape, dtype)
            if self.forget_gate is None:
                return bias
            return bias.at[self.forget_gate * hidden : (self.forget_gate + 1) * hidden].set(1.0)

        return init

    def project_input(self, xw: jax.Array, bias: jax.Array, params: Params) -> jax.Array:
        """xp [G*H, B] from W_in^T x_t (the loop differentiates it with `jax.vjp`)."""
        return xw + per_feature(bias)

    def project_input_backward(self, xw: jax.Array, d_xp: jax.Array, params: Params) -> tuple[jax.Array, Params]:
        """d xw from d xp, and the gradients of the bias and the own parameters `project_input` reads,
        per stream ([..., B]; the loop sums them)."""
        return d_xp, {"bias": d_xp}

    def zero_carry(self, batch_size: int, hidden_size: int) -> Carry:
        # Separate buffers for h and c: the train step donates its state, and XLA refuses to donate
        # one buffer twice.
        return tuple(jnp.zeros((batch_size, hidden_size), jnp.float32) for _ in range(self.carry_size))

    # -- one step -----------------------------------------------------------------------------
    def step(self, carry: Carry, xp: jax.Array, hw: jax.Array, b: jax.Array, params: Params) -> tuple[Carry, Any]:
        """Advance one time step: xp, hw [G*H, B] (hw may be 0, see `sums_products`). Returns (new
        carry, what the backward step needs)."""
        raise NotImplementedError

    def step_backward(self, saved: Any, prev: Carry, new: Carry, d_carry: Carry, params: Params) -> StepGradients:
        raise NotImplementedError


def sigmoid(x: jax.Array) -> jax.Array:
    """The logistic function as 0.5 * tanh(x / 2) + 0.5: the gates' activation in every cell. XLA's
    CPU backend computes tanh faster than its logistic, and the gates' activation is the largest
    elementwise cost inside the time loop (docs/measurements.md). The two agree to float32 rounding
    in absolute terms (tests/test_cells.py); a gate near 0 carries a larger relative error, harmless
    where gates only scale."""
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


def gate_scale(pattern: tuple[float, ...], hidden: int) -> jax.Array:
    """Per-gate-block constants as a column, e.g. (1, 1, 2, 1) -> [1]*H + [1]*H + [2]*H + [1]*H."""
    return per_feature(jnp.repeat(jnp.array(pattern, jnp.float32), hidden))


def per_feature(v: jax.Array) -> jax.Array:
    """A parameter of F values as a column [F, 1], to apply down the rows of an [F, B] array."""
    return v[:, None]


def layer_norm(x: jax.Array, axis: int = 0, epsilon: float = LAYER_NORM_EPSILON) -> tuple[jax.Array, jax.Array]:
    """(x - mean) / sqrt(var + eps) over the features (`axis`: 0 in the feature-major loop), and
    1 / sqrt(var + eps), kept along that axis ([1, B] there)."""
    centered = x - x.mean(axis=axis, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(centered * centered, axis=axis, keepdims=True) + epsilon)
    return centered * rstd, rstd


def layer_norm_backward(d_y: jax.Array, y: jax.Array, rstd: jax.Array, axis: int = 0) -> jax.Array:
    """d x from d y for y = layer_norm(x, axis)[0], given y and rstd (exact, eps included)."""
    return rstd * (d_y - d_y.mean(axis=axis, keepdims=True) - y * jnp.mean(d_y * y, axis=axis, keepdims=True))


def _normalised_input_backward(xw: jax.Array, d_xp: jax.Array, params: Params) -> tuple[jax.Array, Params]:
    """`project_input_backward` of LN(xw) * input_gain + bias (both layer-normalised cells)."""
    y, rstd = layer_norm(xw)
    d_xw = layer_norm_backward(d_xp * per_feature(params["input_gain"]), y, rstd)
    return d_xw, {"bias": d_xp, "input_gain": d_xp * y}


ONES, ZEROS = jax.nn.initializers.ones, jax.nn.initializers.zeros


# -- LSTM family -------------------------------------------------------------------------------
# One sigmoid over all gate blocks, using tanh(x) = 2*sigmoid(2x) - 1 for the g block: the
# activations come out as one [G*H, B] array, saved for the backward pass without a concat. In the
# backward pass, d/dz of the g block is then 2*dg * 2*a*(1-a) = dg * (1 - g^2), as tanh requires.
LSTM_SCALE = (1.0, 1.0, 2.0, 1.0)


class LSTM(Cell):
    """Gates i, f, g, o; c' = f*c + i*g; h' = o*tanh(c'). Carry (h, c)."""

    name = "lstm"
    sums_products = True
    gates = CELL_SHAPES["lstm"].gates
    carry_size = 2
    forget_gate = 1

    def step(self, carry, xp, hw, b, params):
        hp = hw + per_feature(b)
        activations = sigmoid((xp + hp) * gate_scale(LSTM_SCALE, xp.shape[0] // 4))
        i, f, g, o = jnp.split(activations, 4, axis=0)
        c = f * carry[1] + i * (2.0 * g - 1.0)
        return (o * jnp.tanh(c), c), (activations,)

    def step_backward(self, saved, prev, new, d_carry, params):
        activations = saved[0]
        i, f, g, o = jnp.split(activations, 4, axis=0)
        g = 2.0 * g - 1.0
        dh, dc = d_carry
        tanh_c = jnp.tanh(new[1])
        dc = materialised(dc + dh * o * (1.0 - tanh_c * tanh_c))
        d_activations = jnp.concatenate([dc * g, dc * prev[1], 2.0 * dc * i, dh * tanh_c], axis=0)
        d_gates = d_activations * gate_scale(LSTM_SCALE, dh.shape[0]) * activations * (1.0 - activations)
        return StepGradients(d_gates, None, None, (jnp.zeros_like(dh), dc * f))


class PeepholeLSTM(Cell):
    """The LSTM with diagonal peepholes (Gers & Schmidhuber 2000, in the form of Sak et al. 2014):
    i and f also see c(t-1), o sees c(t). Gates i, f, g, o; carry (h, c).

        i = σ(z_i + p_i*c), f = σ(z_f + p_f*c), c' = f*c + i*tanh(z_g), o = σ(z_o + p_o*c'), h' = o*tanh(c')

    The peepholes (`peephole`, rows p_i, p_f, p_o) start at zero: the cell starts as the LSTM.
    """

    name = "lstm-peephole"
    sums_products = True
    gates = CELL_SHAPES["lstm-peephole"].gates
    carry_size = 2
    forget_gate = 1
    step_parameters = ("peephole",)

    initializers = {"peephole": ZEROS}

    def step(self, carry, xp, hw, b, params):
        c_prev, peephole = carry[1], params["peephole"]
        z_i, z_f, z_g, z_o = jnp.split(xp + (hw + per_feature(b)), 4, axis=0)
        # i, f and g in one sigmoid (g doubled: tanh through sigmoid, as in `LSTM`); o waits for c'.
        ifg = sigmoid(
            jnp.concatenate(
                [z_i + per_feature(peephole[0]) * c_prev, z_f + per_feature(peephole[1]) * c_prev, 2.0 * z_g], 0
            )
        )
        i, f, g = jnp.split(ifg, 3, axis=0)
        c = f * c_prev + i * (2.0 * g - 1.0)
        o = sigmoid(z_o + per_feature(peephole[2]) * c)
        return (o * jnp.tanh(c), c), (jnp.concatenate([ifg, o], axis=0),)

    def step_backward(self, saved, prev, new, d_carry, params):
        activations, peephole = saved[0], params["peephole"]
        i, f, g, o = jnp.split(activations, 4, axis=0)
        g = 2.0 * g - 1.0
        c_prev, c = prev[1], new[1]
        dh, dc = d_carry
        tanh_c = jnp.tanh(c)
        dz_o = dh * tanh_c * o * (1.0 - o)
        dc = materialised(dc + dh * o * (1.0 - tanh_c * tanh_c) + dz_o * per_feature(peephole[2]))
        dz_i = dc * g * i * (1.0 - i)
        dz_f = dc * c_prev * f * (1.0 - f)
        dz_g = dc * i * (1.0 - g * g)
        d_c_prev = dc * f + dz_i * per_feature(peephole[0]) + dz_f * per_feature(peephole[1])
        d_peephole = jnp.stack([dz_i * c_prev, dz_f * c_prev, dz_o * c])
        d_gates = jnp.concatenate([dz_i, dz_f, dz_g, dz_o], axis=0)
        return StepGradients(d_gates, None, None, (jnp.zeros_like(dh), d_c_prev), {"peephole": d_peephole})


COUPLED_SCALE = (1.0, 2.0, 1.0)


class CoupledLSTM(Cell):
    """The LSTM with coupled input and forget gates (Greff et al. 2017, "LSTM: a search space
    odyssey"): one gate decides both. Gates f, g, o; c' = f*c + (1-f)*g; h' = o*tanh(c'). Carry (h, c).
    Three gate blocks instead of four: a quarter less matmul work than the LSTM."""

    name = "lstm-coupled"
    sums_products = True
    gates = CELL_SHAPES["lstm-coupled"].gates
    carry_size = 2
    forget_gate = 0

    def step(self, carry, xp, hw, b, params):
        return _coupled_step(carry, xp + (hw + per_feature(b)))

    def step_backward(self, saved, prev, new, d_carry, params):
        d_gates, d_prev = _coupled_step_backward(saved[0], prev, new, d_carry)
        return StepGradients(d_gates, None, None, d_prev)


def _coupled_step(carry: Carry, z: jax.Array) -> tuple[Carry, tuple]:
    """The coupled LSTM's gates from their pre-activations z [3H, B]."""
    activations = sigmoid(z * gate_scale(COUPLED_SCALE, z.shape[0] // 3))
    f, g, o = jnp.split(activations, 3, axis=0)
    c = f * carry[1] + (1.0 - f) * (2.0 * g - 1.0)
    return (o * jnp.tanh(c), c), (activations,)


def _coupled_step_backward(activations: jax.Array, prev: Carry, new: Carry, d_carry: Carry) -> tuple[jax.Array, Carry]:
    """d z and d(previous carry) but for the path through W^T h, from d(new carry)."""
    f, g, o = jnp.split(activations, 3, axis=0)
    g = 2.0 * g - 1.0
    dh, dc = d_carry
    tanh_c = jnp.tanh(new[1])
    dc = materialised(dc + dh * o * (1.0 - tanh_c * tanh_c))
    d_activations = jnp.concatenate([dc * (prev[1] - g), 2.0 * dc * (1.0 - f), dh * tanh_c], axis=0)
    d_gates = d_activations * gate_scale(COUPLED_SCALE, dh.shape[0]) * activations * (1.0 - activations)
    return d_gates, (jnp.zeros_like(dh), dc * f)


class MultiplicativeCoupledLSTM(Cell):
    """The coupled LSTM with multiplicative integration (Wu et al. 2016, "On multiplicative
    integration with recurrent neural networks"): the input's and the state's products meet in a
    Hadamard product as well as a sum, so that the character read scales the recurrence:

        xp = x W_in + bias,  hp = h W + recurrent_bias,  z = xp + (interaction * xp + recurrent_gain) * hp

    then f, g, o and c', h' as in `CoupledLSTM`. The paper's α, β1 and β2 are `interaction`,
    `recurrent_gain` and 1 (W_in absorbs it). `interaction` starts at 0 and `recurrent_gain` at 1:
    the cell starts as the coupled LSTM. Still one recurrent matmul per step; the products are kept
    apart (the step reads each on its own), and the rest is elementwise.
    """

    name = "lstm-coupled-mi"
    gates = CELL_SHAPES["lstm-coupled-mi"].gates
    carry_size = 2
    forget_gate = 0
    step_parameters = ("interaction", "recurrent_gain")

    initializers = {"interaction": ZEROS, "recurrent_gain": ONES}

    def step(self, carry, xp, hw, b, params):
        hp = hw + per_feature(b)
        scale = per_feature(params["interaction"]) * xp + per_feature(params["recurrent_gain"])
        new, (activations,) = _coupled_step(carry, xp + scale * hp)
        return new, (activations, xp, hp)

    def step_backward(self, saved, prev, new, d_carry, params):
        activations, xp, hp = saved
        d_z, d_prev = _coupled_step_backward(activations, prev, new, d_carry)
        interaction = per_feature(params["interaction"])
        d_scaled = d_z * hp  # the gradient of the scale multiplying hp
        d_xp = d_z + d_scaled * interaction
        d_hp = d_z * (interaction * xp + per_feature(params["recurrent_gain"]))
        d_params = {"interaction": d_scaled * xp, "recurrent_gain": d_scaled}
        return StepGradients(d_xp, d_hp, None, d_prev, d_params)


class LayerNormLSTM(Cell):
    """The layer-normalised LSTM of Ba, Kiros & Hinton (2016): gates i, f, g, o from

        z = LN(x W_in) * input_gain + bias  +  LN(h W) * recurrent_gain + recurrent_bias

    (each normalisation over all 4H pre-activations, with its own gain and shift: `bias` is the
    shift of the input side), c' = f*c + i*g, and h' = o * tanh(LN(c') * cell_gain + cell_shift).
    The carried c' is the raw one, not its normalisation (as in the paper; TF Addons' cell carries
    the normalised one). LN(x W_in) is computed for the whole window before the loop.
    """

    name = "lstm-ln"
    gates = CELL_SHAPES["lstm-ln"].gates
    carry_size = 2
    forget_gate = 1
    step_parameters = ("recurrent_gain", "cell_gain", "cell_shift")

    initializers = {"input_gain": ONES, "recurrent_gain": ONES, "cell_gain": ONES, "cell_shift": ZEROS}

    def project_input(self, xw, bias, params):
        return layer_norm(xw)[0] * per_feature(params["input_gain"]) + per_feature(bias)

    def project_input_backward(self, xw, d_xp, params):
        return _normalised_input_backward(xw, d_xp, params)

    def step(self, carry, xp, hw, b, params):
        hw_norm, hw_rstd = layer_norm(hw)
        activations = sigmoid(
            (xp + hw_norm * per_feature(params["recurrent_gain"]) + per_feature(b))
            * gate_scale(LSTM_SCALE, xp.shape[0] // 4)
        )
        i, f, g, o = jnp.split(activations, 4, axis=0)
        c = f * carry[1] + i * (2.0 * g - 1.0)
        c_norm, c_rstd = layer_norm(c)
        tanh_c = jnp.tanh(c_norm * per_feature(params["cell_gain"]) + per_feature(params["cell_shift"]))
        return (o * tanh_c, c), (activations, hw_norm, hw_rstd, c_norm, c_rstd, tanh_c)

    def step_backward(self, saved, prev, new, d_carry, params):
        activations, hw_norm, hw_rstd, c_norm, c_rstd, tanh_c = saved
        i, f, g, o = jnp.split(activations, 4, axis=0)
        g = 2.0 * g - 1.0
        dh, dc = d_carry
        d_cell = dh * o * (1.0 - tanh_c * tanh_c)  # gradient of LN(c') * cell_gain + cell_shift
        dc = dc + layer_norm_backward(d_cell * per_feature(params["cell_gain"]), c_norm, c_rstd)
        d_activations = jnp.concatenate([dc * g, dc * prev[1], 2.0 * dc * i, dh * tanh_c], axis=0)
        d_gates = d_activations * gate_scale(LSTM_SCALE, dh.shape[0]) * activations * (1.0 - activations)
        d_hw = layer_norm_backward(d_gates * per_feature(params["recurrent_gain"]), hw_norm, hw_rstd)
        d_params = {
            "recurrent_gain": d_gates * hw_norm,
            "cell_gain": d_cell * c_norm,
            "cell_shift": d_cell,
        }
        return StepGradients(d_gates, None, d_hw, (jnp.zeros_like(dh), dc * f), d_params)


# -- GRU family --------------------------------------------------------------------------------
class GRU(Cell):
    """Gates r, z, n in cuDNN's form: n = tanh(x_n + r*(h W_n + b_n)); h' = (1-z)*n + z*h. Carry (h,)."""

    name = "gru"
    gates = CELL_SHAPES["gru"].gates

    def step(self, carry, xp, hw, b, params):
        return _gru_step(carry[0], xp, hw + per_feature(b))

    def step_backward(self, saved, prev, new, d_carry, params):
        d_xp, d_hp, d_prev = _gru_step_backward(saved, prev, d_carry)
        return StepGradients(d_xp, d_hp, None, d_prev)


def _gru_step(h: jax.Array, xp: jax.Array, hp: jax.Array) -> tuple[Carry, tuple]:
    xr, xz, xn = jnp.split(xp, 3, axis=0)
    hr, hz, hn = jnp.split(hp, 3, axis=0)
    r, z = sigmoid(xr + hr), sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return ((1.0 - z) * n + z * h,), (jnp.concatenate([r, z, n], axis=0), hn)


def _gru_step_backward(saved: tuple, prev: Carry, d_carry: Carry) -> tuple[jax.Array, jax.Array, Carry]:
    r, z, n = jnp.split(saved[0], 3, axis=0)
    (dh,) = d_carry
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dr = dn * saved[1] * r * (1.0 - r)
    dz = dh * (prev[0] - n) * z * (1.0 - z)
    d_xp = jnp.concatenate([dr, dz, dn], axis=0)
    d_hp = jnp.concatenate([dr, dz, dn * r], axis=0)
    return d_xp, d_hp, (dh * z,)


class LayerNormGRU(Cell):
    """The GRU with the layer normalisation of Ba et al. (2016): the pre-activations are

        xp = LN(x W_in) * input_gain + bias,    hp = LN(h W) * recurrent_gain + recurrent_bias

    (each over all 3H, with its own gain and shift; LN(x W_in) for the whole window before the
    loop), then the GRU's gates r, z, n from xp and hp as in `GRU`. Carry (h,).
    """

    name = "gru-ln"
    gates = CELL_SHAPES["gru-ln"].gates
    step_parameters = ("recurrent_gain",)

    initializers = {"input_gain": ONES, "recurrent_gain": ONES}

    def project_input(self, xw, bias, params):
        return layer_norm(xw)[0] * per_feature(params["input_gain"]) + per_feature(bias)

    def project_input_backward(self, xw, d_xp, params):
        return _normalised_input_backward(xw, d_xp, params)

    def step(self, carry, xp, hw, b, params):
        hw_norm, hw_rstd = layer_norm(hw)
        carry, saved = _gru_step(carry[0], xp, hw_norm * per_feature(params["recurrent_gain"]) + per_feature(b))
        return carry, (*saved, hw_norm, hw_rstd)

    def step_backward(self, saved, prev, new, d_carry, params):
        *saved, hw_norm, hw_rstd = saved
        d_xp, d_hp, d_prev = _gru_step_backward(saved, prev, d_carry)
        d_hw = layer_norm_backward(d_hp * per_feature(params["recurrent_gain"]), hw_norm, hw_rstd)
        return StepGradients(d_xp, d_hp, d_hw, d_prev, {"recurrent_gain": d_hp * hw_norm})


# -- Elman -------------------------------------------------------------------------------------
class Elman(Cell):
    """The plain (Elman) RNN: h' = tanh(xp + h W + b). Carry (h,)."""

    name = "rnn"
    sums_products = True
    gates = CELL_SHAPES["rnn"].gates
    # The step is so small that the loop's own overhead shows: unrolling two steps made training
    # 5% (float32) to 15% (bfloat16) faster (2×512, B64×T100, interleaved runs); LSTM and GRU gained
    # nothing from 2, and lost from 4 and 8.
    default_unroll = 2

    def step(self, carry, xp, hw, b, params):
        return (jnp.tanh(xp + (hw + per_feature(b))),), ()

    def step_backward(self, saved, prev, new, d_carry, params):
        (dh,) = d_carry
        return StepGradients(dh * (1.0 - new[0] * new[0]), None, None, (jnp.zeros_like(dh),))


REGISTRY: dict[str, type[Cell]] = {
    cell.name: cell
    for cell in (LSTM, GRU, Elman, PeepholeLSTM, CoupledLSTM, LayerNormLSTM, LayerNormGRU, MultiplicativeCoupledLSTM)
}


def make_cell(name: str, compute_dtype: str = "float32", unroll: int | None = None, split_batch: bool = False) -> Cell:
    """The registered cell `name`; `unroll` None means the cell's training default; `split_batch`: the
    batch is split over several devices (training on them)."""
    cls = REGISTRY[name]
    return cls(compute_dtype, cls.default_unroll if unroll is None else unroll, split_batch)
