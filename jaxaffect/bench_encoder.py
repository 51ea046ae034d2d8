"""`jaxaffect bench encoder`: compile time and step time of a TransformerEncoder stack, looped vs
scanned (`nn.scan` over identical layers), measured in one run.

  jaxaffect bench encoder [--layers 12] [--d 768] [--heads D/64] [--mlp 4D] [--batch 8]
                          [--seq 197] [--steps 5] [--warmup 1] [--remat none] [--json]

The step is a train step: loss (sum of squares of the encoder output), gradients w.r.t. the
parameters, an SGD update (`jax.jit`, parameters donated). Both layouts get the same parameters
(looped, converted with `scan_utils.stack_layers`) and the same input, so their losses agree up to
rounding. Reported per layout: `lower_s` (tracing + lowering), `compile_s` (XLA compile; the
persistent compilation cache is switched off while measuring, so this is a real compile),
`first_step_s`, median `step_s` over `--steps` steps after `--warmup` (the two layouts alternate
step by step, so a load change on the machine falls on both), the loss, and the compiled step's
temporary memory when the backend reports it. `compile_speedup` = looped / scanned compile seconds.
A readable table goes to stdout; with `--json` it goes to stderr and stdout gets one JSON line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

from jaxaffect.errors import UserError

LAYOUTS = ("looped", "scanned")


def _log(msg: str) -> None:
  print(f"[bench encoder] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _no_persistent_cache():
  """Real compiles inside: the persistent compilation cache off, restored after. JAX decides
  once per process whether it uses the cache, so the decision is reset on both edges."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", enabled)
    compilation_cache.reset_cache()


class _Step:
  """One layout's jitted train step, compiled ahead of time with its timings."""

  def __init__(self, module, params, x):
    import jax
    import jax.numpy as jnp

    def train_step(p, x):
      loss, g = jax.value_and_grad(lambda p: jnp.mean(jnp.square(module.apply({"params": p}, x))))(p)
      return jax.tree.map(lambda a, b: a - 1e-3 * b, p, g), loss

    t0 = time.perf_counter()
    lowered = jax.jit(train_step, donate_argnums=0).lower(params, x)
    t1 = time.perf_counter()
    self.compiled = lowered.compile()
    t2 = time.perf_counter()
    self.lower_s, self.compile_s = t1 - t0, t2 - t1
    self.params, self.x = params, x
    self.first_step_s = self.step()
    mem = None
    try:
      mem = self.compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports it
      pass
    self.temp_bytes = getattr(mem, "temp_size_in_bytes", None)

  def step(self) -> float:
    t = time.perf_counter()
    self.params, loss = self.compiled(self.params, self.x)
    self.loss = float(loss.block_until_ready())
    return time.perf_counter() - t


