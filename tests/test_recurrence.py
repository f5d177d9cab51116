"""The shared matmul and projections: the one-row form and the hand-written backward pass against
references (the cells and their time loop are tested against textbook implementations in
test_cells.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(1, 520), (1, 1, 520), (520,)])
def test_one_row_product_is_the_matmul_of_rounded_operands(dtype, shape):
    """One stream sampled or one text scored: a single row times a large weight takes its own form
    (a product and a sum); it must compute what the matmul computes, operands rounded."""
    from charrnn.recurrence import ONE_ROW_PRODUCT_MIN, matmul

    a = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (520, 1024))
    assert w.size > ONE_ROW_PRODUCT_MIN
    rounded = [np.asarray(v.astype(dtype).astype(jnp.float32), np.float64) for v in (a, w)]
    want = rounded[0] @ rounded[1]
    got = matmul(a, w, dtype)
    assert got.shape == shape[:-1] + (1024,) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-4)
    # and what the many-row form gives the same row
    many = matmul(jnp.concatenate([a.reshape(1, -1), a.reshape(1, -1)]), w, dtype)[0]
    np.testing.assert_allclose(got.reshape(-1), many, rtol=1e-5, atol=1e-4)
