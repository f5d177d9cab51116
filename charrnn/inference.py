"""Loading a trained run's parameters for sampling or scoring."""

import jax

from charrnn.checkpoint import CheckpointStore
from charrnn.config import ModelConfig
from charrnn.errors import RunError
from charrnn.runs import Run
from charrnn.train import create_state


def load_params(run: Run, which: str = "best") -> tuple[dict, ModelConfig]:
    """The parameters of the run's best (lowest validation loss) or latest checkpoint."""
    model_config, train_config, _ = run.read_config()
    if not run.checkpoints_dir.exists():
        raise RunError(f"{run.directory} has no checkpoint yet; let training reach its first evaluation")
    store = CheckpointStore(run.checkpoints_dir, keep=train_config.keep, create=False)
    try:
        step = store.best_step() if which == "best" else store.latest_step()
        if step is None:
            raise RunError(f"{run.directory} has no checkpoint yet; let training reach its first evaluation")
        abstract = jax.eval_shape(lambda: create_state(model_config, train_config))
        state, _ = store.restore(step, abstract)
    finally:
        store.close()
    return state.params, model_config
