"""The benchmark harness: the `BenchModel` / `Reference` records, timing of jitted train (and
eval) steps beside a PyTorch reference in one run, matmul peaks, memory, the report and
`jaxaffect bench` itself (`main`). Model references live in `bench/<model>.py`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

from jaxaffect.bench.report import _fmt_table
from jaxaffect.errors import UserError

# -------------------------------------------------------------------------------------- registry


@dataclasses.dataclass
class Reference:
  """A PyTorch model to compare with: `module(*to_inputs(batch))` → logits `(B, classes)`."""
  name: str
  module: Any                                   # torch.nn.Module
  to_inputs: Callable[[dict[str, np.ndarray]], tuple]
  # (module outputs, int64 labels tensor) -> loss tensor; None: cross-entropy on the outputs
  loss_fn: Callable[[Any, Any], Any] | None = None


@dataclasses.dataclass(frozen=True)
class BenchModel:
  name: str
  default_config: str                           # `configs` spec, e.g. 'former_dfer:dfew'
  # (checkout path, config) -> Reference; None when no reference implementation exists.
  reference: Callable[[str, Any], Reference] | None = None
  # (xla: bool) -> (printable text, JSON-able data): the paper's compute table, if any.
  table: Callable[[bool], tuple[str, Any]] | None = None
  # (config, n) -> (train source, eval source) of n random examples with the configured shapes.
  sources: Callable[[Any, int], tuple[Any, Any]] | None = None
  input_key: str = "video"                      # batch entry the model's forward takes
  # (module, batch shapes) -> {"input_shape", "macs_per_example", "params"}: the forward cost of a
  # model whose input is not the one array `input_key` (None: `flops.forward_flops` on it).
  cost: Callable[[Any, dict], dict] | None = None
  unit: str = "clips"                           # what one example is called in the report
  inference: bool = False                       # also time the eval step and the torch forward


# A model's `BenchModel` is reached through its model module's `bench_model()` (models/registry.py:
# found by convention, no table here); the ones below are returned by former_dfer.py, est.py and
# abaw_tcn.py.


def _import_official(path: str, module_file: str, repo: str, module: str, name: str):
  """`name` from `module` of an official checkout at `path` (its top-level `models` package),
  refusing a checkout without `module_file` or another `models` package already imported."""
  if not os.path.isfile(os.path.join(path, *module_file.split("/"))):
    raise UserError(f"bench --reference {path}: {module_file} not found (expected a checkout of "
                    f"{repo})")
  cached = sys.modules.get("models")
  where = [os.path.abspath(p) for p in getattr(cached, "__path__", [])]
  if cached is not None and not any(w.startswith(os.path.abspath(path)) for w in where):
    raise UserError(f"bench --reference {path}: another top-level `models` package is already "
                    f"imported ({cached!r}); run the reference in a fresh process")
  import importlib
  sys.path.insert(0, os.path.abspath(path))
  try:
    return getattr(importlib.import_module(module), name)
  finally:
    sys.path.pop(0)


# ------------------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
  print(f"[bench] {msg}", file=sys.stderr, flush=True)


def cpu_threads() -> int:
  """CPUs this process may run on (XLA:CPU sizes its intra-op pool to them)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def load_config(spec: str, overrides: list[str]):
  """`former_dfer:dfew` / a path[:arg] → the config, with `--config.a.b=value` overrides applied
  (`config_loader.load`, the one loader of every command)."""
  from jaxaffect import config_loader
  return config_loader.load(spec, overrides)


def random_sources(config, n: int):
  """Random uint8 videos of the configured clip shape (train source = eval source)."""
  from jaxaffect.data import parts, pipeline
  d = config.data
  t = max(d.source.get("video_frames", 0) or 0, parts.sampler(d).min_frames())
  rng = np.random.default_rng(config.seed)
  frames = rng.integers(0, 256, (n, t, d.image_size, d.image_size, 3), np.uint8)
  labels = rng.integers(0, config.model.num_classes, (n,)).astype(np.int32)
  src = pipeline.InMemoryVideos(frames, labels, "bench-random")
  return src, src


def matmul_peak(n: int = 2048, repeats: int = 5) -> dict[str, float]:
  """Measured f32 matmul rate of the default device: median of `repeats` jitted n×n products."""
  import jax
  import jax.numpy as jnp
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.float32)
  b = jax.random.normal(kb, (n, n), jnp.float32)
  f = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  sec = statistics.median(times)
  return {"size": n, "seconds": sec, "flops_per_s": 2.0 * n ** 3 / sec}


