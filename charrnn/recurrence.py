"""The time loop every cell runs on, with a hand-written backward pass.

A layer reads its inputs x [T, D, B] and carries its state [H, B] feature-major: the batch is the
last axis everywhere in the loop, so that each step's products have the weights as the left operand,

    xw = W_in^T x_t,  hw = W^T h_{t-1}                 the step's matmuls
    xp = cell.project_input(xw, bias)
    carry_t = cell.step(carry_{t-1}, xp, hw, b)        elementwise (charrnn/cells.py)

and where the cell reads the two only through their sum (the LSTMs, the Elman RNN), one matmul over
[x_t; h_{t-1}] computes it. On a CPU the matmul library packs its right operand at every call: with
the state on the right that is a [H, B] array, not the weight it was when the loop computed h @ W;
and the input projection, computed inside the loop, needs no transposing copy of a window's worth
of pre-activations (docs/measurements.md, Speed).

The backward pass keeps that shape: each reverse step runs the cell's hand-written backward step and
the transposed products (W d_hw, W_in d_xw, with the weights on the left again); the small gradients
of the cell's own parameters (peepholes, norm gains) are accumulated per stream in the reverse
scan's carry and summed over the streams after it; each weight gradient, sum over t of d_t x_t^T, is
one large matmul after the loop, instead of T small ones, and a bias whose gradient is the sum of
an array stored for it is summed from that array. Below float32 what the forward keeps of each step
for the backward (`_kept`) is float16.

One stream (B = 1) computes the products as rows, x_t^T W_in and h^T W (`matmul`'s one-row form),
the fastest form for a single stream (sampling, serving and scoring one text).

Resets (optional): `keep` [T, 1, B] is 0 where the state must be zeroed before step t (a new
document starts) and 1 elsewhere; the carry is multiplied by it before the step, and so is the
carry's gradient. Without resets (`keep` None) the program is the one without that multiplication.

Recurrent dropout (optional, training only): `mask` [H, B] multiplies h_{t-1} where it enters the
matmul, the same mask at every step of the window (Gal & Ghahramani's variational dropout), so
the loop keeps its products; the state carried and the cell's own uses of h are not masked.
Without it (`mask` None) the program is the one without that multiplication.
"""

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from charrnn.cells import Carry, Cell, Params, materialised

__all__ = [
    "Carry",
    "Cell",
    "Weights",
    "feature_rows_gradient",
    "matmul",
    "operands",
    "project",
    "recurrence",
    "step",
    "weight_gradient",
]

Weights = dict[str, jax.Array]  # a layer's parameters: input_kernel, recurrent_kernel, bias, recurrent_bias, own


ONE_ROW_PRODUCT_MIN = 1 << 19  # weights larger than 2 MB in float32 (no longer in a core's cache)


def matmul(a: jax.Array, b: jax.Array, compute_dtype: str) -> jax.Array:
    """a @ b with operands in `compute_dtype` and float32 accumulation and result (a single row times
    a large weight, on a CPU, as `_one_row_matmul`)."""
    if math.prod(a.shape[:-1]) == 1 and b.size > ONE_ROW_PRODUCT_MIN and jax.default_backend() == "cpu":
        return _one_row_matmul(a, b, compute_dtype)
    if compute_dtype == "float32":
        return jnp.matmul(a, b)
    dtype = jnp.dtype(compute_dtype)
    return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _one_row_matmul(a: jax.Array, b: jax.Array, compute_dtype: str) -> jax.Array:
    """a @ b for a single row (one stream sampled, served or scored), as a product and a sum over b's
    rows, on a CPU.

    XLA's CPU backend hands a one-row product to no matmul library: it emits a loop of its own,
    which is quick while the weight stays in cache and several times slower than this form (a
    reduction, handed to a library) once it does not (docs/measurements.md, Speed). The operands
    are rounded to `compute_dtype` as the matmul rounds them, and the products summed in float32."""
    dtype = jnp.dtype(compute_dtype)
    row = a.reshape(-1, 1).astype(dtype).astype(jnp.float32)
    product = (row * b.astype(dtype).astype(jnp.float32)).sum(axis=0)
    return product.reshape(*a.shape[:-1], b.shape[-1])


