"""Helpers shared by the metric modules, and the cross-process merge of host-local metrics.

numpy / jnp dispatch (`_xp`), gradient-safe division, binary F1 from counts, per-row or
per-element masks, and `_bind` (a metric subclass with default static sizes, for
`clu.metrics.Collection.empty()`).
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
M = TypeVar("M")


def _xp(*arrays: Any):
  """jnp if any input is a jax array (or tracer), else numpy."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _safe_div(num, den, xp, fill):
  """num / den where den != 0, else `fill`; gradient-safe (double where)."""
  ok = den != 0
  return xp.where(ok, num / xp.where(ok, den, 1), fill)


def _bind(cls, name: str, **defaults):
  """Subclass of metric `cls` whose `empty()` / `from_model_output()` defaults
  the static sizes (needed by `clu.metrics.Collection.empty()`)."""
  sub = flax.struct.dataclass(
      type(f"{cls.__name__}{name}", (cls,), {"__module__": cls.__module__}))
  sub._defaults = {**cls._defaults, **defaults}
  return sub


def _row_mask(mask: ArrayLike | None, shape: tuple[int, ...], xp, where: str):
  """Broadcasts a per-row mask (shape[:-1]) or per-element mask (shape)."""
  if mask is None:
    return xp.ones(shape, bool)
  mask = xp.asarray(mask).astype(bool)
  if mask.shape == shape[:-1]:
    mask = mask[..., None]
  elif mask.shape != shape:
    raise ValueError(
        f"{where}: mask must have shape {shape[:-1]} (per row) or {shape} (per"
        f" element), got {mask.shape}.")
  return xp.broadcast_to(mask, shape)


def _f1(tp, fp, fn, xp):
  """Binary F1 = 2TP / (2TP + FP + FN), 0 where the denominator is 0."""
  return _safe_div(2 * tp, 2 * tp + fp + fn, xp, 0.0)


################################################################################
# Cross-process merge of host-local metrics.
################################################################################


def allgather_merge(metric: M) -> M:
  """Merges a metric (or `clu.metrics.Collection`) over all JAX processes.

  Only for metrics accumulated from process-local data. A metric computed in
  the global-view jitted step from global arrays is already global: passing
  it here raises (it would be counted once per process). Every process must
  call this collectively with metrics of the same structure; all processes
  get the same result (merged in process order).
  """
  for leaf in jax.tree.leaves(metric):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      raise ValueError(
          "allgather_merge: the metric holds a global (not fully addressable)"
          " jax.Array, so it already covers all processes; use it as is.")
  stacked = multihost_utils.process_allgather(metric, tiled=False)
  parts = [jax.tree.map(lambda a, i=i: jnp.asarray(a[i]), stacked)
           for i in range(jax.process_count())]
  return functools.reduce(lambda a, b: a.merge(b), parts)
