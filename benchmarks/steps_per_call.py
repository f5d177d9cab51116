"""One training step per program call against `charrnn train`'s several (`make_train_steps`), in
one process, timed in turns, with the page faults each way.

    python benchmarks/steps_per_call.py                              # lstm-coupled bf16, 32 × 32
    python benchmarks/steps_per_call.py --cell lstm -b 64 -t 100 --dtype float32

XLA's CPU runtime maps a program's temporaries afresh at every call, and the kernel zeroes each
page on first touch; calls of several steps pay that, and the dispatch, once per call. The
installed `charrnn` command runs with glibc's huge-page tunable (cli/launch.py), which
makes those pages 2 MB; a Python process does not unless started with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1. Run it both ways to see the two costs. Prints the median and
best characters per second of each (10 rounds of 8 steps) and the minor page faults per step.
"""

import argparse
import resource
import statistics
import time

import jax
import numpy as np

from charrnn.config import ModelConfig, TrainConfig
from charrnn.step import STEPS_PER_CALL, create_state, make_train_step, make_train_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", default="lstm-coupled")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("-b", "--batch-size", type=int, default=32)
    parser.add_argument("-t", "--seq-len", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    model = ModelConfig(cell=args.cell, vocab_size=65, dtype=args.dtype)
    train = TrainConfig(batch_size=args.batch_size, seq_len=args.seq_len)
    rng = np.random.default_rng(0)
    window = [rng.integers(0, 65, (args.batch_size, args.seq_len), dtype=np.int32) for _ in range(2)]
    stacked = [np.stack([part] * STEPS_PER_CALL) for part in window]
    rate = np.float32(1e-3)
    rates, fresh = np.full(STEPS_PER_CALL, rate), np.zeros((STEPS_PER_CALL, args.batch_size), bool)
    one, several = make_train_step(model, train), make_train_steps(model, train)
    calls = {
        "1 step per call": (lambda state: one(state, *window, rate), 1),
        f"{STEPS_PER_CALL} steps per call": (lambda state: several(state, *stacked, rates, fresh), STEPS_PER_CALL),
    }
    states = {name: run(create_state(model, train))[0] for name, (run, _) in calls.items()}  # compiled
    speeds: dict[str, list[float]] = {name: [] for name in calls}
    faults: dict[str, int] = dict.fromkeys(calls, 0)
    steps = 8
    for _ in range(args.rounds):
        for name, (run, per_call) in calls.items():
            before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            for _ in range(steps // per_call):
                states[name], metrics = run(states[name])
            jax.block_until_ready(metrics)
            speeds[name].append(steps * args.batch_size * args.seq_len / (time.perf_counter() - start))
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(f"{args.cell} {args.dtype}, {args.batch_size} × {args.seq_len}")
    for name, values in speeds.items():
        print(
            f"  {name}: median {statistics.median(values):,.0f} chars/s (best {max(values):,.0f}), "
            f"{faults[name] / (steps * args.rounds):,.0f} page faults per step"
        )


if __name__ == "__main__":
    main()
