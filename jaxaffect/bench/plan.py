"""`jaxaffect bench MODEL --plan`: what the sharded train step needs per device at scale, read
from the compiled step (no allocation of the model), and a projected step time on accelerators.

  jaxaffect bench vit_frames --plan [--plan-configs 'vit_frames:b16;vit_frames:l16;vit_frames:h14']
                             [--plan-fsdp 1,8,64,256] [--plan-batch 8] [--json] [--config.x=y ...]

Per (config, fsdp) cell, in a fresh subprocess with `fsdp` simulated CPU devices
(`--xla_force_host_platform_device_count`): the config's real train step (`train.loop.build` on a
mesh (data 1, fsdp N), its `sharding_rules`) is lowered from `ShapeDtypeStruct`s carrying the
state and batch shardings and compiled (`jax.jit(...).lower(...).compile()`). XLA needs concrete
devices to compile: a step lowered for an `AbstractMesh` refuses `.compile()` without a device
assignment, and `jax.experimental.topologies` has no CPU topology; host devices cost nothing until
something runs on them. The global batch is `--plan-batch` × N (per-device batch fixed).
  * parameter / optimizer-state bytes per device: each leaf's shard shape (`sharding.shard_shape`)
    × itemsize, summed; "replicated" = the same state unsharded;
  * activations/temporaries: `memory_analysis().temp_size_in_bytes` of the compiled step;
  * FLOPs per device: `cost_analysis()`. XLA counts a `while` body (the scanned blocks) once,
    not × its trip count, so for a model with `config.model.depth` the FLOPs are taken from the
    same step compiled looped at depth 1 and 2 on one device: F(L) = F1 + (L − 1)(F2 − F1)
    ("hw": with the config's remat; "model": without remat, the MFU numerator);
  * collectives: every all-gather / reduce-scatter / all-reduce / all-to-all / collective-permute
    of the optimized HLO (`compiled.as_text()`), × the trip count of the `while` loops that hold it
    (`known_trip_count`); bytes from each op's result (reduce-scatter: result × n), and ring
    traffic per device = bytes · (n − 1)/n (all-reduce: twice that), n = the replica group size.
    XLA:CPU lowers a reduce-scatter (partial sums → sharded) as an all-reduce whose result is
    dynamic-sliced; the GPU/TPU pipelines rewrite that pair into a reduce-scatter, so it is counted
    as one ("reduce-scatter (all-reduce+slice)").
Projection per accelerator (`HARDWARE`: published peak dense bf16 FLOP/s and interconnect
bandwidth, sources beside the numbers): step ≈ max(compute, collectives) — perfect overlap — with
compute = hw FLOPs per device / peak and collectives = ring traffic per device / link bandwidth;
MFU = model FLOPs per device / (step · peak). This is an upper bound (100 % of peak, no kernel
inefficiency, no exposed latency); it says where a configuration turns communication-bound.
Finding (issue 13 item 4; jax 0.12 CPU partitioner, Auto axes): left to itself, the SPMD
partitioner followed the kernels' fsdp sharding into the matmuls and moved activations
(all-gathers of (global batch, tokens, width) tensors, all-to-alls of attention heads): for
mae:pretrain_l, per-device batch 8, 12.6 GiB of all-gathers per device per step at fsdp 64 against
2.3 GiB at fsdp 8, growing with the global batch. `train.step.fsdp_gather` (+ the per-layer gather
in `nn.vit`'s scan body) makes the step gather weights: all-gathers = the sharded parameters
(twice under full remat), their gradients reduce-scattered once, the same bytes at any batch or
fsdp size.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Any

import numpy as np

# Published figures (per chip / GPU), bf16 dense peak and the bandwidth a ring collective uses.
HARDWARE = {
    "TPU v5e": dict(
        peak_flops=197e12, link_bytes_per_s=51.2e12 / 256,
        source="cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16 per chip; all-reduce bandwidth "
               "per Pod 51.2 TB/s over 256 chips = 200 GB/s per chip (= 1600 Gbps ICI)"),
    "TPU v4": dict(
        peak_flops=275e12, link_bytes_per_s=1.1e15 / 4096,
        source="cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16 per chip; all-reduce bandwidth "
               "per Pod 1.1 PB/s over 4096 chips = 269 GB/s per chip"),
    "H100": dict(
        peak_flops=989.4e12, link_bytes_per_s=450e9, link_bytes_per_s_multinode=50e9,
        node_size=8,
        source="NVIDIA H100 SXM5 datasheet: 989.4 TFLOPS bf16 dense (1979 with sparsity); NVLink "
               "4 900 GB/s bidirectional = 450 GB/s per direction inside an 8-GPU node; beyond "
               "8 GPUs one 400 Gb/s NDR InfiniBand NIC per GPU = 50 GB/s"),
}
FORMULA = ("step = max(compute, comm); compute = hw_flops/device / peak; comm = ring bytes/device "
           "/ link bandwidth; MFU = model_flops/device / (step * peak)")
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


# ------------------------------------------------------------------------------------ HLO parsing


def _shape_bytes(text: str) -> int:
  """Bytes of every array shape `f32[12,768]{…}` in `text` (a result or operand list)."""
  total = 0
  for dt, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", text):
    if dt in _DTYPE_BYTES:
      total += _DTYPE_BYTES[dt] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
  return total


def _group_size(line: str, default: int) -> int:
  """Devices in each replica group: `[G,n]<=[...]`, `{{0,1,..}}` or `mesh['data'=2,'fsdp'=4]
  {'fsdp'}` (a sub-axis `'fsdp':(1)2` counts its size, 2)."""
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
  if m:
    return len([x for x in m.group(1).split(",") if x])
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if m:
    sizes = {a: int(n) for a, n in re.findall(r"'([\w]+)'=(\d+)", m.group(1))}
    n = 1
    for entry in [e.strip() for e in m.group(2).split(",") if e.strip()]:
      sub = re.match(r"'(\w+)':\(\d+\)(\d+)", entry)
      n *= int(sub.group(2)) if sub else sizes.get(entry.strip("'"), 1)
    return n
  return default


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")


def _parse(hlo: str):
  """(computations {name: [line]}, entry name)."""
  comps: dict[str, list[str]] = {}
  entry, cur = None, None
  for line in hlo.splitlines():
    m = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if m and not line.startswith(" "):
      cur = m.group(2)
      comps[cur] = []
      if m.group(1):
        entry = cur
    elif cur is not None:
      comps[cur].append(line)
  return comps, entry


def _sliced_after(name: str, users: dict, ops: dict, comps: dict, depth: int = 4) -> bool:
  """Whether the value `name` reaches a dynamic-slice (itself or inside a fusion) through
  get-tuple-element / convert / bitcast / copy: the all-reduce + dynamic-slice pair that XLA:CPU
  emits for a partial-sum → sharded reshard, and XLA's GPU/TPU pipelines turn into a
  reduce-scatter (`ReduceScatterCreator`)."""
  if depth == 0:
    return False
  for u in users.get(name, ()):
    op, calls = ops[u]
    if op == "dynamic-slice":
      return True
    if op == "fusion" and calls and any("dynamic-slice(" in ln for ln in comps.get(calls, ())):
      return True
    if op in ("get-tuple-element", "convert", "bitcast", "copy", "fusion") and _sliced_after(
        u, users, ops, comps, depth - 1):
      return True
  return False


def collectives(hlo: str, num_devices: int) -> dict[str, Any]:
  """Collective ops of an optimized HLO module, each × the trip counts of its enclosing loops:
  {"ops": {kind: {"count", "bytes", "ring_bytes"}}, "bytes", "ring_bytes"} (per device).

  Bytes are taken from each op's result (the optimized HLO names its operands without shapes):
  all-gather, all-reduce, all-to-all, collective-permute: the result; reduce-scatter: the result
  × n (its input). An all-reduce whose result is dynamic-sliced (XLA:CPU's lowering of a
  reduce-scatter, see `_sliced_after`) is reported as kind "reduce-scatter (all-reduce+slice)"
  with a reduce-scatter's traffic. Ring traffic per device = bytes · (n − 1)/n (all-reduce × 2;
  collective-permute: its bytes), n = the replica group size."""
  comps, entry = _parse(hlo)
  mult = {entry: 1.0} if entry else {}
  order = [entry] if entry else []
  while order:                                   # propagate multiplicities down the call graph
    c = order.pop()
    for line in comps.get(c, ()):
      n = 1.0
      if " while(" in line:
        t = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        n = float(t.group(1)) if t else 1.0
      for callee in re.findall(r"(?:body|calls|to_apply|branch_computations)=\{?%?([\w.\-]+)",
                               line):
        if callee in comps:
          mult[callee] = mult.get(callee, 0.0) + mult[c] * n
          order.append(callee)
  ops: dict[str, dict[str, float]] = {}
  for c, lines in comps.items():
    k = mult.get(c, 0.0)
    if k == 0:
      continue
    table, users, gte = {}, {}, {}
    for line in lines:
      m = _INSTR.match(line)
      if m:
        calls = re.search(r"calls=%?([\w.\-]+)", line)
        table[m.group(1)] = (m.group(3), calls.group(1) if calls else None)
        if m.group(3) == "get-tuple-element":
          gte[m.group(1)] = int(re.search(r"index=(\d+)", line).group(1))
        for operand in re.findall(r"%([\w.\-]+)", m.group(4).split("),")[0]):
          users.setdefault(operand, []).append(m.group(1))
    for line in lines:
      m = re.search(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
      if not m:
        continue
      kind, result = m.group(2), m.group(1)
      shapes = [_shape_bytes(x) for x in re.findall(r"\b[a-z]+\d*\[[\d,]*\]", result)]
      b = float(sum(shapes))
      if m.group(3) and kind == "all-gather" and len(shapes) >= 2:   # async: (operand, result)
        b = float(shapes[-1])
      n = _group_size(line, num_devices)
      if kind == "reduce-scatter":
        b *= n
      parts = [(kind, b)]
      im = _INSTR.match(line)
      if kind == "all-reduce" and im and n > 1:
        name = im.group(1)
        if len(shapes) == 1:
          elems = {0: [name]}
        else:                                      # a combined all-reduce: per tuple element
          elems = {}
          for u in users.get(name, ()):
            if u in gte:
              elems.setdefault(gte[u], []).append(u)
        rs = sum(shapes[i] for i, vs in elems.items()
                 if i < len(shapes) and any(_sliced_after(v, users, table, comps) for v in vs))
        if rs:
          parts = [("all-reduce", b - rs), ("reduce-scatter (all-reduce+slice)", float(rs))]
      for kd, bb in parts:
        if bb <= 0 and len(parts) > 1:
          continue
        if kd == "collective-permute":
          ring = bb
        else:
          ring = bb * (n - 1) / max(n, 1) * (2 if kd == "all-reduce" else 1)
        d = ops.setdefault(kd, {"count": 0.0, "bytes": 0.0, "ring_bytes": 0.0})
        d["count"] += k
        d["bytes"] += k * bb
        d["ring_bytes"] += k * ring
  return {"ops": ops, "bytes": sum(d["bytes"] for d in ops.values()),
          "ring_bytes": sum(d["ring_bytes"] for d in ops.values())}


# ------------------------------------------------------------------------------------ one cell


def _tree_bytes(tree, shardings=None) -> int:
  import jax
  leaves = jax.tree.leaves(tree)
  shs = jax.tree.leaves(shardings) if shardings is not None else [None] * len(leaves)
  total = 0
  for x, sh in zip(leaves, shs):
    shape = tuple(x.shape) if sh is None else tuple(sh.shard_shape(tuple(x.shape)))
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def _build(spec: str, overrides: list[str], fsdp: int, per_device_batch: int, model=None):
  """(setup, lowered-ready (state, batch, rng) structs) of `spec` on a (1, fsdp) mesh."""
  import jax
  from jaxaffect.bench.core import load_config
  from jaxaffect.data import parts
  from jaxaffect.models import registry
  from jaxaffect.train import checkpoint as ckpt_lib, loop, mesh as mesh_lib
  config = load_config(spec, overrides)
  config.mesh.data, config.mesh.fsdp = 1, fsdp
  config.batch_size = per_device_batch * fsdp
  for k, v in (model or {}).items():
    config.model[k] = v
  src = parts.source(config.data)
  if "shards" in src.cfg and not src.cfg.shards:    # the stand-in record reads nothing
    config.data.source.shards = "<bench --plan: no data read>"
  mesh = mesh_lib.make_mesh(1, fsdp, devices=jax.devices()[:fsdp])
  s = loop.build(config, mesh=mesh, sources=loop.spec_sources(config))
  shapes = dict(s.batch_shapes)
  hook = getattr(registry.model_module(config.model_name), "plan_batch", None)
  if hook is not None:                               # labels the stand-in record lacks
    shapes = hook(config, shapes)
  bsh = mesh_lib.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh) for k, v in shapes.items()}
  state = ckpt_lib.abstract_with_shardings(s.abstract_state, s.state_shardings)
  return config, s, state, batch


def _compile(s, state, batch):
  import jax
  with jax.set_mesh(s.mesh):
    t0 = time.perf_counter()
    lowered = s.train_step.lower(state, batch, jax.random.key(0))
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
  return compiled, t1 - t0, t2 - t1


def _flops(spec, overrides, per_device_batch, remat: str) -> dict[str, Any]:
  """Per-device FLOPs of the step at the config's depth from looped depth-1 and depth-2 steps
  (XLA counts a while body once)."""
  from jaxaffect import flops
  out = []
  for depth in (1, 2):
    _, s, state, batch = _build(spec, overrides, 1, per_device_batch,
                                model=dict(depth=depth, scan=False, remat_policy=remat))
    compiled, _, _ = _compile(s, state, batch)
    out.append(flops.xla_cost(compiled)["flops"])
  return {"f1": out[0], "f2": out[1]}


def run_cell(spec: str, overrides: list[str], fsdp: int, per_device_batch: int,
             with_flops: bool) -> dict[str, Any]:
  from jaxaffect import flops
  config, s, state, batch = _build(spec, overrides, fsdp, per_device_batch)
  compiled, lower_s, compile_s = _compile(s, state, batch)
  ma = compiled.memory_analysis()
  sh = s.state_shardings
  r: dict[str, Any] = {
      "config": spec, "fsdp": fsdp, "devices": fsdp, "batch": config.batch_size,
      "per_device_batch": per_device_batch, "lower_s": lower_s, "compile_s": compile_s,
      "scan": bool(config.model.get("scan", False)), "dtype": str(config.model.get("dtype", "")),
      "params": int(sum(np.prod(x.shape, dtype=np.int64)
                        for x in __import__("jax").tree.leaves(s.abstract_state["params"]))),
      "param_bytes": _tree_bytes(s.abstract_state["params"], sh["params"]),
      "opt_bytes": _tree_bytes(s.abstract_state["opt_state"], sh["opt_state"]),
      "param_bytes_replicated": _tree_bytes(s.abstract_state["params"]),
      "opt_bytes_replicated": _tree_bytes(s.abstract_state["opt_state"]),
      "temp_bytes": int(ma.temp_size_in_bytes) if ma is not None else None,
      "argument_bytes": int(ma.argument_size_in_bytes) if ma is not None else None,
      "xla_flops_per_device": flops.xla_cost(compiled)["flops"],
      "collectives": collectives(compiled.as_text(), fsdp)}
  if with_flops and "depth" in config.model:
    depth = int(config.model.depth)
    hw = _flops(spec, overrides, per_device_batch, str(config.model.get("remat_policy", "none")))
    mdl = _flops(spec, overrides, per_device_batch, "none")
    r["depth"] = depth
    r["hw_flops_per_device"] = hw["f1"] + (depth - 1) * (hw["f2"] - hw["f1"])
    r["model_flops_per_device"] = mdl["f1"] + (depth - 1) * (mdl["f2"] - mdl["f1"])
  return r


# ------------------------------------------------------------------------------------ the table


def project(r: dict[str, Any], hw: dict[str, Any]) -> dict[str, float]:
  """Projected step seconds and MFU of one cell on one accelerator (see FORMULA)."""
  link = hw["link_bytes_per_s"]
  if r["fsdp"] > hw.get("node_size", 1 << 30):
    link = hw["link_bytes_per_s_multinode"]
  compute = r["hw_flops_per_device"] / hw["peak_flops"]
  comm = r["collectives"]["ring_bytes"] / link
  step = max(compute, comm)
  return {"compute_s": compute, "comm_s": comm, "step_s": step,
          "mfu": r["model_flops_per_device"] / (step * hw["peak_flops"])}


def _subprocess_cell(spec, overrides, fsdp, per_device_batch, with_flops) -> dict[str, Any]:
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={fsdp}".strip()
  env["JAX_PLATFORMS"] = "cpu"
  arg = json.dumps({"spec": spec, "overrides": overrides, "fsdp": fsdp,
                    "per_device_batch": per_device_batch, "with_flops": with_flops})
  t0 = time.perf_counter()
  p = subprocess.run([sys.executable, "-m", "jaxaffect.bench.plan", arg], env=env,
                     capture_output=True, text=True)
  if p.returncode != 0:
    raise RuntimeError(f"bench --plan cell {spec} fsdp {fsdp} failed:\n{p.stderr[-3000:]}")
  r = json.loads(p.stdout.strip().splitlines()[-1])
  r["wall_s"] = time.perf_counter() - t0
  return r


def run(specs: list[str], overrides: list[str], fsdps: list[int], per_device_batch: int,
        log=print) -> dict[str, Any]:
  """Every (config, fsdp) cell; FLOPs once per config (the per-device batch is fixed)."""
  cells = []
  for spec in specs:
    base = None
    for n in fsdps:
      log(f"[bench --plan] {spec} fsdp {n}: compiling on {n} simulated devices")
      r = _subprocess_cell(spec, overrides, n, per_device_batch, with_flops=base is None)
      if base is None:
        base = r
      else:
        for k in ("depth", "hw_flops_per_device", "model_flops_per_device"):
          if k in base:
            r[k] = base[k]
      if "hw_flops_per_device" in r:
        r["projection"] = {name: project(r, hw) for name, hw in HARDWARE.items()}
      cells.append(r)
  return {"cells": cells, "formula": FORMULA,
          "hardware": {k: dict(v) for k, v in HARDWARE.items()}}


def format_table(result: dict[str, Any]) -> str:
  mib = 2.0 ** 20
  w = max([18] + [len(r["config"]) + 1 for r in result["cells"]])
  lines = [f"{'config':<{w}}{'fsdp':>5}{'batch':>6}{'params+opt MiB/dev':>19}{'of repl.':>9}"
           f"{'temp MiB':>9}{'TFLOP/dev':>10}{'coll. MiB':>10}{'AG/RS/AR/other':>22}"
           f"{'lower+compile s':>16}  " + "  ".join(f"{h} ms/MFU" for h in HARDWARE)]
  for r in result["cells"]:
    po = r["param_bytes"] + r["opt_bytes"]
    rep = r["param_bytes_replicated"] + r["opt_bytes_replicated"]
    temp = "-" if r["temp_bytes"] is None else f"{r['temp_bytes'] / mib:.0f}"
    tf = r.get("hw_flops_per_device", r["xla_flops_per_device"]) / 1e12
    ops = r["collectives"]["ops"]
    get = lambda *kinds: sum(ops.get(k, {}).get("bytes", 0.0) for k in kinds) / mib
    ag, rs = get("all-gather"), get("reduce-scatter", "reduce-scatter (all-reduce+slice)")
    ar = get("all-reduce")
    other = r["collectives"]["bytes"] / mib - ag - rs - ar
    split = f"{ag:.0f}/{rs:.0f}/{ar:.0f}/{other:.0f}"
    proj = "  ".join(f"{p['step_s'] * 1e3:7.1f}/{p['mfu']:4.0%}"
                     for p in r.get("projection", {}).values())
    lines.append(f"{r['config']:<{w}}{r['fsdp']:>5}{r['batch']:>6}{po / mib:>19.1f}"
                 f"{po / rep:>9.3f}{temp:>9}{tf:>10.3f}{r['collectives']['bytes'] / mib:>10.1f}"
                 f"{split:>22}{r['lower_s']:>7.1f}+{r['compile_s']:<8.1f}  {proj}")
  lines.append("formula: " + result["formula"])
  for h, v in HARDWARE.items():
    lines.append(f"  {h}: {v['source']}")
  lines.append("collective MiB = bytes per device per step (all-gather: its result; reduce-scatter: "
               "its input, incl. XLA:CPU's all-reduce+slice form); AG/RS/AR/other = all-gather / "
               "reduce-scatter / all-reduce / all-to-all + permute; ring traffic = bytes·(n−1)/n "
               "(all-reduce ×2)")
  return "\n".join(lines)


def main(args, rest: list[str]) -> int:
  """`jaxaffect bench MODEL --plan` (called by bench.core.main)."""
  from jaxaffect.bench.core import _emit
  specs = [x for x in re.split(r"[;\s]+", args.plan_configs or "") if x] or [
      args.config or args.default_config]
  fsdps = [int(x) for x in args.plan_fsdp.split(",") if x]
  result = run(specs, rest, fsdps, args.plan_batch,
               log=lambda m: print(m, file=sys.stderr, flush=True))
  return _emit(format_table(result), result, args.json)


if __name__ == "__main__":                       # one cell, in its own process (see run)
  a = json.loads(sys.argv[1])
  out = run_cell(a["spec"], a["overrides"], a["fsdp"], a["per_device_batch"], a["with_flops"])
  print(json.dumps(out), flush=True)
