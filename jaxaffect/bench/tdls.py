"""`jaxaffect bench tdls`: deformable blocks' overhead over Swin-T (issue 14 item 9; goal ≤ +25 %).

  jaxaffect bench tdls [--batch 8] [--size 224] [--steps 5] [--warmup 1] [--stages 3,4]
                       [--offsets paper|signed] [--offset-hidden N] [--fl-points 68] [--no-parts]
                       [--init host|model] [--json]
                       [--embed-dim 96 --depths 2,2,6,2 --heads 3,6,12,24 --window 7]

One process, one random batch (images, labels of `--classes`), drop path off, parameters filled
on the host (`--init host`, as `jaxaffect bench`; `model`: each model's jitted init). Variants:
  * swin: plain Swin-T (`jaxaffect.nn.swin`, every block a window block);
  * tdls (matmul) / tdls (gather): Swin-T whose odd blocks of `--stages` (1-based; default 3,4 as
    DAT: stage 3 ("window", "deformable")·3, stage 4 ("window", "deformable")) are
    `nn.deformable.DeformableBlock(mode="tdls", offsets=--offsets)`, grid_sample in its one-hot
    matmul form / its gather form; reference points from the default 7-point template; the offset
    network's conv1 has C channels (the paper gives none) or `--offset-hidden`;
  * rp (matmul): the same blocks in mode "rp" (keys at the reference points, no offset network);
  * fl (matmul): mode "fl", each image's own `--fl-points` points (68: iBUG-68) given as Swin's
    `context` (one set for every deformable block; random points near the template here).
Per variant: forward (eval-mode logits) and train step (forward + backward + AdamW, lr 1e-4,
wd 0.05, cross-entropy; as `bench swin`), timed round-robin (each round runs every variant's
forward and train step once; medians of `--steps` rounds after `--warmup`), all in JAX, so no
untimed pre-call as `bench swin` needs between frameworks. Reported: ms per step, images/s, the
ratio to swin per round (median and range; the goal is train ≤ 1.25×), parameters, XLA cost
analysis GFLOP per image of the compiled forward and train step (the matmul form's one-hot
products count as executed), device memory of the compiled train step (`memory_analysis()`:
arguments + outputs − donated + temporaries) and compile seconds.

Where the overhead goes, two ways:
  * by variants (free): rp − swin = one sampling per block + global attention (every position's
    query against N_r sampled keys) instead of window attention; tdls − rp = the offset network +
    the second sampling (with its gradient w.r.t. the points);
  * by parts (`--no-parts` skips): per deformable stage, fwd+bwd (gradient w.r.t. parameters and
    input, random cotangent) of one window block at that position, one tdls block (matmul), its two
    samplings alone (x' = φ(x; p) and x'' = φ(x; p + Δp), both forms) and its offset network alone,
    timed round-robin; attention & rest = block − window block − sampling − offsets; summed over
    the stage's deformable blocks, as shares of the blocks' total overhead. Pieces timed alone
    miss the fusion XLA does inside the whole step: the sum is an estimate, printed beside the
    end-to-end tdls − swin.
Compare ratios of one run: the machine may be shared.

Measured (2-core box shared with other jobs, load 3-12, batch 8, 224, Swin-T step 3.5-3.6 s):
with conv1 of the offset network at C channels (the literal reading of Eq. 2) tdls (matmul)
trains at 1.49× and 1.56× Swin-T in two runs (goal ≤ 1.25×; per-round ranges 1.19-2.46), 37.6 M
parameters vs 28.3 M, XLA train FLOPs +23 % (34.2 vs 27.8 GFLOP/image); the parts put 76-96 % of
the blocks' overhead in the offset networks (a 3×3 conv C → C: 0.52 GFLOP per image and block
forward in both stages), 4 % in the samplings. `--offset-hidden 96` (C/4, C/8): 1.13× (range
1.06-1.26), 29.9 M parameters, 29.9 GFLOP/image. rp 1.06-1.27×, fl (68 points) 1.03-1.08×; the
gather and matmul forms are within the noise of each other in the whole step.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

from jaxaffect.bench.core import _emit, _log, _memory, cpu_threads, host_state

WINDOW, DEFORMABLE = "window", "deformable"
# (row name, DeformableBlock settings or None for plain Swin)
VARIANTS = (("swin", None), ("tdls (matmul)", {"mode": "tdls", "form": "matmul"}),
            ("tdls (gather)", {"mode": "tdls", "form": "gather"}),
            ("rp (matmul)", {"mode": "rp", "form": "matmul"}),
            ("fl (matmul)", {"mode": "fl", "form": "matmul"}))
PARTS = ("window block", "tdls block", "sampling (matmul)", "sampling (gather)", "offset network")


def _ints(s: str) -> tuple[int, ...]:
  return tuple(int(v) for v in s.split(",") if v)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxaffect bench tdls", description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--size", type=int, default=224, help="image size")
  p.add_argument("--steps", type=int, default=5, help="timed rounds (median)")
  p.add_argument("--warmup", type=int, default=1, help="untimed rounds after the first call")
  p.add_argument("--stages", type=_ints, default=(3, 4),
                 help="1-based stages whose odd blocks are deformable")
  p.add_argument("--offsets", choices=("paper", "signed"), default="paper")
  p.add_argument("--fl-points", type=int, default=68, help="per-image points of the fl variant")
  p.add_argument("--offset-hidden", type=int, default=None,
                 help="conv1 channels of every offset network (default: the stage's C, the "
                      "literal reading of Eq. 2; 96 = C/4 in stage 3, C/8 in stage 4)")
  p.add_argument("--no-parts", action="store_true", help="skip the per-block parts timing")
  p.add_argument("--init", choices=("host", "model"), default="host",
                 help="parameters filled on the host (no compile; as `jaxaffect bench`) or the "
                      "models' jitted init")
  p.add_argument("--embed-dim", type=int, default=96)
  p.add_argument("--depths", type=_ints, default=(2, 2, 6, 2))
  p.add_argument("--heads", type=_ints, default=(3, 6, 12, 24))
  p.add_argument("--window", type=int, default=7)
  p.add_argument("--classes", type=int, default=1000)
  p.add_argument("--json", action="store_true", help="one JSON line on stdout (table to stderr)")
  return p


def block_kinds(depths, stages) -> tuple[tuple[str, ...], ...]:
  """Per stage the block kinds: in `stages` (1-based) window and deformable blocks alternate,
  window first (DAT; Swin-T: stage 3 ("window", "deformable")·3, stage 4 ("window",
  "deformable")); elsewhere window blocks only."""
  return tuple(tuple(DEFORMABLE if i + 1 in stages and j % 2 else WINDOW for j in range(d))
               for i, d in enumerate(depths))


def count_params(tree) -> int:
  import jax
  return int(sum(np.prod(np.shape(a)) for a in jax.tree.leaves(tree)))


def _model(args, block: dict | None):
  from jaxaffect.nn import deformable, swin
  kw = dict(img_size=args.size, embed_dim=args.embed_dim, depths=args.depths,
            num_heads=args.heads, window_size=args.window, num_classes=args.classes,
            drop_path_rate=0.0)
  if block is None:
    return swin.swin("swin_t", **kw)
  factory = functools.partial(deformable.DeformableBlock, offsets=args.offsets,
                              offset_hidden=args.offset_hidden, **block)
  return swin.swin("swin_t", **kw, block_kinds=block_kinds(args.depths, args.stages),
                   block_types=((DEFORMABLE, factory),))


def fl_points(batch: int, n: int, seed: int = 0) -> np.ndarray:
  """(batch, n, 2) image-normalised per-image points for the fl variant: the template's heatmap
  points, jittered per image (what a landmark detector's points look like to the sampler)."""
  from jaxaffect.nn import deformable
  base = deformable.landmark_reference_points(deformable.DEFAULT_KEYPOINTS7, sigma=3.0,
                                              num_points=n, seed=seed)
  rng = np.random.default_rng(seed)
  return (base[None] + rng.normal(0, 0.02, (batch, n, 2))).astype(np.float32)


def init_variables(init: Callable, *inputs, how: str = "host"):
  """(params, other collections) of `init(*inputs)` (a Flax init). "model": the jitted init (at 224
  its RNG makes it slower to compile than the train step); "host": parameters filled on the host
  (`core.host_state`: U(±1/√fan_in), scales 1, biases 0) at `jax.eval_shape`'s shapes, and the
  other collections (the deformable blocks' reference points) from a jit of the init that keeps
  only them (the parameters' RNG is dead code: it compiles in a fraction of a second)."""
  import jax
  if how == "model":
    v = jax.block_until_ready(jax.jit(init)(*inputs))
    return v["params"], {k: val for k, val in v.items() if k != "params"}
  shapes = jax.eval_shape(init, *inputs)
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = {"params": shapes.get("params", {})}
  params = host_state(abstract, jax.tree.map(lambda _: dev, abstract))["params"]
  others = [k for k in shapes if k != "params"]
  consts = jax.jit(lambda *a: {k: v for k, v in init(*a).items() if k in others})(*inputs)
  return params, consts


def build_variant(args, block: dict | None, x, labels) -> tuple[dict[str, Callable], dict]:
  """({"forward": f, "train step": f}, info) of one variant, compiled."""
  import jax
  import jax.numpy as jnp
  import optax

  from jaxaffect import flops

  model = _model(args, block)
  ctx = None
  if block is not None and block["mode"] == "fl":
    ctx = jnp.asarray(fl_points(args.batch, args.fl_points))
  xj, yj = jnp.asarray(x), jnp.asarray(labels)
  t0 = time.perf_counter()
  params, consts = init_variables(lambda x, c: model.init(jax.random.key(0), x, context=c),
                                  xj[:1], None if ctx is None else ctx[:1], how=args.init)
  init_s = time.perf_counter() - t0
  tx = optax.adamw(1e-4, weight_decay=0.05)

  def loss_fn(p, c, x, y, ctx):
    logits = model.apply({"params": p, **c}, x, train=True, context=ctx)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def train_step(p, o, c, x, y, ctx):
    loss, g = jax.value_and_grad(loss_fn)(p, c, x, y, ctx)
    upd, o = tx.update(g, o, p)
    return optax.apply_updates(p, upd), o, loss

  fwd = jax.jit(lambda p, c, x, ctx: model.apply({"params": p, **c}, x, context=ctx))
  step = jax.jit(train_step, donate_argnums=(0, 1))
  opt = tx.init(params)
  compile_s = {}
  t0 = time.perf_counter()
  fwd_c = fwd.lower(params, consts, xj, ctx).compile()
  compile_s["forward"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  step_c = step.lower(params, opt, consts, xj, yj, ctx).compile()
  compile_s["train step"] = time.perf_counter() - t0
  info = {"params": count_params(params), "init_s": init_s, "compile_s": compile_s,
          "gflop_per_image": {"forward": flops.xla_cost(fwd_c)["flops"] / args.batch / 1e9,
                              "train step": flops.xla_cost(step_c)["flops"] / args.batch / 1e9},
          "memory_bytes": _memory(step_c)["memory_bytes"],
          "forward_memory_bytes": _memory(fwd_c)["memory_bytes"],
          "logits_finite": bool(np.isfinite(np.asarray(fwd_c(params, consts, xj, ctx))).all())}
  state = {"p": jax.tree.map(jnp.copy, params), "o": opt}

  def run_fwd():
    jax.block_until_ready(fwd_c(params, consts, xj, ctx))

  def run_step():
    state["p"], state["o"], loss = step_c(state["p"], state["o"], consts, xj, yj, ctx)
    jax.block_until_ready(loss)
  return {"forward": run_fwd, "train step": run_step}, info


def _interleave(runners: dict[Any, Callable[[], Any]], steps: int, warmup: int
                ) -> dict[Any, list[float]]:
  """Round-robin: every runner once per round (A B C ... A B C ...); the first call and `warmup`
  rounds untimed."""
  for _ in range(1 + warmup):
    for fn in runners.values():
      fn()
  times: dict[Any, list[float]] = {k: [] for k in runners}
  for _ in range(steps):
    for k, fn in runners.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  return times


def _grad_runner(fn: Callable, params, inputs: tuple, argnums=(0,)) -> Callable[[], Any]:
  """fwd+bwd of `fn(params, *inputs)`: the jitted gradient of Σ out·cot (random cotangent) w.r.t.
  `params` and `inputs[argnums]`, compiled."""
  import jax
  import jax.numpy as jnp
  out = jax.eval_shape(fn, params, *inputs)
  cot = jnp.asarray(np.random.default_rng(1).normal(size=out.shape), out.dtype)

  def loss(p, *a):
    full = list(inputs)
    for i, val in zip(argnums, a):
      full[i] = val
    return jnp.sum(fn(p, *full) * cot)
  args = [inputs[i] for i in argnums]
  g = jax.jit(jax.grad(loss, argnums=tuple(range(1 + len(argnums))))).lower(params, *args).compile()
  return lambda: jax.block_until_ready(g(params, *args))


def _module_runner(module, x) -> Callable[[], Any]:
  """fwd+bwd of a Flax module on x (gradient w.r.t. its parameters and x)."""
  import jax
  params, consts = init_variables(lambda x: module.init(jax.random.key(0), x), x)
  return _grad_runner(lambda p, x: module.apply({"params": p, **consts}, x), params, (x,))


def _sampling_fn(points, scale, form: str) -> Callable:
  """x' = φ(x; p) and x'' = φ(x; p + Δp) of one tdls block (Eqs. 1 and 3), concatenated; Δp in map
  pixels (`scale` = one pixel in grid units), differentiated w.r.t. the map and Δp as in the
  block."""
  import jax.numpy as jnp

  from jaxaffect.nn.deformable import sample_points

  def fn(_, x, delta):
    p = jnp.broadcast_to(points[None], (x.shape[0],) + points.shape)
    s = lambda q: sample_points(x, q, align_corners=False, form=form)
    return jnp.concatenate([s(p), s(p + delta * scale)], axis=1)
  return fn


def part_runners(args) -> tuple[dict[tuple[int, str], Callable], dict[int, dict]]:
  """{(stage, part): fwd+bwd runner} and {stage: {"blocks": deformable blocks, "shape": ...}}."""
  import jax.numpy as jnp

  from jaxaffect.nn import deformable, swin
  geometry = swin.block_geometry(args.size, 4, args.window, args.depths)
  kinds = block_kinds(args.depths, args.stages)
  rng = np.random.default_rng(2)
  runners, info = {}, {}
  for s in args.stages:
    n_def = kinds[s - 1].count(DEFORMABLE)
    if not n_def:
      continue
    j = kinds[s - 1].index(DEFORMABLE)
    res, win, sh = geometry[s - 1][j]
    c, heads = args.embed_dim * 2 ** (s - 1), args.heads[s - 1]
    b, n = args.batch, int(np.prod(res))
    x = jnp.asarray(rng.normal(size=(b, *res, c)), jnp.float32)
    wblock = swin.SwinBlock(num_heads=heads, resolution=res, window=win, shift=sh)
    dblock = deformable.DeformableBlock(num_heads=heads, resolution=res, window=win, shift=sh,
                                        mode="tdls", offsets=args.offsets, form="matmul",
                                        offset_hidden=args.offset_hidden)
    points = jnp.asarray(deformable.landmark_reference_points(
        deformable.DEFAULT_KEYPOINTS7, sigma=3.0, num_points=n, seed=0))
    scale = jnp.asarray(deformable.pixels_to_grid(res, False))
    delta = jnp.asarray(rng.uniform(0, 2, (b, n, 2)), jnp.float32)   # ReLU'd offsets, pixels
    x1 = jnp.asarray(rng.normal(size=(b, n, c)), jnp.float32)
    runners[(s, "window block")] = _module_runner(wblock, x)
    runners[(s, "tdls block")] = _module_runner(dblock, x)
    for form in ("matmul", "gather"):
      runners[(s, f"sampling ({form})")] = _grad_runner(_sampling_fn(points, scale, form), {},
                                                        (x, delta), argnums=(0, 1))
    runners[(s, "offset network")] = _module_runner(
        deformable.OffsetNetwork(hidden=args.offset_hidden or c, offsets=args.offsets), x1)
    info[s] = {"blocks": n_def, "shape": f"({b},{res[0]},{res[1]},{c}) @{n}"}
  return runners, info


def parts_summary(times: dict[tuple[int, str], list[float]], info: dict[int, dict]
                  ) -> dict[str, Any]:
  """Per stage the median ms of each part and the derived attention & rest; the overhead over the
  window blocks summed over every deformable block, and each piece's share of it."""
  med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
  stages, total = [], {"overhead": 0.0, "sampling": 0.0, "offset network": 0.0,
                       "attention & rest": 0.0}
  for s, d in info.items():
    row = {"stage": s, "blocks": d["blocks"], "shape": d["shape"],
           **{p: med[(s, p)] for p in PARTS}}
    row["attention & rest"] = (row["tdls block"] - row["window block"]
                               - row["sampling (matmul)"] - row["offset network"])
    stages.append(row)
    total["overhead"] += d["blocks"] * (row["tdls block"] - row["window block"])
    total["sampling"] += d["blocks"] * row["sampling (matmul)"]
    total["offset network"] += d["blocks"] * row["offset network"]
    total["attention & rest"] += d["blocks"] * row["attention & rest"]
  ov = total["overhead"]
  shares = {k: (v / ov if ov else float("nan")) for k, v in total.items() if k != "overhead"}
  return {"stages": stages, "total_ms": total, "shares": shares}


def format_table(r: dict[str, Any]) -> str:
  kinds = " ".join(f"stage {i + 1} {k}" for i, k in enumerate(r["kind_summary"]) if k)
  lines = [f"jaxaffect bench tdls  Swin (embed {r['embed_dim']}, depths {r['depths']}, heads "
           f"{r['heads']}, window {r['window']})  deformable: {kinds}  offsets {r['offsets']}, "
           f"hidden {r['offset_hidden'] or 'C'}  "
           f"batch {r['batch']}  input {r['size']}x{r['size']}  {r['threads']} CPU threads  "
           f"median of {r['steps']} rounds",
           f"{'':15}{'fwd ms':>9}{'train ms':>10}{'img/s':>8}{'train/swin':>11}{'range':>12}"
           f"{'fwd/swin':>9}{'params':>13}{'GFLOP/img':>10}{'fwd GF/img':>11}{'mem MiB':>9}"
           f"{'compile s':>10}"]
  for name, d in r["rows"].items():
    lo, hi = min(d["train_ratio_per_round"]), max(d["train_ratio_per_round"])
    mem = "n/a" if d["memory_bytes"] is None else f"{d['memory_bytes'] / 2 ** 20:.0f}"
    lines.append(f"{name:15}{d['forward_s'] * 1e3:>9.1f}{d['train_s'] * 1e3:>10.1f}"
                 f"{d['train_img_s']:>8.2f}{d['train_over_swin']:>10.3f}x"
                 f"{f'{lo:.2f}-{hi:.2f}':>12}{d['forward_over_swin']:>8.3f}x{d['params']:>13,}"
                 f"{d['gflop_per_image']['train step']:>10.2f}"
                 f"{d['gflop_per_image']['forward']:>11.2f}{mem:>9}"
                 f"{sum(d['compile_s'].values()):>10.1f}")
  rows = r["rows"]
  tdls = rows["tdls (matmul)"]["train_s"]
  base, rp = rows["swin"]["train_s"], rows["rp (matmul)"]["train_s"]
  over = tdls - base
  pct = lambda v: f"{v / over:.0%}" if over > 0 else "n/a"
  ratio = rows["tdls (matmul)"]["train_over_swin"]
  lines.append(f"train-step overhead tdls (matmul) over swin: {ratio - 1:+.1%} (median per-round "
               f"ratio; goal <= +25%), {over * 1e3:+.1f} ms = {tdls / base - 1:+.1%} by medians")
  lines.append(f"by variants (medians): rp - swin (1st sampling + global attention vs window) "
               f"{(rp - base) * 1e3:+.1f} ms ({pct(rp - base)}), tdls - rp (offset network + 2nd "
               f"sampling) {(tdls - rp) * 1e3:+.1f} ms ({pct(tdls - rp)})")
  lines.append("(ratios per round: each variant over the swin step of the same round; fl takes "
               f"{r['fl_points']} per-image points; GFLOP: XLA cost analysis, train step incl. "
               "AdamW; mem: compiled train step, arguments + outputs - donated + temporaries)")
  p = r.get("parts")
  if p:
    lines.append(f"{'parts, fwd+bwd ms (stage (B,H,W,C) @N_r)':44}"
                 + "".join(f"{n:>11}" for n in ("window blk", "tdls blk", "sample mm",
                                                 "sample ga", "offsets", "attn+rest")))
    for s in p["stages"]:
      lines.append(f"{'stage ' + str(s['stage']) + ' ' + s['shape'] + ' x' + str(s['blocks']):44}"
                   + "".join(f"{s[k]:>11.2f}" for k in PARTS + ("attention & rest",)))
    t, sh = p["total_ms"], p["shares"]
    lines.append(f"deformable blocks' overhead by parts {t['overhead']:+.1f} ms per step "
                 f"(end to end {over * 1e3:+.1f} ms): sampling {t['sampling']:.1f} ms "
                 f"({sh['sampling']:.0%}), offset network {t['offset network']:.1f} ms "
                 f"({sh['offset network']:.0%}), attention & rest {t['attention & rest']:.1f} ms "
                 f"({sh['attention & rest']:.0%})")
  return "\n".join(lines)


def _kind_summary(kinds) -> list[str]:
  """Per stage a short text of its kinds when it has deformable blocks, else ''."""
  out = []
  for k in kinds:
    if DEFORMABLE not in k:
      out.append("")
      continue
    pair = (WINDOW, DEFORMABLE)
    if len(k) % 2 == 0 and k == pair * (len(k) // 2):
      out.append("(W,D)" + (f"*{len(k) // 2}" if len(k) > 2 else ""))
    else:
      out.append("(" + ",".join("D" if v == DEFORMABLE else "W" for v in k) + ")")
  return out


def main(argv: list[str]) -> int:
  p = _parser()
  args = p.parse_args(argv)
  if args.batch < 1 or args.steps < 1 or args.warmup < 0:
    p.error("--batch and --steps must be positive, --warmup >= 0")
  if len(args.depths) != len(args.heads):
    p.error("--depths and --heads must be of one length")
  if not args.stages or any(not 1 <= s <= len(args.depths) for s in args.stages):
    p.error(f"--stages {args.stages}: 1-based stages among 1..{len(args.depths)}")
  kinds = block_kinds(args.depths, args.stages)
  if not any(DEFORMABLE in k for k in kinds):
    p.error(f"--stages {args.stages} of depths {args.depths}: no deformable block (a stage needs "
            "at least 2 blocks, window then deformable)")
  if not 0 < args.fl_points <= 784:
    p.error("--fl-points must be in 1..784")
  if args.offset_hidden is not None and args.offset_hidden < 1:
    p.error("--offset-hidden must be positive")
  import jax
  threads = cpu_threads()
  rng = np.random.default_rng(0)
  x = rng.random((args.batch, args.size, args.size, 3), dtype=np.float32)
  labels = rng.integers(0, args.classes, (args.batch,)).astype(np.int32)
  runners, infos = {}, {}
  for name, block in VARIANTS:
    _log(f"building and compiling {name}, batch {args.batch}, {args.size}x{args.size}")
    run, infos[name] = build_variant(args, block, x, labels)
    for k, fn in run.items():
      runners[(name, k)] = fn
  _log(f"timing {args.steps} rounds of {len(runners)} runners, round-robin")
  times = _interleave(runners, args.steps, args.warmup)
  base_f, base_t = times[("swin", "forward")], times[("swin", "train step")]
  rows = {}
  for name, _ in VARIANTS:
    f, t = times[(name, "forward")], times[(name, "train step")]
    per = [a / b for a, b in zip(t, base_t)]
    rows[name] = {"forward_s": statistics.median(f), "train_s": statistics.median(t),
                  "train_img_s": args.batch / statistics.median(t),
                  "forward_img_s": args.batch / statistics.median(f),
                  "train_over_swin": statistics.median(per), "train_ratio_per_round": per,
                  "forward_over_swin": statistics.median([a / b for a, b in zip(f, base_f)]),
                  "forward_s_all": f, "train_s_all": t, **infos[name]}
  result = {"model": "tdls", "batch": args.batch, "size": args.size,
            "embed_dim": args.embed_dim, "depths": list(args.depths), "heads": list(args.heads),
            "window": args.window, "stages": list(args.stages), "offsets": args.offsets,
            "offset_hidden": args.offset_hidden,
            "fl_points": args.fl_points, "block_kinds": [list(k) for k in kinds],
            "kind_summary": _kind_summary(kinds), "threads": threads, "steps": args.steps,
            "backend": jax.default_backend(), "rows": rows}
  if not args.no_parts:
    _log("compiling and timing the parts of the deformable blocks")
    prunners, pinfo = part_runners(args)
    result["parts"] = parts_summary(_interleave(prunners, args.steps, args.warmup), pinfo)
  return _emit(format_table(result), result, args.json)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
