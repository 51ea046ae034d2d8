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
                                        enqueue); `count` says how many rows are filled.
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
