"""Dropout masks from few random bits: 8 per entry, four to each 32-bit number drawn.

On a CPU, drawing the random numbers is most of what dropout costs (JAX's threefry takes tens of
integer operations per 32-bit number), and `jax.random.bernoulli` draws one per entry. A byte per
entry gives the rate to 1/256, which is all a regulariser needs; the scale is the exact keep
probability that follows from the rounded rate, so the masked values' mean stays the input's.
"""

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

LEVELS = 256  # 8 bits per entry


def keep_threshold(rate: float) -> int:
    """The byte value below which an entry is dropped: `rate` rounded to 1/256. A rate just under 1
    still keeps something; one above 0 may round to dropping nothing."""
    return min(round(rate * LEVELS), LEVELS - 1)


def random_bytes(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """<uint8>[shape] uniform random bytes, four from each 32-bit number `key` draws."""
    size = math.prod(shape)
    words = jax.random.bits(key, ((size + 3) // 4,), jnp.uint32)
    return jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:size].reshape(shape)


def packed_keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """<f32>[shape]: 0 where dropped, 1 / keep probability where kept (weight drop's mask)."""
    return drop(key, rate, jnp.ones(shape, jnp.float32))


def drop(key: jax.Array, rate: float, x: jax.Array) -> jax.Array:
    """`x` with entries dropped at `rate` and the rest scaled by 1 / keep probability, in x's dtype."""
    threshold = keep_threshold(rate)
    if threshold == 0:
        return x
    kept = x.astype(jnp.float32) * (LEVELS / (LEVELS - threshold))  # scaled before rounding to x's dtype
    return jnp.where(random_bytes(key, x.shape) >= threshold, kept, 0.0).astype(x.dtype)


class Dropout(nn.Module):
    """`flax.linen.Dropout`'s interface (rng collection 'dropout') with the byte masks above."""

    rate: float

    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        return drop(self.make_rng("dropout"), self.rate, x)
