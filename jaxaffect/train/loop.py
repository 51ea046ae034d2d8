"""The training loop: config → mesh, task, optimizer, data, checkpoints; resumable; eval."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxaffect.data import parts, pipeline
from jaxaffect.errors import MissingFile, UserError
from jaxaffect.models import registry
from jaxaffect.train import checkpoint as ckpt_lib
from jaxaffect.train import mesh as mesh_lib
from jaxaffect.train import optim, step as step_lib, writer as writer_lib

log = logging.getLogger("jaxaffect.train")


@dataclasses.dataclass
class Setup:
  config: ml_collections.ConfigDict
  mesh: Any
  task: Any
  tx: Any
  schedule: Any
  train_source: Any
  eval_source: Any
  steps_per_epoch: int
  total_steps: int
  batch_shapes: dict
  abstract_state: Any
  state_shardings: Any
  init_fn: Any
  train_step: Any
  eval_step: Any


def build(config: ml_collections.ConfigDict, *, mesh=None, sources=None) -> Setup:
  """Everything a run needs, without touching the workdir (used by train, eval and bench)."""
  mesh = mesh or mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp)
  n_dev = mesh.devices.size
  if config.batch_size < 1:
    raise UserError(f"config.batch_size={config.batch_size}: expected >= 1")
  if config.data.get("image_size", 1) < 1:
    raise UserError(f"config.data.image_size={config.data.image_size}: expected >= 1")
  if config.batch_size % n_dev:
    raise UserError(f"config.batch_size={config.batch_size} is not divisible by the "
                    f"{n_dev} devices of the mesh {dict(mesh.shape)}")
  train_src, eval_src = sources or pipeline.build_sources(config.data)
  steps_per_epoch = max(len(train_src) // config.batch_size, 1)
  total = config.num_steps if config.num_steps > 0 else config.num_epochs * steps_per_epoch
  tx, sched = optim.make_optimizer(config.optim, steps_per_epoch, total)
  task = registry.build_task(config)
  shapes = pipeline.batch_spec(train_src, config.data, config.batch_size)
  rng0 = jax.random.key(config.seed)
  with jax.threefry_partitionable(config.get("partitionable_init_rng", False)):
    abstract = step_lib.abstract_state(task, tx, rng0, shapes)
  shardings = mesh_lib.state_shardings(abstract, mesh, [tuple(r) for r in config.sharding_rules])
  return Setup(config, mesh, task, tx, sched, train_src, eval_src, steps_per_epoch, total, shapes,
               abstract, shardings,
               step_lib.make_init_fn(task, tx, mesh, shardings, shapes,
                                     config.get("partitionable_init_rng", False)),
               step_lib.make_train_step(task, tx, mesh, shardings),
               step_lib.make_eval_step(task, mesh, shardings))


def spec_sources(config):
  """A one-example stand-in (train, eval) source with the configured shapes, to build and restore
  a model without reading data (`pipeline.spec_sources`: the data config knows its shapes)."""
  src = pipeline.spec_sources(config.data)
  return src, src


def _rngs(config):
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  return init_rng, step_rng


def compute_metrics(collection) -> dict[str, Any]:
  """`clu` Collection → flat dict (scalars as floats, arrays as numpy)."""
  out = {}
  for k, v in mesh_lib.to_host(collection).compute().items():
    if isinstance(v, dict):                 # `<field>/<key>`; a `_field` reports bare keys
      for kk, vv in v.items():
        out[kk if k.startswith("_") else f"{k}/{kk}"] = np.asarray(vv)
    else:
      out[k] = np.asarray(v)
  return {k: (float(v) if v.ndim == 0 else v) for k, v in out.items()}


def evaluate(s: Setup, state) -> dict[str, Any]:
  total = None
  with jax.set_mesh(s.mesh):
    for local in pipeline.eval_batches(s.eval_source, s.config.data, s.config.batch_size):
      batch = mesh_lib.global_batch_from_local(local, s.mesh)
      m, _ = s.eval_step(state, batch)
      total = m if total is None else total.merge(m)
  if total is None:
    raise UserError("evaluation set is empty")
  return compute_metrics(total)


class _StopFlag:
  """SIGTERM (preemption) or a first Ctrl-C → save a checkpoint at the next step boundary and stop;
  a second Ctrl-C interrupts at once (KeyboardInterrupt). `signum` says which signal stopped it."""

  def __init__(self):
    self.stop = False
    self.signum = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handler)
      except ValueError:       # not the main thread
        pass
    return self

  def _handler(self, signum, frame):
    if self.stop and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.stop, self.signum = True, signum
    if signum == signal.SIGINT:
      print("\n[train] Ctrl-C: saving a checkpoint at the end of this step (Ctrl-C again to abort)",
            flush=True)

  def preempted(self, step: int) -> dict[str, Any]:
    return {"step": int(step), "signal": signal.Signals(self.signum).name}

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _period(config, key: str, default: int) -> int:
  """A `*_every_steps` field: 0 means `default`; a negative value is an error."""
  node, *rest = key.split(".")
  v = config[node] if not rest else config[node][rest[0]]
  if v is None or int(v) < 0:
    raise UserError(f"config.{key}={v}: expected a number of steps >= 0 (0 = default)")
  return int(v) or default


def train(config: ml_collections.ConfigDict, workdir: str, *, sources=None,
          stop_after_steps: int | None = None) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds a checkpoint) and returns the last eval metrics.

  Stopped by SIGTERM / Ctrl-C, it saves a checkpoint and returns with `preempted = {step, signal}`
  in the result (the CLI then exits with `errors.EXIT_PREEMPTED`; rerunning resumes).

  `stop_after_steps` ends the run early (as a kill would) after that many steps of this call,
  saving a checkpoint first; used by tests of exact resumption.
  """
  absolute_paths(config)
  with _StopFlag() as flag:                   # from the start: a stop during build/compile too
    s = build(config, sources=sources)        # config errors: before anything is written
    for key in ("eval_every_steps", "checkpoint.every_steps", "log_every_steps"):
      _period(config, key, 1)
    if flag.stop:
      return {"preempted": flag.preempted(0)}
    created = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
    try:
      out = _train(s, config, workdir, stop_after_steps, flag)
    except BaseException:
      if created and jax.process_index() == 0 and not _has_checkpoint(workdir):
        shutil.rmtree(workdir, ignore_errors=True)     # nothing of this run worth keeping
      raise
    if "preempted" in out and created and jax.process_index() == 0 and \
        not _has_checkpoint(workdir):
      shutil.rmtree(workdir, ignore_errors=True)       # stopped before its first step
    return out


