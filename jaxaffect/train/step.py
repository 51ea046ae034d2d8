"""Train and eval steps, written in the global view and compiled with `jax.jit` + `NamedSharding`.

BatchNorm statistics are computed over the global batch (the batch axis is sharded; XLA inserts the
cross-device reductions), so a data-parallel or FSDP step equals the single-device step.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxaffect.nn import vit as vit_lib
from jaxaffect.train import mesh as mesh_lib

FSDP_AXIS = mesh_lib.MESH_AXES[1]   # "fsdp"


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


def _without_fsdp(spec: P) -> P:
  """`spec` with the `fsdp` mesh axis removed from every dimension (the gathered layout)."""
  def drop(entry):
    if entry == FSDP_AXIS:
      return None
    if isinstance(entry, tuple):
      kept = tuple(a for a in entry if a != FSDP_AXIS)
      return kept if len(kept) > 1 else (kept[0] if kept else None)
    return entry
  return P(*(drop(e) for e in spec))


def fsdp_gather(params, shardings, skip=lambda path: False):
  """FSDP / ZeRO-3: the parameters a step computes with, gathered over the `fsdp` axis.

  Forward: every leaf sharded over `fsdp` is constrained to its layout without that axis (an
  all-gather of the weights, per parameter); backward: its gradient is constrained back to the
  stored sharding, so that the per-device partial gradients (the batch is split over data and
  fsdp) are reduce-scattered over `fsdp` (and all-reduced over `data`) instead of all-reduced to a
  full copy. (XLA:CPU lowers that reshard as an all-reduce whose result is dynamic-sliced; the GPU
  and TPU pipelines turn the pair into a reduce-scatter: bench/plan.py counts it as one.) A plain `with_sharding_constraint` would constrain the gradient to the gathered
  layout too (its transpose is itself), hence the custom VJP. Leaves not sharded over `fsdp`, or
  with `skip(path)` true (stacked scanned blocks, gathered per layer by the model), pass through.
  Without this, XLA's SPMD partitioner follows the weights' sharding into the matmuls and moves
  activations instead (all-gathers and all-to-alls of (global batch, tokens, width) tensors,
  all-reduced weight gradients): measured in bench/plan.py.
  """
  def one(path, x, sh):
    if (not isinstance(sh, NamedSharding) or FSDP_AXIS not in _axes(sh.spec)
        or skip(path)):
      return x
    gathered = NamedSharding(sh.mesh, _without_fsdp(sh.spec))

    @jax.custom_vjp
    def gather(v):
      return jax.lax.with_sharding_constraint(v, gathered)

    def fwd(v):
      return gather(v), None

    def bwd(_, ct):
      return (jax.lax.with_sharding_constraint(ct, sh),)
    gather.defvjp(fwd, bwd)
    return gather(x)
  return jax.tree_util.tree_map_with_path(one, params, shardings)


def _gathered_per_layer(path) -> bool:
  """Stacked (depth, ...) leaves of scanned ViT blocks (`.../blocks/...`, `.../decoder_blocks/...`):
  the model gathers them one layer at a time inside its scan body (`nn.vit.scan_body`); gathering
  the stack here would hold every layer's weights (and gradients) on each device at once."""
  return any(vit_lib.is_layer_gathered(str(getattr(k, "key", ""))) for k in path)


def _axes(spec: P) -> set:
  out = set()
  for e in spec:
    out.update(e if isinstance(e, tuple) else (e,))
  return out


def make_train_step(task, tx, mesh: Mesh, state_shardings):
  metrics_cls = task.train_metrics
  repl = mesh_lib.replicated(mesh)
  bsh = mesh_lib.batch_sharding(mesh)

  def step(state, batch, base_rng):
    rng = jax.random.fold_in(base_rng, state["step"])   # per-step rng, independent of the mesh

    def loss_fn(params):
      # FSDP: compute with gathered weights (see fsdp_gather); a no-op without an `fsdp` axis
      params = fsdp_gather(params, state_shardings["params"], skip=_gathered_per_layer)
      return task.loss(params, state["extra"], batch, rng)

    (loss, (outputs, new_extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    # gradients leave the backward pass in the parameters' (FSDP) sharding, stacked blocks too
    grads = jax.lax.with_sharding_constraint(grads, state_shardings["params"])
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
    params = fsdp_gather(state["params"], state_shardings["params"], skip=_gathered_per_layer)
    outputs = task.predict(params, state["extra"], batch)
    metrics = metrics_cls.single_from_model_output(**task.metric_inputs(outputs, batch))
    # Outputs leave sharded over the batch; a batch-level scalar (e.g. a CCC loss) is repeated
    # per example so that every leaf has the batch axis.
    b = batch["mask"].shape[0]
    outputs = jax.tree.map(lambda v: v if jnp.ndim(v) else jnp.broadcast_to(v, (b,)), outputs)
    return metrics, outputs

  return jax.jit(step, in_shardings=(state_shardings, bsh), out_shardings=(repl, bsh))
