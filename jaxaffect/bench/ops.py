"""`jaxaffect bench ops`: forward and gradient of each op the models use, JAX vs PyTorch in one run.

  jaxaffect bench ops [--batch 32] [--size 112[,224]] [--repeats 5] [--only SUBSTR[,SUBSTR]] [--json]

Ops: the convolutions of ResNet-18 by kernel, stride and size at the given input sizes (stem 7×7/2,
the 3×3 convs of each stage, the stride-2 3×3 and 1×1 downsample convs), max-pool 3×3/2 pad 1,
BatchNorm in train mode (jaxaffect's torch-exact one vs `nn.BatchNorm2d`), attention (packed qkv,
softmax, output projection: Former-DFER's spatial 7×7 tokens at d 256 and temporal 17 tokens at d
512, 8 heads), GELU (tanh and erf) and the ABAW TCN's dilated causal conv 1-D (k 5, 300 frames).
Per op, on random inputs and a random cotangent c (loss = Σ out·c):
  * jax fwd: the jitted forward;  torch fwd: the forward under `no_grad`;
  * jax grad: `jax.grad` of the loss w.r.t. the input and the parameters (the forward included);
    the stem conv w.r.t. its weights only (its input is the image); torch fwd+bwd: forward and
    `backward(c)`, the same arguments requiring grad;
  * jax fast: the same gradient with the op's `jaxaffect.nn.fast_grads` alternative switched on
    (max-pool, conv), '-' where there is none; ratio = torch fwd+bwd / jax grad (> 1: JAX faster),
    `ratio fast` the same with the alternative.
Torch runs NCHW (as the official code) with as many intra-op threads as JAX's CPUs (`cpu_threads`).
All runners of an op alternate (each timed call preceded by an untimed one, so that the switch
from the other framework's thread pool is not timed), medians of `--repeats`: compare ratios, not
absolute milliseconds across runs (the machine may be shared).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

from jaxaffect.bench.core import _log, cpu_threads


@dataclasses.dataclass
class Op:
  name: str
  jax_fn: Callable[..., Any]            # (flag, x, *params) -> out; flag: fast_grads switch
  torch_fn: Callable[..., Any]          # (x, *params) -> out
  x_shape: tuple                        # JAX layout
  param_shapes: tuple = ()              # JAX layouts
  to_torch: Callable[[np.ndarray], np.ndarray] = lambda a: a      # the input's torch layout
  params_to_torch: Callable[[list], list] = lambda ps: ps
  fast: bool = False                    # has a fast_grads alternative
  grad_x: bool = True                   # gradient w.r.t. the input too


def _nchw(a):
  return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _hwio_to_oihw(ps):
  return [np.ascontiguousarray(p.transpose(3, 2, 0, 1)) for p in ps]


def conv_op(name, b, h, cin, cout, k, s, grad_x=True) -> Op:
  import torch
  from jax import lax
  from jaxaffect.nn import fast_grads
  p = (k - 1) // 2

  def jf(flag, x, w):
    conv = fast_grads.conv_general_dilated if flag else lax.conv_general_dilated
    return conv(x, w, (s, s), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

  tf = lambda x, w: torch.nn.functional.conv2d(x, w, stride=s, padding=p)
  return Op(f"{name} conv {k}x{k}/{s} {cin}->{cout} @{h}", jf, tf, (b, h, h, cin),
            ((k, k, cin, cout),), _nchw, _hwio_to_oihw, fast=True, grad_x=grad_x)


def resnet_ops(b: int, size: int) -> list[Op]:
  import torch
  from jaxaffect.nn import fast_grads
  from jaxaffect.nn.layers import BatchNorm
  s2, s4 = size // 2, size // 4
  ops = [conv_op("stem", b, size, 3, 64, 7, 2, grad_x=False)]
  pad = ((1, 1), (1, 1))
  ops.append(Op(f"max-pool 3x3/2 64 @{s2}",
                lambda flag, x: fast_grads.max_pool(x, (3, 3), (2, 2), pad, flag=bool(flag)),
                lambda x: torch.nn.functional.max_pool2d(x, 3, 2, 1), (b, s2, s2, 64), (),
                _nchw, fast=True))
  bn = BatchNorm(use_running_average=False)

  def jbn(flag, x, scale, bias):
    v = {"params": {"scale": scale, "bias": bias},
         "batch_stats": {"mean": scale * 0, "var": scale * 0 + 1}}
    return bn.clone(fast_grads=bool(flag)).apply(v, x, mutable=["batch_stats"])[0]

  def tbn(x, scale, bias):
    return torch.nn.functional.batch_norm(x, None, None, scale, bias, training=True, eps=1e-5)

  ops.append(Op(f"batchnorm train 64 @{s4}", jbn, tbn, (b, s4, s4, 64), ((64,), (64,)), _nchw,
                fast=True))
  h, c = s4, 64
  for stage in range(4):
    if stage:
      ops.append(conv_op(f"layer{stage + 1}", b, h, c, 2 * c, 3, 2))
      ops.append(conv_op(f"layer{stage + 1} down", b, h, c, 2 * c, 1, 2))
      h, c = -(-h // 2), 2 * c
    ops.append(conv_op(f"layer{stage + 1}", b, h, c, c, 3, 1))
  return ops


def other_ops(b: int) -> list[Op]:
  import jax
  import jax.numpy as jnp
  import torch
  from jaxaffect.nn import fast_grads, tcn

  def attention(n, length, d, heads):
    def jf(flag, x, wqkv, wo):
      q, k, v = jnp.split(x @ wqkv, 3, axis=-1)
      sh = lambda t: t.reshape(n, length, heads, d // heads)
      a = jax.nn.softmax(jnp.einsum("nqhd,nkhd->nhqk", sh(q), sh(k)) / np.sqrt(d // heads), -1)
      return jnp.einsum("nhqk,nkhd->nqhd", a, sh(v)).reshape(n, length, d) @ wo

    def tf(x, wqkv, wo):
      q, k, v = (x @ wqkv).chunk(3, dim=-1)
      sh = lambda t: t.reshape(n, length, heads, d // heads).transpose(1, 2)
      a = (sh(q) @ sh(k).transpose(-2, -1) / np.sqrt(d // heads)).softmax(-1)
      return (a @ sh(v)).transpose(1, 2).reshape(n, length, d) @ wo
    return Op(f"attention {length} tok d{d} h{heads}", jf, tf, (n, length, d),
              ((d, 3 * d), (d, d)))

  def gelu(approx):
    if approx:
      jf = lambda flag, x: jax.nn.gelu(x, approximate=True)
    else:
      jf = lambda flag, x: fast_grads.gelu(x, flag=bool(flag))
    tf = lambda x: torch.nn.functional.gelu(x, approximate="tanh" if approx else "none")
    return Op(f"gelu {'tanh' if approx else 'erf'} 49x1024", jf, tf, (b, 49, 1024),
              fast=not approx)

  def tcn_conv(cin, cout, k, d, t=300):
    jf = lambda flag, x, w: tcn.causal_conv1d(x, w, d)

    def tf(x, w):                     # official: pad (k-1)d both sides, chomp the right
      y = torch.nn.functional.conv1d(x, w, padding=(k - 1) * d, dilation=d)
      return y[:, :, :-(k - 1) * d]
    return Op(f"tcn conv1d k{k} d{d} {cin}->{cout} T{t}", jf, tf, (b, t, cin), ((k, cin, cout),),
              lambda a: np.ascontiguousarray(a.transpose(0, 2, 1)),
              lambda ps: [np.ascontiguousarray(p.transpose(2, 1, 0)) for p in ps])

  return [attention(b, 49, 256, 8), attention(b, 17, 512, 8), gelu(True), gelu(False),
          tcn_conv(768, 256, 5, 1), tcn_conv(256, 128, 5, 2)]


class _Runners:
  """The jitted JAX functions and the torch closures of one op, on one set of inputs."""

  def __init__(self, op: Op, seed: int = 0):
    import jax
    import jax.numpy as jnp
    import torch
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(op.x_shape).astype(np.float32)
    params = [(rng.standard_normal(s) / np.sqrt(max(np.prod(s[:-1]), 1))).astype(np.float32)
              for s in op.param_shapes]
    if op.name.startswith("batchnorm"):
      params = [np.ones(s, np.float32) for s in op.param_shapes]
    jx, jp = jnp.asarray(x), [jnp.asarray(p) for p in params]
    y = jax.jit(lambda *a: op.jax_fn(False, *a))(jx, *jp)
    cot = jnp.asarray(rng.standard_normal(y.shape).astype(np.float32))
    argnums = tuple(range(0 if op.grad_x else 1, 1 + len(jp)))

    def grad(flag):
      return jax.jit(jax.grad(lambda c, *a: jnp.sum(op.jax_fn(flag, *a) * c),
                              argnums=tuple(i + 1 for i in argnums)))

    fwd = jax.jit(lambda *a: op.jax_fn(False, *a))
    g_plain = grad(False)
    self.jax = {"jax fwd": lambda: jax.block_until_ready(fwd(jx, *jp)),
                "jax grad": lambda: jax.block_until_ready(g_plain(cot, jx, *jp))}
    if op.fast:
      g_fast = grad(True)
      self.jax["jax fast"] = lambda: jax.block_until_ready(g_fast(cot, jx, *jp))
    tx = torch.from_numpy(op.to_torch(x)).requires_grad_(op.grad_x)
    tp = [torch.from_numpy(p).requires_grad_(True) for p in op.params_to_torch(params)]
    y_t = op.torch_fn(tx, *tp)
    # the cotangent in torch's layout: the output's layout follows the input's
    c = np.array(cot)
    tcot = torch.from_numpy(op.to_torch(c) if tuple(y_t.shape) != c.shape else c)

    def t_fwd():
      with torch.no_grad():
        op.torch_fn(tx, *tp)

    def t_fb():
      for t in [tx, *tp]:
        t.grad = None
      op.torch_fn(tx, *tp).backward(tcot)
    self.torch = {"torch fwd": t_fwd, "torch fwd+bwd": t_fb}


def time_op(op: Op, repeats: int, stat: str = "median") -> dict[str, float]:
  r = _Runners(op)
  runners = {**r.jax, **r.torch}
  for f in runners.values():           # compile / warm up
    f()
  times: dict[str, list[float]] = {k: [] for k in runners}
  for _ in range(repeats):
    for k, f in runners.items():
      f()        # untimed: wakes this framework's thread pool (the other one's may still spin)
      t0 = time.perf_counter()
      f()
      times[k].append(time.perf_counter() - t0)
  agg = min if stat == "min" else statistics.median
  out = {k: agg(v) * 1e3 for k, v in times.items()}
  out["ratio"] = out["torch fwd+bwd"] / out["jax grad"]
  if "jax fast" in out:
    out["ratio fast"] = out["torch fwd+bwd"] / out["jax fast"]
  return out


COLUMNS = ("jax fwd", "torch fwd", "jax grad", "jax fast", "torch fwd+bwd", "ratio", "ratio fast")


def format_table(rows: list[dict[str, Any]], header: str) -> str:
  width = max(len(r["op"]) for r in rows)
  lines = [header, f"| {'op':<{width}} | " + " | ".join(COLUMNS) + " |",
           "|" + "-" * (width + 2) + "|" + "|".join("-" * (len(c) + 2) for c in COLUMNS) + "|"]
  for r in rows:
    cells = []
    for c in COLUMNS:
      v = r.get(c)
      cells.append(f"{'-' if v is None else (f'{v:.2f}x' if c.startswith('ratio') else f'{v:.1f}'):>{len(c)}}")
    lines.append(f"| {r['op']:<{width}} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="jaxaffect bench ops", description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=32, help="batch (frames) of every op")
  p.add_argument("--size", default="112", help="ResNet input size(s), comma-separated")
  p.add_argument("--repeats", type=int, default=5, help="timed calls per runner (median)")
  p.add_argument("--stat", choices=("median", "min"), default="median",
                 help="per runner: median, or min (the least disturbed call on a loaded machine)")
  p.add_argument("--only", default="", help="comma-separated substrings of op names to run")
  p.add_argument("--json", action="store_true", help="one JSON line on stdout (table to stderr)")
  args = p.parse_args(argv)
  if args.batch < 1 or args.repeats < 1:
    p.error("--batch and --repeats must be positive")
  try:
    sizes = [int(s) for s in args.size.split(",") if s.strip()]
  except ValueError:
    p.error(f"--size {args.size!r}: expected integers separated by commas")
  import jax
  import torch
  threads = cpu_threads()
  old = torch.get_num_threads()
  torch.set_num_threads(threads)
  ops = [op for s in sizes for op in resnet_ops(args.batch, s)] + other_ops(args.batch)
  wanted = [w.strip() for w in args.only.split(",") if w.strip()]
  ops = [op for op in ops if not wanted or any(w in op.name for w in wanted)]
  rows = []
  try:
    for op in ops:
      _log(f"{op.name}")
      rows.append({"op": op.name, **time_op(op, args.repeats, args.stat)})
  finally:
    torch.set_num_threads(old)
  header = (f"ms per call ({args.stat} of {args.repeats}), batch {args.batch}, f32, backend {jax.default_backend()}, "
            f"{threads} threads (torch {torch.__version__}, jax {jax.__version__})")
  text = format_table(rows, header) if rows else header + "\n(no op matched --only)"
  result = {"batch": args.batch, "sizes": sizes, "threads": threads, "repeats": args.repeats, "stat": args.stat,
            "backend": jax.default_backend(), "rows": rows}
  if args.json:
    print(text, file=sys.stderr)
    print(json.dumps(result), flush=True)
  else:
    print(text, flush=True)
  return 0
