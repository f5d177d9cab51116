"""The recurrent cells and their time loop, with a hand-written backward pass.

Every cell has the same shape of computation, which is what makes them fast:

    gates_t = xp_t + h_{t-1} @ W + b        xp = x @ W_in for *all* time steps, one big matmul
    carry_t = cell(gates_t, carry_{t-1})     elementwise only

so the only matmul inside the time loop is the small ``h @ W``. The backward pass keeps that
property: each reverse step does ``d_gates @ W.T`` and nothing else, and the weight gradient
``sum_t h_{t-1}.T @ d_gates_t`` is one large matmul after the loop, instead of T small ones.

Cells (all carries are tuples whose first element is the hidden output h):
  * lstm:  gates i, f, g, o;  c' = f*c + i*g;  h' = o*tanh(c')           carry (h, c)
  * gru:   gates r, z, n (cuDNN form: n = tanh(xn + r*(h@Wn + bn)));  h' = (1-z)*n + z*h
  * rnn:   Elman, h' = tanh(xp + h@W + b)
"""

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from charrnn.config import GATES

Carry = tuple[jax.Array, ...]

# Time-loop unroll per cell, by measurement (2×512, B64×T100 training step, interleaved runs): the
# Elman RNN's step is so small that the loop's own overhead shows, and unrolling two steps made it
# 5% (float32) to 15% (bfloat16) faster; LSTM and GRU gained nothing from 2, and lost from 4 and 8.
DEFAULT_UNROLL = {"lstm": 1, "gru": 1, "rnn": 2}


@dataclass(frozen=True)
class Cell:
    """Which recurrence to run, and in which precision its matmul operands are fed."""

    kind: str  # lstm | gru | rnn
    compute_dtype: str = "float32"
    unroll: int = 1

    @property
    def gates(self) -> int:
        return GATES[self.kind]

    def zero_carry(self, batch_size: int, hidden_size: int) -> Carry:
        # Separate buffers for h and c: the train step donates its state, and XLA refuses to donate
        # one buffer twice.
        return tuple(jnp.zeros((batch_size, hidden_size), jnp.float32) for _ in range(self.carry_size))

    @property
    def carry_size(self) -> int:
        return 2 if self.kind == "lstm" else 1

    # -- one step ---------------------------------------------------------------------------
    def step(self, carry: Carry, xp: jax.Array, w: jax.Array, b: jax.Array) -> tuple[Carry, tuple]:
        """Advance one time step. `xp`: [B, G*H] input projection. Returns (carry, saved-for-backward)."""
        h = carry[0]
        hp = matmul(h, w, self.compute_dtype) + b  # [B, G*H], the one matmul of the step
        if self.kind == "lstm":
            # One sigmoid over all four gates, using tanh(x) = 2*sigmoid(2x) - 1 for the g block: the
            # activations come out as one [B, 4H] array, saved for the backward pass without a concat.
            hidden = h.shape[-1]
            activations = jax.nn.sigmoid((xp + hp) * _lstm_gate_scale(hidden))
            i, f, g, o = jnp.split(activations, 4, axis=-1)
            c = f * carry[1] + i * (2.0 * g - 1.0)
            return (o * jnp.tanh(c), c), (activations,)
        if self.kind == "gru":
            xr, xz, xn = jnp.split(xp, 3, axis=-1)
            hr, hz, hn = jnp.split(hp, 3, axis=-1)
            r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            return ((1.0 - z) * n + z * h,), (jnp.concatenate([r, z, n], axis=-1), hn)
        new_h = jnp.tanh(xp + hp)
        return (new_h,), ()

    def step_backward(self, saved: tuple, prev: Carry, new: Carry, d_carry: Carry) -> tuple:
        """Gradients of one step given d(new carry): (d_xp, d_hp, d(prev carry) except via h @ W).

        d_hp, the gradient of h @ W + b, is None where it equals d_xp (LSTM and RNN: both enter the
        same sum), so the backward loop does not store the same [T, B, G*H] array twice.
        """
        if self.kind == "lstm":
            activations = saved[0]
            i, f, g, o = jnp.split(activations, 4, axis=-1)
            g = 2.0 * g - 1.0
            dh, dc = d_carry
            tanh_c = jnp.tanh(new[1])
            dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
            # d loss / d activation, then through the (scaled) sigmoid: for the g block this is
            # 2*dg * 2*a*(1-a) = dg * (1 - g^2), as tanh requires.
            d_activations = jnp.concatenate([dc * g, dc * prev[1], 2.0 * dc * i, dh * tanh_c], axis=-1)
            hidden = dh.shape[-1]
            d_gates = d_activations * _lstm_gate_scale(hidden) * activations * (1.0 - activations)
            return d_gates, None, (jnp.zeros_like(dh), dc * f)
        if self.kind == "gru":
            r, z, n = jnp.split(saved[0], 3, axis=-1)
            (dh,) = d_carry
            dn = dh * (1.0 - z) * (1.0 - n * n)
            dr = dn * saved[1] * r * (1.0 - r)
            dz = dh * (prev[0] - n) * z * (1.0 - z)
            d_xp = jnp.concatenate([dr, dz, dn], axis=-1)
            d_hp = jnp.concatenate([dr, dz, dn * r], axis=-1)
            return d_xp, d_hp, (dh * z,)
        (dh,) = d_carry
        d_pre = dh * (1.0 - new[0] * new[0])
        return d_pre, None, (jnp.zeros_like(dh),)


