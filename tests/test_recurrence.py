"""The shared projections' hand-written backward pass against autodiff (the cells and their time
loop are tested against textbook implementations in test_cells.py)."""

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