def weight_gradient(inputs: jax.Array, d_outputs: jax.Array, compute_dtype: str) -> jax.Array:
    """sum over leading axes of inputs^T d_outputs: [..., D], [..., N] -> [D, N], one large matmul.

    An einsum over the leading axes, not a 2-D matmul of reshaped operands: with the batch split
    over several devices, merging it with the time axis made XLA gather both operands onto every
    device (each device can sum its own rows and leave the rest to the gradients' all-reduce); and for
    bfloat16 only the einsum reached full speed on XLA's CPU backend. For float32 the two forms run
    about level (docs/measurements.md, Speed). In bf16 the narrower operand is the transposed one.
    """
    if compute_dtype == "float32":
        return jnp.einsum("...d,...n->dn", inputs, d_outputs)
    dtype = jnp.dtype(compute_dtype)
    inputs, d_outputs = inputs.astype(dtype), d_outputs.astype(dtype)
    if d_outputs.shape[-1] < inputs.shape[-1]:
        # XLA copies the operands transposed first: then [N, D]^T of the narrower one (the logits' 65
        # columns, the attention's 128-wide keys), and the small product transposed after. Stored
        # first: a transpose folded into the dot sends it to a thunk without bf16.
        product = jnp.einsum("...n,...d->nd", d_outputs, inputs, preferred_element_type=jnp.float32)
        return materialised(product).T
    return jnp.einsum("...d,...n->dn", inputs, d_outputs, preferred_element_type=jnp.float32)


