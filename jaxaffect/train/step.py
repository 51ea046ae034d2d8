"""Train and eval steps, written in the global view and compiled with `jax.jit` + `NamedSharding`.

BatchNorm statistics are computed over the global batch (the batch axis is sharded; XLA inserts the
cross-device reductions), so a data-parallel or FSDP step equals the single-device step.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxaffect.train import mesh as mesh_lib


def init_state(task, tx, rng, batch) -> dict[str, Any]:
  params, extra = task.init(rng, batch)
  return {"step": jnp.zeros((), jnp.int32), "params": params, "extra": extra,
          "opt_state": tx.init(params)}


def abstract_state(task, tx, rng, batch):
  return jax.eval_shape(lambda r, b: init_state(task, tx, r, b), rng, batch)


def make_init_fn(task, tx, mesh: Mesh, shardings, batch_shapes, partitionable_rng: bool = False):
  """Parameters are born sharded: `jit(init, out_shardings=...)` (no host round-trip).

  With `partitionable_rng=False` the initializers use the classic threefry lowering: the values are
  the same on every mesh, and XLA:CPU compiles it ~5x faster than the partitionable one (40 s → 8 s
  for Former-DFER's 169 arrays here); models too large to initialize replicated per device should
  pass True (each device then generates only its shard).
  """
  def init(rng):
    dummy = {k: jnp.zeros(s.shape, s.dtype) for k, s in batch_shapes.items()}
    return init_state(task, tx, rng, dummy)
  jitted = jax.jit(init, out_shardings=shardings)

  def call(rng):
    with jax.threefry_partitionable(partitionable_rng):
      return jitted(rng)
  return call


def make_train_step(task, tx, mesh: Mesh, state_shardings):
  metrics_cls = task.train_metrics
  repl = mesh_lib.replicated(mesh)
  bsh = mesh_lib.batch_sharding(mesh)

  def step(state, batch, base_rng):
    rng = jax.random.fold_in(base_rng, state["step"])   # per-step rng, independent of the mesh

    def loss_fn(params):
      return task.loss(params, state["extra"], batch, rng)

    (loss, (outputs, new_extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    after_update = getattr(task, "after_update", None)   # optional (train/hooks.py): EMA, queues
    if after_update is not None:
      new_extra = after_update(new_extra, params, outputs, batch, state["step"])
    new_state = {"step": state["step"] + 1, "params": params, "extra": new_extra,
                 "opt_state": opt_state}
    metrics = metrics_cls.single_from_model_output(**task.metric_inputs(outputs, batch))
    return new_state, metrics

  return jax.jit(step, in_shardings=(state_shardings, bsh, repl),
                 out_shardings=(state_shardings, repl), donate_argnums=(0,))


def make_eval_step(task, mesh: Mesh, state_shardings):
  metrics_cls = task.eval_metrics
  repl = mesh_lib.replicated(mesh)
  bsh = mesh_lib.batch_sharding(mesh)

  def step(state, batch):
    outputs = task.predict(state["params"], state["extra"], batch)
    metrics = metrics_cls.single_from_model_output(**task.metric_inputs(outputs, batch))
    # Outputs leave sharded over the batch; a batch-level scalar (e.g. a CCC loss) is repeated
    # per example so that every leaf has the batch axis.
    b = batch["mask"].shape[0]
    outputs = jax.tree.map(lambda v: v if jnp.ndim(v) else jnp.broadcast_to(v, (b,)), outputs)
    return metrics, outputs

  return jax.jit(step, in_shardings=(state_shardings, bsh), out_shardings=(repl, bsh))
