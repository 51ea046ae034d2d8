"""Training state beyond parameters, updated in the same jitted step (issue 11, item 3).

A task may define `after_update(extra, params, outputs, batch, step) -> extra`: the train step
calls it after the optimizer update with the new parameters, so a momentum (EMA) encoder or a
feature queue lives in the task's `extra` collections, sharded, checkpointed and restored like
BatchNorm statistics, and never exported (exports take `params` and `batch_stats`; a mapping that
wants more asks for it). Building blocks:

  ema_update(ema, params, momentum)     MoCo / BYOL / TDLS momentum encoder:
                                        ema ← m·ema + (1 − m)·params, leaf by leaf;
  queue_init(size, dim)                 a ring buffer of `size` keys with their labels;
  queue_push(queue, keys, labels)       the newest keys overwrite the oldest (MoCo's dequeue and
                                        enqueue); `count` says how many rows are filled;
  fields_push(queue, rows)              the same for a queue of named fields (keys, labels, ids);
  queue_push_sharded(queue, rows)       `fields_push` of a batch sharded over the mesh, written
                                        per device in `jax.shard_map` (all-gather of the rows).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxaffect.errors import UserError


def ema_update(ema: Any, params: Any, momentum: float | jax.Array) -> Any:
  m = jnp.asarray(momentum, jnp.float32)
  return jax.tree.map(lambda e, p: (m * e + (1.0 - m) * p.astype(e.dtype)).astype(e.dtype),
                      ema, params)


def queue_init(size: int, dim: int, dtype=jnp.float32) -> dict[str, jax.Array]:
  if size < 1 or dim < 1:
    raise UserError(f"feature queue: size={size}, dim={dim}: expected >= 1")
  return {"keys": jnp.zeros((size, dim), dtype), "labels": jnp.full((size,), -1, jnp.int32),
          "ptr": jnp.zeros((), jnp.int32), "count": jnp.zeros((), jnp.int32)}


def queue_push(queue: dict[str, jax.Array], keys: jax.Array, labels: jax.Array
               ) -> dict[str, jax.Array]:
  """Writes the batch's `keys (B, D)` / `labels (B,)` at the pointer, wrapping around; B must not
  exceed the queue size (the global batch: every device's keys, in batch order)."""
  n, b = queue["keys"].shape[0], keys.shape[0]
  if b > n:
    raise UserError(f"feature queue of {n} rows cannot take a batch of {b} keys")
  rows = (queue["ptr"] + jnp.arange(b)) % n
  return {"keys": queue["keys"].at[rows].set(keys.astype(queue["keys"].dtype)),
          "labels": queue["labels"].at[rows].set(labels.astype(jnp.int32)),
          "ptr": (queue["ptr"] + b) % n,
          "count": jnp.minimum(queue["count"] + b, n)}


def queue_in_order(queue: dict[str, Any]) -> tuple[Any, Any]:
  """(keys, labels) of the filled rows, oldest first (host-side helper for tests and analysis)."""
  import numpy as np
  keys, labels = np.asarray(queue["keys"]), np.asarray(queue["labels"])
  n, ptr, count = len(keys), int(queue["ptr"]), int(queue["count"])
  order = (np.arange(count) + (ptr - count)) % n
  return keys[order], labels[order]


def fields_push(queue: dict[str, jax.Array], rows: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """A ring buffer of named fields (`queue[name]` (Q, ...), plus `ptr` and `count`): the batch's
  `rows[name]` (B, ...) overwrite the oldest rows (any subset of the fields; B ≤ Q)."""
  n = next(v.shape[0] for k, v in queue.items() if k not in ("ptr", "count"))
  b = next(iter(rows.values())).shape[0]
  if b > n:
    raise UserError(f"queue of {n} rows cannot take a batch of {b} rows")
  idx = (queue["ptr"] + jnp.arange(b)) % n
  out = dict(queue)
  for k, v in rows.items():
    out[k] = queue[k].at[idx].set(v.astype(queue[k].dtype))
  out["ptr"] = (queue["ptr"] + b) % n
  out["count"] = jnp.minimum(queue["count"] + b, n)
  return out


def queue_push_sharded(queue: dict[str, jax.Array], rows: dict[str, jax.Array],
                       batch_axes: tuple[str, ...] = ("data", "fsdp")) -> dict[str, jax.Array]:
  """`fields_push` of a batch whose rows are sharded over the mesh's `batch_axes` (the trainer's
  batch sharding), onto a replicated queue, written per device with `jax.shard_map`: each device
  all-gathers the rows of every batch shard (tiled, so in global batch order) and writes the same
  rows into its copy. No gradient flows here (it runs after the update), so the replication check
  is off (`check_vma=False`). Outside a mesh context (`jax.set_mesh`) or on one device it is
  `fields_push`. Returns the new queue, replicated."""
  mesh = jax.sharding.get_abstract_mesh()
  axes = tuple(a for a in batch_axes if a in getattr(mesh, "axis_names", ()))
  if mesh.empty or not axes or all(mesh.shape[a] == 1 for a in axes):
    return fields_push(queue, rows)
  from jax.sharding import PartitionSpec as P

  def local(q, r):
    gathered = {k: jax.lax.all_gather(v, axes, axis=0, tiled=True) for k, v in r.items()}
    return fields_push(q, gathered)
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axes)), out_specs=P(),
                       check_vma=False)(queue, rows)
