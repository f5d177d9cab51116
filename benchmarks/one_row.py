"""A single row times a weight, as XLA's CPU backend compiles a one-row matmul and as the product
and sum `charrnn.recurrence.matmul` uses above `ONE_ROW_PRODUCT_MIN`, in one process, timed in turns.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/one_row.py

One-stream sampling, serving and scoring one text read each layer's weights once per character, one
row at a time. XLA gives a one-row product to no matmul library; its own loop is quick while the
weight stays in a core's cache and slower once it does not. Run this on a new kind of CPU to check
the threshold: each line is a 100-step loop of `tanh(h @ W)` (the step's shape) both ways, then
one-stream sampling of a 2×512 model with the threshold as it is and with the product turned off.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from charrnn import recurrence
from charrnn.bench import bench_sample, best_time
from charrnn.config import ModelConfig
from charrnn.sampling import make_sample_chunk

SHAPES = ((512, 512), (512, 1024), (512, 1536), (512, 2048), (768, 3072))  # rnn, -, gru, lstm, lstm 768


def loop_microseconds(form: Callable, w: jax.Array, dtype: str) -> float:
    """Microseconds per step of a 100-step jitted loop h <- tanh(form(h, W))[:K]."""
    k = w.shape[0]

    def run(w, h):
        def body(h, _):
            return jnp.tanh(form(h, w, dtype)[:, :k]), None

        return jax.lax.scan(body, h, None, length=100)[0]

    return best_time(jax.jit(run), w, jnp.zeros((1, k)), repeats=5, inner=3) * 1e4


def plain(h, w, dtype):
    if dtype == "float32":
        return h @ w
    return jnp.matmul(h.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="turns of the sampling comparison")
    args = parser.parse_args()
    print(f"threshold: weights of more than {recurrence.ONE_ROW_PRODUCT_MIN:,} elements take the product")
    rng = np.random.default_rng(0)
    for k, n in SHAPES:
        for dtype in ("float32", "bfloat16"):
            w = jnp.asarray(rng.standard_normal((k, n), np.float32) * 0.05).astype(dtype)
            matmul_us = loop_microseconds(plain, w, dtype)
            product_us = loop_microseconds(recurrence._one_row_matmul, w, dtype)
            print(
                f"[1, {k}] @ [{k}, {n}] {dtype:8s}: matmul {matmul_us:6.1f} us, product and sum {product_us:6.1f} us "
                f"({matmul_us / product_us:.2f}x)"
            )
    threshold = recurrence.ONE_ROW_PRODUCT_MIN
    for cell in ("lstm", "gru"):
        for dtype in ("float32", "bfloat16"):
            model = ModelConfig(cell=cell, vocab_size=65, dtype=dtype)
            rates: dict[str, list[float]] = {"matmul": [], "product": []}
            for _ in range(args.rounds):
                for name, value in (("matmul", 1 << 62), ("product", threshold)):
                    recurrence.ONE_ROW_PRODUCT_MIN = value  # read when the sampler is traced
                    make_sample_chunk.cache_clear()
                    jax.clear_caches()
                    rates[name].append(bench_sample(model, streams=1)["chars_per_second"])
            recurrence.ONE_ROW_PRODUCT_MIN = threshold
            matmul, product = (statistics.median(rates[name]) for name in ("matmul", "product"))
            print(
                f"sampling one stream, {cell} {dtype}: {matmul:,.0f} chars/s with the matmul, "
                f"{product:,.0f} with the product ({product / matmul:.2f}x; medians of {args.rounds})"
            )
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


if __name__ == "__main__":
    main()
