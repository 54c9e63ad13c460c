"""Joining the processes of a multi-host run: `jax.distributed.initialize()` when the config asks.

  * `--config.distributed.initialize=True`: JAX detects the cluster itself (Cloud TPU slices, SLURM,
    Open MPI, Kubernetes); run the same command on every host.
  * `--config.distributed.coordinator_address=host:port` with `num_processes` and `process_id`: an
    explicit setup, e.g. several processes on one machine (CPU collectives go over gloo).
Otherwise the run is one process over the local devices (one host, any number of GPUs or TPU chips).
Must run before anything touches a device; a second call (search chained into re-training) is a no-op.
"""

from __future__ import annotations

import jax
import ml_collections

from s3delta_jax.errors import UserError


def start_processes(distributed_config: ml_collections.ConfigDict) -> None:
    """Initialises jax.distributed as `config.distributed` says (see the module docstring)."""
    address = distributed_config.coordinator_address
    if jax.distributed.is_initialized() or not (distributed_config.initialize or address):
        return
    if not address:
        jax.distributed.initialize()
        return
    count, index = distributed_config.num_processes, distributed_config.process_id
    if count < 1 or not 0 <= index < count:
        raise UserError(
            f"distributed.coordinator_address={address!r} needs distributed.num_processes >= 1 and "
            f"0 <= distributed.process_id < num_processes, got {count} and {index}")
    jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=index)
