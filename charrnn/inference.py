"""Loading a trained run's parameters for sampling, scoring and evaluation: only the parameters are
read (no optimizer state), and nothing on disk changes."""

from collections.abc import Callable
from typing import NamedTuple

import jax

from charrnn.checkpoint import CheckpointStore
from charrnn.config import ModelConfig, parse_checkpoint
from charrnn.errors import RunError
from charrnn.model import init_params
from charrnn.runs import LoadedRun, Run


class LoadedParams(NamedTuple):
    params: dict
    run: LoadedRun  # the run's files, checked (`Run.open`)
    step: int  # the checkpoint the parameters came from

    @property
    def model_config(self) -> ModelConfig:
        return self.run.model


def load_checkpoint(run: Run, which: str | int = "best", warn: Callable[[str], None] = lambda _: None) -> LoadedParams:
    """The parameters (only: no optimizer state is read) of the run's best (lowest validation loss)
    or latest checkpoint, or of the checkpoint at step `which`; the run's files are checked first.

    A damaged best or latest checkpoint is skipped with a warning, falling back to the newest one
    that loads; a step asked for by number must load itself.
    """
    which = parse_checkpoint(which)
    loaded = run.open()
    no_checkpoint = RunError(f"{run.directory} has no checkpoint yet; let training reach its first evaluation")
    if not run.checkpoints_dir.exists():
        raise no_checkpoint
    store = CheckpointStore(run.checkpoints_dir, keep=loaded.train.keep, create=False)
    try:
        steps, unreadable = store.steps(), store.unreadable
        if not steps and not unreadable:
            raise no_checkpoint
        abstract = jax.eval_shape(lambda: init_params(loaded.model, jax.random.key(0)))
        if isinstance(which, int):
            if which in unreadable:
                raise RunError(f"checkpoint {which} is damaged ({unreadable[which]}) in {run.directory}")
            if which not in steps:
                listed = ", ".join(str(s) for s in sorted(steps))
                raise RunError(f"{run.directory} has no checkpoint at step {which}; it has {listed}")
            candidates = [which]
        else:
            for step, error_name in sorted(unreadable.items(), reverse=True):
                warn(f"checkpoint {step} is damaged ({error_name}); falling back to another")
            preferred = store.best_step() if which == "best" else None
            preferred = max(steps, default=None) if preferred not in steps else preferred
            candidates = (
                [] if preferred is None else [preferred, *sorted((s for s in steps if s != preferred), reverse=True)]
            )
        for step in candidates:
            try:
                field = "ema" if loaded.train.ema else "params"  # the weights the run was validated with
                return LoadedParams(store.restore_params(step, abstract, field), loaded, step)
            except Exception as error:  # any failure to read means "damaged": try the previous one
                damage = f"checkpoint {step} is damaged ({type(error).__name__})"
                if isinstance(which, int):
                    raise RunError(f"{damage} in {run.directory}") from None
                warn(f"{damage}; falling back to another")
        count = len(steps) + len(unreadable)
        raise RunError(f"no checkpoint of {run.checkpoints_dir} could be read: all {count} are damaged")
    finally:
        store.close()


def load_model(
    run: Run, which: str | int = "best", warn: Callable[[str], None] = lambda _: None
) -> tuple[LoadedRun, dict]:
    """The run's files, checked, and the parameters of one of its checkpoints (see `load_checkpoint`)."""
    loaded = load_checkpoint(run, which, warn)
    return loaded.run, loaded.params


def load_params(
    run: Run, which: str | int = "best", warn: Callable[[str], None] = lambda _: None
) -> tuple[dict, ModelConfig]:
    """The parameters and model configuration of a checkpoint of `run` (see `load_checkpoint`)."""
    loaded = load_checkpoint(run, which, warn)
    return loaded.params, loaded.model_config
