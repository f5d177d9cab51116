"""Checkpoints of the complete training state, through orbax.

Each checkpoint holds the `TrainState` (params, optimizer state, step, recurrent carry, PRNG key)
and a small JSON `progress` record (elapsed time, best validation loss, ...), so that a resumed
run continues exactly. orbax writes each step to a temporary directory and renames it when
complete, so an interrupted save never replaces a good checkpoint. We keep the newest `keep`
checkpoints and, in addition, the one with the best validation loss.
"""

import ast
import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from charrnn.errors import CharrnnError, RunError

NOT_EVALUATED = 1e9  # val_loss recorded for a checkpoint saved without a validation pass (e.g. on Ctrl-C)
_SETTLE_SECONDS = 0.5  # after a failed write, before telling a deleted run from a full disk


class CheckpointWriteError(CharrnnError):
    """A checkpoint could not be written (disk full, permissions...); earlier ones are untouched.

    Orbax's background threads of the failed write can wait for ever for signals that never come
    (seen when the run directory is deleted under a save), so the process must not wait for them."""

    leaves_threads_behind = True


def _root_cause(error: BaseException) -> str:
    """The most telling message in an exception chain: an OSError's strerror if there is one
    (tensorstore reports it as text: ``... [os_error_code='28']``)."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        if code := re.search(r"os_error_code='(\d+)'", str(seen)):
            return os.strerror(int(code.group(1)))
        seen = seen.__cause__ or seen.__context__
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _val_loss(metrics: Any) -> float:
    """The validation loss orbax recorded with a checkpoint; a damaged record ranks last."""
    value = metrics.get("val_loss") if isinstance(metrics, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.inf


class _ReadableSteps:
    """orbax's standard step naming, minus the steps whose orbax metadata (`_CHECKPOINT_METADATA`)
    or recorded metrics cannot be read: one damaged step would otherwise make the CheckpointManager itself fail to open,
    hiding the intact ones. The steps left out are kept in `damaged` (step -> what failed)."""

    def __init__(self) -> None:
        self.inner = ocp.step.standard_name_format()
        self.damaged: dict[int, str] = {}

    def build_name(self, step: int) -> str:
        return self.inner.build_name(step)

    def find_step(self, base_path, step: int):
        return self.inner.find_step(base_path, step)

    def find_all(self, base_path):
        readable = []
        for metadata in self.inner.find_all(base_path):
            try:
                metadata.commit_timestamp  # noqa: B018 - reads and parses the step's metadata file
                metrics = Path(metadata.path) / "metrics" / "metrics"
                if metrics.exists():  # orbax reads it when opening, and fails on a damaged one
                    json.loads(metrics.read_bytes())
            except Exception as error:
                self.damaged[metadata.step] = type(error).__name__
                continue
            readable.append(metadata)
        return iter(readable)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


PROGRESS_TYPES = {"step": int, "elapsed": float, "best_val_loss": float, "best_step": int, "bad_evals": int}


def check_progress(step: int, progress: Any) -> dict:
    """The progress record saved with checkpoint `step`, checked: a damaged one (valid JSON of the
    wrong shape) must count as a damaged checkpoint, not resume a run at a wrong step."""
    if not isinstance(progress, dict) or not set(PROGRESS_TYPES) <= set(progress):
        raise ValueError("its progress record is damaged")
    for key, kind in PROGRESS_TYPES.items():
        value = progress[key]
        if isinstance(value, bool) or not isinstance(value, int | float if kind is float else int):
            raise ValueError(f"its progress record is damaged ({key})")
    if progress["step"] != step or not (math.isfinite(progress["elapsed"]) and progress["elapsed"] >= 0):
        raise ValueError("its progress record is damaged (step or elapsed time)")
    return progress


class CheckpointStore:
    """The ``checkpoints/`` directory of a run."""

    def __init__(self, directory: Path, *, keep: int = 3, create: bool = True) -> None:
        """With ``create=False`` the store only reads: nothing on disk changes (orbax neither
        creates the directory nor deletes leftover temporary checkpoints)."""
        self._steps = _ReadableSteps()
        policy = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(keep),
                checkpoint_managers.BestN(get_metric_fn=_val_loss, reverse=True, n=1),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            best_fn=_val_loss,  # also needed for best_step(); a bare max_to_keep would delete the newest
            best_mode="min",
            preservation_policy=policy,
            create=create,
            read_only=not create,
            cleanup_tmp_directories=create,
            step_name_format=self._steps,
        )
        self._writing: int | None = None  # the step being written in the background
        self._earlier: list[int] = []  # the steps committed before it (to tell a vanished directory)
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise RunError(f"{self.directory} is not a directory of checkpoints")
        try:
            self.manager = ocp.CheckpointManager(
                self.directory.absolute(), options=options, item_names=("state", "progress")
            )
        except OSError as error:
            raise RunError(f"cannot read the checkpoints in {self.directory}: {_root_cause(error)}") from error
        self._earlier = self.steps()

    @property
    def unreadable(self) -> dict[int, str]:
        """Steps left out because their orbax metadata is damaged (step -> error name)."""
        return dict(self._steps.damaged)

    def steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state: Any, progress: dict, val_loss: float) -> None:
        """Start writing checkpoint `step` in the background; `wait` or `close` makes it durable.

        Writing happens in a temporary directory renamed when complete, so a failure (raised here
        or by the next `save`/`wait`/`close`) leaves every earlier checkpoint as it was.
        """
        self.wait()  # a failure of the previous background save is reported as that step's
        self._writing = step
        with self._failures(f"could not write checkpoint {step}"):
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)),
                metrics={"val_loss": float(val_loss)},
                force=True,
            )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Load checkpoint `step` onto this process's devices, whatever device kind or count wrote it.

        Leaves of `abstract_state` that carry a sharding (`train.abstract_state`) are restored with
        it, split over today's devices; the others land on the default device."""
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(
                leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None) or device
            ),
            abstract_state,
        )
        if "ema" not in self.saved_fields(step):
            return self._restore_from_before_the_average(step, target)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target), progress=ocp.args.JsonRestore()),
        )
        return restored.state, dict(restored.progress)

    def saved_fields(self, step: int) -> set[str]:
        """The fields of the training state saved at `step`, as orbax's own record of the saved tree
        lists them: the layout a checkpoint was written in decides how it is read (one written before
        the weights' moving average existed has no ``ema``)."""
        record = json.loads((self.directory / str(step) / "state" / "_METADATA").read_bytes())
        return {ast.literal_eval(key)[0] for key in record["tree_metadata"]}

    def _restore_from_before_the_average(self, step: int, target: Any) -> tuple[Any, dict]:
        """A checkpoint written before the weights' moving average existed has no `ema` entry: the
        other fields are restored by name (orbax partial restore) and the state rebuilt around them.
        A separate read-only manager does it, so that this one keeps saving as before."""
        fields = {field.name: getattr(target, field.name) for field in dataclasses.fields(target)}
        del fields["ema"]
        restore_args = jax.tree.map(lambda leaf: ocp.ArrayRestoreArgs(sharding=leaf.sharding), fields)
        reader = CheckpointStore(self.directory, create=False)
        try:
            restored = reader.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(item=fields, restore_args=restore_args, partial_restore=True),
                    progress=ocp.args.JsonRestore(),
                ),
            )
        finally:
            reader.close()
        return target.replace(**restored.state), dict(restored.progress)

    def restore_params(self, step: int, abstract_params: Any, field: str = "params") -> Any:
        """Only the parameters of checkpoint `step` (orbax partial restore of ``state.params``, or of
        ``state.ema``, the moving average): the optimizer moments, twice their size, are never read."""
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = {
            field: jax.tree.map(
                lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), abstract_params
            )
        }
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), target)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
            ),
        )
        return restored.state[field]

    def first_readable(
        self, steps: list[int], read: Callable[[int], Any], *, quarantine: Path | None = None
    ) -> tuple[int, Any, list[str]]:
        """The first of `steps`, in the order given, that `read(step)` reads: (that step, what was
        read, notices about the damaged checkpoints skipped: first those whose orbax metadata cannot
        be read, then those `read` failed on). The one fallback over damaged checkpoints, for resuming
        (the whole state) and for loading a model (its parameters).

        With `quarantine`, damaged checkpoints are moved there (not deleted: nothing is thrown away),
        so that training can write those steps again.
        """
        notices = []
        for step, error_name in sorted(self.unreadable.items(), reverse=True):
            notices.append(self._skip(step, error_name, quarantine))
        for step in steps:
            try:
                return step, read(step), notices
            except Exception as error:  # any failure to read means "damaged": try the previous one
                notices.append(self._skip(step, type(error).__name__, quarantine))
        count = len(steps) + len(self.unreadable)
        raise RunError(f"no checkpoint of {self.directory} could be read: all {count} are damaged")

    def restore_checked(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """`restore`, with the progress record checked (see `check_progress`)."""
        state, progress = self.restore(step, abstract_state)
        return state, check_progress(step, progress)

    def _skip(self, step: int, error_name: str, quarantine: Path | None) -> str:
        note = f"checkpoint {step} is damaged ({error_name}); falling back to another"
        if quarantine is not None:
            target = quarantine / f"{step}-{int(time.time())}"
            while target.exists():
                target = target.with_name(target.name + "x")
            try:
                quarantine.mkdir(parents=True, exist_ok=True)
                shutil.move(self.directory / str(step), target)
                note += f" (moved to {target})"
            except OSError as error:
                raise RunError(
                    f"could not move the damaged checkpoint {step} to {quarantine}: {_root_cause(error)}"
                ) from error
        return note

    def wait(self) -> None:
        with self._failures(f"could not write checkpoint {self._writing}"):
            self.manager.wait_until_finished()
        if self._writing is not None:
            self._earlier = [*self._earlier[-10:], self._writing]
        self._writing = None

    def close(self) -> None:
        self.wait()
        with self._failures("could not close the checkpoint manager"):
            self.manager.close()

    @contextlib.contextmanager
    def _failures(self, what: str):
        try:
            yield
        except CharrnnError:
            raise
        except Exception as error:
            earlier = [step for step in self._earlier if step != self._writing]
            time.sleep(_SETTLE_SECONDS)  # a deletion under way when the write failed: let it finish
            if earlier and not any((self.directory / str(step)).is_dir() for step in earlier):
                raise CheckpointWriteError(
                    f"{what}: the checkpoints in {self.directory} are gone (the run directory was moved or "
                    "deleted while training)"
                ) from error
            raise CheckpointWriteError(
                f"{what} in {self.directory}: {_root_cause(error)}; earlier checkpoints are intact"
            ) from error
