"""Checkpoints of the complete training state, through orbax.

Each checkpoint holds the `TrainState` (params, optimizer state, step, recurrent carry, PRNG key)
and a small JSON `progress` record (elapsed time, best validation loss, ...), so that a resumed
run continues exactly. orbax writes each step to a temporary directory and renames it when
complete, so an interrupted save never replaces a good checkpoint. We keep the newest `keep`
checkpoints and, in addition, the one with the best validation loss.
"""

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

NOT_EVALUATED = 1e9  # val_loss recorded for a checkpoint saved without a validation pass (e.g. on Ctrl-C)


def _val_loss(metrics: dict) -> float:
    return metrics["val_loss"]


class CheckpointStore:
    """The ``checkpoints/`` directory of a run."""

    def __init__(self, directory: Path, *, keep: int = 3, create: bool = True) -> None:
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
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(), options=options, item_names=("state", "progress")
        )

    def steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state: Any, progress: dict, val_loss: float) -> None:
        """Start writing checkpoint `step` in the background; `wait` or `close` makes it durable."""
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)),
            metrics={"val_loss": float(val_loss)},
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Load checkpoint `step` onto this process's devices, whatever device kind wrote it."""
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), abstract_state
        )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target), progress=ocp.args.JsonRestore()),
        )
        return restored.state, dict(restored.progress)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
