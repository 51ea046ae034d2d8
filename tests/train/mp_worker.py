"""One process of the two-process test: `python -m tests.train.mp_worker PID N PORT OUT.npz`."""
import sys

import jax

pid, n, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 8 // n)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n, process_id=pid)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from jaxaffect.train import mesh as mesh_lib  # noqa: E402
from tests.train.helpers import random_sources, tiny_config  # noqa: E402
from tests.train.test_parallel import _run_steps  # noqa: E402

assert jax.process_count() == n and jax.device_count() == 8
config = tiny_config()
state, losses, _ = _run_steps(config, mesh_lib.make_mesh(8, 1), random_sources(config))
flat = {jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_leaves_with_path(state["params"])}
np.savez(out, losses=np.asarray(losses), **flat)
multihost_utils.sync_global_devices("done")
jax.distributed.shutdown()
