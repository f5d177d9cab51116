"""The time loop every cell runs on, with a hand-written backward pass.

Every cell (charrnn/cells.py) has the same shape of computation, which is what makes them fast:

    xp = project_input(x @ W_in)                      all time steps at once, one big matmul (model.py)
    hw_t = h_{t-1} @ W                                the only matmul inside the time loop
    carry_t = cell.step(carry_{t-1}, xp_t, hw_t, b)    elementwise only

The backward pass keeps that property: each reverse step does ``d_hw @ W.T`` and elementwise work,
the small gradients of the cell's own parameters (peepholes, norm gains) are summed over the batch
and accumulated in the reverse scan's carry, and the weight gradient ``sum_t h_{t-1}.T @ d_hw_t`` is
one large matmul after the loop, instead of T small ones.

Resets (optional): `keep` [T, B, 1] is 0 where the state must be zeroed before step t (a new
document starts) and 1 elsewhere; the carry is multiplied by it before the step, and so is the
carry's gradient. Without resets (`keep` None) the program is the one without that multiplication.

Recurrent dropout (optional, training only): `mask` [B, H] multiplies h_{t-1} where it enters the
matmul, the same mask at every step of the window (Gal & Ghahramani's variational dropout), so
the loop keeps its one matmul; the state carried and the cell's own uses of h are not masked.
Without it (`mask` None) the program is the one without that multiplication.
"""

import functools
import math

import jax
import jax.numpy as jnp

from charrnn.cells import Carry, Cell, Params, materialised

__all__ = ["Carry", "Cell", "matmul", "project", "recurrence", "step", "weight_gradient"]


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
    about level (docs/measurements.md, Speed).
    """
    if compute_dtype == "float32":
        return jnp.einsum("...d,...n->dn", inputs, d_outputs)
    dtype = jnp.dtype(compute_dtype)
    return jnp.einsum(
        "...d,...n->dn", inputs.astype(dtype), d_outputs.astype(dtype), preferred_element_type=jnp.float32
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
def step(
    cell: Cell, carry: Carry, xp: jax.Array, w: jax.Array, b: jax.Array, params: Params, mask: jax.Array | None = None
) -> tuple[Carry, tuple]:
    """One time step of `cell` (xp: [B, G*H]): the one matmul h @ W, then the cell's elementwise step."""
    return cell.step(carry, xp, matmul(_masked(carry[0], mask), w, cell.compute_dtype), b, params)


def _masked(h: jax.Array, mask: jax.Array | None) -> jax.Array:
    return h if mask is None else h * mask


def _reset(carry: Carry, keep_t: jax.Array | None) -> Carry:
    return carry if keep_t is None else tuple(c * keep_t for c in carry)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def recurrence(
    cell: Cell,
    w: jax.Array,
    b: jax.Array,
    params: Params,
    xp: jax.Array,
    carry: Carry,
    keep: jax.Array | None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, Carry]:
    """Run `cell` over time. xp: [T, B, G*H] (time-major), w: [H, G*H], b: [G*H], params: the cell's
    `step_parameters`; keep: None, or [T, B, 1] with 0 where the carry is zeroed before step t;
    mask: None, or [B, H], the recurrent dropout mask (already scaled by 1 / keep probability).

    Returns (hs [T, B, H], final carry). Differentiable in w, b, params, xp and carry.
    """
    w = _operand(w, cell.compute_dtype)

    def body(carry, inputs):
        xp_t, keep_t = inputs
        carry, _ = step(cell, _reset(carry, keep_t), xp_t, w, b, params, mask)
        return carry, carry[0]

    carry, hs = jax.lax.scan(body, carry, (xp, keep), unroll=cell.unroll)
    return hs, carry


