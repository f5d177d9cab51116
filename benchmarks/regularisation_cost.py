"""What each regulariser adds to charrnn's training step: the step `charrnn train` runs, timed bare
and with dropout, weight drop, weight decay and the weights' average, alone and together.

    python benchmarks/regularisation_cost.py                     # 2×768, 32 × 32, bfloat16
    python benchmarks/regularisation_cost.py --hidden 512 --only bare,all

The variants' compiled steps are timed in turns in one process (12 rounds of 20 steps, the order
reversed every other round), so a host's drift reaches them alike; prints the median and best
milliseconds per step and the median's characters per second. `charrnn bench` times the bare step.
To compare two versions of charrnn, run this under each in turns (PYTHONPATH=<checkout>).
"""

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from charrnn.config import ModelConfig, TrainConfig
from charrnn.step import create_state, make_train_step


def variants(args: argparse.Namespace) -> dict[str, tuple[dict, dict]]:
    """name -> (ModelConfig fields, TrainConfig fields); `bare` has every regulariser off."""
    off = {"ema": 0.0, "weight_decay": 0.0}
    return {
        "bare": ({}, off),
        "all": (
            {"dropout": args.dropout, "weight_drop": args.weight_drop},
            {"ema": args.ema, "weight_decay": args.weight_decay},
        ),
        "dropout": ({"dropout": args.dropout}, off),
        "weight-drop": ({"weight_drop": args.weight_drop}, off),
        "average": ({}, {**off, "ema": args.ema}),
        "decay": ({}, {**off, "weight_decay": args.weight_decay}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm-coupled")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--dropout", type=float, default=0.25)
    parser.add_argument("--weight-drop", type=float, default=0.2)
    parser.add_argument("--weight-decay", type=float, default=0.4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--only", default="", help="comma-separated variants (default: all of them)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    table = variants(args)
    names = args.only.split(",") if args.only else list(table)
    model = ModelConfig(
        vocab_size=args.vocab, cell=args.cell, layers=args.layers, hidden_size=args.hidden, dtype=args.dtype
    )
    train = TrainConfig(batch_size=args.batch_size, seq_len=args.seq_len)
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.seq_len)
    inputs, targets = (jnp.asarray(rng.integers(0, args.vocab, shape), jnp.int32) for _ in range(2))
    lr = np.float32(1e-3)
    compiled = {}
    for name in names:
        model_fields, train_fields = table[name]
        mc, tc = dataclasses.replace(model, **model_fields), dataclasses.replace(train, **train_fields)
        step, state = make_train_step(mc, tc), create_state(mc, tc)
        for _ in range(3):
            state, _ = step(state, inputs, targets, lr)
        compiled[name] = [step, jax.block_until_ready(state)]
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            step, state = compiled[name]
            started = time.perf_counter()
            for _ in range(args.steps):
                state, _ = step(state, inputs, targets, lr)
            jax.block_until_ready(state)
            times[name].append((time.perf_counter() - started) / args.steps * 1e3)
            compiled[name][1] = state
    for name in names:
        median, best = float(np.median(times[name])), min(times[name])
        chars = args.batch_size * args.seq_len / median * 1e3
        print(f"{name:12s} median {median:6.1f} ms  best {best:6.1f} ms  {chars:9,.0f} chars/s")


if __name__ == "__main__":
    main()
