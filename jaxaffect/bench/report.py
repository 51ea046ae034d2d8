"""The human-readable report of one `jaxaffect bench MODEL` run (the JSON is the result dict)."""
from __future__ import annotations

import statistics
from typing import Any


def _fmt_table(r: dict[str, Any]) -> str:
  peak = r["peak_matmul"]["flops_per_s"]
  lines = [
      f"jaxaffect bench {r['model']}  config {r['config']}  batch {r['batch']}  input "
      f"{'x'.join(map(str, r['input_shape']))}  backend {r['backend']} x{r['devices']}  "
      f"{r['threads']} CPU threads",
      f"{'':18}{'step ms':>10}{r.get('unit', 'clips') + '/s':>10}{'GFLOP/s':>10}{'of peak':>9}"
      f"{'1st step s':>12}",
  ]

  def row(name, d):
    ach = r["train_step_flops"] / d["step_s"]
    return (f"{name:18}{d['step_s'] * 1e3:>10.1f}{d['clips_per_s']:>10.2f}{ach / 1e9:>10.1f}"
            f"{ach / peak:>9.1%}{d['first_step_s']:>12.2f}")

  lines.append(row("jax (XLA)", r))
  if r.get("reference"):
    lines.append(row("torch (reference)", r["reference"]))
    per = r["jax_over_torch_per_step"]
    lines.append(f"jax/torch throughput: {r['jax_over_torch']:.2f}x (step by step: median "
                 f"{statistics.median(per):.2f}x, {min(per):.2f}-{max(per):.2f}x)  "
                 f"{r['reference']['name']}, {r['reference']['params']:,} params")
  inf = r.get("inference")
  if inf:
    unit = r.get("unit", "clips")
    text = (f"inference (eval step, no grad): jax {inf['step_s'] * 1e3:.1f} ms, "
            f"{inf['per_s']:.2f} {unit}/s")
    if inf.get("reference"):
      ri = inf["reference"]
      text += (f"; torch {ri['step_s'] * 1e3:.1f} ms, {ri['per_s']:.2f} {unit}/s; jax/torch "
               f"{inf['jax_over_torch']:.2f}x")
    lines.append(text)
  mem = r["memory_bytes"]
  lines += [
      f"compile: lower {r['lower_s']:.2f} s + compile {r['compile_s']:.2f} s; first step "
      f"{r['first_step_s']:.2f} s",
      f"XLA train step {r['train_step_flops'] / 1e9:.1f} GFLOP; forward "
      f"{r['fwd_gmacs_per_clip']:.3f} GMACs/example (torch convention); {r['params']:,} params; "
      f"memory/device {'n/a' if mem is None else f'{mem / 2**20:.0f} MiB'}",
      f"peak f32 matmul {r['peak_matmul']['size']}^2 (jax): {peak / 1e9:.1f} GFLOP/s"
      + (f"; torch: {r['torch_peak_matmul']['flops_per_s'] / 1e9:.1f} GFLOP/s"
         if r.get("torch_peak_matmul") else ""),
      "(timings vary with other load on this machine; compare the ratios of one run)",
  ]
  if r.get("step_has_loops"):
    lines.append("NOTE: the compiled step has while loops (scanned layers); XLA's cost analysis "
                 "counts each loop body once, so GFLOP, GFLOP/s and 'of peak' are understated "
                 "(the step times and jax/torch ratio are not affected)")
  return "\n".join(lines)