def _recurrence_forward(cell, w, b, params, xp, carry0, keep, mask=None):
    w_operand = _operand(w, cell.compute_dtype)
    in_place = _saves_over_input(cell, xp, carry0, w_operand, b, params, mask)

    def body(state, inputs):
        carry, buffer = state
        t, keep_t = inputs
        new, saved = step(cell, _reset(carry, keep_t), buffer[t], w_operand, b, params, mask)
        if in_place:  # the step's first saved array replaces the xp_t it has just read
            buffer, saved = jax.lax.dynamic_update_index_in_dim(buffer, saved[0], t, 0), saved[1:]
        return (new, buffer), (new, saved)

    steps = jnp.arange(xp.shape[0])
    (carry, buffer), (carries, saved) = jax.lax.scan(body, (carry0, xp), (steps, keep), unroll=cell.unroll)
    saved = (buffer, *saved) if in_place else saved
    return (carries[0], carry), (w, params, carry0, carries, saved, keep, mask)


def _saves_over_input(cell, xp, carry, w, b, params, mask) -> bool:
    """Whether the step saves, first, an array shaped like its xp_t (the gates' activations of every
    gated cell). The forward loop then writes it over xp, which no later step reads: the training
    step holds one [T, B, G*H] array per layer where it would hold two, and XLA allocates, zeroes
    and faults in that much less memory at every step (docs/measurements.md, Speed)."""
    _, saved = jax.eval_shape(lambda: step(cell, carry, xp[0], w, b, params, mask))
    return bool(saved) and (saved[0].shape, saved[0].dtype) == (xp.shape[1:], xp.dtype)


def _recurrence_backward(cell, residuals, cotangents):
    w, params, carry0, carries, saved, keep, mask = residuals
    d_hs, d_final = cotangents
    # The carry each step read: carry0 followed by all but the last carry, reset where asked.
    prevs = tuple(jnp.concatenate([c0[None], c[:-1]], axis=0) for c0, c in zip(carry0, carries, strict=True))
    prevs = _reset(prevs, keep)
    w_t = _operand(w.T, cell.compute_dtype)

    def body(state, inputs):
        d_carry, d_params = state
        d_h_out, saved_t, prev_t, new_t, keep_t = inputs
        d_carry = (d_carry[0] + d_h_out, *d_carry[1:])
        grads = cell.step_backward(saved_t, prev_t, new_t, d_carry, params)
        d_hp = grads.d_xp if grads.d_hp is None else grads.d_hp
        # Rounded to the compute dtype once, here: its only readers are matmuls that read it so (this
        # step's and the weight gradient's), and the [T, B, G*H] array the loop writes is half the size.
        d_hw = _operand(d_hp if grads.d_hw is None else grads.d_hw, cell.compute_dtype)
        d_prev = (grads.d_prev[0] + _masked(matmul(d_hw, w_t, cell.compute_dtype), mask), *grads.d_prev[1:])
        d_params = jax.tree.map(jnp.add, d_params, grads.d_params)
        # Each distinct array stored once; None: d_hp is d_hw (rounded), d_xp is d_hp.
        stored_hp = None if grads.d_hw is None else d_hp
        stored_xp = None if grads.d_hp is None else grads.d_xp
        return (_reset(d_prev, keep_t), d_params), (stored_xp, stored_hp, d_hw)

    (d_carry0, d_params), (d_xp, d_hp, d_hw) = jax.lax.scan(
        body,
        (tuple(d_final), jax.tree.map(jnp.zeros_like, params)),
        (d_hs, saved, prevs, carries, keep),
        reverse=True,
        unroll=cell.unroll,
    )
    d_hp = d_hw.astype(jnp.float32) if d_hp is None else d_hp
    d_xp = d_hp if d_xp is None else d_xp
    # Weight gradient for all steps at once: [H, T*B] @ [T*B, G*H]. Its operand is stored first: fused
    # into the transposing copy the matmul needs, the concatenation and the reset made that copy a
    # scalar loop (docs/measurements.md, Speed).
    d_w = weight_gradient(materialised(_operand(_masked(prevs[0], mask), cell.compute_dtype)), d_hw, cell.compute_dtype)
    d_b = d_hp.sum(axis=(0, 1))
    d_keep = None if keep is None else jnp.zeros_like(keep)  # resets are data, not learned
    d_mask = None if mask is None else jnp.zeros_like(mask)  # so is the dropout mask
    return d_w, d_b, d_params, d_xp, d_carry0, d_keep, d_mask


recurrence.defvjp(_recurrence_forward, _recurrence_backward)
