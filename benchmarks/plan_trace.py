"""How steady a `--time` budget's plan is on this machine: one-call timings of the training program
`charrnn train` runs, for a while, then the plan `steady_train_rate` would have made from every
stretch of them.

    python benchmarks/plan_trace.py                  # 90 s, 2×512, 32 × 32, bfloat16
    python benchmarks/plan_trace.py --seconds 30 --hidden 768

Prints one mark per call ('.' within 8% of the fastest quarter, '-' within 15%, 'S' slower: a slow
spell), then the spread of the planned speed from one call (the plan before) and from windows of 1, 2
and 4 seconds started at every call: what one process's plan could have read.
"""

import argparse
import time

import jax
import numpy as np

from charrnn.bench import train_calls
from charrnn.config import ModelConfig, TrainConfig
from charrnn.step import STEPS_PER_CALL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=32)
    args = parser.parse_args()
    model = ModelConfig(vocab_size=65, hidden_size=args.hidden, dtype=args.dtype)
    train = TrainConfig(batch_size=args.batch_size, seq_len=args.seq_len)
    call, _ = train_calls(model, train)
    chars = STEPS_PER_CALL * args.batch_size * args.seq_len
    timings: list[float] = []
    begun = time.perf_counter()
    while time.perf_counter() - begun < args.seconds:
        start = time.perf_counter()
        jax.block_until_ready(call())
        timings.append(time.perf_counter() - start)
    rates = chars / np.array(timings)
    fast = np.quantile(rates, 0.75)
    print(f"{len(timings)} calls; fastest quarter {fast:,.0f} chars/s, median {np.median(rates):,.0f}")
    marks = "".join("." if r > 0.92 * fast else "-" if r > 0.85 * fast else "S" for r in rates)
    print("\n".join(marks[i : i + 100] for i in range(0, len(marks), 100)))
    print(spread("one call (the plan before)", rates))
    for window in (1.0, 2.0, 4.0):
        plans = []
        for first in range(len(timings)):
            last = first + 4  # as steady_train_rate: at least four calls, then until `window` seconds
            while last < len(timings) and sum(timings[first:last]) < window:
                last += 1
            if last <= len(timings) and sum(timings[first:last]) >= window:
                plans.append(chars / np.quantile(timings[first:last], 0.25))
        print(spread(f"{window:g} s, fastest quarter", np.array(plans)))


def spread(name: str, plans: np.ndarray) -> str:
    return (
        f"plans from {name}: min {plans.min():,.0f}  5th percentile {np.quantile(plans, 0.05):,.0f}  "
        f"median {np.median(plans):,.0f}  max {plans.max():,.0f} chars/s ({len(plans)} windows)"
    )


if __name__ == "__main__":
    main()