def absolute_paths(config: ml_collections.ConfigDict) -> None:
  """Data paths given relative to the current directory become absolute in the run's config, so
  `eval` / `predict` / a resume from another directory read the same data (and `./x` equals `x`
  for the resume check). The source part knows which of its fields are paths."""
  def absolute(p):
    return os.path.abspath(p) if isinstance(p, str) and p and not os.path.isabs(p) else p
  parts.source(config.data).absolute_paths(absolute)
  if config.get("init_from") and config.init_from.get("workdir"):
    config.init_from.workdir = absolute(config.init_from.workdir)


def _has_checkpoint(workdir: str) -> bool:
  cdir = os.path.join(workdir, "checkpoints")
  return os.path.isdir(cdir) and any(n.isdigit() for n in os.listdir(cdir))


def _train(s: Setup, config, workdir: str, stop_after_steps: int | None,
           flag: "_StopFlag") -> dict[str, Any]:
  eval_every = _period(config, "eval_every_steps", s.steps_per_epoch)
  ckpt_every = _period(config, "checkpoint.every_steps", eval_every)
  log_every = _period(config, "log_every_steps", min(50, eval_every))
  init_rng, step_rng = _rngs(config)
  it = pipeline.train_iterator(s.train_source, config.data, config.batch_size, config.seed)
  cc = config.checkpoint
  mngr = ckpt_lib.make_manager(os.path.join(workdir, "checkpoints"), keep=cc.keep,
                               best_metric=cc.best_metric or None, best_mode=cc.best_mode,
                               async_save=cc.async_save)
  writer = writer_lib.MetricWriter(os.path.join(workdir, "tensorboard"))
  last_eval: dict[str, Any] = {}
  t_first = None
  preempted = None
  try:
    with jax.set_mesh(s.mesh):
      latest = mngr.latest_step()
      if latest is not None:
        saved_cfg, _ = ckpt_lib.read_config(os.path.join(workdir, "checkpoints"), latest)
        _check_resume_config(saved_cfg.to_dict(), config, workdir)  # before shapes clash
        abstract = ckpt_lib.abstract_with_shardings(s.abstract_state, s.state_shardings)
        state, _ = ckpt_lib.restore(mngr, latest, abstract, it)
        log.info("resumed from step %d in %s", latest, workdir)
      else:
        state = s.init_fn(init_rng)
        if config.get("init_from") and config.init_from.get("workdir"):
          state = _init_from_checkpoint(s, state, config.init_from, workdir)
        if jax.process_index() == 0:
          with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
      start = int(mesh_lib.host_value(state["step"]))
      progress = writer_lib.Progress(s.total_steps, start, config.batch_size)
      acc = None
      steps_run = 0
      if flag.stop:                 # a signal during set-up (restore, init): nothing trained
        return {"preempted": flag.preempted(start)}
      if start >= s.total_steps:    # a rerun of a finished run
        log.info("%s already finished at step %d", workdir, start)
        return {"finished_before": start}
      for step in range(start, s.total_steps):
        local = next(it)
        batch = mesh_lib.global_batch_from_local(local, s.mesh)
        t0 = time.time()
        state, m = s.train_step(state, batch, step_rng)
        if t_first is None:
          jax.block_until_ready(state["step"])
          t_first = time.time() - t0
          progress.reset(step + 1)
        acc = m if acc is None else acc.merge(m)
        done = step + 1
        steps_run += 1
        if done % log_every == 0 or done == s.total_steps:
          vals = writer_lib.scalars_of({f"train/{k}": v for k, v in compute_metrics(acc).items()})
          vals["train/lr"] = float(s.schedule(step))
          sps, cps = progress.rates(done)
          vals["train/steps_per_sec"], vals["train/clips_per_sec"] = sps, cps
          writer.scalars(done, vals)
          shown = {"loss": vals.get("train/loss", float("nan"))}
          shown.update({k: vals[f"train/{k}"] for k in s.task.progress_keys
                        if f"train/{k}" in vals})
          progress.update(done, shown)
          acc = None
        is_eval = done % eval_every == 0 or done == s.total_steps
        killed = flag.stop or (stop_after_steps is not None and steps_run >= stop_after_steps)
        if is_eval:
          last_eval = evaluate(s, state)
          sc = writer_lib.scalars_of({f"eval/{k}": v for k, v in last_eval.items()})
          writer.scalars(done, sc)
          if jax.process_index() == 0:
            for tag, img in s.task.eval_images(last_eval, config.data).items():
              writer.image(done, tag, img)
          if jax.process_index() == 0:
            print("[eval] step %d %s" % (done, " ".join(f"{k}={v:.4f}" for k, v in sc.items())),
                  flush=True)
          ckpt_lib.save(mngr, done, state, config, it,
                        metrics={k.split("/", 1)[1]: v for k, v in sc.items()})
        elif done % ckpt_every == 0 or killed:
          ckpt_lib.save(mngr, done, state, config, it)
        if killed:
          log.warning("stopping at step %d (signal or stop_after_steps); checkpoint saved", done)
          if flag.stop:
            preempted = flag.preempted(done)
          break
  finally:                          # also on errors: no half-finished async save, no thread leak
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  if t_first is not None:
    last_eval["first_step_seconds"] = t_first
  if preempted is not None:        # stopped by a signal: the run is not finished
    last_eval["preempted"] = preempted
  return last_eval


