"""`jaxaffect bench sampling`: nn.sampling.grid_sample (both forms) vs torch grid_sample, one run.

  jaxaffect bench sampling [--batch 32] [--stages 3,4] [--repeats 5] [--stat median|min] [--json]

The deformable attention's sampling at the TDLS / DAT stage-3/4 sizes of a 224 Swin-T: the map is
laid out per offset group, `(B·groups, H, W, C/groups)`, and sampled at one point per reference
point (DAT: `grid_sample(x.reshape(B·g, C/g, H, W), pos, align_corners=True)`):
  stage 3: 14×14×384, 3 groups -> (B·3, 14, 14, 128) at 14×14 = 196 points;
  stage 4:  7× 7×768, 6 groups -> (B·6,  7,  7, 128) at  7×7  =  49 points.
Points uniform in [-1.1, 1.1] (a few fall partly outside, as deformed points do). Per stage and
implementation, on the same random inputs and a random cotangent c (loss = Σ out·c):
  * fwd: the jitted forward (torch: under `no_grad`);
  * fwd+bwd: the jitted gradient w.r.t. the map AND the grid, forward included (torch: forward
    and `backward(c)` with both requiring grad);
  * ratio: torch ms / this ms (> 1: faster than torch), per round (the two timed back to back)
    and the median over the rounds (--stat min: the ratio of the minima);
  * mem MiB: arguments + outputs + temporaries of the compiled fwd+bwd (XLA memory_analysis;
    '-' for torch).
Implementations: gather (custom_vjp), gather (autodiff), matmul (autodiff), torch (NCHW, as DAT,
with as many intra-op threads as JAX's CPUs). All runners of a stage alternate, each timed call
preceded by an untimed one (the other framework's thread pool may still spin); medians of
`--repeats`: compare ratios, not absolute milliseconds across runs (the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

from jaxaffect.bench.core import _log, _memory, cpu_threads

# stage -> (map side, channels, offset groups, points per group): DAT-T / TDLS at 224 input
STAGES = {3: (14, 384, 3, 196), 4: (7, 768, 6, 49)}
IMPLS = (("gather (custom_vjp)", "gather", "custom"), ("gather (autodiff)", "gather", "autodiff"),
         ("matmul", "matmul", "custom"))


def _inputs(batch: int, stage: int, seed: int = 0):
  side, ch, groups, points = STAGES[stage]
  n, cg = batch * groups, ch // groups
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, side, side, cg)).astype(np.float32)
  ps = int(round(points ** 0.5))
  grid = rng.uniform(-1.1, 1.1, (n, ps, ps, 2)).astype(np.float32)
  cot = rng.standard_normal((n, ps, ps, cg)).astype(np.float32)
  return x, grid, cot


def _runners(x, grid, cot) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
  """{impl: {"fwd": f, "fwd+bwd": f}} and {impl: memory} of the JAX forms and torch."""
  import jax
  import jax.numpy as jnp
  import torch
  from jaxaffect.nn.sampling import grid_sample
  jx, jg, jc = jnp.asarray(x), jnp.asarray(grid), jnp.asarray(cot)
  runners, memory = {}, {}
  for name, form, vjp in IMPLS:
    f = lambda a, b, form=form, vjp=vjp: grid_sample(a, b, align_corners=True, form=form, vjp=vjp)
    fwd = jax.jit(f)
    grad = jax.jit(jax.grad(lambda a, b, c, f=f: jnp.sum(f(a, b) * c), argnums=(0, 1)))
    memory[name] = _memory(grad.lower(jx, jg, jc).compile())
    runners[name] = {"fwd": lambda fwd=fwd: jax.block_until_ready(fwd(jx, jg)),
                     "fwd+bwd": lambda grad=grad: jax.block_until_ready(grad(jx, jg, jc))}
  F = torch.nn.functional
  tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
  tg = torch.from_numpy(grid).requires_grad_(True)
  tc = torch.from_numpy(np.ascontiguousarray(cot.transpose(0, 3, 1, 2)))
  ts = lambda: F.grid_sample(tx, tg, mode="bilinear", padding_mode="zeros", align_corners=True)

  def t_fwd():
    with torch.no_grad():
      ts()

  def t_fb():
    tx.grad = tg.grad = None
    ts().backward(tc)
  runners["torch"] = {"fwd": t_fwd, "fwd+bwd": t_fb}
  memory["torch"] = {"memory_bytes": None}
  return runners, memory


def _ratio(times, impl: str, kind: str, stat: str) -> float:
  """torch / impl. median: the median over the rounds of the round's ratio (the two ran back to
  back under the same load; steadier than a ratio of separate medians on a shared box); min: the
  ratio of the least disturbed calls."""
  j, t = times[(impl, kind)], times[("torch", kind)]
  if stat == "min":
    return min(t) / min(j)
  return float(statistics.median([b / a for a, b in zip(j, t)]))


def time_stage(batch: int, stage: int, repeats: int, stat: str = "median") -> list[dict[str, Any]]:
  x, grid, cot = _inputs(batch, stage)
  runners, memory = _runners(x, grid, cot)
  flat = {(impl, kind): f for impl, d in runners.items() for kind, f in d.items()}
  for f in flat.values():               # compile / warm up
    f()
  times: dict[tuple, list[float]] = {k: [] for k in flat}
  for _ in range(repeats):
    for k, f in flat.items():
      f()         # untimed: wakes this framework's thread pool (the other one's may still spin)
      t0 = time.perf_counter()
      f()
      times[k].append(time.perf_counter() - t0)
  agg = min if stat == "min" else statistics.median
  ms = {k: agg(v) * 1e3 for k, v in times.items()}
  side, ch, groups, points = STAGES[stage]
  shape = f"({x.shape[0]},{side},{side},{x.shape[3]}) @{points}"
  rows = []
  for impl in runners:
    rows.append({"stage": stage, "shape": shape, "impl": impl, "fwd": ms[(impl, "fwd")],
                 "fwd+bwd": ms[(impl, "fwd+bwd")],
                 "ratio fwd": _ratio(times, impl, "fwd", stat),
                 "ratio fwd+bwd": _ratio(times, impl, "fwd+bwd", stat),
                 "mem MiB": (None if memory[impl].get("memory_bytes") is None
                              else memory[impl]["memory_bytes"] / 2 ** 20)})
  return rows


COLUMNS = ("fwd", "fwd+bwd", "ratio fwd", "ratio fwd+bwd", "mem MiB")


def format_table(rows: list[dict[str, Any]], header: str) -> str:
  first = "stage (B·g,H,W,C/g) @points"
  sw = max([len(first)] + [len(f"{r['stage']} {r['shape']}") for r in rows])
  iw = max([4] + [len(r["impl"]) for r in rows])
  cw = [max(len(c), 8) for c in COLUMNS]
  lines = [header, f"| {first:<{sw}} | {'impl':<{iw}} | "
           + " | ".join(f"{c:>{w}}" for c, w in zip(COLUMNS, cw)) + " |",
           "|" + "-" * (sw + 2) + "|" + "-" * (iw + 2) + "|"
           + "|".join("-" * (w + 2) for w in cw) + "|"]
  for r in rows:
    cells = []
    for c, w in zip(COLUMNS, cw):
      v = r.get(c)
      text = "-" if v is None else (f"{v:.2f}x" if c.startswith("ratio") else
                                     f"{v:.1f}" if c == "mem MiB" else f"{v:.2f}")
      cells.append(f"{text:>{w}}")
    lines.append(f"| {str(r['stage']) + ' ' + r['shape']:<{sw}} | {r['impl']:<{iw}} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="jaxaffect bench sampling", description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=32, help="images (the map batch is images × groups)")
  p.add_argument("--stages", default="3,4", help="comma-separated Swin stages among 3,4")
  p.add_argument("--repeats", type=int, default=5, help="timed calls per runner")
  p.add_argument("--stat", choices=("median", "min"), default="median",
                 help="per runner: median, or min (the least disturbed call on a loaded machine)")
  p.add_argument("--json", action="store_true", help="one JSON line on stdout (table to stderr)")
  args = p.parse_args(argv)
  if args.batch < 1 or args.repeats < 1:
    p.error("--batch and --repeats must be positive")
  try:
    stages = [int(s) for s in args.stages.split(",") if s.strip()]
  except ValueError:
    p.error(f"--stages {args.stages!r}: expected stage numbers among 3,4 separated by commas")
  bad = [s for s in stages if s not in STAGES]
  if bad or not stages:
    p.error(f"--stages {args.stages!r}: expected stage numbers among 3,4")
  import jax
  import torch
  threads = cpu_threads()
  old = torch.get_num_threads()
  torch.set_num_threads(threads)
  rows = []
  try:
    for s in stages:
      _log(f"stage {s}")
      rows.extend(time_stage(args.batch, s, args.repeats, args.stat))
  finally:
    torch.set_num_threads(old)
  header = (f"grid_sample (bilinear, zeros, align_corners=True): ms per call ({args.stat} of "
            f"{args.repeats}), batch {args.batch} images, f32, backend {jax.default_backend()}, "
            f"{threads} threads; ratio = torch ms / ms (> 1: faster than torch)")
  text = format_table(rows, header)
  result = {"batch": args.batch, "stages": stages, "threads": threads, "repeats": args.repeats,
            "stat": args.stat, "backend": jax.default_backend(), "rows": rows}
  if args.json:
    print(text, file=sys.stderr)
    print(json.dumps(result), flush=True)
  else:
    print(text, flush=True)
  return 0
