"""What a loop's zero-filled output buffer costs: the same loop writing its rows three ways.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/scan_buffers.py

A model of the recurrence's forward loop as the multi-step training program runs it: four steps per
call, each a loop of 100 steps whose bf16 matmul [2048, 512] · [512, 64] writes float16 [2048, 64]
rows into a [100, 2048, 64] array, read after the loop. The rows are written as `lax.scan`'s stacked
outputs (what the recurrence does), into a fresh zeros array (as its `inputs` buffer), or into a
buffer carried from step to step and donated between calls, which nothing fills: the loop writes
every element. The difference is what XLA's zero fill costs at each step of this model, where
nothing else runs beside the fill; in the training step the fills overlap other work and making
them cheaper did not shorten it (docs/measurements.md, "Leads for the time loop that did not pay").
Prints the best and median milliseconds per call of each, twice, alternating.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

STEPS, GATES, BATCH, HIDDEN, CALL_STEPS = 100, 2048, 64, 512, 4
KERNEL = (jax.random.normal(jax.random.key(0), (GATES, HIDDEN)) * 0.02).astype(jnp.bfloat16)


def _gates(h: jax.Array) -> jax.Array:
    return jnp.dot(KERNEL, h.astype(jnp.bfloat16), preferred_element_type=jnp.float32)


def _read(rows: jax.Array) -> jax.Array:
    return jnp.einsum("tgb,tgb->g", rows, rows, preferred_element_type=jnp.float32)[:HIDDEN, None] * 1e-3


def _scan_outputs(h: jax.Array) -> tuple[jax.Array, jax.Array]:
    def body(h, _):
        g = _gates(h)
        return jnp.tanh(g[:HIDDEN]), jax.nn.sigmoid(g).astype(jnp.float16)

    return jax.lax.scan(body, h, None, length=STEPS)


def _written_into(h: jax.Array, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    def body(state, t):
        h, rows = state
        g = _gates(h)
        rows = jax.lax.dynamic_update_index_in_dim(rows, jax.nn.sigmoid(g).astype(jnp.float16), t, 0)
        return (jnp.tanh(g[:HIDDEN]), rows), None

    return jax.lax.scan(body, (h, rows), jnp.arange(STEPS))[0]


def stacked(h: jax.Array) -> jax.Array:
    def step(h, _):
        h, rows = _scan_outputs(h)
        return h + _read(rows), None

    return jax.lax.scan(step, h, None, length=CALL_STEPS)[0]


def fresh_zeros(h: jax.Array) -> jax.Array:
    def step(h, _):
        h, rows = _written_into(h, jnp.zeros((STEPS, GATES, BATCH), jnp.float16))
        return h + _read(rows), None

    return jax.lax.scan(step, h, None, length=CALL_STEPS)[0]


def carried(h: jax.Array, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    def step(state, _):
        h, rows = _written_into(*state)
        return (h + _read(rows), rows), None

    return jax.lax.scan(step, (h, rows), None, length=CALL_STEPS)[0]


def _time(function, *args, calls: int = 15) -> tuple[float, float]:
    """Best and median ms per call; a returned buffer (the carried form) is passed to the next call."""
    out = function(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(calls):
        if isinstance(out, tuple):
            args = (args[0], out[1])
        start = time.perf_counter()
        out = function(*args)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
    return min(times) * 1e3, float(np.median(times)) * 1e3


def _fresh_buffer() -> tuple[jax.Array]:
    """The carried form's first buffer: donated, so a new one for each run."""
    return (jnp.zeros((STEPS, GATES, BATCH), jnp.float16),)


def main() -> None:
    h = jnp.zeros((HIDDEN, BATCH))
    forms = {
        "scan's stacked outputs": (jax.jit(stacked), tuple),
        "a fresh zeros array": (jax.jit(fresh_zeros), tuple),
        "a carried buffer": (jax.jit(carried, donate_argnums=(1,)), _fresh_buffer),
    }
    for _ in range(2):
        for name, (function, extra) in forms.items():
            best, median = _time(function, h, *extra())
            print(f"{name:24s} best {best:6.1f} ms, median {median:6.1f} ms a call of {CALL_STEPS} steps")


if __name__ == "__main__":
    main()
