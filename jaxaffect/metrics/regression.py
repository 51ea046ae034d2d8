"""Valence / arousal regression metrics: the concordance correlation coefficient.

Lin's concordance correlation coefficient
CCC = 2 s_xy / (s_x^2 + s_y^2 + (mu_x - mu_y)^2) with population (ddof=0)
moments, the ABAW evaluation definition; P_VA = (CCC_v + CCC_a) / 2.
Two protocols: *concatenated* (ABAW: all frames of all videos together,
`CCC`) and *per-sequence mean* (RECOLA/SEWA style, `PerSequenceCCC` and
`ccc_per_sequence`). With no valid sample CCC is nan (undefined, 0/0).

CCC degenerate cases: the formula is evaluated exactly. Constant predictions
against varying labels give s_xy = 0 and a positive denominator, hence
CCC = 0 (ABAW's numpy evaluation gives the same); two constants with different
means also give 0. Only a zero denominator (x and y the same constant, or
fewer than ddof+1 samples) yields nan. torchmetrics' `ConcordanceCorrCoef`
instead returns nan whenever either variance is (relatively) below
sqrt(float eps), because it factors CCC as rho * s_x * s_y and rho is
undefined there; we deliberately keep the defined value 0 so a collapsed model
scores 0, not nan, in P_VA.

Numerics of the CCC accumulators: the state is *centred* statistics (count,
means, M2_x = sum (x - mu_x)^2, M2_y, C_xy = sum (x - mu_x)(y - mu_y)), built
two-pass inside one batch (after shifting by the batch maximum, so constant
inputs centre to exactly zero) and combined with the pairwise update of Chan,
Golub & LeVeque (1979). Raw power sums (sum x, sum x^2, ...) in float32 lose
most digits over ~1e6 frames when the mean is large relative to the spread
(var = E[x^2] - mu^2 cancels catastrophically), and float64 is not available
inside a default-precision jit. The centred merge keeps float32 relative
error near machine precision independent of n (tested against a float64
numpy reference on 1e6 frames), and it stays associative up to rounding, so
device, batch and host merges agree.
"""

from __future__ import annotations

from typing import Sequence

from clu import metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxaffect.metrics.base import Array, ArrayLike, _bind, _row_mask, _safe_div, _xp


################################################################################
# CCC: differentiable function and sufficient statistics.
################################################################################


def _shift(v, m, reduce_max, xp):
  """Largest valid value (0 if none), a constant shift taken out of the data
  before the two passes: a constant input then centres to exactly 0 (so CCC
  of constant predictions is exactly 0, and of identical constants exactly
  nan, also in float32). No gradient flows through it (the statistics do not
  depend on the shift mathematically)."""
  k = reduce_max(xp.where(m, v, -xp.inf))
  k = xp.where(xp.isfinite(k), k, 0)
  return jax.lax.stop_gradient(k) if xp is jnp else k


def _centred_stats(x, y, mask, axis, xp):
  """(n, mu_x, mu_y, M2_x, M2_y, C_xy) over `axis`, shifted two-pass."""
  m = xp.broadcast_to(xp.asarray(mask, bool) if mask is not None else
                      xp.ones((), bool), xp.broadcast_shapes(x.shape, y.shape))
  mf = m.astype(x.dtype)
  n = mf.sum(axis=axis)
  red = lambda v: v.max(axis=axis, initial=-np.inf)
  kx, ky = _shift(x, m, red, xp), _shift(y, m, red, xp)
  x = x - xp.expand_dims(kx, axis)
  y = y - xp.expand_dims(ky, axis)
  mu_x = _safe_div((mf * x).sum(axis=axis), n, xp, 0.0)
  mu_y = _safe_div((mf * y).sum(axis=axis), n, xp, 0.0)
  dx = xp.where(m, x - xp.expand_dims(mu_x, axis), 0)
  dy = xp.where(m, y - xp.expand_dims(mu_y, axis), 0)
  return (n, kx + mu_x, ky + mu_y, (dx * dx).sum(axis=axis),
          (dy * dy).sum(axis=axis), (dx * dy).sum(axis=axis))


