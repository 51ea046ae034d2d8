"""`jaxaffect bench MODEL --profile`: where a compiled train step spends its time, op by op.

The step runs under `jax.profiler` for a few steps; XLA:CPU records one trace event per executed
thunk, named after its HLO instruction (`ynn_fusion.7`, `wrapped_reduce-window`, `convolution.3`,
...). Each instruction is looked up in the compiled module's HLO text: its opcode, result shape, the
"heavy" ops inside a fusion (convolution, dot, reduce-window, scatter, ...) and the JAX source of
its metadata (`op_name`: the module path and primitive). Its pass: `transpose(...)` in the op name
marks a backward op, `jvp(...)` a forward one, neither the optimizer and metrics ('other'), no
metadata at all 'n/a'. The report gives the top instructions and the time per (kind, pass), per
step, against the step's wall time.

With `--reference`, the PyTorch step is profiled the same way (`torch.profiler`, self CPU time
per aten op), so the two breakdowns sit side by side.

Event durations are wall times of the thunk on the thread that ran it; XLA:CPU may run independent
thunks concurrently, so their sum can exceed the step (shown as "sum of ops / step").
"""
from __future__ import annotations

import collections
import glob
import os
import re
import shutil
import tempfile
import time
from typing import Any, Callable

# Opcodes that decide what a fusion "is", by priority (the first one found inside names the kind).
HEAVY = ("convolution", "dot", "custom-call", "select-and-scatter", "scatter", "gather",
         "reduce-window", "sort", "reduce", "transpose", "concatenate", "pad", "dynamic-slice",
         "dynamic-update-slice", "copy")
# Thunks that run other thunks (a scan's while loop): their span covers their body's thunks, which
# are traced and counted themselves, so they are reported apart, not summed.
CONTAINERS = ("while", "conditional", "call")
_TRIVIAL = {"parameter", "constant", "bitcast", "broadcast", "reshape", "tuple",
            "get-tuple-element", "iota", "slice"}