def _lstm_gate_scale(hidden: int) -> jax.Array:
    """[1, 1, 2, 1] per gate block (i, f, g, o): the g block's pre-activation is doubled."""
    return jnp.repeat(jnp.array([1.0, 1.0, 2.0, 1.0], jnp.float32), hidden)


def matmul(a: jax.Array, b: jax.Array, compute_dtype: str) -> jax.Array:
    """a @ b with operands in `compute_dtype` and float32 accumulation and result."""
    if compute_dtype == "float32":
        return jnp.matmul(a, b)
    dtype = jnp.dtype(compute_dtype)
    return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def weight_gradient(inputs: jax.Array, d_outputs: jax.Array, compute_dtype: str) -> jax.Array:
    """sum over leading axes of inputs^T d_outputs: [..., D], [..., N] -> [D, N], one large matmul.

    The formulation is chosen by measurement on XLA's CPU backend: for float32 a plain 2-D
    transpose-matmul ran at ~185 GFLOP/s; for bfloat16 only the einsum form reached full speed
    (290 GFLOP/s against ~120 for the 2-D forms and for what autodiff of a matmul emits).
    """
    if compute_dtype == "float32":
        return inputs.reshape(-1, inputs.shape[-1]).T @ d_outputs.reshape(-1, d_outputs.shape[-1])
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
# ISSUE 11 (documents), minimal stand-in for issue 9's implementation: `keep` [T, B] (1 - resets)
# multiplies every layer's carry before step t reads its input, in the forward scan and likewise the
# carry gradient in the backward scan. The lead takes issue 9's version of this at merge.
def recurrence(
    cell: Cell, w: jax.Array, b: jax.Array, xp: jax.Array, carry: Carry, keep: jax.Array | None = None
) -> tuple[jax.Array, Carry]:
    """Run `cell` over time. xp: [T, B, G*H] (time-major), w: [H, G*H], b: [G*H]; `keep`: optional
    [T, B] float mask, 0 where the carry is reset (zeroed) before step t (document boundaries).

    Returns (hs [T, B, H], final carry). Differentiable in w, b, xp and carry.
    """
    return _recurrence(cell, w, b, xp, carry, keep)


def _masked(carry: Carry, keep_t: jax.Array | None) -> Carry:
    return carry if keep_t is None else tuple(c * keep_t[:, None] for c in carry)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(cell: Cell, w, b, xp, carry, keep):
    w = _operand(w, cell.compute_dtype)

    def body(carry, inputs):
        xp_t, keep_t = inputs
        carry, _ = cell.step(_masked(carry, keep_t), xp_t, w, b)
        return carry, carry[0]

    carry, hs = jax.lax.scan(body, carry, (xp, keep), unroll=cell.unroll)
    return hs, carry


def _recurrence_forward(cell, w, b, xp, carry0, keep):
    w_operand = _operand(w, cell.compute_dtype)

    def body(carry, inputs):
        xp_t, keep_t = inputs
        new, saved = cell.step(_masked(carry, keep_t), xp_t, w_operand, b)
        return new, (new, saved)

    carry, (carries, saved) = jax.lax.scan(body, carry0, (xp, keep), unroll=cell.unroll)
    return (carries[0], carry), (w, carry0, carries, saved, keep)


def _recurrence_backward(cell, residuals, cotangents):
    w, carry0, carries, saved, keep = residuals
    d_hs, d_final = cotangents
    # Carry of step t-1 for every t: carry0 followed by all but the last carry (as step t read it).
    prevs = tuple(jnp.concatenate([c0[None], c[:-1]], axis=0) for c0, c in zip(carry0, carries, strict=True))
    if keep is not None:
        prevs = tuple(p * keep[..., None] for p in prevs)
    w_t = _operand(w.T, cell.compute_dtype)

    def body(d_carry, inputs):
        d_h_out, saved_t, prev_t, new_t, keep_t = inputs
        d_carry = (d_carry[0] + d_h_out, *d_carry[1:])
        d_xp, d_hp, d_prev = cell.step_backward(saved_t, prev_t, new_t, d_carry)
        d_hp_t = d_xp if d_hp is None else d_hp
        d_prev = (d_prev[0] + matmul(d_hp_t, w_t, cell.compute_dtype), *d_prev[1:])
        return _masked(d_prev, keep_t), (d_xp, d_hp)

    d_carry0, (d_xp, d_hp) = jax.lax.scan(
        body, tuple(d_final), (d_hs, saved, prevs, carries, keep), reverse=True, unroll=cell.unroll
    )
    d_hp = d_xp if d_hp is None else d_hp
    # Weight gradient for all steps at once: [H, T*B] @ [T*B, G*H].
    d_w = weight_gradient(prevs[0], d_hp, cell.compute_dtype)
    d_b = d_hp.sum(axis=(0, 1))
    return d_w, d_b, d_xp, d_carry0, None if keep is None else jnp.zeros_like(keep)


_recurrence.defvjp(_recurrence_forward, _recurrence_backward)
