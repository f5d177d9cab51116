"""Loading a trained run's parameters for sampling or scoring."""

from collections.abc import Callable
from typing import NamedTuple

import jax

from charrnn.checkpoint import CheckpointStore
from charrnn.config import ModelConfig, parse_checkpoint
from charrnn.errors import RunError
from charrnn.model import init_params
from charrnn.runs import Run


class LoadedParams(NamedTuple):
    params: dict
    model_config: ModelConfig
    step: int  # the checkpoint the parameters came from


def load_checkpoint(run: Run, which: str | int = "best", warn: Callable[[str], None] = lambda _: None) -> LoadedParams:
    """The parameters (only: no optimizer state is read) of the run's best (lowest validation loss)
    or latest checkpoint, or of the checkpoint at step `which`.

    A damaged best or latest checkpoint is skipped with a warning, falling back to the newest one
    that loads; a step asked for by number must load itself.
    """
    which = parse_checkpoint(which)
    model_config, train_config, _ = run.read_config()
    no_checkpoint = RunError(f"{run.directory} has no checkpoint yet; let training reach its first evaluation")
    if not run.checkpoints_dir.exists():
        raise no_checkpoint
    store = CheckpointStore(run.checkpoints_dir, keep=train_config.keep, create=False)
    try:
        steps = store.steps()
        if not steps:
            raise no_checkpoint
        abstract = jax.eval_shape(lambda: init_params(model_config, jax.random.key(0)))
        if isinstance(which, int):
            if which not in steps:
                listed = ", ".join(str(s) for s in sorted(steps))
                raise RunError(f"{run.directory} has no checkpoint at step {which}; it has {listed}")
            candidates = [which]
        else:
            preferred = store.best_step() if which == "best" else None
            preferred = max(steps) if preferred is None else preferred
            candidates = [preferred, *sorted((s for s in steps if s != preferred), reverse=True)]
        for step in candidates:
            try:
                return LoadedParams(store.restore_params(step, abstract), model_config, step)
            except Exception as error:  # any failure to read means "damaged": try the previous one
                damage = f"checkpoint {step} is damaged ({type(error).__name__})"
                if len(candidates) == 1:
                    raise RunError(f"{damage} in {run.directory}") from None
                warn(f"{damage}; falling back to another")
        raise RunError(f"no checkpoint of {run.checkpoints_dir} could be read: all {len(steps)} are damaged")
    finally:
        store.close()


def load_params(
    run: Run, which: str | int = "best", warn: Callable[[str], None] = lambda _: None
) -> tuple[dict, ModelConfig]:
    """The parameters and model configuration of a checkpoint of `run` (see `load_checkpoint`)."""
    loaded = load_checkpoint(run, which, warn)
    return loaded.params, loaded.model_config