def _with_variables(s: Setup, state, variables):
  """`state` with its params and extra collections replaced (sharded), optimizer state fresh.
  A task may adjust loaded variables first with `after_load(variables) -> variables` (e.g. TDLS:
  the momentum encoder starts as a copy of the loaded weights, as MoCo's does)."""
  after_load = getattr(s.task, "after_load", None)
  if after_load is not None:
    variables = after_load(variables)
  params = jax.device_put(variables["params"], s.state_shardings["params"])
  extra = jax.device_put({k: variables[k] for k in state["extra"]}, s.state_shardings["extra"])
  return dict(state, params=params, extra=extra,
              opt_state=jax.jit(s.tx.init, out_shardings=s.state_shardings["opt_state"])(params))


def _init_from_checkpoint(s: Setup, state, spec, workdir: str):
  """`config.init_from`: a JAX checkpoint's variables merged into the fresh initialisation."""
  from jaxaffect.train import init_from
  loaded, source = init_from.load_checkpoint_variables(spec)
  fresh = jax.device_get({"params": state["params"], **state["extra"]})
  merged, rep = init_from.merge(fresh, loaded, keep=tuple(spec.get("keep", ()) or ()),
                                drop=tuple(spec.get("drop", ()) or ()))
  if jax.process_index() == 0:
    init_from.write_report(workdir, source, rep)
  return _with_variables(s, state, merged)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(d, dict):
    out = {}
    for k, v in d.items():
      out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
  if isinstance(d, (list, tuple)):
    return {prefix: [_flat(v) if isinstance(v, dict) else v for v in d]}
  return {prefix: d}


