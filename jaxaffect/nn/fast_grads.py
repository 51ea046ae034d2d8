"""Alternative backward passes for ops whose XLA:CPU gradient is slow (issue 12 item 2), chosen by
a switch; with the switch off the ops are exactly the plain ones (same calls, bit-identical).

* `max_pool`: forward `lax.reduce_window` (as `flax.linen.max_pool`); backward without
  select-and-scatter: the window argmax is recomputed as one boolean mask per window offset
  (`x_shifted == y`), taken in row-major window order so that only the FIRST maximum of a window
  receives its gradient (torch `max_pool2d`'s tie rule, and XLA's `select_and_scatter` with `ge`),
  and the masked cotangents are placed back with strided (interior) padding and summed — one
  elementwise loop fusion instead of a scatter. NaN inputs are not given torch's NaN-is-max rule.
* `conv`: a drop-in `conv_general_dilated` for `flax.linen.Conv(conv_general_dilated=...)`
  (NHWC/HWIO, no dilation or groups; anything else falls back to the plain op). Forward and
  input gradient are XLA's own; the WEIGHT gradient is a patch GEMM: the k·k strided windows of
  the padded input stacked as `(B·Ho·Wo, k·k·Cin)` and contracted with the cotangent
  `(B·Ho·Wo, Cout)` over the rows (`dot_general`, no transposed copy); 1×1 kernels are one GEMM.
  Used only for the kernels where it measured faster (`patch_gemm_wins`), XLA's own elsewhere.
* `batch_norm`: train-mode BatchNorm (`nn.layers.BatchNorm`, unmasked) with the same forward
  (two-pass mean and biased variance, `(x − mean)·scale·rsqrt(var + eps) + bias`) and the
  closed-form backward `dx = scale·rstd·(g − mean(g) − x̂·mean(g·x̂))`, `dscale = Σ g·x̂`,
  `dbias = Σ g` (plus the cotangents of the returned mean and variance, zero when they only feed
  the running statistics): one fused two-output reduction and one elementwise pass instead of
  autodiff's chain through both statistics.
* `gelu`: the exact (erf) GELU as torch computes it, `0.5·x·(1 + erf(x/√2))`, instead of
  `jax.nn.gelu(approximate=False)`'s `0.5·x·erfc(−x/√2)`: XLA:CPU expands erfc into two
  polynomial branches plus an exp, erf into one polynomial. Same function; in float32 the two
  differ by rounding (≤ a few ulp of the result for x ≥ −3; for x ≪ 0 the erf form's 1 + erf
  cancels, an absolute error ≤ 1e-7·|x|, which is torch's own). Gradient by autodiff of the form.

The switch, per op (`OPS`): an explicit `flag` argument wins, then `override(...)` (a context
manager, e.g. the benchmark's before/after), then the environment `JAXAFFECT_FAST_GRADS`
(`0`/`off`, `1`/`on`/`all`, `auto`, or a comma list of op names), then `DEFAULTS` for the backend
the op is traced for (`jax.default_backend()`). It is read at trace time: a jitted function keeps
the choice it was compiled with. The defaults come from `jaxaffect bench ops` on a 2-core CPU
(README, "CPU speed"); backends without an entry (GPU, TPU) keep XLA's own gradients.
"""
from __future__ import annotations

import contextlib
import functools
import contextvars
import math
import os
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

OPS = ("max_pool", "conv", "gelu", "batch_norm")
ENV = "JAXAFFECT_FAST_GRADS"
# Measured per backend (README "CPU speed"); an op missing here is off.
DEFAULTS: dict[str, dict[str, bool]] = {"cpu": {"max_pool": True, "conv": False, "gelu": True,
                                                  "batch_norm": False}}

_OVERRIDE: contextvars.ContextVar[Any] = contextvars.ContextVar("fast_grads", default=None)