def torch_matmul_peak(n: int, threads: int, repeats: int = 5) -> dict[str, float]:
  """The same measure for torch with `threads` intra-op threads."""
  import torch
  old_threads = torch.get_num_threads()
  torch.set_num_threads(threads)
  try:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      torch.mm(a, b)
      times.append(time.perf_counter() - t0)
  finally:
    torch.set_num_threads(old_threads)
  sec = statistics.median(times)
  return {"size": n, "seconds": sec, "flops_per_s": 2.0 * n ** 3 / sec}


def _memory(compiled) -> dict[str, int | None]:
  """Device memory of the compiled step (per device): `memory_bytes` = arguments + outputs −
  donated (aliased) + temporaries, and XLA's own `peak_memory_in_bytes` as reported (on XLA:CPU
  it is not a heap peak: 140 MiB for a step whose temporaries alone are 665 MiB)."""
  try:
    ma = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 (backends without memory analysis raise various errors)
    ma = None
  if ma is None:
    return {"memory_bytes": None, "xla_peak_memory_bytes": None}
  total = (ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
           + ma.temp_size_in_bytes)
  return {"memory_bytes": int(total),
          "xla_peak_memory_bytes": int(getattr(ma, "peak_memory_in_bytes", 0)) or None}


def host_state(abstract_state, shardings, seed: int = 0):
  """A train state of the right shapes, dtypes and shardings, filled on the host without compiling
  anything (the model's `init_fn` is slow to compile and not what is measured):
  parameters with ≥ 2 dims ~ U(±1/√fan_in) (torch's default Linear/Conv init; fan_in = all but
  the last dim of HWIO / (in, out) kernels), `scale` leaves 1, other 1-D parameters 0; batch
  statistics `var` 1, everything else (means, optimizer moments and counts, the step) 0. With it
  the dfew Former-DFER step trains stably on the repeated batch (loss 2.19 → 0.01 in 6 SGD steps;
  N(0, 1/fan_in) diverged to 36), so timings are of finite, ordinary numbers.
  """
  import jax
  rng = np.random.default_rng(seed)

  def fill(path, leaf, sharding):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    shape, dtype = tuple(leaf.shape), leaf.dtype
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
      raise TypeError(f"host_state: {'/'.join(names)} has dtype {dtype} (use --init model)")
    if names[0] == "params" and len(shape) >= 2:
      bound = 1.0 / np.sqrt(int(np.prod(shape[:-1])))
      host = rng.uniform(-bound, bound, shape).astype(np.float32)
    elif names[0] in ("params", "extra") and names[-1] in ("scale", "var"):
      host = np.ones(shape, np.float32)
    else:
      host = np.zeros(shape, np.float32)
    host = host.astype(dtype)
    # Works for shardings over other hosts' devices too (each process fills its shards).
    return jax.make_array_from_callback(shape, sharding, lambda idx: host[idx])

  return jax.tree_util.tree_map_with_path(fill, abstract_state, shardings)


# ----------------------------------------------------------------------------------- measuring


