"""Where training's arrays live: one device mesh and the shardings of the state and of a batch.

Data parallelism, JAX's way: a 1-D mesh over the devices (axis ``data``), the batch axis of the
tokens and of the recurrent carry split across it, parameters and optimizer state replicated. The
jitted step is the ordinary single-device step; XLA inserts the gradient all-reduce. Over several
hosts (`jax.distributed`) the mesh spans every process's devices and each process feeds only its
own rows of the global batch.
"""

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from charrnn.errors import CharrnnError, ConfigError, UsageError

AXIS = "data"
HEARTBEAT_TIMEOUT = 10  # seconds without news from a process before the others are ended (JAX: 100)


@dataclass(frozen=True)
class Placement:
    """The mesh, and the shardings every piece of training takes its arrays' placement from."""

    mesh: Mesh
    replicated: NamedSharding  # params, optimizer state, step, key, scalars
    batch: NamedSharding  # [B, T] tokens: rows split over the devices
    carry: NamedSharding  # [B, H] recurrent state: rows split like the batch

    @property
    def size(self) -> int:
        """Devices in the mesh, over all processes."""
        return self.mesh.size

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.size:
            raise UsageError(
                f"{{batch_size}} is not divisible by the {self.size} devices training uses; "
                f"use a multiple of {self.size} or fewer devices with {{devices}}",
                settings={"batch_size": batch_size, "devices": None},
            )

    def state_shardings(self, state: Any) -> Any:
        """A sharding per leaf of a `TrainState` (or its abstract shape): everything replicated but the carry."""
        return state.replace(
            step=self.replicated,
            params=jax.tree.map(lambda _: self.replicated, state.params),
            opt_state=jax.tree.map(lambda _: self.replicated, state.opt_state),
            carry=jax.tree.map(lambda _: self.carry, state.carry),
            key=self.replicated,
            ema=jax.tree.map(lambda _: self.replicated, state.ema),
        )

    def local_rows(self, batch_size: int) -> slice:
        """The rows of a global [batch_size, ...] batch that this process's devices hold."""
        indices = self.batch.addressable_devices_indices_map((batch_size, 1)).values()
        starts = [index[0].start or 0 for index in indices]
        stops = [batch_size if index[0].stop is None else index[0].stop for index in indices]
        return slice(min(starts), max(stops))

    def put_rows(self, local: np.ndarray, batch_size: int) -> Any:
        """This process's rows of a global batch -> the global array (numpy as is on one device:
        the jitted step then compiles to exactly the single-device program)."""
        if self.size == 1:
            return local
        return jax.make_array_from_process_local_data(self.batch, local, (batch_size, *local.shape[1:]))

    def put_global(self, array: np.ndarray) -> Any:
        """A batch every process holds whole (evaluation windows) -> the global array."""
        return self.put_rows(array[self.local_rows(array.shape[0])], array.shape[0])


def make_placement(devices: int | None = None) -> Placement:
    """Data parallelism over the first `devices` devices of every process (default: all of them)."""
    local = jax.local_devices()
    if devices is not None and not 1 <= devices <= len(local):
        raise ConfigError("devices", f"must be between 1 and {len(local)} (the devices of this machine), not {devices}")
    count = devices or len(local)
    chosen = [d for d in jax.devices() if d in set(jax.local_devices(process_index=d.process_index)[:count])]
    chosen.sort(key=lambda d: (d.process_index, d.id))  # each process's rows contiguous
    mesh = Mesh(np.array(chosen), (AXIS,), axis_types=(AxisType.Auto,))
    return Placement(
        mesh=mesh,
        replicated=NamedSharding(mesh, P()),
        batch=NamedSharding(mesh, P(AXIS)),
        carry=NamedSharding(mesh, P(AXIS)),
    )


def start_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Join a run over several hosts (`jax.distributed.initialize`), before any JAX computation.

    Every process runs the same command with the same `coordinator` (HOST:PORT of process 0) and
    `num_processes`, and its own `process_id`; on Slurm, Open MPI and TPU pods JAX can detect the
    missing ones itself.
    """
    if num_processes is not None and num_processes < 1:
        raise ConfigError("num_processes", f"must be positive, not {num_processes}")
    if process_id is not None and not 0 <= process_id < (num_processes or 1 << 30):
        raise ConfigError("process_id", f"must be between 0 and {(num_processes or 1) - 1}, not {process_id}")
    if coordinator is not None and (
        coordinator.rpartition(":")[0] == "" or not coordinator.rpartition(":")[2].isdigit()
    ):
        raise ConfigError("coordinator", f"must be HOST:PORT, not {coordinator!r}")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT,
        )
    except (RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CharrnnError(f"could not join the multi-host run at {coordinator}: {first}") from error