def _parse(value: Any) -> set[str] | None:
  """A switch value → the set of ops switched on, or None for 'auto' (backend defaults)."""
  if value is None:
    return None
  if isinstance(value, bool):
    return set(OPS) if value else set()
  if isinstance(value, str):
    v = value.strip().lower()
    if v in ("", "auto"):
      return None
    if v in ("0", "off", "false", "none"):
      return set()
    if v in ("1", "on", "true", "all"):
      return set(OPS)
    value = [s.strip() for s in v.split(",") if s.strip()]
  ops = set(value)
  unknown = ops - set(OPS)
  if unknown:
    raise ValueError(f"fast_grads: unknown op(s) {sorted(unknown)}; expected some of {OPS}")
  return ops


def enabled(op: str, flag: Any = None) -> bool:
  """Whether the alternative gradient of `op` is used (see the module docstring for the order)."""
  if op not in OPS:
    raise ValueError(f"fast_grads: unknown op {op!r}; expected one of {OPS}")
  for value in (flag, _OVERRIDE.get(), os.environ.get(ENV)):
    ops = _parse(value)
    if ops is not None:
      return op in ops
  return DEFAULTS.get(jax.default_backend(), {}).get(op, False)


@contextlib.contextmanager
def override(value: bool | str | Iterable[str] | None):
  """Within the block, trace with these ops switched on (True: all, False: none, None: auto)."""
  _parse(value)                                   # validate now
  token = _OVERRIDE.set(value if value is not None else "auto")
  try:
    yield
  finally:
    _OVERRIDE.reset(token)


# --------------------------------------------------------------------------------------- max-pool


def _pool_config(x, window, strides, padding):
  nb = x.ndim - len(window) - 1
  dims = (1,) * nb + tuple(window) + (1,)
  strd = (1,) * nb + tuple(strides) + (1,)
  pads = ((0, 0),) * nb + tuple(tuple(p) for p in padding) + ((0, 0),)
  return dims, strd, pads


def _reduce_max(x, dims, strd, pads):
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, dims, strd, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_fast(x, window, strides, padding):
  return _reduce_max(x, *_pool_config(x, window, strides, padding))


def _max_pool_fwd(x, window, strides, padding):
  # The backward compares x with y for equality: both must be computed from the SAME rounded x.
  # Without the barrier XLA fuses x's producer (e.g. BatchNorm + ReLU) into the forward pool and
  # into the backward separately, and the two recomputations may round differently (FMA
  # contraction): measured on a ResNet stem, ties were lost and gradients went wrong.
  x = lax.optimization_barrier(x)
  y = _max_pool_fast(x, window, strides, padding)
  return y, (x, y)


