"""The training loop: budgets, evaluation, checkpoints and resume, as a generator of reports.

`fit` never prints. It yields `StepReport`s and `EvalReport`s and ends with a `Finished`; the CLI
decides how they look. The loop reads top to bottom: stop? -> the next windows (a few steps' worth
per call on one device) -> reset the state at an epoch start -> step -> every `log_every` steps
fetch the loss -> every `eval_every` steps validate and checkpoint.

Longer than most modules, for a reason: `fit` and the three small pieces it is made of
(`_Budget`, `_Interval`, `_Checkpoints`), with the reports it yields.
"""

import contextlib
import functools
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

from charrnn.batching import StreamBatcher
from charrnn.checkpoint import NOT_EVALUATED, CheckpointStore
from charrnn.config import ModelConfig, TrainConfig
from charrnn.corpus import PreparedCorpus, boundary_id
from charrnn.errors import CharrnnError, RunError
from charrnn.kinds import kind_of
from charrnn.placement import Placement, make_placement
from charrnn.runs import Run
from charrnn.step import (
    STEPS_PER_CALL,
    abstract_state,
    evaluate,
    fresh_average,
    learning_rate,
    make_eval_step,
    make_optimizer,
    make_train_step,
    make_train_steps,
    placed_carry,
    placed_state,
    restarted,
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
    evals_since_best: int = 0  # validations after the best that did not beat it

    @property
    def peaked_early(self) -> bool:
        """Whether a run that used its whole budget was best before its last quarter and not again
        after: it memorised the training text for the rest, and stronger regularisation (or a
        shorter budget) would have used the time better. The best checkpoint is kept either way."""
        used_budget = self.reason in ("steps", "epochs", "time")
        return used_budget and self.best_step < 0.75 * self.step and self.evals_since_best >= EVALS_TO_CALL_A_PEAK


EVALS_TO_CALL_A_PEAK = 2  # one worse validation may be noise; two in a row past the best, a trend


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
    """The loop: budget -> next window -> step -> report -> validate and save, until the budget says stop."""
    tc = train_config
    kind = kind_of(model_config)
    rows = placement.local_rows(tc.batch_size)
    batcher = StreamBatcher(
        corpus.train, tc.batch_size, tc.seq_len, rows=rows, extra=kind.extra, restart_every=tc.restart_every
    )
    windows = batcher.windows_per_epoch
    if len(corpus.val) > tc.max_val_chars:
        yield Notice(f"validation reads the first {tc.max_val_chars:,} of {len(corpus.val):,} validation characters")
    reset_id = boundary_id(corpus)  # documents: the state is reset where their boundary is read
    per_call = steps_per_call(tc, placement)
    train_step = make_train_step(model_config, tc, placement, reset_id)
    restart = jax.jit(functools.partial(restarted, model_config))
    train_steps = make_train_steps(model_config, tc, reset_id) if per_call > 1 else None
    checkpoints = _Checkpoints(run, corpus, model_config, tc, placement, windows, reset_id)
    state, progress, notices = checkpoints.start(resume, init_from)
    for notice in notices:
        yield Notice(notice)
    step = int(progress["step"])
    budget = _Budget(tc, windows, float(progress["elapsed"]))
    interval = _Interval(tc.batch_size * tc.seq_len)
    last_saved = step if resume else -1
    with _stop_on_signals() as stop_requested, contextlib.closing(checkpoints.store):
        while not (reason := budget.reason_to_stop(step, progress["bad_evals"], stop_requested)):
            # per_call steps in one program where they start aligned and fit the budget, else one step
            aligned = step % per_call == 0 and (budget.total_steps is None or step + per_call <= budget.total_steps)
            steps = range(step, step + (per_call if aligned else 1))
            # streams whose state starts from zero: all at an epoch's start (they restart from their
            # beginning), a few at a time within a long one (batching.StreamBatcher.restarts)
            fresh = [batcher.restarts(s % windows) & (s > 0) for s in steps]
            rates = [learning_rate(tc, s, _done(budget, s)) for s in steps]
            parts = [kind.split(batcher.chunk(s % windows)) for s in steps]
            if len(steps) == 1:
                if fresh[0].all():
                    state = state.replace(carry=placed_carry(model_config, tc.batch_size, placement))
                elif fresh[0].any():
                    state = state.replace(carry=restart(state.carry, fresh[0]))
                arrays = (placement.put_rows(part, tc.batch_size) for part in parts[0])
                state, metrics = train_step(state, *arrays, np.float32(rates[0]))
            else:
                arrays = (np.stack(part) for part in zip(*parts, strict=True))
                state, metrics = train_steps(state, *arrays, np.float32(rates), np.array(fresh))
            step = steps[-1] + 1
            interval.add(metrics["loss"], rates[-1])
            if step % tc.log_every == 0 or step == budget.total_steps:
                loss, rate = interval.close(step)  # the host waits for the device here, once per log_every steps
                yield StepReport(
                    step, step / windows, loss, rates[-1], rate, budget.elapsed(), budget.fraction_done(step)
                )
            if step % tc.eval_every == 0:
                progress, report = checkpoints.save(state, step, progress, budget.elapsed(), interval)
                last_saved = step
                yield report
                interval.started = time.monotonic()  # the evaluation's time is not training throughput
        if step != last_saved:
            progress, report = checkpoints.save(
                state, step, progress, budget.elapsed(), interval, validate=reason != "interrupted"
            )
            if report:
                yield report
    yield Finished(
        reason, step, progress["best_val_loss"], progress["best_step"], stop_requested.signal, progress["bad_evals"]
    )


def steps_per_call(tc: TrainConfig, placement: Placement) -> int:
    """How many steps `fit` runs per call (`make_train_steps`): up to STEPS_PER_CALL, a divisor of
    both `log_every` and `eval_every`, so that reports, validations and checkpoints fall between
    calls at the steps they always did; one on several devices (the windows are sharded one step at
    a time)."""
    if placement.size > 1 or jax.process_count() > 1:
        return 1
    cadence = math.gcd(tc.log_every, tc.eval_every)
    return max(count for count in range(1, STEPS_PER_CALL + 1) if cadence % count == 0)


def _done(budget: "_Budget", step: int) -> float:
    done = budget.fraction_done(step, budget.clock)
    return 0.0 if math.isnan(done) else done


class _Budget:
    """When training stops: at the step or epoch budget, the time budget, `patience` evaluations
    without a better loss, or a signal. Over several hosts the clock and the signals are each
    process's own: every `log_every` steps one tiny all-gather shares them (`shared_max`), so that
    every process stops at the same step and computes the same learning rate in between."""

    def __init__(self, tc: TrainConfig, windows: int, elapsed_before: float) -> None:
        self.tc, self.windows = tc, windows
        self.total_steps = step_budget(tc, windows)
        self.started = time.monotonic() - elapsed_before
        self.hosts = jax.process_count()
        self.clock: float | None = None  # the slowest host's elapsed time, when there are several
        self.stop_anywhere = False

    def elapsed(self) -> float:
        """Seconds of training, across resumes."""
        return time.monotonic() - self.started

    def fraction_done(self, step: int, seconds: float | None = None) -> float:
        parts = [step / self.total_steps] if self.total_steps else []
        if self.tc.time_seconds:
            parts.append((self.elapsed() if seconds is None else seconds) / self.tc.time_seconds)
        return max(parts) if parts else math.nan

    def reason_to_stop(self, step: int, bad_evals: int, stop_requested: "StopRequest") -> str | None:
        tc = self.tc
        if self.total_steps is not None and step >= self.total_steps:
            return "steps" if tc.steps and step >= tc.steps else "epochs"
        if tc.patience and bad_evals >= tc.patience:
            return "patience"
        if self.hosts > 1 and step % tc.log_every == 0:
            self.clock, self.stop_anywhere = shared_max(self.elapsed(), float(stop_requested.is_set()))
        if tc.time_seconds and (self.elapsed() if self.clock is None else self.clock) >= tc.time_seconds:
            return "time"
        if stop_requested.is_set() if self.hosts == 1 else self.stop_anywhere:
            return "interrupted"
        return None


class _Interval:
    """The training loss and speed since the last report: the loss is summed on the device and
    fetched once per report, so that no step waits for the host."""

    def __init__(self, chars_per_step: int) -> None:
        self.chars_per_step = chars_per_step
        self.last_loss, self.learning_rate = math.nan, None
        self.restart()

    def restart(self) -> None:
        self.loss_sum, self.steps, self.started = jnp.zeros(()), 0, time.monotonic()

    def add(self, loss: jax.Array, learning: float) -> None:
        """`loss`: one step's, or one per step of a call (an array); still on the device."""
        self.loss_sum, self.steps, self.learning_rate = self.loss_sum + loss.sum(), self.steps + loss.size, learning

    def close(self, step: int) -> tuple[float, float]:
        """(mean loss, characters per second) of the interval, which starts anew."""
        loss = float(self.loss_sum) / self.steps
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"training loss became {loss} by step {step}; the last good checkpoint is kept; "
                "try a lower {learning_rate} or {grad_clip}",
                settings=("learning_rate", "grad_clip"),
            )
        rate = self.steps * self.chars_per_step / max(time.monotonic() - self.started, 1e-9)
        self.last_loss = loss
        self.restart()
        return loss, rate


