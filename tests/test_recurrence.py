"""The hand-written backward pass against JAX autodiff of a plain Python loop over time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charrnn.recurrence import Cell, recurrence

jax.config.update("jax_enable_x64", False)


def python_loop(kind, w, b, xp, carry):
    """Textbook cell equations, one Python iteration per time step (no scan, no shared code)."""
    sigmoid = jax.nn.sigmoid
    hs = []
    for t in range(xp.shape[0]):
        x = xp[t]
        if kind == "lstm":
            h, c = carry
            z = x + h @ w + b
            hidden = h.shape[-1]
            i = sigmoid(z[:, :hidden])
            f = sigmoid(z[:, hidden : 2 * hidden])
            g = jnp.tanh(z[:, 2 * hidden : 3 * hidden])
            o = sigmoid(z[:, 3 * hidden :])
            c = f * c + i * g
            h = o * jnp.tanh(c)
            carry = (h, c)
        elif kind == "gru":
            (h,) = carry
            hidden = h.shape[-1]
            hp = h @ w + b
            r = sigmoid(x[:, :hidden] + hp[:, :hidden])
            z = sigmoid(x[:, hidden : 2 * hidden] + hp[:, hidden : 2 * hidden])
            n = jnp.tanh(x[:, 2 * hidden :] + r * hp[:, 2 * hidden :])
            h = (1 - z) * n + z * h
            carry = (h,)
        else:
            (h,) = carry
            h = jnp.tanh(x + h @ w + b)
            carry = (h,)
        hs.append(carry[0])
    return jnp.stack(hs), carry


def random_problem(kind, steps=6, batch=3, hidden=5, seed=0):
    cell = Cell(kind)
    keys = jax.random.split(jax.random.key(seed), 6)
    width = cell.gates * hidden
    w = jax.random.normal(keys[0], (hidden, width)) * 0.6
    b = jax.random.normal(keys[1], (width,)) * 0.2
    xp = jax.random.normal(keys[2], (steps, batch, width))
    carry = tuple(jax.random.normal(keys[3 + i], (batch, hidden)) for i in range(cell.carry_size))
    return cell, w, b, xp, carry


def objective(run):
    # Weights every output and the final carry differently, so every cotangent path is exercised.
    def loss(w, b, xp, carry):
        hs, final = run(w, b, xp, carry)
        weights = jnp.arange(hs.size, dtype=hs.dtype).reshape(hs.shape) / hs.size
        return jnp.sum(jnp.sin(hs) * weights) + sum(jnp.sum(c**2) * (k + 1) for k, c in enumerate(final))

    return loss


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_forward_matches_python_loop(kind):
    cell, w, b, xp, carry = random_problem(kind)
    hs, final = recurrence(cell, w, b, xp, carry)
    hs_ref, final_ref = python_loop(kind, w, b, xp, carry)
    np.testing.assert_allclose(hs, hs_ref, rtol=1e-5, atol=1e-6)
    for a, r in zip(final, final_ref, strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_custom_backward_matches_autodiff_of_python_loop(kind):
    cell, w, b, xp, carry = random_problem(kind, seed=1)
    ours = jax.grad(objective(lambda *a: recurrence(cell, *a)), argnums=(0, 1, 2, 3))(w, b, xp, carry)
    reference = jax.grad(objective(lambda *a: python_loop(kind, *a)), argnums=(0, 1, 2, 3))(w, b, xp, carry)
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bfloat16_operands_stay_close_to_float32():
    cell, w, b, xp, carry = random_problem("lstm", seed=2)
    hs32, _ = recurrence(cell, w, b, xp, carry)
    hs16, _ = recurrence(Cell("lstm", "bfloat16"), w, b, xp, carry)
    assert hs16.dtype == jnp.float32
    np.testing.assert_allclose(hs16, hs32, atol=0.05)
    assert not np.allclose(hs16, hs32, atol=1e-7)  # really computed in lower precision


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_projection_gradient_matches_autodiff(dtype):
    from charrnn.recurrence import matmul, project

    x = jax.random.normal(jax.random.key(0), (4, 3, 6))
    w = jax.random.normal(jax.random.key(1), (6, 5))
    ct = jax.random.normal(jax.random.key(2), (4, 3, 5))
    ours = jax.vjp(lambda x, w: project(x, w, dtype), x, w)[1](ct)
    reference = jax.vjp(lambda x, w: jnp.matmul(x, w), x, w)[1](ct)
    tolerance = 1e-5 if dtype == "float32" else 0.1
    for got, want in zip(ours, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(project(x, w, dtype), matmul(x, w, dtype))


def python_loop_with_resets(kind, w, b, xp, carry, keep):
    """The reference with the carry multiplied by keep[t] before step t (document boundaries)."""
    hs = []
    for t in range(xp.shape[0]):
        carry = tuple(c * keep[t][:, None] for c in carry)
        h, carry = python_loop(kind, w, b, xp[t : t + 1], carry)
        hs.append(h[0])
    return jnp.stack(hs), carry


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_resets_forward_and_backward_match_the_reference(kind):
    cell, w, b, xp, carry = random_problem(kind, seed=3)
    keep = jnp.ones(xp.shape[:2]).at[0, 1].set(0.0).at[3, 0].set(0.0).at[4, 2].set(0.0)
    hs, _ = recurrence(cell, w, b, xp, carry, keep)
    hs_ref, _ = python_loop_with_resets(kind, w, b, xp, carry, keep)
    np.testing.assert_allclose(hs, hs_ref, rtol=1e-5, atol=1e-6)
    ours = jax.grad(objective(lambda *a: recurrence(cell, *a, keep)), argnums=(0, 1, 2, 3))(w, b, xp, carry)
    reference = jax.grad(objective(lambda *a: python_loop_with_resets(kind, *a, keep)), argnums=(0, 1, 2, 3))(
        w, b, xp, carry
    )
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not np.any(ours[3][0][1])  # stream 1 is reset at step 0: the initial carry gets no gradient