def _max_pool_bwd(window, strides, padding, res, g):
  x, y = res
  dims, strd, pads = _pool_config(x, window, strides, padding)
  xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(lo, hi, 0) for lo, hi in pads])
  nb, nd = x.ndim - len(window) - 1, len(window)
  offsets = _offsets(window)                                   # row-major window order
  # The first maximum of each window (torch's tie rule): its offset number, one y-sized array.
  first = jnp.full(y.shape, len(offsets), jnp.int32)
  for k in reversed(range(len(offsets))):
    start = (0,) * nb + offsets[k] + (0,)
    limit = tuple(s + st * (n - 1) + 1 for s, st, n in zip(start, strd, y.shape))
    first = jnp.where(lax.slice(xp, start, limit, strd) == y, k, first)
  # Materialise both: fused into the interleaving loop below, XLA would recompute them (and
  # the producer of g, e.g. a BatchNorm backward) for every term (measured 3x slower).
  first, g = lax.optimization_barrier((first.astype(jnp.int8 if len(offsets) < 127 else jnp.int32), g))
  zero = jnp.zeros((), g.dtype)
  # Offset i = a + s·q of a window lands on input rows ≡ a (mod s): per phase a, the cotangents
  # of those offsets shifted by q, summed on the phase grid (⌈Hp/s⌉ rows); then interleaved.
  sp_y, sp_p = y.shape[nb:nb + nd], xp.shape[nb:nb + nd]
  grid = tuple(-(-p // s) for p, s in zip(sp_p, strides))
  phases = {}
  for k, off in enumerate(offsets):
    phase = tuple(i % s for i, s in zip(off, strides))
    shift = tuple(i // s for i, s in zip(off, strides))
    cfg = ([(0, 0, 0)] * nb + [(q, m - n - q, 0) for q, n, m in zip(shift, sp_y, grid)]
           + [(0, 0, 0)])
    term = lax.pad(jnp.where(first == k, g, zero), zero, cfg)
    phases[phase] = term if phase not in phases else phases[phase] + term
  lead, ch = y.shape[:nb], y.shape[-1]

  def interleave(prefix, d):
    if d == nd:
      return phases.get(prefix, jnp.zeros(lead + grid + (ch,), g.dtype))
    parts = [interleave(prefix + (a,), d + 1) for a in range(strides[d])]
    stacked = jnp.stack(parts, axis=nb + d + 1)          # (..., grid_d, s_d, ...)
    shape = stacked.shape[:nb + d] + (grid[d] * strides[d],) + stacked.shape[nb + d + 2:]
    return stacked.reshape(shape)

  dxp = interleave((), 0)
  dx = lax.slice(dxp, tuple(lo for lo, _ in pads),
                 tuple(lo + n for (lo, _), n in zip(pads, x.shape)))
  return (dx,)


_max_pool_fast.defvjp(_max_pool_fwd, _max_pool_bwd)


def _offsets(window: Sequence[int]) -> list[tuple[int, ...]]:
  out: list[tuple[int, ...]] = [()]
  for k in window:
    out = [o + (i,) for o in out for i in range(k)]
  return out


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int] | None = None,
             padding: Sequence[tuple[int, int]] | str = "VALID", *, flag: Any = None) -> jax.Array:
  """`flax.linen.max_pool(x, window, strides, padding)`; with the `max_pool` switch on (and
  explicit padding pairs or 'VALID'), the same forward with the mask-based gradient."""
  window = tuple(window)
  strides = tuple(strides) if strides is not None else (1,) * len(window)
  if isinstance(padding, str) and padding.upper() == "VALID":
    padding = ((0, 0),) * len(window)
  if not enabled("max_pool", flag) or isinstance(padding, str):
    import flax.linen as nn
    return nn.max_pool(x, window, strides=strides, padding=padding)
  return _max_pool_fast(x, window, strides, tuple(tuple(int(v) for v in p) for p in padding))


# ------------------------------------------------------------------------------------------- conv

_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _plain(lhs, rhs, strides, padding, precision):
  return lax.conv_general_dilated(lhs, rhs, strides, padding, dimension_numbers=_NHWC,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_fast(x, w, strides, padding, precision):
  return _plain(x, w, strides, padding, precision)


def _conv_fwd(x, w, strides, padding, precision):
  return _plain(x, w, strides, padding, precision), (x, w)


def _conv_bwd(strides, padding, precision, res, g):
  x, w = res
  _, vjp_x = jax.vjp(lambda xx: _plain(xx, w, strides, padding, precision), x)
  (dx,) = vjp_x(g)
  return dx, conv_weight_grad(x, g, w.shape, strides, padding, precision)


_conv_fast.defvjp(_conv_fwd, _conv_bwd)


def conv_weight_grad(x, g, w_shape, strides, padding, precision=None):
  """d(sum(g · conv(x, w)))/dw for NHWC x, HWIO w: the patches of x (one strided slice of the
  padded input per kernel tap, stacked on the channel axis) contracted with g over B·Ho·Wo."""
  kh, kw, cin, cout = w_shape
  b, ho, wo, _ = g.shape
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  sh, sw = strides
  taps = [lax.slice(xp, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin),
                    (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  dw = lax.dot_general(patches.reshape(-1, kh * kw * cin), g.reshape(-1, cout),
                       (((0,), (0,)), ((), ())), precision=precision,
                       preferred_element_type=jnp.promote_types(x.dtype, jnp.float32))
  return dw.reshape(kh, kw, cin, cout).astype(x.dtype)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` with the patch-GEMM weight gradient for the plain NHWC case
  (explicit padding, no dilation, no groups); every other call is the plain op."""
  plain = (lhs.ndim == 4 and not isinstance(padding, str)
           and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
           and feature_group_count == 1 and batch_group_count == 1
           and preferred_element_type is None
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC)
  if not plain:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count,
                                    precision, preferred_element_type)
  strides = tuple(int(s) for s in window_strides)
  if not patch_gemm_wins(rhs.shape, strides):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count,
                                    precision, preferred_element_type)
  pads = tuple(tuple(int(v) for v in p) for p in padding)
  return _conv_fast(lhs, rhs, strides, pads, precision)


def patch_gemm_wins(w_shape, strides) -> bool:
  """Where the patch-GEMM weight gradient beat XLA:CPU's in `bench ops` (README "CPU speed"),
  with jaxaffect's XLA:CPU flag (Eigen convolutions, jaxaffect/xla_flags.py): 1×1 kernels only
  (1.3-2.0x faster at 112 and 224). Without the flag (YNNPACK convolutions) the strided 3×3 convs
  over ≥ 32 channels gained too; with it they lost (e.g. 64→128 @56: 143 vs 96 ms)."""
  kh, kw, _, _ = w_shape
  return kh * kw == 1


def conv_fn(flag: Any = None):
  """What `flax.linen.Conv(conv_general_dilated=...)` should get: None (flax's default, the plain
  op) with the `conv` switch off, else `conv_general_dilated` above."""
  return conv_general_dilated if enabled("conv", flag) else None


# ------------------------------------------------------------------------------------------- gelu

_SQRT_HALF = 0.7071067811865476


def gelu_erf(x: jax.Array) -> jax.Array:
  """torch's exact GELU, `0.5·x·(1 + erf(x·√½))` (see the module docstring)."""
  return 0.5 * x * (1.0 + lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype)))


def gelu(x: jax.Array, *, flag: Any = None) -> jax.Array:
  """Exact GELU: `gelu_erf` with the `gelu` switch on, else `jax.nn.gelu(x, approximate=False)`."""
  if enabled("gelu", flag):
    return gelu_erf(x)
  return jax.nn.gelu(x, approximate=False)


# ------------------------------------------------------------------------------------ batch norm


def bn_stats(xf, axes):
  """Batch mean and biased variance, two-pass (BatchNorm's statistics, both paths)."""
  mean = jnp.mean(xf, axes)
  var = jnp.mean(jnp.square(xf - mean), axes)            # two-pass, biased
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _bn_train(x, scale, bias, eps):
  f = jnp.promote_types(x.dtype, jnp.float32)
  xf = x.astype(f)
  mean, var = bn_stats(xf, tuple(range(x.ndim - 1)))
  mul = scale.astype(f) * lax.rsqrt(var + eps)
  return (xf - mean) * mul + bias.astype(f), mean, var


def _bn_train_fwd(x, scale, bias, eps):
  out = _bn_train(x, scale, bias, eps)
  return out, (x, scale, out[1], out[2])


def _bn_train_bwd(eps, res, cts):
  x, scale, mean, var = res
  gy, gmean, gvar = cts
  f = jnp.promote_types(x.dtype, jnp.float32)
  axes = tuple(range(x.ndim - 1))
  n = math.prod(x.shape[:-1])
  rstd = lax.rsqrt(var + eps)
  xc = x.astype(f) - mean
  xhat = xc * rstd
  gy = gy.astype(f)
  sum_g = jnp.sum(gy, axes)
  sum_gx = jnp.sum(gy * xhat, axes)
  sf = scale.astype(f)
  dx = (sf * rstd) * (gy - sum_g / n - xhat * (sum_gx / n))
  dx = dx + gmean.astype(f) / n + xc * (2.0 * gvar.astype(f) / n)
  # scale and bias share one dtype (checked in batch_norm_train): bias is not kept as a residual
  return dx.astype(x.dtype), sum_gx.astype(scale.dtype), sum_g.astype(scale.dtype)


_bn_train.defvjp(_bn_train_fwd, _bn_train_bwd)


def batch_norm_train(x, scale, bias, eps: float):
  """Train-mode batch norm over all axes but the last: `(y, mean, biased var)` in float32 (at
  least), y = `(x − mean)·scale·rsqrt(var + eps) + bias`, with the closed-form backward.
  `scale` and `bias` must have one dtype (BatchNorm's `param_dtype`)."""
  if scale.dtype != bias.dtype:
    raise TypeError(f"batch_norm_train: scale is {scale.dtype} but bias is {bias.dtype}")
  return _bn_train(x, scale, bias, float(eps))