class _Checkpoints:
    """Where a run starts (fresh, from a parent's weights, or from its newest readable checkpoint),
    and each validation with the checkpoint and metrics record that follow it."""

    def __init__(self, run, corpus, model_config, tc, placement, windows: int, reset_id) -> None:
        self.run, self.model_config, self.tc, self.placement, self.windows = run, model_config, tc, placement, windows
        # A large corpus's validation split (20 MB of a 200 MB text) would take minutes per pass; its
        # first million characters measure the loss to about 0.001 nats/char, and the same ones every time.
        self.val_windows = kind_of(model_config).eval_windows(
            corpus.val[: tc.max_val_chars], tc.batch_size, tc.seq_len, placement.size, tc.val_burn_in
        )
        self.eval_step = make_eval_step(model_config, reset_id)
        self.store = CheckpointStore(run.checkpoints_dir, keep=tc.keep)
        self.home = _identity(run.directory)  # the run directory itself, not whatever later bears its name
        self.had_config = run.config_path.exists()

    def start(self, resume: bool, init_from) -> tuple[Any, dict, list[str]]:
        """(state, progress, notices about damaged checkpoints skipped)."""
        tc, store = self.tc, self.store
        progress = {"step": 0, "elapsed": 0.0, "best_val_loss": math.inf, "best_step": 0, "bad_evals": 0}
        if resume and (store.steps() or store.unreadable):
            target = abstract_state(self.model_config, tc, self.placement)
            _, (state, saved), notices = store.first_readable(
                sorted(store.steps(), reverse=True),
                lambda step: store.restore_checked(step, target),
                quarantine=self.run.directory / "damaged-checkpoints" if jax.process_index() == 0 else None,
            )
            if notices:  # the manager's list of steps changed under it
                store.close()
                self.store = CheckpointStore(self.run.checkpoints_dir, keep=tc.keep)
            return state, progress | saved, notices
        if resume:
            raise RunError(f"{self.run.directory} has no checkpoint to resume from")
        state = placed_state(self.model_config, tc, self.placement)
        if init_from is not None:
            params = extend_params(init_from[0], state.params, init_from[1])
            if self.placement.size > 1:
                params = jax.device_put(params, self.placement.replicated)
            state = state.replace(
                params=params, opt_state=make_optimizer(tc).init(params), ema=fresh_average(params, tc)
            )
        return state, progress, []

    def save(
        self, state, step: int, progress: dict, elapsed: float, interval: _Interval, validate: bool = True
    ) -> tuple[dict, EvalReport | None]:
        """Validate (unless told not to: an interrupted run saves without), checkpoint, and record
        the metrics; the new progress record and the report."""
        tc = self.tc
        val_loss = (
            evaluate(self.eval_step, state.weights, self.model_config, self.val_windows, self.placement)
            if validate
            else NOT_EVALUATED
        )
        if not math.isfinite(val_loss):
            raise TrainingDiverged(
                f"validation loss is {val_loss} at step {step}; try a lower {{learning_rate}}",
                settings=("learning_rate",),
            )
        if _identity(self.run.directory) != self.home or (self.had_config and not self.run.config_path.exists()):
            # moved or deleted under us: do not write into a recreated husk
            raise RunError(f"{self.run.directory} disappeared while training; stopped at step {step}")
        is_best = validate and val_loss < progress["best_val_loss"]
        progress = {
            "step": step,
            "elapsed": elapsed,
            "best_val_loss": val_loss if is_best else progress["best_val_loss"],
            "best_step": step if is_best else progress["best_step"],
            "bad_evals": 0 if is_best else progress["bad_evals"] + int(validate),
        }
        self.store.save(step, state, progress, val_loss)
        if not validate:
            return progress, None
        epoch = step / self.windows
        last_loss = interval.last_loss
        _append_metrics(
            self.run,
            {
                "step": step,
                "epoch": round(epoch, 4),
                "train_loss": last_loss if math.isfinite(last_loss) else None,  # None before the first report
                "val_loss": val_loss,
                "val_bits_per_char": val_loss / math.log(2),
                "learning_rate": interval.learning_rate if interval.learning_rate is not None else tc.learning_rate,
                "elapsed": round(elapsed, 2),
                "time": time.time(),
                "chars_seen": step * tc.batch_size * tc.seq_len,  # training characters read so far
            },
        )
        return progress, EvalReport(step, epoch, val_loss, progress["best_val_loss"], is_best, elapsed)


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
