"""Measuring speed on the machine at hand: training, sampling, compilation, start-up.

Every throughput is reported next to the machine's matmul peak, measured in the same process
(a large square GEMM through XLA), so that figures from a busy or a different machine can still
be compared as a fraction of what the hardware gave at that moment.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from charrnn.config import DTYPES, ModelConfig, TrainConfig
from charrnn.model import initial_carry, parameter_shapes
from charrnn.runs import Run
from charrnn.sampling import SampleOptions, make_sample_chunk
from charrnn.step import STEPS_PER_CALL, create_state, make_train_steps


def forward_flops_per_char(config: ModelConfig) -> float:
    """Matmul FLOPs of one character through the model: 2 per weight of every matmul kernel in the
    parameter tree (input and recurrent projections, logits, the attention's query and keys; the
    embedding is a lookup), and the attention's scores and mix: 2 × (key width + hidden) per
    position attended."""
    kernels = jax.tree_util.tree_leaves_with_path(parameter_shapes(config))
    weights = sum(2.0 * leaf.size for path, leaf in kernels if str(getattr(path[-1], "key", "")).endswith("kernel"))
    keys = config.key_width or config.hidden_size
    return weights + 2.0 * (keys + config.hidden_size) * config.attention


def train_flops_per_char(config: ModelConfig, seq_len: int = 1) -> float:
    """Forward plus backward: each matmul is done three times (forward, input and weight gradients).
    A bidirectional model's backward stack also reads `lookahead` characters per window of
    `seq_len`, forward only."""
    flops = 3.0 * forward_flops_per_char(config)
    if config.bidirectional:
        flops += (
            (forward_flops_per_char(config) - 2.0 * 2 * config.hidden_size * config.vocab_size)
            / 2
            * (config.lookahead / seq_len)
        )
    return flops


def best_time(function, *args, repeats: int, inner: int) -> float:
    """The fastest of `repeats` timings of `inner` calls: the least disturbed by other processes."""
    jax.block_until_ready(function(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            result = function(*args)
        jax.block_until_ready(result)
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def matmul_peak(dtype: str = "float32", size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a [size, size] @ [size, size] GEMM (float32 accumulation for bfloat16 operands)."""
    a = jax.random.normal(jax.random.key(0), (size, size)).astype(dtype)
    gemm = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
    seconds = best_time(gemm, a, repeats=repeats, inner=max(1, min(100, int(2e10 // (2 * size**3)))))
    return 2.0 * size**3 / seconds / 1e9


def train_calls(model_config: ModelConfig, train_config: TrainConfig) -> tuple[Callable[[], Any], float]:
    """`fit`'s training program as it runs on one device (STEPS_PER_CALL steps per call), on random
    tokens, since the work does not depend on the text: (a function that runs one more call, the
    seconds the first call took to compile and run)."""
    from charrnn.kinds import kind_of

    batch, length = train_config.batch_size, train_config.seq_len
    rng = np.random.default_rng(0)
    kind = kind_of(model_config)
    window = kind.split(rng.integers(0, model_config.vocab_size, (batch, length + kind.extra), dtype=np.int32))
    arrays = [np.stack([part] * STEPS_PER_CALL) for part in window]
    rates, fresh = np.full(STEPS_PER_CALL, 1e-3, np.float32), np.zeros((STEPS_PER_CALL, batch), bool)
    train_steps = make_train_steps(model_config, train_config)
    state = create_state(model_config, train_config)

    def call() -> Any:
        nonlocal state
        state, metrics = train_steps(state, *arrays, rates, fresh)
        return metrics

    start = time.perf_counter()
    jax.block_until_ready(call())
    return call, time.perf_counter() - start


def bench_train(model_config: ModelConfig, train_config: TrainConfig, steps: int, repeats: int = 3) -> dict[str, Any]:
    """Steady-state training throughput: the best of `repeats` timings of `steps` steps, rounded up
    to whole calls."""
    call, compile_seconds = train_calls(model_config, train_config)
    calls = max(1, math.ceil(steps / STEPS_PER_CALL))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            metrics = call()
        jax.block_until_ready(metrics)
        best = min(best, (time.perf_counter() - start) / (calls * STEPS_PER_CALL))
    chars = train_config.batch_size * train_config.seq_len / best
    return {
        "compile_seconds": compile_seconds,
        "step_seconds": best,
        "chars_per_second": chars,
        "gflops": chars * train_flops_per_char(model_config, train_config.seq_len) / 1e9,
    }


def steady_train_rate(
    model_config: ModelConfig, train_config: TrainConfig, seconds: float, most_calls: int = 64
) -> float:
    """Training characters per second of the machine undisturbed: one-call timings for about
    `seconds` (at least four calls), the fastest quarter's. A shared host has slow spells of a few
    seconds; one short timing lands in one now and then and reads the machine slow, where the fast
    quarter of a longer look gives the same figure from one process to the next."""
    call, _ = train_calls(model_config, train_config)
    timings: list[float] = []
    while len(timings) < 4 or (sum(timings) < seconds and len(timings) < most_calls):
        start = time.perf_counter()
        jax.block_until_ready(call())
        timings.append(time.perf_counter() - start)
    return STEPS_PER_CALL * train_config.batch_size * train_config.seq_len / float(np.quantile(timings, 0.25))


def bench_check(model_config: ModelConfig, rows: int, length: int, repeats: int = 3) -> dict[str, Any]:
    """`charrnn check`'s reading of a text: one compiled window of `rows` streams × `length`
    characters and the model's look-ahead, every character judged from both sides."""
    from charrnn.checking import make_cloze_chunk

    params = create_state(model_config, TrainConfig(batch_size=1, seq_len=1)).params
    rng = np.random.default_rng(0)
    chars = rng.integers(0, model_config.vocab_size, (rows, length), dtype=np.int32)
    after = rng.integers(0, model_config.vocab_size, (rows, model_config.lookahead), dtype=np.int32)
    chunk = make_cloze_chunk(model_config, None)
    carry = initial_carry(model_config, rows)
    start = time.perf_counter()
    jax.block_until_ready(chunk(params, carry, chars, after))
    compile_seconds = time.perf_counter() - start
    seconds = best_time(chunk, params, carry, chars, after, repeats=repeats, inner=2)
    return {"compile_seconds": compile_seconds, "chars_per_second": rows * length / seconds}


def bench_sample(model_config: ModelConfig, streams: int, chunk_size: int = 256, repeats: int = 3) -> dict[str, Any]:
    """Sampling throughput of `streams` independent samples, whole chunks compiled as one scan."""
    params = create_state(model_config, TrainConfig(batch_size=1, seq_len=1)).params
    sample_chunk = make_sample_chunk(model_config, SampleOptions(temperature=1.0), chunk_size)
    carry = initial_carry(model_config, streams)
    token = jnp.zeros((streams,), jnp.int32)
    start = time.perf_counter()
    jax.block_until_ready(sample_chunk(params, carry, token, jax.random.key(0)))
    compile_seconds = time.perf_counter() - start
    seconds = best_time(sample_chunk, params, carry, token, jax.random.key(1), repeats=repeats, inner=2)
    chars = streams * chunk_size / seconds
    return {
        "compile_seconds": compile_seconds,
        "chars_per_second": chars,
        "gflops": chars * forward_flops_per_char(model_config) / 1e9,
    }


def bench_score(model_config: ModelConfig, rows: int, length: int, repeats: int = 3) -> dict[str, Any]:
    """Scoring throughput: one compiled chunk of `rows` lines × `length` characters, as `charrnn score`
    runs it (whole-chunk logits, only the recurrence stepping through time)."""
    from charrnn.scoring import make_score_chunk

    params = create_state(model_config, TrainConfig(batch_size=1, seq_len=1)).params
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, model_config.vocab_size, (rows, length), dtype=np.int32)
    targets = np.roll(inputs, -1, axis=1)
    score_chunk = make_score_chunk(model_config, False)
    carry = initial_carry(model_config, rows)
    start = time.perf_counter()
    jax.block_until_ready(score_chunk(params, carry, inputs, targets))
    compile_seconds = time.perf_counter() - start
    seconds = best_time(score_chunk, params, carry, inputs, targets, repeats=repeats, inner=2)
    chars = rows * length / seconds
    return {
        "compile_seconds": compile_seconds,
        "chars_per_second": chars,
        "gflops": chars * forward_flops_per_char(model_config) / 1e9,
        "rows": rows,
        "length": length,
    }


def write_bench_run(directory: Path, model_config: ModelConfig) -> Run:
    """A run to time `charrnn sample` on in a fresh process, made as `charrnn train` makes one
    (`start.new_run`, one step), on a text of exactly `model_config.vocab_size` characters."""
    from charrnn.start import new_run

    printable = (chr(c) for c in range(32, 0x110000) if not 0xD800 <= c <= 0xDFFF)
    alphabet = "".join(next(printable) for _ in range(model_config.vocab_size - 1)) + "\n"
    text = directory.with_name(directory.name + ".txt")
    text.write_text(alphabet * 4, encoding="utf-8")
    model = {name: getattr(model_config, name) for name in ("cell", "layers", "hidden_size", "embed_size", "dtype")}
    train = {"batch_size": 1, "seq_len": 1, "steps": 1, "val_fraction": 0.25}
    with new_run(str(text), directory=directory, model=model | {"dropout": 0.0}, train=train | {"ema": 0.0}) as start:
        for _ in start.fit():
            pass
    return start.run


def time_to_first_character(run: Run, cache: Path, length: int = 1) -> float:
    """Wall time of `charrnn sample RUN -n length` in a new process using compilation cache `cache`."""
    env = os.environ | {"CHARRNN_CACHE": str(cache)}
    env.pop("CHARRNN_NO_COMPILE_CACHE", None)
    launcher = [sys.executable, "-m", "charrnn.cli.launch"]  # as the installed command starts
    command = [*launcher, "sample", str(run.directory), "-n", str(length), "--seed", "0"]
    start = time.perf_counter()
    # Started in the run's folder (as `--help` below in the scratch one): `-m` puts the working directory
    # first on the path, and a checkout's charrnn/ (whose cli/ sits beside it) would hide the installed package.
    subprocess.run(command, env=env, check=True, capture_output=True, cwd=run.directory)
    return time.perf_counter() - start


def startup_times(model_config: ModelConfig) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as scratch:
        run = write_bench_run(Path(scratch) / "run", model_config)
        cache = Path(scratch) / "cache"
        cold = time_to_first_character(run, cache)
        warm = min(time_to_first_character(run, cache) for _ in range(2))
        start = time.perf_counter()
        help_command = [sys.executable, "-m", "charrnn.cli.main", "--help"]
        subprocess.run(help_command, check=True, capture_output=True, cwd=scratch)
        help_seconds = time.perf_counter() - start
    return {"first_char_cold_seconds": cold, "first_char_warm_seconds": warm, "help_seconds": help_seconds}


@dataclass(frozen=True)
class BenchOptions:
    """What `measure` times besides each model's training: the shapes of sampling and scoring, and
    the optional extras (the bidirectional model, attention over `attention` positions, the step's
    breakdown, an XLA profiler trace into `profile`, start-up in fresh processes)."""

    steps: int = 5
    streams: int = 64
    chunk: int = 256
    score_rows: int = 256
    score_length: int = 128
    peak_size: int = 2048
    bidirectional: bool = False
    attention: int = 0
    breakdown: bool = False
    profile: Path | None = None
    startup: bool = True


def measure(
    configs: list[ModelConfig],
    train_config: TrainConfig,
    options: BenchOptions,
    report: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Every figure of `charrnn bench`: the matmul peak, then for each model its training, sampling
    and scoring throughput (and what `options` adds), each against the peak of this same run.
    `report` is told what is being measured, as it starts."""
    report("measuring the matmul peak")
    peak = {dtype: matmul_peak(dtype, options.peak_size) for dtype in DTYPES}
    results: dict[str, Any] = {
        "machine": machine(),
        "peak_gflops": peak,
        "config": {
            "layers": configs[0].layers,
            "hidden": configs[0].hidden_size,
            "embed": configs[0].embed_size,
            "vocab": configs[0].vocab_size,
            "batch_size": train_config.batch_size,
            "seq_len": train_config.seq_len,
        },
        "models": [],
    }
    for config in configs:
        report(f"measuring {config.cell} {config.dtype}")
        model = _measure_model(config, train_config, options, peak[config.dtype], peak["float32"])
        results["models"].append(model)
        if options.breakdown:
            from charrnn.breakdown import step_breakdown

            report(f"timing the parts of a {config.cell} {config.dtype} training step")
            model["breakdown"] = step_breakdown(config, train_config)
            for part in model["breakdown"]["parts"].values():
                if "gflops" in part:
                    part["fraction_of_peak"] = part["gflops"] / peak[config.dtype]
        if options.profile is not None:
            with jax.profiler.trace(str(options.profile / f"{config.cell}-{config.dtype}")):
                bench_train(config, train_config, steps=2, repeats=1)
        if options.bidirectional:
            both = dataclasses.replace(config, bidirectional=True)
            report(f"measuring bidirectional {config.cell} {config.dtype}")
            trained = bench_train(both, train_config, options.steps)
            model["bidirectional"] = {
                "parameters": both.parameter_count(),
                "train": trained
                | {
                    "fraction_of_peak": trained["gflops"] / peak[config.dtype],
                    "of_left_to_right": trained["chars_per_second"] / model["train"]["chars_per_second"],
                },
                "check": bench_check(both, train_config.batch_size, train_config.seq_len),
            }
        if options.attention:
            attended = dataclasses.replace(config, attention=options.attention)
            report(f"measuring {config.cell} {config.dtype} with attention {options.attention}")
            figures = _measure_model(attended, train_config, options, peak[config.dtype], peak["float32"])
            for name, figure in figures.items():
                if isinstance(figure, dict):
                    figure["of_without"] = figure["chars_per_second"] / model[name]["chars_per_second"]
            model["attention"] = figures | {"positions": options.attention}
    if options.startup:
        report("timing `charrnn sample` in fresh processes (cold, then warm compilation cache)")
        results["startup"] = startup_times(configs[0])
    return results


def _measure_model(
    config: ModelConfig, train_config: TrainConfig, options: BenchOptions, peak: float, fp32_peak: float
) -> dict[str, Any]:
    """One model's training, sampling (1 and `options.streams` streams) and scoring figures."""
    train = bench_train(config, train_config, options.steps)
    scored = bench_score(config, options.score_rows, options.score_length)
    return {
        "cell": config.cell,
        "dtype": config.dtype,
        "parameters": config.parameter_count(),
        "train": train
        | {"fraction_of_peak": train["gflops"] / peak, "fraction_of_fp32_peak": train["gflops"] / fp32_peak},
        "sample_1": bench_sample(config, 1, options.chunk),
        f"sample_{options.streams}": bench_sample(config, options.streams, options.chunk),
        "score": scored | {"fraction_of_peak": scored["gflops"] / peak},
    }


def machine() -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device": device.device_kind,
        "devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
    }


def to_json(results: dict[str, Any]) -> str:
    return json.dumps(results, indent=2)
