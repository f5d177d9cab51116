"""The training loop: budgets, evaluation, checkpoints and resume, as a generator of reports.

`fit` never prints. It yields `StepReport`s and `EvalReport`s and ends with a `Finished`; the CLI
decides how they look. The loop reads top to bottom: stop? -> reset the state at an epoch start
-> next window -> step -> every `log_every` steps fetch the loss -> every `eval_every` steps
validate and checkpoint.
"""

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from charrnn.batching import StreamBatcher, evaluation_windows
from charrnn.checkpoint import NOT_EVALUATED, CheckpointStore
from charrnn.config import LONG_RUN_DROPOUT, LONG_RUN_EMA, LONG_RUN_EPOCHS, ModelConfig, TrainConfig
from charrnn.corpus import PreparedCorpus, boundary_id
from charrnn.errors import CharrnnError, RunError
from charrnn.placement import Placement, make_placement
from charrnn.runs import Run
from charrnn.train import (
    abstract_state,
    evaluate,
    fresh_average,
    learning_rate,
    make_eval_step,
    make_optimizer,
    make_train_step,
    placed_carry,
    placed_state,
)
from charrnn.transfer import extend_params


class TrainingDiverged(CharrnnError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class StepReport:
    step: int
    epoch: float
    loss: float  # mean training loss (nats/char) since the previous report
    learning_rate: float
    chars_per_second: float
    elapsed: float  # seconds of training so far, across resumes
    progress: float  # fraction of the budget used, 0..1 (nan when there is no budget)


@dataclass(frozen=True)
class EvalReport:
    step: int
    epoch: float
    val_loss: float  # nats/char over the whole validation split
    best_val_loss: float
    is_best: bool
    elapsed: float


@dataclass(frozen=True)
class Finished:
    reason: str  # "steps", "epochs", "time", "patience" or "interrupted"
    step: int
    best_val_loss: float
    best_step: int
    signal: int = 0  # the signal that interrupted the run, if any


@dataclass(frozen=True)
class Notice:
    message: str  # something the user should know, e.g. a damaged checkpoint was skipped


Report = StepReport | EvalReport | Finished | Notice


def step_budget(config: TrainConfig, windows_per_epoch: int) -> int | None:
    """The number of steps the run may take, when fixed by --steps and/or --epochs."""
    budgets = [config.steps] if config.steps else []
    if config.epochs:
        budgets.append(max(1, math.ceil(config.epochs * windows_per_epoch)))
    return min(budgets) if budgets else None


def planned_epochs(model_config: ModelConfig, train_config: TrainConfig, train_characters: int) -> float:
    """How many passes over the training split the run's budget allows. A --time budget is turned
    into characters by timing a few compiled steps of this very model (a few seconds)."""
    windows = max(1, (train_characters - 1) // train_config.batch_size // train_config.seq_len)
    chars_per_epoch = windows * train_config.batch_size * train_config.seq_len
    estimates = []
    if budget := step_budget(train_config, windows):
        estimates.append(budget / windows)
    if train_config.time_seconds:
        from charrnn.bench import bench_train

        rate = bench_train(model_config, train_config, steps=3, repeats=1)["chars_per_second"]
        estimates.append(train_config.time_seconds * rate / chars_per_epoch)
    return min(estimates) if estimates else math.inf


def auto_dropout(epochs: float) -> float:
    """The dropout used when none is given: none for runs that see the text only a few times (it
    would only slow learning), 0.25 for longer runs, where a 2×512 LSTM starts to memorise a 1 MB
    corpus after about 4 epochs. More is not better within the budgets measured: in 30 minutes on
    tiny Shakespeare, dropout 0.4, or 0.25 plus recurrent dropout 0.25, ended 0.01 nats/char worse
    than 0.25 alone (README, Text quality)."""
    return LONG_RUN_DROPOUT if epochs > LONG_RUN_EPOCHS else 0.0


def auto_ema(epochs: float) -> float:
    """The weights' moving average used when --ema is not given: decay 0.999 (a horizon of about
    a thousand steps) for the same long runs, where it averages away the noise of a learning rate
    still high when the model starts to memorise (30 minutes on tiny Shakespeare: best validation
    0.003–0.009 nats/char lower in two runs); none for short runs, which end on a learning rate
    decayed to 5% that already averages (an average with decay 0.99 ended 5-minute runs slightly
    worse; README, Text quality)."""
    return LONG_RUN_EMA if epochs > LONG_RUN_EPOCHS else 0.0


def fit(
    run: Run,
    corpus: PreparedCorpus,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    resume: bool = False,
    placement: Placement | None = None,
    init_from: tuple[Any, int] | None = None,
) -> Iterator[Report]:
    """Train `model_config` on `corpus` into `run`, or continue the run's latest checkpoint.

    `init_from` = (a parent run's parameters, its vocabulary size): a new run starts from those
    weights (grown to this vocabulary, see charrnn.transfer) with a fresh optimizer.
    The run is locked for the duration, so two processes never write the same checkpoints. Training
    is data-parallel over `placement` (default: every local device). Over several hosts every
    process runs `fit` alike; process 0 alone holds the lock and writes the metrics.
    """
    placement = placement or make_placement()
    placement.check_batch_size(train_config.batch_size)
    with run.lock() if jax.process_index() == 0 else contextlib.nullcontext():
        yield from _fit(
            run, corpus, model_config, train_config, resume=resume, placement=placement, init_from=init_from
        )


def _fit(run, corpus, model_config, train_config, *, resume, placement, init_from=None):
    tc = train_config
    batcher = StreamBatcher(corpus.train, tc.batch_size, tc.seq_len, rows=placement.local_rows(tc.batch_size))
    windows = batcher.windows_per_epoch
    total_steps = step_budget(tc, windows)
    # A large corpus's validation split (20 MB of a 200 MB text) would take minutes per pass; its
    # first million characters measure the loss to about 0.001 nats/char, and the same ones every time.
    val_windows = evaluation_windows(
        corpus.val[: tc.max_val_chars], tc.batch_size, tc.seq_len, placement.size, tc.val_burn_in
    )
    if len(corpus.val) > tc.max_val_chars:
        yield Notice(f"validation reads the first {tc.max_val_chars:,} of {len(corpus.val):,} validation characters")
    reset_id = boundary_id(corpus)  # documents: the state is reset where their boundary is read
    train_step = make_train_step(model_config, tc, placement, reset_id)
    eval_step = make_eval_step(model_config, reset_id)
    store = CheckpointStore(run.checkpoints_dir, keep=tc.keep)

    home = _identity(run.directory)  # the run directory itself, not whatever later bears its name
    had_config = run.config_path.exists()
    progress = {"step": 0, "elapsed": 0.0, "best_val_loss": math.inf, "best_step": 0, "bad_evals": 0}
    if resume and (store.steps() or store.unreadable):
        target = abstract_state(model_config, tc, placement)
        _, (state, saved), notices = store.first_readable(
            sorted(store.steps(), reverse=True),
            lambda step: store.restore_checked(step, target),
            quarantine=run.directory / "damaged-checkpoints" if jax.process_index() == 0 else None,
        )
        for notice in notices:
            yield Notice(notice)
        if notices:  # the manager's list of steps changed under it
            store.close()
            store = CheckpointStore(run.checkpoints_dir, keep=tc.keep)
        progress.update(saved)
    elif resume:
        raise RunError(f"{run.directory} has no checkpoint to resume from")
    else:
        state = placed_state(model_config, tc, placement)
        if init_from is not None:
            params = extend_params(init_from[0], state.params, init_from[1])
            if placement.size > 1:
                params = jax.device_put(params, placement.replicated)
            state = state.replace(
                params=params, opt_state=make_optimizer(tc).init(params), ema=fresh_average(params, tc)
            )

    step = int(progress["step"])
    started = time.monotonic() - float(progress["elapsed"])

    def elapsed() -> float:
        return time.monotonic() - started

    def fraction_done(seconds: float | None = None) -> float:
        parts = [step / total_steps] if total_steps else []
        if tc.time_seconds:
            parts.append((elapsed() if seconds is None else seconds) / tc.time_seconds)
        return max(parts) if parts else math.nan

    def validate_and_save(val: bool = True) -> EvalReport | None:
        nonlocal progress
        val_loss = evaluate(eval_step, state.weights, model_config, val_windows, placement) if val else NOT_EVALUATED
        if not math.isfinite(val_loss):
            raise TrainingDiverged(f"validation loss is {val_loss} at step {step}; try a lower --lr")
        if _identity(run.directory) != home or (had_config and not run.config_path.exists()):
            # moved or deleted under us: do not write into a recreated husk
            raise RunError(f"{run.directory} disappeared while training; stopped at step {step}")
        is_best = val and val_loss < progress["best_val_loss"]
        progress = {
            "step": step,
            "elapsed": elapsed(),
            "best_val_loss": val_loss if is_best else progress["best_val_loss"],
            "best_step": step if is_best else progress["best_step"],
            "bad_evals": 0 if is_best else progress["bad_evals"] + int(val),
        }
        store.save(step, state, progress, val_loss)
        if not val:
            return None
        epoch = step / windows
        _append_metrics(
            run,
            {
                "step": step,
                "epoch": round(epoch, 4),
                "train_loss": last_loss if math.isfinite(last_loss) else None,  # None before the first log
                "val_loss": val_loss,
                "val_bits_per_char": val_loss / math.log(2),
                "learning_rate": last_lr,
                "elapsed": round(elapsed(), 2),
                "time": time.time(),
                "chars_seen": step * tc.batch_size * tc.seq_len,  # training characters read so far
            },
        )
        return EvalReport(step, epoch, val_loss, progress["best_val_loss"], is_best, elapsed())

    last_loss, last_lr = math.nan, tc.learning_rate
    loss_sum, interval_start, interval_steps = jnp.zeros(()), time.monotonic(), 0
    last_saved = step if resume else -1
    reason = "interrupted"
    # Over several hosts the clock and the signals are each process's own: they are shared only
    # every log_every steps, by one tiny all-gather, so that every process stops at the same step
    # and computes the same learning rate (it follows the time budget) in between.
    hosts, clock, stop_anywhere = jax.process_count(), None, False
    with _stop_on_signals() as stop_requested, contextlib.closing(store):
        while True:
            if total_steps is not None and step >= total_steps:
                reason = "steps" if tc.steps and step >= tc.steps else "epochs"
                break
            if tc.patience and progress["bad_evals"] >= tc.patience:
                reason = "patience"
                break
            if hosts > 1 and step % tc.log_every == 0:
                clock, stop_anywhere = shared_max(elapsed(), float(stop_requested.is_set()))
            if tc.time_seconds and (elapsed() if clock is None else clock) >= tc.time_seconds:
                reason = "time"
                break
            if stop_requested.is_set() if hosts == 1 else stop_anywhere:
                break

            window = step % windows
            if window == 0 and step > 0:  # a new epoch: streams restart from their beginning, so does the state
                state = state.replace(carry=placed_carry(model_config, tc.batch_size, placement))
            batch = batcher.batch(window)
            done = fraction_done(clock)
            last_lr = learning_rate(tc, step, 0.0 if math.isnan(done) else done)
            inputs, targets = (placement.put_rows(rows, tc.batch_size) for rows in batch)
            state, metrics = train_step(state, inputs, targets, np.float32(last_lr))
            loss_sum = loss_sum + metrics["loss"]
            step += 1
            interval_steps += 1

            if step % tc.log_every == 0 or step == total_steps:
                last_loss = float(loss_sum) / interval_steps  # host sync, once per log_every steps
                if not math.isfinite(last_loss):
                    raise TrainingDiverged(
                        f"training loss became {last_loss} by step {step}; the last good checkpoint is kept; "
                        "try a lower --lr or --grad-clip"
                    )
                now = time.monotonic()
                rate = interval_steps * tc.batch_size * tc.seq_len / max(now - interval_start, 1e-9)
                yield StepReport(step, step / windows, last_loss, last_lr, rate, elapsed(), fraction_done())
                loss_sum, interval_start, interval_steps = jnp.zeros(()), now, 0

            if step % tc.eval_every == 0:
                report = validate_and_save()
                last_saved = step
                yield report
                interval_start = time.monotonic()  # the evaluation's time is not training throughput

        if step != last_saved:
            report = validate_and_save(val=reason != "interrupted")
            if report:
                yield report
    yield Finished(reason, step, progress["best_val_loss"], progress["best_step"], stop_requested.signal)


def shared_max(*values: float) -> tuple[float, ...]:
    """Each value's maximum over all processes (a tiny all-gather): one view every host acts on."""
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.array(values, np.float64))
    return tuple(float(value) for value in np.asarray(gathered).reshape(-1, len(values)).max(axis=0))


def _identity(directory) -> tuple[int, int] | None:
    try:
        status = os.stat(directory)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _append_metrics(run: Run, record: dict) -> None:
    if jax.process_index() != 0:  # one writer for the run's files
        return
    try:
        run.append_metrics(record)
    except OSError as error:
        raise CharrnnError(f"could not append to {run.metrics_path}: {error.strerror or error}") from error


class StopRequest(threading.Event):
    signal: int = 0


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[StopRequest]:
    """Turn the first SIGINT/SIGTERM into a request to stop after the current step (and checkpoint);
    a second one interrupts at once."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.signal = signum
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