class JaxStep:
  """The configured train step, compiled ahead of time, with its compile-time figures in `info`."""

  def __init__(self, config, *, sources=None, input_key: str = "video", init: str = "host",
               cost=None):
    import jax
    from jaxaffect import flops
    from jaxaffect.data import pipeline
    from jaxaffect.train import loop, mesh as mesh_lib

    b = config.batch_size
    s = loop.build(config, sources=(sources or random_sources)(config, b))
    self.host_batch = next(pipeline.train_iterator(s.train_source, config.data, b, config.seed))
    init_rng, self.step_rng = jax.random.split(jax.random.key(config.seed))
    self.setup, self.batch_size = s, b
    with jax.set_mesh(s.mesh):
      self.batch = mesh_lib.global_batch_from_local(self.host_batch, s.mesh)
      if init == "model":
        # The model's own initialisation, compiled. Slow to compile on XLA:CPU: with jax 0.12's
        # default partitionable threefry each random initializer takes ~2-3 s (Former-DFER's
        # init_fn: 40 s on one device, 70 s on 8 simulated ones); the classic threefry is 4-5x
        # faster and the values do not matter for timing.
        with jax.threefry_partitionable(False):
          self.state = s.init_fn(init_rng)
      else:
        self.state = host_state(s.abstract_state, s.state_shardings, config.seed)
      jax.block_until_ready(self.state)
      _log("lowering and compiling the train step")
      t0 = time.perf_counter()
      lowered = s.train_step.lower(self.state, self.batch, self.step_rng)
      t1 = time.perf_counter()
      self.compiled = lowered.compile()
      t2 = time.perf_counter()
    self.metrics = None
    first = self.step()
    n_dev = int(s.mesh.devices.size)
    step_flops = flops.xla_cost(self.compiled)["flops"] * n_dev    # cost analysis is per device
    if cost is not None:
      fwd = cost(s.task.module, s.batch_shapes)
      example = fwd["input_shape"]
    else:
      example = tuple(int(x) for x in s.batch_shapes[input_key].shape[1:])
      fwd = flops.forward_flops(s.task.module, None, (1,) + example, xla=False)
    # XLA's cost analysis takes a while loop's body once (a scanned stack of L layers counts as
    # one layer): the FLOP figures of such a step are understated, and the report says so.
    loops = any(" while(" in line for line in self.compiled.as_text().splitlines())
    self.info = dict(lower_s=t1 - t0, compile_s=t2 - t1, first_step_s=first, step_has_loops=loops,
                     input_shape=list(example), devices=n_dev, train_step_flops=step_flops,
                     fwd_gmacs_per_clip=fwd["macs_per_example"] / 1e9, params=int(fwd["params"]),
                     **_memory(self.compiled))

  def step(self) -> float:
    """One train step, blocked until done; returns its wall seconds."""
    import jax
    with jax.set_mesh(self.setup.mesh):
      t0 = time.perf_counter()
      self.state, self.metrics = self.compiled(self.state, self.batch, self.step_rng)
      jax.block_until_ready(self.state)
      return time.perf_counter() - t0

  def last_loss(self) -> float | None:
    from jaxaffect.train import loop
    return loop.compute_metrics(self.metrics).get("loss") if self.metrics is not None else None


class JaxInfer:
  """The configured eval step (`jaxaffect eval`: deterministic forward + metrics) on the train
  step's current state and batch, compiled ahead of time."""

  def __init__(self, jstep: JaxStep):
    import jax
    self.jstep = jstep
    with jax.set_mesh(jstep.setup.mesh):
      t0 = time.perf_counter()
      self.compiled = jstep.setup.eval_step.lower(jstep.state, jstep.batch).compile()
      self.compile_s = time.perf_counter() - t0
    self.first_step_s = self.step()

  def step(self) -> float:
    import jax
    with jax.set_mesh(self.jstep.setup.mesh):
      t0 = time.perf_counter()
      out = self.compiled(self.jstep.state, self.jstep.batch)
      jax.block_until_ready(out)
      return time.perf_counter() - t0


class TorchInfer:
  """The reference module's eval-mode forward under `torch.no_grad()` on the same inputs."""

  def __init__(self, tstep: "TorchStep"):
    self.tstep = tstep
    self.first_step_s = self.step()

  def step(self) -> float:
    import torch
    model = self.tstep.model
    t0 = time.perf_counter()
    model.eval()
    try:
      with torch.no_grad():
        model(*self.tstep.inputs)
    finally:
      model.train()
    return time.perf_counter() - t0


class TorchStep:
  """Forward + cross-entropy backward + optimizer step of a reference module on one batch, run
  with `threads` intra-op threads (restored by `close`)."""

  def __init__(self, ref: Reference, config, batch: dict[str, np.ndarray], threads: int):
    import torch
    self.ref, self.threads = ref, threads
    self._old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    self.model = ref.module.train()
    o = config.optim
    params = self.model.parameters()
    if o.name == "sgd":
      self.opt = torch.optim.SGD(params, lr=o.lr, momentum=o.get("momentum", 0.0),
                                 weight_decay=o.get("weight_decay", 0.0))
    elif o.name == "adamw":
      self.opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.get("weight_decay", 0.0))
    else:
      self.opt = torch.optim.Adam(params, lr=o.lr)
    self.inputs = ref.to_inputs(batch)
    self.labels = torch.from_numpy(np.asarray(batch["label"]).astype(np.int64))
    self.criterion = torch.nn.CrossEntropyLoss()
    self.batch_size = len(self.labels)
    self.loss = None
    self.first_step_s = self.step()

  def step(self) -> float:
    t0 = time.perf_counter()
    self.opt.zero_grad(set_to_none=True)
    out = self.model(*self.inputs)
    loss = (self.ref.loss_fn(out, self.labels) if self.ref.loss_fn is not None
            else self.criterion(out, self.labels))
    loss.backward()
    self.opt.step()
    self.loss = float(loss.detach())
    return time.perf_counter() - t0

  def close(self) -> None:
    import torch
    torch.set_num_threads(self._old_threads)


