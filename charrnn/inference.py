"""Loading a trained run's parameters for sampling or scoring."""

from collections.abc import Callable

import jax

from charrnn.checkpoint import CheckpointStore
from charrnn.config import ModelConfig
from charrnn.errors import RunError
from charrnn.runs import LoadedRun, Run
from charrnn.train import create_state


def load_params(
    run: Run, which: str = "best", warn: Callable[[str], None] = lambda _: None
) -> tuple[dict, ModelConfig]:
    """The parameters of the run's best (lowest validation loss) or latest checkpoint."""
    loaded, params = load_model(run, which, warn)
    return params, loaded.model


def load_model(run: Run, which: str = "best", warn: Callable[[str], None] = lambda _: None) -> tuple[LoadedRun, dict]:
    """The run's files, checked (`Run.open`), and the parameters of its best (lowest validation
    loss) or latest checkpoint. Reads only: nothing on disk changes.

    A damaged checkpoint is skipped with a warning, falling back to the newest one that loads.
    """
    loaded = run.open()
    no_checkpoint = RunError(f"{run.directory} has no checkpoint yet; let training reach its first evaluation")
    if not run.checkpoints_dir.exists():
        raise no_checkpoint
    store = CheckpointStore(run.checkpoints_dir, keep=loaded.train.keep, create=False)
    try:
        steps = store.steps()
        if not steps and not store.unreadable:
            raise no_checkpoint
        preferred = store.best_step() if which == "best" else None
        preferred = max(steps, default=None) if preferred is None else preferred
        abstract = jax.eval_shape(lambda: create_state(loaded.model, loaded.train))
        fallbacks = sorted((s for s in steps if s != preferred), reverse=True)  # newest readable next
        order = [preferred, *fallbacks] if preferred is not None else []
        state, _, notices = store.restore_first_good(abstract, order)
        for notice in notices:
            warn(notice)
    finally:
        store.close()
    return loaded, state.params