def _ccc_from_stats(n, mu_x, mu_y, m2_x, m2_y, c_xy, ddof, xp, eps=0.0):
  """CCC = 2 C/(n-d) / ((M2x + M2y)/(n-d) + (mu_x-mu_y)^2 + eps), multiplied
  through by (n - d); nan if n - d <= 0 or the denominator is 0."""
  dof = n - ddof
  den = m2_x + m2_y + dof * ((mu_x - mu_y) ** 2 + eps)
  ok = (dof > 0) & (den != 0)
  return xp.where(ok, 2 * c_xy / xp.where(ok, den, 1), xp.nan)


def ccc(x: ArrayLike, y: ArrayLike, mask: ArrayLike | None = None, *,
        ddof: int = 0, axis: int | Sequence[int] = 0,
        eps: float = 0.0) -> Array | np.ndarray:
  """Concordance correlation coefficient along `axis` (Lin, 1989).

  CCC = 2 s_xy / (s_x^2 + s_y^2 + (mu_x - mu_y)^2), moments with divisor
  n - ddof for s_xy, s_x^2, s_y^2 (the mean-difference term is never
  rescaled). ddof=0 is the standard / ABAW evaluation definition. ddof=1
  reproduces the ABAW6 (Chinatelecom) VA loss, which writes CCC as
  2 rho sd_x sd_y / (sd_x^2 + sd_y^2 + (mu_x - mu_y)^2) with `torch.std`
  (unbiased), and torchmetrics' `ConcordanceCorrCoef` (same factorisation).
  The two differ by the factor n/(n-1) on the second moments but not on the
  mean-difference term, so they agree when the means agree or n is large.

  Works on jax arrays (differentiable, jit-able; use `1 - ccc` as a loss)
  and on numpy arrays (evaluated in float64). No square roots are taken, so
  gradients are finite at zero variance.

  Args:
    x, y: predictions and labels, broadcastable to one shape.
    mask: optional keep-mask broadcastable to that shape with numpy rules
      (trailing axes align: a per-frame mask of (B, T, D) inputs is
      mask[..., None]); e.g. ABAW valence != -5. Masked entries get zero
      gradient.
    ddof: divisor n - ddof of the second moments.
    axis: axis or axes reduced; the rest are kept (e.g. (B, T, 2) with
      axis=(0, 1) gives (CCC_v, CCC_a)).
    eps: added to the denominator s_x^2 + s_y^2 + (mu_x - mu_y)^2 (0 = exact;
      > 0 avoids nan for identical constant inputs in a loss).

  Returns:
    CCC over `axis`; nan where n - ddof <= 0 or the denominator is 0.
  """
  xp = _xp(x, y, mask)
  if xp is np:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  else:
    x, y = jnp.asarray(x), jnp.asarray(y)
    dt = jnp.result_type(x, y, jnp.float32)
    x, y = x.astype(dt), y.astype(dt)
  x, y = xp.broadcast_arrays(x, y)
  axis = tuple(a % x.ndim for a in (axis if isinstance(axis, Sequence) else
                                    (axis,)))
  return _ccc_from_stats(*_centred_stats(x, y, mask, axis, xp), ddof, xp, eps)