def time_steps(runners: list, steps: int, warmup: int) -> list[list[float]]:
  """Per runner, the seconds of `steps` steps after `warmup - 1` more untimed ones (their first
  step was run when built). Runners alternate step by step, so that a change of the machine's load
  falls on all of them alike and their ratio stays meaningful."""
  for _ in range(max(warmup - 1, 0)):
    for r in runners:
      r.step()
  times: list[list[float]] = [[] for _ in runners]
  for _ in range(steps):
    for r, t in zip(runners, times):
      t.append(r.step())
  return times


# ---------------------------------------------------------------------------------------- report


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxaffect bench", description=__doc__.split("\n")[0])
  from jaxaffect.models import registry
  p.add_argument("model", help=f"one of: {', '.join(registry.available('bench_model'))}, or "
                               f"'data' (input pipeline) or 'encoder' (looped vs scanned stack)")
  p.add_argument("--json", action="store_true", help="print one JSON line (table to stderr)")
  p.add_argument("--config", default=None, help="config spec (default: the model's)")
  p.add_argument("--batch", type=int, default=4, help="global batch size")
  p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps, the first included")
  p.add_argument("--reference", default=None, metavar="PATH",
                 help="checkout of the official PyTorch code to time beside JAX")
  p.add_argument("--peak-size", type=int, default=2048, help="matmul size of the peak measure")
  p.add_argument("--init", choices=("host", "model"), default="host",
                 help="initial state: filled on the host (no compile) or the model's init_fn")
  p.add_argument("--table3", action="store_true", help="print the paper's compute table only")
  p.add_argument("--xla", action="store_true", help="with --table3: add XLA cost analysis column")
  p.add_argument("--plan", action="store_true", help="per-device bytes, FLOPs, collectives and "
                 "projected step time of the sharded step at scale (bench/plan.py)")
  p.add_argument("--plan-configs", default="", help="with --plan: config specs separated by ';'")
  p.add_argument("--plan-fsdp", default="1,8,64,256", help="with --plan: fsdp sizes")
  p.add_argument("--plan-batch", type=int, default=8, help="with --plan: per-device batch")
  from jaxaffect.bench import profile
  profile.add_arguments(p)
  return p


# `jaxaffect bench NAME ...` for these names runs `jaxaffect.bench.NAME.main(argv)`: benches of ops or
# layers rather than of a model's train step (ops: per-op forward/gradient vs torch; sampling:
# grid_sample forms vs torch; swin: Swin-T vs timm; tdls: deformable blocks vs Swin-T).
STANDALONE = ("ops", "sampling", "swin", "tdls")