def _norm(v: Any) -> Any:
  """Values equal for a resume: a path with or without a trailing '/', a tuple and its list."""
  if isinstance(v, str) and len(v) > 1 and v.endswith(("/", os.sep)):
    return v.rstrip("/" + os.sep) or v
  if isinstance(v, (list, tuple)):
    return [_norm(x) for x in v]
  if isinstance(v, dict):
    return {k: _norm(x) for k, x in v.items()}
  return v


def config_differences(saved: dict, new: dict, keys) -> list[str]:
  """`config.a.b: old -> new` for every leaf under `keys` that differs (paths normalised)."""
  diffs = []
  for key in keys:
    a, b = _flat(saved.get(key), key), _flat(new.get(key), key)
    for k in sorted(set(a) | set(b)):
      va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
      if json.dumps(_norm(va), sort_keys=True) != json.dumps(_norm(vb), sort_keys=True):
        diffs.append(f"config.{k}: {va!r} -> {vb!r}")
  return diffs


def _check_resume_config(saved: dict, config: ml_collections.ConfigDict, workdir: str = ""):
  """A resumed run must train the same model on the same data; schedule length may change."""
  new = json.loads(config.to_json_best_effort())
  diffs = config_differences(saved, new, ("model_name", "model", "task", "data", "batch_size",
                                          "seed"))
  if diffs:
    shown = "; ".join(diffs[:8]) + (f"; ... ({len(diffs) - 8} more)" if len(diffs) > 8 else "")
    raise UserError(f"--workdir {workdir} holds a checkpoint of a different run ({shown}); use a "
                    f"new --workdir, or the saved settings")


def checkpoint_dir(workdir: str) -> str:
  """`<workdir>/checkpoints`, or `workdir` itself when it is the checkpoints directory."""
  cdir = os.path.join(workdir, "checkpoints")
  return cdir if os.path.isdir(cdir) else workdir


def resolve_step(workdir: str, step: int | None = None, best: bool = False) -> int:
  """The checkpoint step to read: `step`, the best by the run's `checkpoint.best_metric`
  (`best=True`), or the latest. Errors name the directory and the metric."""
  cdir = checkpoint_dir(workdir)
  config, latest = ckpt_lib.read_config(cdir)
  if best:
    mngr = ckpt_lib.make_manager(cdir, read_only=True, async_save=False,
                                 best_metric=config.checkpoint.best_metric or None,
                                 best_mode=config.checkpoint.best_mode)
    step = ckpt_lib.best_step(mngr, config.checkpoint.best_metric, config.checkpoint.best_mode)
    mngr.close()
    if step is None:
      raise MissingFile(f"{cdir}: no checkpoint carries metric "
                        f"{config.checkpoint.best_metric!r} (best); give a step instead")
  if step is None:
    return latest
  mngr = ckpt_lib.make_manager(cdir, read_only=True, async_save=False)
  steps = sorted(mngr.all_steps())
  mngr.close()
  if int(step) not in steps:
    raise MissingFile(f"{cdir}: no checkpoint at step {step}; it has steps {steps}")
  return int(step)