_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INST = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\(.*?\)|\S+)\s+([\w\-]+)\((.*)$")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_OPNAME = re.compile(r'op_name="([^"]*)"')


def hlo_index(text: str) -> dict[str, dict[str, Any]]:
  """Every instruction of an HLO module's text → {opcode, shape, kind, op_name}; `kind` is the
  opcode, or for a fusion/call the heaviest opcode inside what it calls (`HEAVY` order), or
  'elementwise'."""
  comps: dict[str, list[tuple[str, str, str, str]]] = {}
  insts: dict[str, dict[str, Any]] = {}
  current = None
  for line in text.splitlines():
    m = _COMP.match(line)
    if m and not line.startswith(" "):
      current = m.group(1)
      comps[current] = []
      continue
    m = _INST.match(line)
    if m and current is not None:
      name, shape, opcode, rest = m.groups()
      calls = _CALLS.findall(rest)
      op = _OPNAME.search(rest)
      comps[current].append((name, opcode, shape, rest))
      insts[name] = {"opcode": opcode, "shape": shape, "calls": calls,
                     "op_name": op.group(1) if op else ""}

  memo: dict[str, set[str]] = {}

  def ops_in(comp: str, depth: int = 0) -> set[str]:
    if comp in memo or depth > 20:
      return memo.get(comp, set())
    out: set[str] = set()
    for name, opcode, _, _ in comps.get(comp, []):
      out.add(opcode)
      for c in insts[name]["calls"]:
        out |= ops_in(c, depth + 1)
    memo[comp] = out
    return out

  for name, d in insts.items():
    inside = {d["opcode"]}
    for c in d["calls"]:
      inside |= ops_in(c)
      if not d["op_name"]:                     # a fusion's metadata may sit on its root only
        for n2, _, _, rest in comps.get(c, []):
          op = _OPNAME.search(rest)
          if op:
            d["op_name"] = op.group(1)
    kind = next((h for h in HEAVY if h in inside), None)
    if kind is None:
      kind = ("elementwise" if d["opcode"] in ("fusion", "call") or inside - _TRIVIAL
              else d["opcode"])
    d["kind"] = kind
  return insts


def pass_of(op_name: str) -> str:
  """'bwd' for ops from a VJP transpose, 'fwd' for the linearised forward, 'n/a' for an op XLA
  left without source metadata (e.g. the weight-gradient convolutions its passes rewrite), else
  'other' (optimizer, metrics)."""
  if not op_name:
    return "n/a"
  if "transpose(" in op_name:
    return "bwd"
  if "jvp(" in op_name or "checkpoint" in op_name or "remat" in op_name:
    return "fwd"
  return "other"


def _source(op_name: str, keep: int = 3) -> str:
  parts = [p for p in op_name.split("/") if p and not p.startswith("jit(")]
  return "/".join(parts[-keep:])


def trace_thunks(run: Callable[[], None], steps: int,
                 names: set[str] | None = None) -> tuple[dict[str, float], float]:
  """Run `run` (one blocked step) `steps` times under the JAX profiler; return seconds per step
  per executed thunk name (summed over threads) and the mean wall seconds per step. Thunks may run
  on XLA's threads or inline on the calling (Python) thread: on the latter only events named in
  `names` (the HLO's instructions) are kept."""
  import jax
  d = tempfile.mkdtemp(prefix="jaxaffect_profile_")
  try:
    jax.profiler.start_trace(d)
    t0 = time.perf_counter()
    try:
      for _ in range(steps):
        run()
    finally:
      wall = (time.perf_counter() - t0) / steps
      jax.profiler.stop_trace()
    files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
    if not files:
      raise RuntimeError("jax.profiler wrote no .xplane.pb trace")
    data = jax.profiler.ProfileData.from_file(files[0])
    # A thunk's event marks its dispatch; an asynchronous one (e.g. an Eigen convolution handed
    # to the thread pool) finishes later, at its flow event "end: NAME". A thunk's time is from
    # its event's start to the matching "end:" (the i-th start of a name with its i-th end), or
    # the event's own duration when that is longer or no end was recorded.
    starts: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    ends: dict[str, list[int]] = collections.defaultdict(list)
    for plane in data.planes:
      if not plane.name.startswith("/host:CPU") and not plane.name.startswith("/device:"):
        continue
      for line in plane.lines:
        xla_line = line.name.startswith(("tf_XLA", "XLA", "Stream", "Ops"))
        for ev in line.events:
          n = ev.name
          if n.startswith("end: "):
            ends[n[5:]].append(ev.start_ns)
            continue
          if n.startswith(("ThunkExecutor", "ThreadpoolListener", "SlinkyThreadPool", "Eigen")):
            continue
          if not xla_line and (names is None or n not in names):
            continue
          starts[n].append((ev.start_ns, ev.duration_ns))
    totals: dict[str, float] = collections.defaultdict(float)
    for n, st in starts.items():
      st.sort()
      en = sorted(ends.get(n, ()))
      j = 0
      for t0, dur in st:
        while j < len(en) and en[j] < t0:
          j += 1
        span = dur
        if j < len(en):
          span = max(dur, en[j] - t0)
          j += 1
        totals[n] += span * 1e-9 / steps
    return dict(totals), wall
  finally:
    shutil.rmtree(d, ignore_errors=True)


def profile_jax(compiled, run: Callable[[], None], steps: int, top: int = 25) -> dict[str, Any]:
  """The per-op breakdown of `compiled` (an AOT-compiled step) run by `run`."""
  index = hlo_index(compiled.as_text())
  totals, wall = trace_thunks(run, steps, set(index))
  rows, unknown, containers = [], 0.0, {}
  for name, s in totals.items():
    d = index.get(name)
    if d is None:
      unknown += s
      continue
    if d["opcode"] in CONTAINERS:              # its body's thunks are counted themselves
      containers[name] = s
      continue
    rows.append({"name": name, "s": s, "kind": d["kind"], "pass": pass_of(d["op_name"]),
                 "shape": d["shape"][:60], "source": _source(d["op_name"])})
  rows.sort(key=lambda r: -r["s"])
  groups: dict[tuple[str, str], float] = collections.defaultdict(float)
  for r in rows:
    groups[(r["kind"], r["pass"])] += r["s"]
  total = sum(r["s"] for r in rows)
  return {"step_s": wall, "ops_s": total, "unmatched_s": unknown, "n_ops": len(rows),
          "containers_s": containers,
          "top": rows[:top],
          "groups": sorted(({"kind": k, "pass": p, "s": s} for (k, p), s in groups.items()),
                           key=lambda g: -g["s"])}


def profile_torch(step: Callable[[], Any], steps: int, top: int = 25) -> dict[str, Any]:
  """Self CPU time per aten op of a PyTorch step (`torch.profiler`), per step."""
  import torch
  t0 = time.perf_counter()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
  wall = (time.perf_counter() - t0) / steps
  rows = []
  for e in prof.key_averages():
    s = e.self_cpu_time_total * 1e-6 / steps
    if s > 0:
      rows.append({"name": e.key, "s": s, "calls": e.count / steps})
  rows.sort(key=lambda r: -r["s"])
  return {"step_s": wall, "ops_s": sum(r["s"] for r in rows), "top": rows[:top]}


def format_profile(jp: dict[str, Any], tp: dict[str, Any] | None = None) -> str:
  """The readable tables of `profile_jax` (and `profile_torch`)."""
  out = [f"XLA step {jp['step_s'] * 1e3:.1f} ms under the profiler; {jp['n_ops']} ops sum "
         f"{jp['ops_s'] * 1e3:.1f} ms ({jp['ops_s'] / jp['step_s']:.2f} of the step)"
         + (f"; {jp['unmatched_s'] * 1e3:.1f} ms in events not in the HLO" if jp["unmatched_s"]
            > 1e-4 else ""),
         *([f"loops (spans include their bodies' ops, not summed): " + ", ".join(
             f"{k} {v * 1e3:.0f} ms" for k, v in sorted(jp["containers_s"].items(),
                                                        key=lambda kv: -kv[1])[:6])]
           if jp.get("containers_s") else []),
         "", "by kind and pass (ms per step, share of the ops' sum):",
         f"  {'kind':<22} {'pass':<6} {'ms':>9} {'share':>7}"]
  for g in jp["groups"]:
    if g["s"] * 1e3 < 0.05:
      continue
    out.append(f"  {g['kind']:<22} {g['pass']:<6} {g['s'] * 1e3:>9.1f} "
               f"{g['s'] / jp['ops_s']:>6.1%}")
  out += ["", "top ops:", f"  {'ms':>8} {'share':>6}  {'kind':<18} {'pass':<5} {'hlo':<30} "
                          f"{'shape':<28} source"]
  for r in jp["top"]:
    out.append(f"  {r['s'] * 1e3:>8.1f} {r['s'] / jp['ops_s']:>6.1%}  {r['kind']:<18} "
               f"{r['pass']:<5} {r['name'][:30]:<30} {r['shape'][:28]:<28} {r['source']}")
  if tp is not None:
    out += ["", f"PyTorch step {tp['step_s'] * 1e3:.1f} ms under torch.profiler; self CPU time "
                f"sums {tp['ops_s'] * 1e3:.1f} ms", f"  {'ms':>8} {'share':>6} {'calls':>6}  op"]
    for r in tp["top"]:
      out.append(f"  {r['s'] * 1e3:>8.1f} {r['s'] / tp['ops_s']:>6.1%} {r['calls']:>6.0f}  "
                 f"{r['name']}")
  return "\n".join(out)


# ------------------------------------------------------------------------- `jaxaffect bench` glue


def add_arguments(p) -> None:
  p.add_argument("--profile", action="store_true", help="per-op breakdown of the train step "
                 "(jax.profiler thunks mapped to the HLO; with --reference also torch.profiler)")
  p.add_argument("--profile-top", type=int, default=25, help="with --profile: ops listed")


def for_bench(args, jstep, tstep) -> dict[str, Any]:
  """The profiles of a `bench/core.py` run: its `JaxStep` and, if any, its `TorchStep`."""
  from jaxaffect.bench.core import _log
  _log(f"profiling {args.steps} steps op by op")
  out = {"jax": profile_jax(jstep.compiled, jstep.step, args.steps, args.profile_top)}
  if tstep is not None:
    out["torch"] = profile_torch(tstep.step, args.steps, args.profile_top)
  return out


def report_text(result: dict[str, Any]) -> str:
  """The profile tables to append to a bench report ('' without --profile)."""
  if "profile" not in result:
    return ""
  return "\n\n" + format_profile(result["profile"]["jax"], result["profile"].get("torch"))