def main(argv: list[str]) -> int:
  if argv and argv[0] == "data":          # input pipeline + preprocessing (jaxaffect/bench_data.py)
    from jaxaffect import bench_data
    return bench_data.main(argv[1:])
  if argv and argv[0] == "encoder":       # looped vs scanned encoder (jaxaffect/bench_encoder.py)
    from jaxaffect import bench_encoder
    return bench_encoder.main(argv[1:])
  if argv and argv[0] in STANDALONE:      # op-level benches with their own flags (bench/NAME.py)
    import importlib
    return importlib.import_module(f"jaxaffect.bench.{argv[0]}").main(argv[1:])
  p = _parser()
  args, rest = p.parse_known_args(argv)
  from jaxaffect.models import registry
  spec = registry.bench_model(args.model)
  if args.table3:
    if spec.table is None:
      print(f"jaxaffect bench: {args.model} has no --table3 report", file=sys.stderr)
      return 2
    text, data = spec.table(args.xla)
    return _emit(text, data, args.json)
  if args.plan:                           # compiled-step plan at scale (jaxaffect/bench/plan.py)
    from jaxaffect.bench import plan
    args.default_config = spec.default_config
    return plan.main(args, rest)
  if args.steps < 1 or args.batch < 1:
    p.error("--steps and --batch must be positive")
  if args.reference and spec.reference is None:
    print(f"jaxaffect bench: no reference implementation registered for {args.model}",
          file=sys.stderr)
    return 2

  import jax
  config_spec = args.config or spec.default_config
  config = load_config(config_spec, rest)
  config.batch_size = args.batch
  threads = cpu_threads()
  ref = spec.reference(args.reference, config) if args.reference else None   # fail early

  result: dict[str, Any] = {"model": args.model, "config": config_spec, "batch": args.batch,
                            "backend": jax.default_backend(), "threads": threads,
                            "steps": args.steps, "warmup": args.warmup, "init": args.init,
                            # compile_s is a cache load when a persistent cache is configured
                            "compilation_cache": bool(jax.config.jax_compilation_cache_dir)}
  jstep = JaxStep(config, sources=spec.sources, input_key=spec.input_key, init=args.init,
                  cost=spec.cost)
  result.update(jstep.info, unit=spec.unit)
  tstep = None
  infer: list = []
  try:
    if ref is not None:
      _log(f"building {ref.name}")
      tstep = TorchStep(ref, config, jstep.host_batch, threads)
    if spec.inference:
      _log("compiling the eval step (inference)")
      infer = [JaxInfer(jstep)] + ([TorchInfer(tstep)] if tstep else [])
    _log(f"timing {args.steps} steps" + (" of each, interleaved" if tstep or infer else ""))
    times = time_steps([jstep] + ([tstep] if tstep else []) + infer, args.steps, args.warmup)
    _log(f"measuring the f32 matmul peak ({args.peak_size}^2)")
    result["peak_matmul"] = matmul_peak(args.peak_size)
    if tstep is not None:
      result["torch_peak_matmul"] = torch_matmul_peak(args.peak_size, threads)
    if args.profile:
      from jaxaffect.bench import profile
      result["profile"] = profile.for_bench(args, jstep, tstep)
  finally:
    if tstep is not None:
      tstep.close()
  step_s = statistics.median(times[0])
  result.update(step_s=step_s, step_s_all=times[0], clips_per_s=args.batch / step_s,
                achieved_flops_per_s=result["train_step_flops"] / step_s,
                last_loss=jstep.last_loss())
  result["peak_fraction"] = result["achieved_flops_per_s"] / result["peak_matmul"]["flops_per_s"]
  result["reference"] = None
  if tstep is not None:
    t_s = statistics.median(times[1])
    result["reference"] = {
        "name": ref.name, "threads": threads, "first_step_s": tstep.first_step_s, "step_s": t_s,
        "step_s_all": times[1], "clips_per_s": args.batch / t_s, "last_loss": tstep.loss,
        # the same step's work, counted by XLA
        "achieved_flops_per_s": result["train_step_flops"] / t_s,
        "params": int(sum(p.numel() for p in ref.module.parameters()))}
    result["jax_over_torch"] = result["clips_per_s"] / result["reference"]["clips_per_s"]
    # the same ratio step by step (both ran back to back under the same load)
    result["jax_over_torch_per_step"] = [t / j for j, t in zip(times[0], times[1])]
  if infer:
    ti = times[len(times) - len(infer):]
    j_s = statistics.median(ti[0])
    result["inference"] = {"step_s": j_s, "step_s_all": ti[0], "per_s": args.batch / j_s,
                           "compile_s": infer[0].compile_s, "reference": None}
    if len(infer) > 1:
      t_s = statistics.median(ti[1])
      result["inference"]["reference"] = {"step_s": t_s, "step_s_all": ti[1],
                                          "per_s": args.batch / t_s}
      result["inference"]["jax_over_torch"] = t_s / j_s
  from jaxaffect.bench import profile
  return _emit(_fmt_table(result) + profile.report_text(result), result, args.json)


def _emit(text: str, data: dict[str, Any], as_json: bool) -> int:
  """The readable table to stdout, or with --json to stderr and one JSON line to stdout."""
  if as_json:
    print(text, file=sys.stderr)
    print(json.dumps(data), flush=True)
  else:
    print(text, flush=True)
  return 0