def feature_rows_gradient(
    inputs: jax.Array, d_outputs: jax.Array, compute_dtype: str, split_batch: bool = False
) -> jax.Array:
    """sum over t and the batch of d_t x_t^T for arrays laid out as the loop writes them, [D, T, B]
    and [N, T, B] -> [D, N]: one large matmul over the rows of both, [D, T*B] by [N, T*B]^T, the form
    XLA's CPU backend runs fastest and without a transposing copy (docs/measurements.md, Speed).

    With the batch split over devices (`split_batch`) time and the batch stay two axes: merged, each
    device's rows would be spread over the merged axis, and XLA would gather both operands onto every
    device; apart, each device sums its own streams and the gradients' all-reduce adds the rest."""
    if not split_batch:
        inputs, d_outputs = inputs.reshape(inputs.shape[0], -1), d_outputs.reshape(d_outputs.shape[0], -1)
    axes = tuple(range(1, inputs.ndim))
    dimensions = ((axes, axes), ((), ()))
    if compute_dtype == "float32":
        return jax.lax.dot_general(inputs, d_outputs, dimensions)
    dtype = jnp.dtype(compute_dtype)
    return jax.lax.dot_general(
        inputs.astype(dtype), d_outputs.astype(dtype), dimensions, preferred_element_type=jnp.float32
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project(x: jax.Array, w: jax.Array, compute_dtype: str) -> jax.Array:
    """x @ w for x: [..., D], w: [D, N] (input projections, logits), with a backward pass whose two
    large matmuls use the fastest formulation (see `weight_gradient`)."""
    return matmul(x, w, compute_dtype)


def _project_forward(x, w, compute_dtype):
    return matmul(x, w, compute_dtype), (x, w)


def _project_backward(compute_dtype, residuals, d_out):
    x, w = residuals
    d_x = matmul(d_out, _operand(w.T, compute_dtype), compute_dtype).astype(x.dtype)
    return d_x, weight_gradient(x, d_out, compute_dtype)


project.defvjp(_project_forward, _project_backward)


def _operand(w: jax.Array, compute_dtype: str) -> jax.Array:
    """The weight as the loop's matmuls read it: cast once, outside the loop, not once per step."""
    return w.astype(jnp.dtype(compute_dtype))


# -- the time loop ------------------------------------------------------------------------------
class _Operands(NamedTuple):
    """A layer's weights as the loop's products read them, cast once, outside the loop: for one stream
    the float32 kernels as they are (`matmul`'s one-row form), else the transposed kernels, stacked
    into one [G*H, D + H] where the cell sums the products."""

    stacked: jax.Array | None  # [W_in; W]^T, where the cell sums the products (B > 1)
    input_t: jax.Array | None  # W_in^T (B > 1, products kept apart)
    recurrent_t: jax.Array | None  # W^T (B > 1, products kept apart)
    input_kernel: jax.Array  # W_in [D, G*H]
    recurrent_kernel: jax.Array  # W [H, G*H]

    @property
    def rows(self) -> bool:
        """One stream: the products are rows, x_t^T W_in and h^T W."""
        return self.stacked is None and self.input_t is None


def operands(cell: Cell, weights: Weights, batch: int) -> _Operands:
    """The layer's weights as the step's products read them, for `batch` streams: made once, before a
    loop of steps (sampling's chunk passes them to every `step`)."""
    w_in, w = weights["input_kernel"], weights["recurrent_kernel"]
    if batch == 1:
        return _Operands(None, None, None, w_in, w)
    if cell.sums_products:
        stacked = materialised(_operand(jnp.concatenate([w_in, w], axis=0).T, cell.compute_dtype))
        return _Operands(stacked, None, None, w_in, w)
    transposed = (materialised(_operand(k.T, cell.compute_dtype)) for k in (w_in, w))
    return _Operands(None, *transposed, w_in, w)


def _products(cell: Cell, prepared: _Operands, z: jax.Array) -> tuple[jax.Array, jax.Array | float]:
    """(W_in^T x_t, W^T h) from z = [x_t; h] [D + H, B] in the compute dtype; where the cell sums
    them, (their sum, 0.0)."""
    dtype, width = cell.compute_dtype, prepared.input_kernel.shape[0]
    if prepared.rows:
        x_t, h = z[:width], z[width:]
        return matmul(x_t.T, prepared.input_kernel, dtype).T, matmul(h.T, prepared.recurrent_kernel, dtype).T
    if prepared.stacked is not None:
        return matmul(prepared.stacked, z, dtype), 0.0
    # z stored first: its halves are then row blocks of one array, not the transposed x_t and h that
    # XLA would otherwise fold into the products (which it then runs in float32, off the fast path).
    z = materialised(z)
    return matmul(prepared.input_t, z[:width], dtype), matmul(prepared.recurrent_t, z[width:], dtype)


def _own(cell: Cell, weights: Weights) -> Params:
    return {name: weights[name] for name in cell.parameters(weights["recurrent_kernel"].shape[0])}


def _step(cell, prepared, weights, own, carry, x_t, mask):
    """One step from a carry already reset: (new carry, the cell's saved, xw, [x_t; h] as the
    products read it)."""
    z = jnp.concatenate([_operand(x_t, cell.compute_dtype), _operand(_masked(carry[0], mask), cell.compute_dtype)])
    xw, hw = _products(cell, prepared, z)
    xp = cell.project_input(xw, weights["bias"], own)
    new, saved = cell.step(carry, xp, hw, weights["recurrent_bias"], own)
    return new, saved, xw, z


def step(cell: Cell, weights: Weights, x_t: jax.Array, carry: Carry, prepared: _Operands | None = None) -> Carry:
    """One time step of a layer, feature-major (x_t [D, B], carry [H, B] each): sampling's step.
    `prepared`: `operands(cell, weights, B)`, made once before a loop of steps (None: made here)."""
    prepared = operands(cell, weights, x_t.shape[-1]) if prepared is None else prepared
    return _step(cell, prepared, weights, _own(cell, weights), carry, x_t, None)[0]


def _masked(h: jax.Array, mask: jax.Array | None) -> jax.Array:
    return h if mask is None else h * mask


def _reset(carry: Carry, keep_t: jax.Array | None) -> Carry:
    return carry if keep_t is None else tuple(c * keep_t for c in carry)


def _normalises_input(cell: Cell) -> bool:
    """Whether the cell's project_input does more than add the bias (a layer norm): its backward then
    reads xw, which the forward loop keeps."""
    return type(cell).project_input_backward is not Cell.project_input_backward


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def recurrence(
    cell: Cell, weights: Weights, x: jax.Array, carry: Carry, keep: jax.Array | None, mask: jax.Array | None = None
) -> tuple[jax.Array, Carry]:
    """Run a layer of `cell` over time, feature-major. x: [T, D, B]; weights: the layer's parameters
    (`Weights`); carry: [H, B] each; keep: None, or [T, 1, B] with 0 where the carry is zeroed before
    step t; mask: None, or [H, B], the recurrent dropout mask (already scaled by 1 / keep probability).

    Returns (hs [T, H, B], final carry). Differentiable in weights, x and carry.
    """
    prepared, own = operands(cell, weights, x.shape[-1]), _own(cell, weights)

    def body(carry, inputs):
        x_t, keep_t = inputs
        carry, *_ = _step(cell, prepared, weights, own, _reset(carry, keep_t), x_t, mask)
        return carry, carry[0]

    carry, hs = jax.lax.scan(body, carry, (x, keep), unroll=cell.unroll)
    return hs, carry


def _kept(cell: Cell, saved: Any) -> Any:
    """What the forward loop keeps of a step for the backward one. Below float32, in float16: the
    activations and norms fit its range, it rounds 8 times finer than the bf16 operands the
    matmuls read, and the forward writes, and the backward reads, half the bytes."""
    if cell.compute_dtype == "float32":
        return saved
    return jax.tree.map(lambda a: a.astype(jnp.float16), saved)


def _recurrence_forward(cell, weights, x, carry0, keep, mask=None):
    prepared, own = operands(cell, weights, x.shape[-1]), _own(cell, weights)
    keeps_xw = _normalises_input(cell)
    steps, width, hidden = x.shape[0], x.shape[1], carry0[0].shape[0]
    # Every step's [x_t; h], the weight gradients' operand, written in place into a [D + H, T, B]
    # array: so laid out, the weight gradient is a matmul over its rows without a transposing copy.
    inputs = jnp.zeros((width + hidden, steps, x.shape[-1]), jnp.dtype(cell.compute_dtype))

    def body(state, xs):
        carry, inputs = state
        x_t, keep_t, t = xs
        carry = _reset(carry, keep_t)
        new, saved, xw, z = _step(cell, prepared, weights, own, carry, x_t, mask)
        inputs = jax.lax.dynamic_update_index_in_dim(inputs, z, t, 1)
        return (new, inputs), (new, _kept(cell, saved), xw if keeps_xw else None)

    (carry, inputs), (carries, saved, xw) = jax.lax.scan(
        body, (carry0, inputs), (x, keep, jnp.arange(steps)), unroll=cell.unroll
    )
    return (carries[0], carry), (weights, inputs, carry0, carries, saved, xw, keep, mask)


def _recurrence_backward(cell, residuals, cotangents):
    weights, inputs, carry0, carries, saved, xw, keep, mask = residuals
    d_hs, d_final = cotangents
    dtype, own = cell.compute_dtype, _own(cell, weights)
    width, (steps, batch) = weights["input_kernel"].shape[0], inputs.shape[1:]
    # The carry each step read: carry0 followed by all but the last carry, reset where asked.
    prevs = tuple(jnp.concatenate([c0[None], c[:-1]], axis=0) for c0, c in zip(carry0, carries, strict=True))
    prevs = _reset(prevs, keep)
    stacked = cell.sums_products
    if stacked:  # [W_in; W], the left operand of d[x_t; h] = [W_in; W] d_xp
        kernel = _operand(jnp.concatenate([weights["input_kernel"], weights["recurrent_kernel"]], axis=0), dtype)
    else:
        input_kernel, recurrent_kernel = (_operand(weights[k], dtype) for k in ("input_kernel", "recurrent_kernel"))

    def body(state, xs):
        d_carry, sums, stored = state
        d_h_out, saved_t, prev_t, new_t, xw_t, keep_t, t = xs
        d_carry = (d_carry[0] + d_h_out, *d_carry[1:])
        saved_t = jax.tree.map(lambda a: a.astype(jnp.float32), saved_t)
        grads = cell.step_backward(saved_t, prev_t, new_t, d_carry, own)
        d_hp = grads.d_xp if grads.d_hp is None else grads.d_hp
        d_xw, d_input = cell.project_input_backward(xw_t, grads.d_xp, own)
        # Rounded to the compute dtype once, here: their only readers are matmuls that read them so (this
        # step's and the weight gradients'), and the arrays the loop writes are half the size.
        if stacked:
            d_pre = _operand(d_xw, dtype)
            d_z = matmul(kernel, d_pre, dtype)
            d_x, d_h, new_stored = d_z[:width], d_z[width:], (d_pre,)
        else:
            d_xw = _operand(d_xw, dtype)
            d_hw = _operand(d_hp if grads.d_hw is None else grads.d_hw, dtype)
            d_x, d_h, new_stored = (
                matmul(input_kernel, d_xw, dtype),
                matmul(recurrent_kernel, d_hw, dtype),
                (d_xw, d_hw),
            )
        # Written in place into [G*H, T, B] arrays, the layout of the weight gradients' operand.
        stored = tuple(jax.lax.dynamic_update_index_in_dim(a, v, t, 1) for a, v in zip(stored, new_stored, strict=True))
        d_prev = (grads.d_prev[0] + _masked(d_h, mask), *grads.d_prev[1:])
        # Per stream, summed over the streams after the loop: with the batch split over devices, a sum
        # over it here would be a collective at every step.
        step_sums = {"recurrent_bias": d_hp, **grads.d_params, **d_input}
        sums = {name: total + step_sums[name] for name, total in sums.items()}
        return (_reset(d_prev, keep_t), sums, stored), d_x

    # A bias whose gradient is the sum of an array the loop stores anyway is summed from it after the
    # loop (in the compute dtype, as the weight gradients read it); the others are accumulated.
    from_stored = {"bias": 0} if not _normalises_input(cell) else {}
    from_stored |= {"recurrent_bias": 0} if stacked else {}
    names = [name for name in ("bias", "recurrent_bias", *own) if name not in from_stored]
    sums0 = {name: jnp.zeros((*weights[name].shape, batch), jnp.float32) for name in names}
    gates = weights["recurrent_kernel"].shape[1]
    stored0 = tuple(jnp.zeros((gates, steps, batch), jnp.dtype(dtype)) for _ in range(1 if stacked else 2))
    (d_carry0, sums, stored), d_x = jax.lax.scan(
        body,
        (tuple(d_final), sums0, stored0),
        (d_hs, saved, prevs, carries, xw, keep, jnp.arange(steps)),
        reverse=True,
        unroll=cell.unroll,
    )
    # Each weight gradient for all steps at once: sum over t and the batch of d_t [x_t; h]^T.
    if stacked:
        d_kernel = feature_rows_gradient(inputs, stored[0], dtype, cell.split_batch)
        d_input_kernel, d_recurrent_kernel = d_kernel[:width], d_kernel[width:]
    else:
        d_input_kernel = feature_rows_gradient(inputs[:width], stored[0], dtype, cell.split_batch)
        d_recurrent_kernel = feature_rows_gradient(inputs[width:], stored[1], dtype, cell.split_batch)
    sums = {name: total.sum(axis=-1) for name, total in sums.items()}
    sums |= {name: stored[i].astype(jnp.float32).sum(axis=(1, 2)) for name, i in from_stored.items()}
    sums = {name: total.astype(weights[name].dtype) for name, total in sums.items()}
    d_weights = {"input_kernel": d_input_kernel, "recurrent_kernel": d_recurrent_kernel, **sums}
    d_keep = None if keep is None else jnp.zeros_like(keep)  # resets are data, not learned
    d_mask = None if mask is None else jnp.zeros_like(mask)  # so is the dropout mask
    return d_weights, d_x, d_carry0, d_keep, d_mask


recurrence.defvjp(_recurrence_forward, _recurrence_backward)
