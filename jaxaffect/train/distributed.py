"""Multi-host start-up: `jax.distributed.initialize` from flags, the environment or a cluster."""
from __future__ import annotations

import os

import jax

from jaxaffect.errors import UserError


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, *, force: bool = False) -> bool:
  """Initializes the distributed runtime when flags, `JAXAFFECT_DISTRIBUTED=1` or `force` ask for it.

  Explicit flags are needed on plain machines (CPU/GPU without a cluster manager); on Cloud TPU
  pods, SLURM and Open MPI a bare `initialize()` detects everything.
  """
  explicit = coordinator_address is not None or num_processes is not None
  if not (explicit or force or os.environ.get("JAXAFFECT_DISTRIBUTED") == "1"):
    return False
  if explicit and (coordinator_address is None or num_processes is None or process_id is None):
    raise UserError("multi-host: give all of --coordinator_address, --num_processes, --process_id")
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if explicit:
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  jax.distributed.initialize(**kwargs)
  return True