def run(layers: int = 12, d: int = 768, heads: int | None = None, mlp: int | None = None,
        batch: int = 8, seq: int = 197, steps: int = 5, warmup: int = 1, remat: str = "none",
        seed: int = 0) -> dict[str, Any]:
  """Build, compile and time both layouts; returns the report dict (see the module docstring)."""
  import jax
  import jax.numpy as jnp

  from jaxaffect.nn import attention, scan_utils
  heads = heads or max(d // 64, 1)
  mlp = mlp or 4 * d
  for name, v in (("layers", layers), ("d", d), ("heads", heads), ("mlp", mlp), ("batch", batch),
                  ("seq", seq), ("steps", steps)):
    if v < 1:
      raise UserError(f"bench encoder: --{name} must be positive, got {v}")
  if d % heads:
    raise UserError(f"bench encoder: --d {d} is not divisible by --heads {heads}")
  if remat not in attention.REMAT_POLICIES:
    raise UserError(f"bench encoder: --remat {remat!r}; expected one of "
                    f"{sorted(attention.REMAT_POLICIES)}")
  kw = dict(num_layers=layers, num_heads=heads, mlp_dim=mlp, qkv_bias=True, final_norm=True,
            remat_policy=remat)
  modules = {"looped": attention.TransformerEncoder(**kw),
             "scanned": attention.TransformerEncoder(scan=True, **kw)}
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((batch, seq, d), dtype=np.float32))
  shapes = jax.eval_shape(lambda: modules["looped"].init(jax.random.key(0), x))["params"]
  looped = jax.tree.map(  # filled on the host: no init compile
      lambda s: jnp.asarray(rng.standard_normal(s.shape, dtype=np.float32) * 0.02), shapes)
  # own copies: each step donates its parameters (the final norm's would be shared otherwise)
  params = {"looped": looped,
            "scanned": jax.tree.map(jnp.copy, scan_utils.stack_layers(looped, layers))}
  result: dict[str, Any] = {
      "layers": layers, "d": d, "heads": heads, "mlp": mlp, "batch": batch, "seq": seq,
      "steps": steps, "warmup": warmup, "remat": remat, "backend": jax.default_backend(),
      "params": int(sum(a.size for a in jax.tree.leaves(looped)))}
  runners = {}
  with _no_persistent_cache():
    for name in LAYOUTS:
      _log(f"compiling the {name} train step")
      runners[name] = _Step(modules[name], params[name], x)
  for _ in range(max(warmup - 1, 0)):
    for r in runners.values():
      r.step()
  times: dict[str, list[float]] = {n: [] for n in LAYOUTS}
  _log(f"timing {steps} steps of each, interleaved")
  for _ in range(steps):
    for n, r in runners.items():
      times[n].append(r.step())
  for n, r in runners.items():
    result[n] = {"lower_s": r.lower_s, "compile_s": r.compile_s,
                 "first_step_s": r.first_step_s, "step_s": statistics.median(times[n]),
                 "step_s_all": times[n], "loss": r.loss, "temp_bytes": r.temp_bytes}
  result["compile_speedup"] = result["looped"]["compile_s"] / result["scanned"]["compile_s"]
  result["step_ratio"] = result["scanned"]["step_s"] / result["looped"]["step_s"]
  return result


def format_table(r: dict[str, Any]) -> str:
  lines = [f"jaxaffect bench encoder  {r['layers']} layers  d {r['d']}  heads {r['heads']}  "
           f"mlp {r['mlp']}  batch {r['batch']} x seq {r['seq']}  remat {r['remat']}  "
           f"backend {r['backend']}  params {r['params'] / 1e6:.2f}M",
           f"{'layout':<9}{'lower s':>10}{'compile s':>11}{'1st step s':>12}{'step s':>10}"
           f"{'temp MB':>10}"]
  for n in LAYOUTS:
    v = r[n]
    temp = "-" if v["temp_bytes"] is None else f"{v['temp_bytes'] / 2**20:.1f}"
    lines.append(f"{n:<9}{v['lower_s']:>10.3f}{v['compile_s']:>11.3f}{v['first_step_s']:>12.4f}"
                 f"{v['step_s']:>10.4f}{temp:>10}")
  lines.append(f"compile looped/scanned {r['compile_speedup']:.2f}x; step scanned/looped "
               f"{r['step_ratio']:.2f} (timings vary with other load on this machine)")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="jaxaffect bench encoder", description=__doc__.split("\n")[0])
  p.add_argument("--layers", type=int, default=12)
  p.add_argument("--d", type=int, default=768, help="model width")
  p.add_argument("--heads", type=int, default=None, help="default d/64")
  p.add_argument("--mlp", type=int, default=None, help="feed-forward width, default 4d")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=197, help="tokens per example")
  p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps, the first included")
  p.add_argument("--remat", default="none", help="remat policy of both layouts: none, full, "
                 "dots_saveable, dots_with_no_batch_dims_saveable")
  p.add_argument("--json", action="store_true", help="print one JSON line (table to stderr)")
  a = p.parse_args(argv)
  r = run(a.layers, a.d, a.heads, a.mlp, a.batch, a.seq, a.steps, a.warmup, a.remat)
  text = format_table(r)
  if a.json:
    print(text, file=sys.stderr)
    print(json.dumps(r), flush=True)
  else:
    print(text, flush=True)
  return 0