def evaluate_workdir(workdir: str, *, best: bool = False, step: int | None = None,
                     config_overrides: dict | None = None, sources=None) -> dict[str, Any]:
  """Evaluates the latest (or best) checkpoint of `workdir` with the config stored beside it."""
  cdir = checkpoint_dir(workdir)
  step = resolve_step(workdir, step, best)
  config, _ = ckpt_lib.read_config(cdir)
  if config_overrides:
    config.update(config_overrides)
  mngr = ckpt_lib.make_manager(cdir, read_only=True, async_save=False)
  s = build(config, sources=sources)
  with jax.set_mesh(s.mesh):
    abstract = ckpt_lib.abstract_with_shardings(s.abstract_state, s.state_shardings)
    state, _ = ckpt_lib.restore(mngr, step, abstract)
    metrics = evaluate(s, state)
  mngr.close()
  metrics["step"] = step
  return metrics


def restore_state(workdir: str, step: int | None = None):
  """(config, task, variables dict {'params', ...extra}) of a checkpoint, on the host."""
  cdir = checkpoint_dir(workdir)
  config, latest = ckpt_lib.read_config(cdir)
  step = latest if step is None else step
  s = build(config, sources=spec_sources(config))
  mngr = ckpt_lib.make_manager(cdir, read_only=True, async_save=False)
  with jax.set_mesh(s.mesh):
    abstract = ckpt_lib.abstract_with_shardings(s.abstract_state, s.state_shardings)
    state, _ = ckpt_lib.restore(mngr, step, abstract)
  mngr.close()
  variables = {"params": mesh_lib.to_host(state["params"]), **mesh_lib.to_host(state["extra"])}
  return config, s, variables, step


def import_weights(config: ml_collections.ConfigDict, workdir: str, weights_path: str, *,
                   partial: bool = False) -> int:
  """Writes a step-0 checkpoint of `config` whose parameters (and BatchNorm statistics) come from a
  PyTorch state dict in the official key layout; the optimizer state is fresh. `partial`: the
  state dict covers part of the model (EST's FER+-pretrained ResNet-18 backbone, the official
  initialisation); the rest keeps the model's own initialisation."""
  from jaxaffect import interop
  cdir = os.path.join(workdir, "checkpoints")
  if _has_checkpoint(workdir):
    raise UserError(f"{cdir} already holds checkpoints; import into a new --workdir")
  s = build(config, sources=spec_sources(config))
  like = {"params": s.abstract_state["params"], **s.abstract_state["extra"]}
  sd = interop.load_state_dict_file(weights_path)       # bad weights: before anything is written
  try:
    variables = interop.from_torch_state_dict(config.model_name, sd, like, partial=partial)
  except (KeyError, ValueError) as e:       # the file is not this model's state dict
    raise UserError(f"--weights {weights_path}: {e.args[0] if e.args else e}") from None
  mngr = ckpt_lib.make_manager(cdir, keep=config.checkpoint.keep, async_save=False)
  init_rng, _ = _rngs(config)
  with jax.set_mesh(s.mesh):
    state = s.init_fn(init_rng)
    if partial:                    # imported variables over the model's own initialisation
      from jaxaffect.train import init_from
      fresh = jax.device_get({"params": state["params"], **state["extra"]})
      variables, rep = init_from.merge(fresh, jax.device_get(variables), field="--partial")
      if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        init_from.write_report(workdir, {"weights": os.path.abspath(weights_path)}, rep)
    state = _with_variables(s, state, variables)
    ckpt_lib.save(mngr, 0, state, config)
  mngr.wait_until_finished()
  mngr.close()
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  return 0