def ccc_per_sequence(x: ArrayLike, y: ArrayLike, sequence_ids: ArrayLike,
                     mask: ArrayLike | None = None, *, ddof: int = 0,
                     return_per_sequence: bool = False):
  """Mean over sequences of the per-sequence CCC (RECOLA / SEWA protocol).

  float64 numpy. A sequence with no valid frame is left out of the mean; a
  present sequence whose CCC is nan (e.g. a single frame with x == y) makes
  the mean nan.

  Args:
    x, y: (N,) or (N, D) predictions and labels.
    sequence_ids: (N,) hashable sequence id of each frame.
    mask: optional (N,) per-frame or (N, D) per-element keep-mask.
    ddof: see `ccc`.
    return_per_sequence: also return {id: CCC} (scalar or (D,) per id).

  Returns:
    mean CCC (scalar or (D,)), and the per-sequence dict if requested.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  ids = np.asarray(sequence_ids).reshape(-1)
  if x.shape != y.shape or x.shape[0] != ids.shape[0]:
    raise ValueError(
        f"ccc_per_sequence: x {x.shape}, y {y.shape} and sequence_ids"
        f" {ids.shape} must agree on the first axis.")
  m = np.ones(x.shape, bool) if mask is None else np.asarray(mask, bool)
  if m.ndim < x.ndim:
    m = m.reshape(m.shape + (1,) * (x.ndim - m.ndim))
  m = np.broadcast_to(m, x.shape)
  per = {}
  for sid in np.unique(ids):
    sel = ids == sid
    ms = m[sel]
    if not ms.any():
      continue
    per[sid.item()] = ccc(x[sel], y[sel], ms, ddof=ddof, axis=0)
  if not per:
    mean = np.full(x.shape[1:], np.nan)
  else:
    # Per-element masks may leave a dimension of a sequence empty: that
    # dimension of that sequence is excluded, like an absent sequence.
    vals = np.stack([np.asarray(v) for v in per.values()])
    present = np.stack([m[ids == np.asarray(k)].any(axis=0) for k in per])
    mean = np.where(present, vals, 0).sum(0) / np.maximum(present.sum(0), 1)
    mean = np.where(present.sum(0) > 0, mean, np.nan)
  mean = float(mean) if np.ndim(mean) == 0 else mean
  return (mean, per) if return_per_sequence else mean


def p_va(ccc_valence: ArrayLike, ccc_arousal: ArrayLike):
  """ABAW VA challenge score P_VA = (CCC_v + CCC_a) / 2."""
  return (ccc_valence + ccc_arousal) / 2


################################################################################
# clu metrics.
################################################################################


def _check_same_shape(a, b):
  if a.count.shape != b.count.shape:
    raise ValueError(f"Cannot merge {type(a).__name__} statistics of shape"
                     f" {a.count.shape} and {b.count.shape}.")


def _chan_merge(a: tuple, b: tuple) -> tuple:
  """Pairwise merge of centred statistics (Chan, Golub & LeVeque, 1979)."""
  na, mxa, mya, sxa, sya, ca = a
  nb, mxb, myb, sxb, syb, cb = b
  n = na + nb
  fa = na.astype(jnp.float32)
  fb = nb.astype(jnp.float32)
  fn = n.astype(jnp.float32)
  wb = _safe_div(fb, fn, jnp, 0.0)  # nb / n
  dx, dy = mxb - mxa, myb - mya
  corr = fa * wb  # na * nb / n
  return (n, mxa + dx * wb, mya + dy * wb, sxa + sxb + dx * dx * corr,
          sya + syb + dy * dy * corr, ca + cb + dx * dy * corr)


def _regression_inputs(predictions, labels, mask, invalid_value, where):
  x = jnp.asarray(predictions, jnp.float32)
  y = jnp.asarray(labels, jnp.float32)
  if x.shape != y.shape or x.ndim < 2:
    raise ValueError(
        f"{where}: predictions {x.shape} and labels {y.shape} must have the"
        " same shape (..., D); for one dimension pass x[..., None].")
  m = _row_mask(mask, x.shape, jnp, where)
  if invalid_value is not None:
    m &= ~(y == invalid_value).any(axis=-1, keepdims=True)
  return x, y, m


@flax.struct.dataclass
class CCC(clu_metrics.Metric):
  """Concatenated CCC per output dimension (ABAW VA protocol), mergeable.

  State: per dimension (D,) count (int32), means, M2_x, M2_y and C_xy
  (float32), merged with Chan et al.'s pairwise update (see module doc).
  `from_model_output(predictions=(..., D), labels=(..., D), mask=...,
  invalid_value=-5.)`; `compute()` is the (D,) CCC with ddof=0, `ccc(ddof)`
  allows another divisor, `mean()` is their average (P_VA for D = 2).
  """
  count: Array
  mean_x: Array
  mean_y: Array
  m2_x: Array
  m2_y: Array
  c_xy: Array

  _defaults = {}

  @classmethod
  def bind(cls, num_dims: int):
    return _bind(cls, str(num_dims), num_dims=num_dims)

  @classmethod
  def empty(cls, num_dims: int | None = None):
    num_dims = num_dims or cls._defaults.get("num_dims")
    if num_dims is None:
      raise ValueError(f"{cls.__name__}.empty() needs num_dims (or use"
                       f" {cls.__name__}.bind(num_dims)).")
    z = jnp.zeros((num_dims,), jnp.float32)
    return cls(jnp.zeros((num_dims,), jnp.int32), z, z, z, z, z)

  @classmethod
  def from_model_output(cls, *, predictions: ArrayLike, labels: ArrayLike,
                        mask: ArrayLike | None = None,
                        invalid_value: float | None = None, **_):
    """Statistics of one batch.

    Args:
      predictions, labels: (..., D), e.g. (B, T, 2) valence/arousal.
      mask: (...) per-frame or (..., D) per-element keep-mask.
      invalid_value: frames whose label equals it in any dimension are
        dropped (ABAW: -5).
    """
    x, y, m = _regression_inputs(predictions, labels, mask, invalid_value,
                                 cls.__name__)
    axes = tuple(range(x.ndim - 1))
    n, mx, my, sx, sy, c = _centred_stats(x, y, m, axes, jnp)
    return cls(n.astype(jnp.int32), mx, my, sx, sy, c)

  def _stats(self):
    return (self.count, self.mean_x, self.mean_y, self.m2_x, self.m2_y,
            self.c_xy)

  def merge(self, other):
    _check_same_shape(self, other)
    return type(self)(*_chan_merge(self._stats(), other._stats()))

  def ccc(self, ddof: int = 0) -> Array:
    n = self.count.astype(jnp.float32)
    return _ccc_from_stats(n, *self._stats()[1:], ddof, jnp)

  def mean(self, ddof: int = 0) -> Array:
    """Mean CCC over dimensions; P_VA for (valence, arousal)."""
    return self.ccc(ddof).mean()

  def compute(self) -> Array:
    return self.ccc()


@flax.struct.dataclass
class MeanCCC(CCC):
  """`CCC` whose `compute()` is the mean over dimensions (P_VA for D = 2)."""

  def compute(self) -> Array:
    return self.mean()


@flax.struct.dataclass
class PerSequenceCCC(clu_metrics.Metric):
  """Per-sequence CCC statistics, (S, D) each, keyed by integer sequence id.

  For the RECOLA/SEWA protocol (CCC per recording, then averaged) inside jit:
  the pipeline gives each frame an int id in [0, num_sequences) (frames with
  other ids are dropped); statistics are accumulated as one-hot segment sums and
  merged per id with Chan's update. `compute()` is the (D,) mean over
  sequences with at least one valid frame (per dimension); `per_sequence()`
  the (S, D) CCCs (nan for absent sequences).
  """
  count: Array
  mean_x: Array
  mean_y: Array
  m2_x: Array
  m2_y: Array
  c_xy: Array

  _defaults = {}

  @classmethod
  def bind(cls, num_sequences: int, num_dims: int):
    return _bind(cls, f"{num_sequences}x{num_dims}",
                 num_sequences=num_sequences, num_dims=num_dims)

  @classmethod
  def empty(cls, num_sequences: int | None = None,
            num_dims: int | None = None):
    s = num_sequences or cls._defaults.get("num_sequences")
    d = num_dims or cls._defaults.get("num_dims")
    if s is None or d is None:
      raise ValueError(f"{cls.__name__}.empty() needs num_sequences and"
                       f" num_dims (or use {cls.__name__}.bind(...)).")
    z = jnp.zeros((s, d), jnp.float32)
    return cls(jnp.zeros((s, d), jnp.int32), z, z, z, z, z)

  @classmethod
  def from_model_output(cls, *, predictions: ArrayLike, labels: ArrayLike,
                        sequence_ids: ArrayLike,
                        num_sequences: int | None = None,
                        mask: ArrayLike | None = None,
                        invalid_value: float | None = None, **_):
    """Statistics of one batch.

    Args:
      predictions, labels: (..., D).
      sequence_ids: (...) int sequence index of each frame.
      num_sequences: S (static); defaults to the bound value.
      mask, invalid_value: as in `CCC.from_model_output`.
    """
    s = num_sequences or cls._defaults.get("num_sequences")
    if s is None:
      raise ValueError(f"{cls.__name__}: num_sequences is required.")
    x, y, m = _regression_inputs(predictions, labels, mask, invalid_value,
                                 cls.__name__)
    ids = jnp.asarray(sequence_ids, jnp.int32)
    if ids.shape != x.shape[:-1]:
      raise ValueError(f"{cls.__name__}: sequence_ids {ids.shape} must have"
                       f" shape {x.shape[:-1]}.")
    m &= ((ids >= 0) & (ids < s))[..., None]
    # One-hot (..., S) segment sums instead of scatter-based segment_sum /
    # gathers, for the same Explicit-mesh reason as in ConfusionMatrix.
    in_seq = ids[..., None] == jnp.arange(s)  # (..., S)
    onehot = in_seq.astype(jnp.float32)
    axes = tuple(range(ids.ndim))
    seg = lambda v: (onehot[..., :, None] * v[..., None, :]).sum(axis=axes)
    per_frame = lambda t: (onehot[..., :, None] * t).sum(axis=-2)  # t[ids]
    seg_m = in_seq[..., :, None] & m[..., None, :]  # (..., S, D)
    seg_max = lambda v: v.max(axis=axes, initial=-np.inf)
    kx = _shift(x[..., None, :], seg_m, seg_max, jnp)  # (S, D)
    ky = _shift(y[..., None, :], seg_m, seg_max, jnp)
    x, y = x - per_frame(kx), y - per_frame(ky)
    mf = m.astype(jnp.float32)
    n = seg(mf)
    mx = _safe_div(seg(mf * x), n, jnp, 0.0)
    my = _safe_div(seg(mf * y), n, jnp, 0.0)
    dx = jnp.where(m, x - per_frame(mx), 0)
    dy = jnp.where(m, y - per_frame(my), 0)
    return cls(n.astype(jnp.int32), kx + mx, ky + my, seg(dx * dx),
               seg(dy * dy), seg(dx * dy))

  def _stats(self):
    return (self.count, self.mean_x, self.mean_y, self.m2_x, self.m2_y,
            self.c_xy)

  def merge(self, other):
    _check_same_shape(self, other)
    return type(self)(*_chan_merge(self._stats(), other._stats()))

  def per_sequence(self, ddof: int = 0) -> Array:
    """(S, D) CCC of each sequence; nan where a sequence has no frame."""
    n = self.count.astype(jnp.float32)
    return _ccc_from_stats(n, *self._stats()[1:], ddof, jnp)

  def compute(self, ddof: int = 0) -> Array:
    present = self.count > 0
    vals = jnp.where(present, self.per_sequence(ddof), 0.0)
    return _safe_div(vals.sum(0), present.sum(0).astype(jnp.float32), jnp,
                     jnp.nan)
