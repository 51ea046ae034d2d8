"""Orbax checkpoints: train state + data-iterator state + config (JSON) + eval metrics.

Keeps the last `keep` checkpoints and the best one by `best_metric`; saves asynchronously; restores onto
any mesh shape (the abstract state carries the target shardings).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from jaxaffect.errors import MissingFile


def _metric_getter(metric: str, mode: str):
  worst = float("-inf") if mode == "max" else float("inf")
  return lambda m: float(m.get(metric, worst))


def _best_policy(metric: str, mode: str):
  if mode not in ("max", "min"):
    raise ValueError(f"checkpoint.best_mode={mode!r}: expected 'max' or 'min'")
  return cm.BestN(get_metric_fn=_metric_getter(metric, mode), reverse=(mode == "min"), n=1,
                  keep_checkpoints_without_metrics=False)


class _ReadOnlyNotices(logging.Filter):
  """Orbax announces, as absl warnings, that a read-only manager is read-only ("Given directory is
  read only", "setting save_interval_steps=0"): noise on every `eval` / `predict` / `export`."""

  def filter(self, record: logging.LogRecord) -> bool:
    msg = record.getMessage()
    return not (msg.startswith("Given directory is read only")
                or msg.startswith("CheckpointManagerOptions.read_only=True"))


_READ_ONLY_FILTER = _ReadOnlyNotices()


def make_manager(directory: str, *, keep: int = 3, best_metric: str | None = None,
                 best_mode: str = "max", async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
  policies = [cm.LatestN(keep)]
  extra = {}
  if best_metric:
    policies.append(_best_policy(best_metric, best_mode))
    # `best_fn` also makes Orbax write each checkpoint's metrics and read them back on restart.
    extra = dict(best_fn=_metric_getter(best_metric, best_mode), best_mode=best_mode)
  if read_only:
    if _READ_ONLY_FILTER not in logging.getLogger("absl").filters:
      logging.getLogger("absl").addFilter(_READ_ONLY_FILTER)
  options = ocp.CheckpointManagerOptions(
      preservation_policy=cm.AnyPreservationPolicy(policies),
      enable_async_checkpointing=async_save, read_only=read_only, create=not read_only, **extra)
  return ocp.CheckpointManager(
      os.path.abspath(directory), options=options,
      item_names=("state", "config", "data_iter"),
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "config": ocp.JsonCheckpointHandler(),
                     "data_iter": grain.checkpoint.CheckpointHandler()})


def save(mngr: ocp.CheckpointManager, step: int, state, config: ml_collections.ConfigDict,
         data_iter=None, metrics: dict[str, float] | None = None) -> bool:
  args = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config.to_dict())}
  if data_iter is not None:
    args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
  metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
  return mngr.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=True)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iter=None):
  """Restores state (onto the shardings carried by `abstract_state`) and the iterator in place."""
  args = {"state": ocp.args.StandardRestore(abstract_state), "config": ocp.args.JsonRestore()}
  # (item_metadata() reports None for the grain item even when it was saved: look at the files.)
  has_iter = (mngr.directory / str(step) / "data_iter").exists()
  if data_iter is not None and has_iter:
    args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  out = mngr.restore(step, args=ocp.args.Composite(**args))
  return out["state"], out["config"]


def read_config(directory: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, int]:
  """The config stored with a checkpoint (latest if `step` is None)."""
  mngr = make_manager(directory, read_only=True, async_save=False)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise MissingFile(f"no checkpoint under {directory!r}")
  cfg = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  mngr.close()
  return ml_collections.ConfigDict(cfg), step


def best_step(mngr: ocp.CheckpointManager, metric: str, mode: str = "max") -> int | None:
  """The saved step with the best `metric` (None if no checkpoint has metrics)."""
  best = None
  for s in mngr.all_steps():
    m = mngr.metrics(s)
    if not m or metric not in m:
      continue
    v = m[metric]
    if best is None or (v > best[1] if mode == "max" else v < best[1]):
      best = (s, v)
  return None if best is None else best[0]


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)
