"""One LSTM layer's forward loop in bf16, laid out four ways: which keeps the two cores busiest.

    for r in 1 2 3; do for v in concat time-major rows halves; do
        python benchmarks/loop_layouts.py $v; done; done

A model of the recurrence's forward loop at layer 1's shape (512 units reading 512, `[2048, 1024]`
bf16 weights, 32 streams × 32 steps by default): each step's product, the LSTM's gates, and the
product's operand written into a [D + H, T, B] array for the weight gradients. The layouts:

- `concat`: W [x_t; h] and the column write, as charrnn/recurrence.py does it;
- `time-major`: x written into a [T + 1, D + H, B] buffer before the loop, each step's h into the
  next step's slot, the product reading its step's slice (no concatenation);
- `rows`: [x_t; h] stored first, W split by output rows into two products;
- `halves`: two independent chains of half the streams per step.

Run each in its own process and alternate them: two compiled variants alternated in one process
are no fair test on XLA's CPU backend (docs/measurements.md, "Leads for the time loop that did not
pay"). Prints the median and best milliseconds per loop and the median per step.
"""

import argparse
import time

import jax
import jax.numpy as jnp

BF16 = jnp.bfloat16


def _cell(gates: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    i, f, o, g = jnp.split(gates, 4)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return c, jax.nn.sigmoid(o) * jnp.tanh(c)


def _product(w: jax.Array, z: jax.Array) -> jax.Array:
    return jnp.matmul(w, z, preferred_element_type=jnp.float32)


def _column_loop(x, c, h, width, gates, store_first=False):
    """The loop with [x_t; h] written into a [D + H, T, B] array, each step's gates `gates(z)`."""
    steps, _, batch = x.shape

    def body(state, xs):
        (c, h), inputs = state
        x_t, t = xs
        z = jnp.concatenate([x_t.astype(BF16), h.astype(BF16)])
        z = jax.lax.optimization_barrier(z) if store_first else z
        c, h = _cell(gates(z), c)
        return ((c, h), jax.lax.dynamic_update_index_in_dim(inputs, z, t, 1)), h

    inputs = jnp.zeros((width, steps, batch), BF16)
    (_, inputs), hs = jax.lax.scan(body, ((c, h), inputs), (x, jnp.arange(steps)))
    return hs, inputs


def concat(w, x, c, h):
    return _column_loop(x, c, h, w.shape[1], lambda z: _product(w, z))


def time_major(w, x, c, h):
    steps, width, batch = x.shape
    buffer = jnp.concatenate([x.astype(BF16), jnp.zeros((steps, h.shape[0], batch), BF16)], axis=1)
    buffer = jnp.concatenate([buffer, jnp.zeros((1, *buffer.shape[1:]), BF16)]).at[0, width:].set(h.astype(BF16))

    def body(state, t):
        (c, h), buffer = state
        c, h = _cell(_product(w, jax.lax.dynamic_index_in_dim(buffer, t, 0, keepdims=False)), c)
        return ((c, h), jax.lax.dynamic_update_slice(buffer, h.astype(BF16)[None], (t + 1, width, 0))), h

    (_, buffer), hs = jax.lax.scan(body, ((c, h), buffer), jnp.arange(steps))
    return hs, jnp.transpose(buffer[:steps], (1, 0, 2))  # as the weight gradients read it


def rows(w, x, c, h):
    top, bottom = jnp.split(w, 2)  # z stored first, or XLA would split each product again

    def gates(z):
        return jnp.concatenate([_product(top, z), _product(bottom, z)])

    return _column_loop(x, c, h, w.shape[1], gates, store_first=True)


def halves(w, x, c, h):
    steps, width, batch = x.shape
    n = batch // 2
    parts = tuple((c[:, k * n : (k + 1) * n], h[:, k * n : (k + 1) * n]) for k in range(2))

    def body(state, xs):
        parts, inputs = state
        x_t, t = xs
        new = []
        for k, (c, h) in enumerate(parts):
            z = jnp.concatenate([x_t[:, k * n : (k + 1) * n].astype(BF16), h.astype(BF16)])
            new.append(_cell(_product(w, z), c))
            inputs = jax.lax.dynamic_update_slice(inputs, z[:, None], (0, t, k * n))
        return (tuple(new), inputs), jnp.concatenate([h for _, h in new], axis=-1)

    inputs = jnp.zeros((w.shape[1], steps, batch), BF16)
    (_, inputs), hs = jax.lax.scan(body, (parts, inputs), (x, jnp.arange(steps)))
    return hs, inputs


LAYOUTS = {"concat": concat, "time-major": time_major, "rows": rows, "halves": halves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layout", choices=LAYOUTS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    key, hidden = jax.random.key(0), args.hidden
    w = (jax.random.normal(key, (4 * hidden, 2 * hidden)) * 0.03).astype(BF16)
    x = jax.random.normal(key, (args.steps, hidden, args.batch))
    c = h = jnp.zeros((hidden, args.batch))
    run = jax.jit(LAYOUTS[args.layout])
    jax.block_until_ready(run(w, x, c, h))
    times, end = [], time.perf_counter() + args.seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        jax.block_until_ready(run(w, x, c, h))
        times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    print(
        f"{args.layout:10s} {args.batch} × {args.steps}: median {median * 1e3:.2f} ms, best {times[0] * 1e3:.2f} ms,"
        f" {median / args.steps * 1e6:.0f} µs a step"
    )


if __name__ == "__main__":
    main()
