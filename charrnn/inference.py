"""Loading a trained run's parameters for sampling or scoring."""

from collections.abc import Callable

import jax

from charrnn.checkpoint import CheckpointStore
from charrnn.config import ModelConfig
from charrnn.errors import RunError
from charrnn.runs import Run
from charrnn.train import create_state


def load_params(
    run: Run, which: str = "best", warn: Callable[[str], None] = lambda _: None
) -> tuple[dict, ModelConfig]:
    """The parameters of the run's best (lowest validation loss) or latest checkpoint.

    A damaged checkpoint is skipped with a warning, falling back to the newest one that loads.
    """
    model_config, train_config, _ = run.read_config()
    no_checkpoint = RunError(f"{run.directory} has no checkpoint yet; let training reach its first evaluation")
    if not run.checkpoints_dir.exists():
        raise no_checkpoint
    store = CheckpointStore(run.checkpoints_dir, keep=train_config.keep, create=False)
    try:
        steps = store.steps()
        if not steps:
            raise no_checkpoint
        preferred = store.best_step() if which == "best" else None
        preferred = max(steps) if preferred is None else preferred
        abstract = jax.eval_shape(lambda: create_state(model_config, train_config))
        fallbacks = sorted((s for s in steps if s != preferred), reverse=True)  # newest readable next
        state, _, notices = store.restore_first_good(abstract, [preferred, *fallbacks])
        for notice in notices:
            warn(notice)
    finally:
        store.close()
    return state.params, model_config
