"""`jaxaffect bench swin`: our Swin-T (`jaxaffect.nn.swin`) beside timm's `SwinTransformer` in one run.

  jaxaffect bench swin [--reference] [--batch 8] [--size 224] [--steps 5] [--warmup 1] [--json]
                       [--embed-dim 96 --depths 2,2,6,2 --heads 3,6,12,24 --window 7] [--parts]

Both models hold the same weights (ours exported to timm's keys) and see the same batch (random
images, random labels of 1000 classes). Timed, interleaved step by step so that a change of the
machine's load falls on both alike (each timed call preceded by an untimed one, so that the
switch between the two frameworks' thread pools is not timed; medians of `--steps`):
  * forward: eval-mode logits (jitted apply / torch `no_grad` eval forward);
  * train step: forward + backward + AdamW update (optax.adamw / torch.optim.AdamW, lr 1e-4,
    wd 0.05) on the cross-entropy loss, drop path off on both sides (the same arithmetic).
Reported: images/s of each, the jax/torch ratio (> 1: JAX faster; goal ≥ 1.0), the compile time
of each jitted function (lower + compile) and the largest |logit difference| of the two forwards.
`--parts` also times, on the stage-1 block input, the pieces of one window block in JAX (LayerNorm,
roll + window partition/reverse, the relative-bias gather, the attention core, the qkv/proj/MLP
matmuls) beside their torch counterparts, to say which op limits the ratio.
Torch runs with as many intra-op threads as JAX's CPUs (`core.cpu_threads`).

Measured (2-core box shared with other jobs, batch 8, 224, Swin-T): forward 374 vs 456 ms (1.22x),
train step 1599 vs 1947 ms (1.22x; torch's steps ranged widely under load). Before the block
Dense layers ran on flattened 2-D matrices the JAX train step took 1918 ms (0.70x of torch's
1336 ms in that run): `--parts` showed Dense → erf GELU → Dense fwd+bwd 0.37x of torch on the
4-D (B, nW, N, C) map but 1.13x on the (B·nW·N, C) view; LayerNorm, roll + window partition,
the relative-bias gather and the attention core were all faster than torch. Under heavy load
(load average 11-15) torch's OpenMP pool degrades far more than XLA's (ratios of 2-3.7x then):
compare runs on a quiet machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

from jaxaffect.bench.core import _emit, _log, cpu_threads


def _ints(s: str) -> tuple[int, ...]:
  return tuple(int(v) for v in s.split(",") if v)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxaffect bench swin", description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--size", type=int, default=224, help="image size")
  p.add_argument("--steps", type=int, default=5, help="timed steps (median)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
  p.add_argument("--embed-dim", type=int, default=96)
  p.add_argument("--depths", type=_ints, default=(2, 2, 6, 2))
  p.add_argument("--heads", type=_ints, default=(3, 6, 12, 24))
  p.add_argument("--window", type=int, default=7)
  p.add_argument("--classes", type=int, default=1000)
  p.add_argument("--parts", action="store_true", help="also time the pieces of one block")
  p.add_argument("--reference", action="store_true",
                 help="accepted (issue 14's command line): timm's model is always timed beside")
  p.add_argument("--json", action="store_true", help="one JSON line on stdout (table to stderr)")
  p.add_argument("--profile", action="store_true", help="per-op breakdown of both train steps "
                 "(bench/profile.py)")
  return p


def _timed(fn: Callable[[], Any]) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def _interleave(runners: dict[str, Callable[[], Any]], steps: int, warmup: int
                ) -> dict[str, list[float]]:
  for _ in range(warmup):
    for fn in runners.values():
      fn()
  times: dict[str, list[float]] = {k: [] for k in runners}
  for _ in range(steps):
    for k, fn in runners.items():
      fn()                                   # untimed: the other framework's pool goes idle
      times[k].append(_timed(fn))
  return times


def build(args):
  """(jax runners, torch runners, info): the jitted forward / train step and timm's."""
  import jax
  import jax.numpy as jnp
  import optax
  import torch
  from timm.models.swin_transformer import SwinTransformer as TimmSwin

  from jaxaffect.interop import swin as swin_map
  from jaxaffect.nn import swin

  kw = dict(img_size=args.size, patch_size=4, embed_dim=args.embed_dim, depths=args.depths,
            num_heads=args.heads, window_size=args.window, num_classes=args.classes)
  model = swin.SwinTransformer(**kw, drop_path_rate=0.0)
  b, s = args.batch, args.size
  rng = np.random.default_rng(0)
  x = rng.random((b, s, s, 3), dtype=np.float32)
  labels = rng.integers(0, args.classes, (b,)).astype(np.int32)
  t0 = time.perf_counter()
  params = jax.jit(lambda x: model.init(jax.random.key(0), x))(x[:1])["params"]
  params = jax.block_until_ready(params)
  init_s = time.perf_counter() - t0

  tmodel = TimmSwin(**kw, drop_path_rate=0.0)
  sd = swin_map.to_timm({"params": params})
  tmodel.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  lt = torch.from_numpy(labels.astype(np.int64))
  topt = torch.optim.AdamW(tmodel.parameters(), lr=1e-4, weight_decay=0.05)

  tx = optax.adamw(1e-4, weight_decay=0.05)

  def loss_fn(p, x, y):
    logits = model.apply({"params": p}, x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def train_step(p, o, x, y):
    loss, g = jax.value_and_grad(loss_fn)(p, x, y)
    upd, o = tx.update(g, o, p)
    return optax.apply_updates(p, upd), o, loss

  fwd = jax.jit(lambda p, x: model.apply({"params": p}, x))
  step = jax.jit(train_step, donate_argnums=(0, 1))
  xj, yj = jnp.asarray(x), jnp.asarray(labels)
  opt = tx.init(params)
  compile_s = {}
  t0 = time.perf_counter()
  fwd_c = fwd.lower(params, xj).compile()
  compile_s["forward"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  step_c = step.lower(params, opt, xj, yj).compile()
  compile_s["train step"] = time.perf_counter() - t0

  y_jax = np.asarray(fwd_c(params, xj))
  tmodel.eval()
  with torch.no_grad():
    y_t = tmodel(xt).numpy()
  state = {"p": jax.tree.map(jnp.copy, params), "o": opt}

  def j_fwd():
    jax.block_until_ready(fwd_c(params, xj))

  def j_step():
    state["p"], state["o"], loss = step_c(state["p"], state["o"], xj, yj)
    jax.block_until_ready(loss)

  def t_fwd():
    tmodel.eval()
    with torch.no_grad():
      tmodel(xt)

  def t_step():
    tmodel.train()
    topt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(tmodel(xt), lt)
    loss.backward()
    topt.step()

  info = {"init_s": init_s, "compile_s": compile_s,
          "forward_max_abs_diff": float(np.abs(y_jax - y_t).max()),
          "logit_scale": float(np.abs(y_t).max()),
          "params": int(sum(p.numel() for p in tmodel.parameters())),
          "_step_compiled": step_c}
  return {"forward": (j_fwd, t_fwd), "train step": (j_step, t_step)}, info


def parts(args) -> list[dict[str, Any]]:
  """Forward+backward of the pieces of one stage-1 window block (B, H/4, W/4, C), JAX vs torch."""
  import jax
  import jax.numpy as jnp
  import torch
  import torch.nn.functional as F

  from jaxaffect.nn import swin

  b, c, heads, w = args.batch, args.embed_dim, args.heads[0], args.window
  h = -(-(args.size // 4) // w) * w           # the stage-1 map, padded to whole windows
  n = w * w
  nw = (h // w) ** 2
  rng = np.random.default_rng(0)
  x = rng.normal(size=(b, h, h, c)).astype(np.float32)
  win = rng.normal(size=(b, nw, n, c)).astype(np.float32)
  qkv = rng.normal(size=(b * nw, heads, n, 3, c // heads)).astype(np.float32)
  table = rng.normal(size=((2 * w - 1) ** 2, heads)).astype(np.float32)
  idx = swin.relative_position_index(w)
  mask = swin.shifted_window_mask((h, h), (w, w), (w // 2, w // 2))
  wm = (rng.normal(size=(c, 4 * c)) / np.sqrt(c)).astype(np.float32)
  ln_g, ln_b = np.ones(c, np.float32), np.zeros(c, np.float32)

  def jln(x):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + 1e-5) * ln_g + ln_b

  def jpart(x):
    y = jnp.roll(x, (-(w // 2), -(w // 2)), axis=(1, 2))
    return jnp.roll(swin.window_reverse(swin.window_partition(y, (w, w)), (w, w), h, h),
                    (w // 2, w // 2), axis=(1, 2))

  def jbias(t):
    return jnp.take(t, idx.reshape(-1), axis=0).reshape(n, n, heads).transpose(2, 0, 1)

  def jattn(qkv):
    q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
    a = jnp.einsum("bhqd,bhkd->bhqk", q, k) * (c // heads) ** -0.5
    a = a.reshape(b, nw, heads, n, n) + jnp.asarray(mask)[:, None]
    a = jax.nn.softmax(a.reshape(b * nw, heads, n, n), -1)
    return jnp.einsum("bhqk,bhkd->bhqd", a, v)

  def jmlp(x, wm):
    return jax.nn.gelu(x @ wm, approximate=False) @ wm.T

  ti = torch.from_numpy(idx.astype(np.int64)).reshape(-1)
  tm = torch.from_numpy(mask)

  def tpart(x):
    y = torch.roll(x, (-(w // 2), -(w // 2)), (1, 2))
    y = y.view(b, h // w, w, h // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c)
    y = y.view(b, h // w, h // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, h, c)
    return torch.roll(y, (w // 2, w // 2), (1, 2))

  def tbias(t):
    return t[ti].view(n, n, -1).permute(2, 0, 1).contiguous()

  def tattn(qkv):
    q, k, v = qkv[..., 0, :] * (c // heads) ** -0.5, qkv[..., 1, :], qkv[..., 2, :]
    a = (q @ k.transpose(-2, -1)).view(b, nw, heads, n, n) + tm[:, None]
    return torch.softmax(a.view(-1, heads, n, n), -1) @ v

  cases = [("layernorm", jln, lambda x: F.layer_norm(x, (c,), eps=1e-5), (x,)),
           ("roll+partition+reverse", jpart, tpart, (x,)),
           ("relative-bias gather", jbias, tbias, (table,)),
           ("attention core (+mask)", jattn, tattn, (qkv,)),
           ("mlp fc1-gelu-fc2 4-D", jmlp, lambda x, wm: F.gelu(x @ wm) @ wm.T, (win, wm)),
           ("mlp fc1-gelu-fc2 2-D", jmlp, lambda x, wm: F.gelu(x @ wm) @ wm.T,
            (win.reshape(-1, c), wm))]
  rows = []
  for name, jf, tf, inputs in cases:
    def jloss(*a, jf=jf):
      return jnp.sum(jf(*a) ** 2)
    jg = jax.jit(jax.grad(jloss, argnums=tuple(range(len(inputs)))))
    ja = [jnp.asarray(a) for a in inputs]
    jax.block_until_ready(jg(*ja))

    def j_run(jg=jg, ja=ja):
      jax.block_until_ready(jg(*ja))
    tens = [torch.from_numpy(a.copy()).requires_grad_(True) for a in inputs]

    def t_run(tf=tf, tens=tens):
      for t in tens:
        t.grad = None
      (tf(*tens) ** 2).sum().backward()
    times = _interleave({"jax": j_run, "torch": t_run}, args.steps, 1)
    j, t = statistics.median(times["jax"]), statistics.median(times["torch"])
    rows.append({"part": name, "jax_ms": j * 1e3, "torch_ms": t * 1e3, "ratio": t / j})
  return rows


def format_table(r: dict[str, Any]) -> str:
  lines = [f"jaxaffect bench swin  Swin (embed {r['embed_dim']}, depths {r['depths']}, heads "
           f"{r['heads']}, window {r['window']})  batch {r['batch']}  input {r['size']}x"
           f"{r['size']}  {r['threads']} CPU threads  {r['params']:,} params",
           f"{'':12}{'jax ms':>10}{'torch ms':>10}{'jax img/s':>11}{'torch img/s':>12}"
           f"{'jax/torch':>10}{'compile s':>11}"]
  for name, d in r["rows"].items():
    lines.append(f"{name:12}{d['jax_s'] * 1e3:>10.1f}{d['torch_s'] * 1e3:>10.1f}"
                 f"{d['jax_img_s']:>11.2f}{d['torch_img_s']:>12.2f}{d['jax_over_torch']:>9.2f}x"
                 f"{d['compile_s']:>11.1f}")
  lines.append(f"forward max |jax - torch| {r['forward_max_abs_diff']:.3g} (logits up to "
               f"{r['logit_scale']:.3g}); init {r['init_s']:.1f} s; per-step ratios "
               + "; ".join(f"{k} {min(d['per_step']):.2f}-{max(d['per_step']):.2f}x"
                           for k, d in r["rows"].items()))
  if r.get("parts"):
    lines.append(f"{'block part (fwd+bwd, stage 1)':32}{'jax ms':>10}{'torch ms':>10}"
                 f"{'torch/jax':>10}")
    for p in r["parts"]:
      lines.append(f"{p['part']:32}{p['jax_ms']:>10.2f}{p['torch_ms']:>10.2f}{p['ratio']:>9.2f}x")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  if args.batch < 1 or args.steps < 1 or len(args.depths) != len(args.heads):
    print("jaxaffect bench swin: --batch and --steps must be positive, --depths and --heads of "
          "one length", file=sys.stderr)
    return 2
  import torch
  threads = cpu_threads()
  old = torch.get_num_threads()
  torch.set_num_threads(threads)
  try:
    _log(f"building Swin (ours and timm's), batch {args.batch}, {args.size}x{args.size}")
    runners, info = build(args)
    step_compiled = info.pop("_step_compiled")
    _log(f"timing {args.steps} steps of each, interleaved")
    flat = {f"{k}/{fw}": fn for k, (j, t) in runners.items() for fw, fn in (("jax", j),
                                                                           ("torch", t))}
    times = _interleave(flat, args.steps, args.warmup)
    rows = {}
    for k in runners:
      j, t = times[f"{k}/jax"], times[f"{k}/torch"]
      js, ts = statistics.median(j), statistics.median(t)
      rows[k] = {"jax_s": js, "torch_s": ts, "jax_img_s": args.batch / js,
                 "torch_img_s": args.batch / ts, "jax_over_torch": ts / js,
                 "per_step": [b / a for a, b in zip(j, t)], "jax_s_all": j, "torch_s_all": t,
                 "compile_s": info["compile_s"][k]}
    result = {"model": "swin", "batch": args.batch, "size": args.size,
              "embed_dim": args.embed_dim, "depths": list(args.depths),
              "heads": list(args.heads), "window": args.window, "threads": threads,
              "steps": args.steps, "rows": rows, **{k: v for k, v in info.items()
                                                    if k != "compile_s"}}
    if args.parts:
      _log("timing the parts of one block")
      result["parts"] = parts(args)
    if args.profile:
      from jaxaffect.bench import profile
      _log(f"profiling {args.steps} train steps op by op")
      j_step, t_step = runners["train step"]
      result["profile"] = {"jax": profile.profile_jax(step_compiled, j_step, args.steps),
                           "torch": profile.profile_torch(t_step, args.steps)}
  finally:
    torch.set_num_threads(old)
  text = format_table(result)
  if "profile" in result:
    from jaxaffect.bench import profile
    text += "\n\n" + profile.format_profile(result["profile"]["jax"], result["profile"]["torch"])
  return _emit(text, result, args.json)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
