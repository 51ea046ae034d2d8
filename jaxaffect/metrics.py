"""Evaluation metrics of video facial-affect recognition, mergeable, jittable.

Protocols covered:

* Clip / frame expression classification (DFEW, AFEW: 7 classes; ABAW EXPR:
  8 classes per frame): a confusion matrix, from which
  - UAR, unweighted average recall = mean per-class recall over the classes
    *present in the labels* (support > 0). Classes with no label are left out
    of the mean, even if they are predicted: this is sklearn's
    `balanced_accuracy_score` (it warns "y_pred contains classes not in
    y_true" and ignores them). torchmetrics `MulticlassRecall(average='macro')`
    differs there: it keeps a class that is predicted but never labelled, with
    recall 0.
  - WAR, weighted average recall = accuracy (sklearn `accuracy_score`).
  - macro-F1 over *all* C classes, F1_c = 2TP/(2TP+FP+FN) and 0 where that
    denominator is 0 (sklearn `f1_score(average='macro', labels=range(C),
    zero_division=0)`). This is the ABAW (5th/6th) EXPR score.
* ABAW AU detection (12 AUs): per-AU TP/FP/FN/TN counts; the AU score is the
  mean over AUs of the per-AU binary F1 with zero_division=0 (sklearn
  `f1_score(average='macro', zero_division=0)` on the indicator matrix).
* Valence / arousal regression: Lin's concordance correlation coefficient
  CCC = 2 s_xy / (s_x^2 + s_y^2 + (mu_x - mu_y)^2) with population (ddof=0)
  moments, the ABAW evaluation definition; P_VA = (CCC_v + CCC_a) / 2.
  Two protocols: *concatenated* (ABAW: all frames of all videos together,
  `CCC`) and *per-sequence mean* (RECOLA/SEWA style, `PerSequenceCCC` and
  `ccc_per_sequence`).

Empty-input conventions (no valid sample after masking): UAR, WAR and CCC are
nan (undefined, 0/0); macro-F1 and AU-F1 are 0 (every per-class F1 falls under
zero_division=0).

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

Distributed use: in the global-view `jax.jit` eval step every metric built
with `from_model_output` on global `jax.Array`s already covers the whole
global batch (all devices and hosts); merging those across steps on the host
needs no communication. `allgather_merge` exists only for metrics
accumulated from *process-local* data (e.g. a host-side loop over local
predictions); it refuses global arrays, which would be counted once per
process.

Counts are int32 (jax without x64): exact up to 2**31 - 1 samples per cell.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, Sequence, TypeVar

from clu import metrics as clu_metrics
import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
M = TypeVar("M")


################################################################################
# Helpers.
################################################################################


def _xp(*arrays: Any):
  """jnp if any input is a jax array (or tracer), else numpy."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _safe_div(num, den, xp, fill):
  """num / den where den != 0, else `fill`; gradient-safe (double where)."""
  ok = den != 0
  return xp.where(ok, num / xp.where(ok, den, 1), fill)


def _bind(cls, name: str, **defaults):
  """Subclass of metric `cls` whose `empty()` / `from_model_output()` defaults
  the static sizes (needed by `clu.metrics.Collection.empty()`)."""
  sub = flax.struct.dataclass(
      type(f"{cls.__name__}{name}", (cls,), {"__module__": cls.__module__}))
  sub._defaults = {**cls._defaults, **defaults}
  return sub


def _check_same_shape(a, b):
  if a.count.shape != b.count.shape:
    raise ValueError(f"Cannot merge {type(a).__name__} statistics of shape"
                     f" {a.count.shape} and {b.count.shape}.")


def _row_mask(mask: ArrayLike | None, shape: tuple[int, ...], xp, where: str):
  """Broadcasts a per-row mask (shape[:-1]) or per-element mask (shape)."""
  if mask is None:
    return xp.ones(shape, bool)
  mask = xp.asarray(mask).astype(bool)
  if mask.shape == shape[:-1]:
    mask = mask[..., None]
  elif mask.shape != shape:
    raise ValueError(
        f"{where}: mask must have shape {shape[:-1]} (per row) or {shape} (per"
        f" element), got {mask.shape}.")
  return xp.broadcast_to(mask, shape)


################################################################################
# Classification: quantities derived from a confusion matrix (numpy or jnp).
################################################################################


def per_class_recall_from_confusion(cm: ArrayLike) -> Array | np.ndarray:
  """Recall of each class, rows = true class; nan for classes with no label."""
  xp = _xp(cm)
  cm = xp.asarray(cm)
  tp = xp.diagonal(cm).astype(xp.float32 if xp is jnp else np.float64)
  support = cm.sum(axis=1)
  return _safe_div(tp, support, xp, xp.nan)


def uar_from_confusion(cm: ArrayLike) -> Array | np.ndarray:
  """Unweighted average recall over classes with support > 0 (sklearn
  `balanced_accuracy_score`); nan if no class has support."""
  xp = _xp(cm)
  cm = xp.asarray(cm)
  present = cm.sum(axis=1) > 0
  rec = per_class_recall_from_confusion(cm)
  return _safe_div(xp.where(present, rec, 0).sum(), present.sum(), xp, xp.nan)


def war_from_confusion(cm: ArrayLike) -> Array | np.ndarray:
  """Weighted average recall = accuracy = trace / total; nan if total is 0."""
  xp = _xp(cm)
  cm = xp.asarray(cm)
  ft = xp.float32 if xp is jnp else np.float64
  return _safe_div(xp.trace(cm).astype(ft), cm.sum().astype(ft), xp, xp.nan)


def per_class_f1_from_confusion(cm: ArrayLike) -> Array | np.ndarray:
  """F1_c = 2TP / (2TP + FP + FN), 0 where the denominator is 0."""
  xp = _xp(cm)
  cm = xp.asarray(cm)
  ft = xp.float32 if xp is jnp else np.float64
  tp = xp.diagonal(cm).astype(ft)
  fp = cm.sum(axis=0).astype(ft) - tp
  fn = cm.sum(axis=1).astype(ft) - tp
  return _f1(tp, fp, fn, xp)


def macro_f1_from_confusion(cm: ArrayLike) -> Array | np.ndarray:
  """Mean F1 over all C classes (sklearn macro, labels=range(C),
  zero_division=0); ABAW EXPR score when C = 8."""
  return per_class_f1_from_confusion(cm).mean()


def _f1(tp, fp, fn, xp):
  return _safe_div(2 * tp, 2 * tp + fp + fn, xp, 0.0)


################################################################################
# Classification: numpy functions for offline evaluation.
################################################################################


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike,
                     num_classes: int | None = None,
                     mask: ArrayLike | None = None) -> np.ndarray:
  """int64 (C, C) counts, rows = true class, columns = predicted class.

  Samples with a negative label (ABAW's -1) or `mask == False` are ignored.
  `num_classes` defaults to 1 + the largest class seen. Raises on a label or
  prediction >= num_classes, or a negative prediction of a kept sample.
  """
  y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
  y_pred = np.asarray(y_pred).reshape(-1).astype(np.int64)
  if y_true.shape != y_pred.shape:
    raise ValueError(
        f"confusion_matrix: y_true has {y_true.size} elements, y_pred"
        f" {y_pred.size}.")
  keep = y_true >= 0
  if mask is not None:
    keep &= np.broadcast_to(np.asarray(mask, bool).reshape(-1), keep.shape)
  y_true, y_pred = y_true[keep], y_pred[keep]
  if num_classes is None:
    num_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
  if (y_true >= num_classes).any() or (y_pred >= num_classes).any() or (
      y_pred < 0).any():
    raise ValueError(
        f"confusion_matrix: labels/predictions outside [0, {num_classes}):"
        f" labels in [{y_true.min(initial=0)}, {y_true.max(initial=0)}],"
        f" predictions in [{y_pred.min(initial=0)}, {y_pred.max(initial=0)}].")
  idx = y_true * num_classes + y_pred
  return np.bincount(idx, minlength=num_classes**2).reshape(
      num_classes, num_classes)


def uar(y_true: ArrayLike, y_pred: ArrayLike, *, num_classes: int | None = None,
        mask: ArrayLike | None = None) -> float:
  """Unweighted average recall (sklearn `balanced_accuracy_score`)."""
  return float(uar_from_confusion(
      confusion_matrix(y_true, y_pred, num_classes, mask)))


def war(y_true: ArrayLike, y_pred: ArrayLike, *, num_classes: int | None = None,
        mask: ArrayLike | None = None) -> float:
  """Weighted average recall = accuracy (sklearn `accuracy_score`)."""
  return float(war_from_confusion(
      confusion_matrix(y_true, y_pred, num_classes, mask)))


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, *, num_classes: int,
             mask: ArrayLike | None = None) -> float:
  """Mean F1 over all `num_classes` classes, zero_division=0."""
  return float(macro_f1_from_confusion(
      confusion_matrix(y_true, y_pred, num_classes, mask)))


def abaw_expr_score(y_true: ArrayLike, y_pred: ArrayLike, *,
                    mask: ArrayLike | None = None) -> float:
  """ABAW (5th/6th) EXPR challenge score: macro-F1 over the 8 classes;
  frames labelled -1 are ignored."""
  return macro_f1(y_true, y_pred, num_classes=8, mask=mask)


################################################################################
# Multi-label (AU): counts and F1.
################################################################################


def _multilabel_counts(y_true, y_pred, mask, invalid, xp):
  """Per-label (tp, fp, fn, tn) over kept elements; see `MultiLabelCounts`."""
  y_true = xp.asarray(y_true)
  y_pred = xp.asarray(y_pred).astype(bool)
  if y_true.shape != y_pred.shape or y_true.ndim < 1:
    raise ValueError(
        f"multi-label counts: labels {y_true.shape} and predictions"
        f" {y_pred.shape} must have the same shape (..., L).")
  keep = _row_mask(mask, y_true.shape, xp, "multi-label counts")
  bad = y_true < 0
  if invalid == "row":
    bad = xp.broadcast_to(bad.any(axis=-1, keepdims=True), bad.shape)
  elif invalid != "element":
    raise ValueError(f"invalid must be 'row' or 'element', got {invalid!r}.")
  keep = keep & ~bad
  t = y_true > 0
  axes = tuple(range(y_true.ndim - 1))
  it = xp.int32 if xp is jnp else np.int64
  count = lambda a: (a & keep).astype(it).sum(axis=axes)
  return (count(t & y_pred), count(~t & y_pred), count(t & ~y_pred),
          count(~t & ~y_pred))


def au_f1(y_true: ArrayLike, y_pred: ArrayLike, *,
          mask: ArrayLike | None = None,
          invalid: Literal["row", "element"] = "row",
          average: Literal["macro"] | None = "macro") -> float | np.ndarray:
  """Per-AU binary F1 (zero_division=0) and its mean over AUs (ABAW AU score).

  Args:
    y_true: (..., L) labels in {0, 1}; negative = invalid (ABAW -1).
    y_pred: (..., L) binary predictions (threshold beforehand, e.g.
      `logits > 0`).
    mask: optional (...,) per-frame or (..., L) per-element keep-mask.
    invalid: 'row' drops a frame with any negative label (ABAW code drops such
      rows), 'element' drops only the negative entries.
    average: 'macro' for the mean over L, None for the (L,) per-AU F1.
  """
  tp, fp, fn, _ = _multilabel_counts(y_true, y_pred, mask, invalid, np)
  f1 = _f1(tp.astype(np.float64), fp.astype(np.float64), fn.astype(np.float64),
           np)
  return float(f1.mean()) if average == "macro" else f1


abaw_au_score = functools.partial(au_f1, average="macro")
abaw_au_score.__doc__ = "ABAW AU challenge score: mean F1 over the 12 AUs."


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


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """Mergeable (C, C) int32 confusion matrix, rows = true, columns = predicted.

  In a jitted step: `ConfusionMatrix.from_model_output(logits=..., labels=...,
  mask=...)`; across batches `m.merge(m2)`; results with `uar()`, `war()`,
  `macro_f1()`, `per_class_recall()`, `per_class_f1()` or `compute()` (a dict
  of all of them). For a `clu.metrics.Collection`, bind the class count:
  `ConfusionMatrix.bind(num_classes=7)` (and see `UAR`, `WAR`, `MacroF1`,
  whose `compute()` is a scalar).
  """
  counts: Array
  num_classes: int = flax.struct.field(pytree_node=False)

  _defaults = {}

  @classmethod
  def bind(cls, num_classes: int):
    """Subclass with a default class count (for `Collection.empty()`)."""
    return _bind(cls, str(num_classes), num_classes=num_classes)

  @classmethod
  def empty(cls, num_classes: int | None = None):
    num_classes = num_classes or cls._defaults.get("num_classes")
    if num_classes is None:
      raise ValueError(f"{cls.__name__}.empty() needs num_classes (or use"
                       f" {cls.__name__}.bind(num_classes)).")
    return cls(counts=jnp.zeros((num_classes, num_classes), jnp.int32),
               num_classes=num_classes)

  @classmethod
  def from_model_output(cls, *, labels: ArrayLike,
                        logits: ArrayLike | None = None,
                        predictions: ArrayLike | None = None,
                        mask: ArrayLike | None = None,
                        num_classes: int | None = None, **_):
    """Counts one batch.

    Args:
      labels: (...) int class ids. Negative labels (ABAW -1) and labels
        >= num_classes are ignored (an out-of-range label cannot raise inside
        jit; `confusion_matrix` raises on it offline).
      logits: (..., C) scores; the prediction is their argmax (first on ties).
      predictions: (...) int predicted ids instead of logits; a sample whose
        prediction is outside [0, num_classes) is ignored like a bad label.
      mask: (...) keep-mask (broadcastable to labels).
      num_classes: defaults to the bound value, else logits.shape[-1].
    """
    if (logits is None) == (predictions is None):
      raise ValueError("ConfusionMatrix: pass exactly one of logits and"
                       " predictions.")
    num_classes = (num_classes or cls._defaults.get("num_classes") or
                   (None if logits is None else jnp.shape(logits)[-1]))
    if num_classes is None:
      raise ValueError("ConfusionMatrix: num_classes is required with"
                       " predictions.")
    labels = jnp.asarray(labels).astype(jnp.int32)
    if logits is not None:
      if jnp.shape(logits) != labels.shape + (num_classes,):
        raise ValueError(
            f"ConfusionMatrix: logits {jnp.shape(logits)} must be labels"
            f" {labels.shape} + ({num_classes},).")
      preds = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
      preds = jnp.asarray(predictions).astype(jnp.int32)
    valid = ((labels >= 0) & (labels < num_classes) & (preds >= 0) &
             (preds < num_classes))
    if mask is not None:
      valid &= jnp.broadcast_to(jnp.asarray(mask, bool), labels.shape)
    # Sum of outer products of one-hots rather than a scatter-add: a scatter
    # over a batch sharded on an Explicit mesh has no inferable output
    # sharding, a reduction does (XLA fuses the broadcast into the reduce).
    classes = jnp.arange(num_classes, dtype=jnp.int32)
    true_oh = (labels[..., None] == classes) & valid[..., None]
    pred_oh = preds[..., None] == classes
    counts = (true_oh[..., :, None] & pred_oh[..., None, :]).astype(
        jnp.int32).sum(axis=tuple(range(labels.ndim)))
    return cls(counts=counts, num_classes=num_classes)

  def merge(self, other):
    if self.num_classes != other.num_classes:
      raise ValueError(f"Cannot merge confusion matrices of {self.num_classes}"
                       f" and {other.num_classes} classes.")
    return self.replace(counts=self.counts + other.counts)

  def per_class_recall(self):
    return per_class_recall_from_confusion(self.counts)

  def per_class_f1(self):
    return per_class_f1_from_confusion(self.counts)

  def uar(self):
    return uar_from_confusion(self.counts)

  def war(self):
    return war_from_confusion(self.counts)

  def macro_f1(self):
    return macro_f1_from_confusion(self.counts)

  def compute(self) -> dict[str, Array]:
    return dict(uar=self.uar(), war=self.war(), macro_f1=self.macro_f1(),
                per_class_recall=self.per_class_recall(),
                per_class_f1=self.per_class_f1(), confusion_matrix=self.counts)


@flax.struct.dataclass
class UAR(ConfusionMatrix):
  """`ConfusionMatrix` whose `compute()` is the UAR scalar."""

  def compute(self) -> Array:
    return self.uar()


@flax.struct.dataclass
class WAR(ConfusionMatrix):
  """`ConfusionMatrix` whose `compute()` is the WAR (accuracy) scalar."""

  def compute(self) -> Array:
    return self.war()


@flax.struct.dataclass
class MacroF1(ConfusionMatrix):
  """`ConfusionMatrix` whose `compute()` is the macro-F1 scalar (ABAW EXPR)."""

  def compute(self) -> Array:
    return self.macro_f1()


@flax.struct.dataclass
class MultiLabelCounts(clu_metrics.Metric):
  """Mergeable per-label (L,) int32 TP/FP/FN/TN counts (ABAW AU).

  `from_model_output(labels=..., logits=...)` thresholds logits > 0
  (= sigmoid >= 0.5 up to the tie at exactly 0) or `probs=...` with
  probs >= prob_threshold, or takes binary `predictions`. `f1()` is the ABAW
  AU score. Bind the label count for Collections: `MultiLabelCounts.bind(12)`.
  """
  tp: Array
  fp: Array
  fn: Array
  tn: Array
  num_labels: int = flax.struct.field(pytree_node=False)

  _defaults = {}

  @classmethod
  def bind(cls, num_labels: int):
    return _bind(cls, str(num_labels), num_labels=num_labels)

  @classmethod
  def empty(cls, num_labels: int | None = None):
    num_labels = num_labels or cls._defaults.get("num_labels")
    if num_labels is None:
      raise ValueError(f"{cls.__name__}.empty() needs num_labels (or use"
                       f" {cls.__name__}.bind(num_labels)).")
    z = jnp.zeros((num_labels,), jnp.int32)
    return cls(tp=z, fp=z, fn=z, tn=z, num_labels=num_labels)

  @classmethod
  def from_model_output(cls, *, labels: ArrayLike,
                        logits: ArrayLike | None = None,
                        probs: ArrayLike | None = None,
                        predictions: ArrayLike | None = None,
                        mask: ArrayLike | None = None,
                        logit_threshold: float = 0.0,
                        prob_threshold: float = 0.5,
                        invalid: Literal["row", "element"] = "row", **_):
    """Counts one batch.

    Args:
      labels: (..., L) in {0, 1}; negative = invalid (ABAW -1).
      logits: (..., L) scores, predicted positive where > logit_threshold.
      probs: (..., L) probabilities, positive where >= prob_threshold.
      predictions: (..., L) binary predictions.
      mask: (...) per-frame or (..., L) per-element keep-mask.
      logit_threshold, prob_threshold: decision thresholds.
      invalid: 'row' drops frames with any negative label (ABAW), 'element'
        only the negative entries.
    """
    given = [a is not None for a in (logits, probs, predictions)]
    if sum(given) != 1:
      raise ValueError("MultiLabelCounts: pass exactly one of logits, probs"
                       " and predictions.")
    if logits is not None:
      pred = jnp.asarray(logits) > logit_threshold
    elif probs is not None:
      pred = jnp.asarray(probs) >= prob_threshold
    else:
      pred = jnp.asarray(predictions) > 0
    labels = jnp.asarray(labels)
    num_labels = cls._defaults.get("num_labels") or labels.shape[-1]
    if labels.shape[-1] != num_labels:
      raise ValueError(f"MultiLabelCounts: expected {num_labels} labels, got"
                       f" labels of shape {labels.shape}.")
    tp, fp, fn, tn = _multilabel_counts(labels, pred, mask, invalid, jnp)
    return cls(tp=tp, fp=fp, fn=fn, tn=tn, num_labels=num_labels)

  def merge(self, other):
    if self.num_labels != other.num_labels:
      raise ValueError(f"Cannot merge counts of {self.num_labels} and"
                       f" {other.num_labels} labels.")
    return self.replace(tp=self.tp + other.tp, fp=self.fp + other.fp,
                        fn=self.fn + other.fn, tn=self.tn + other.tn)

  def per_label_f1(self) -> Array:
    f = lambda a: a.astype(jnp.float32)
    return _f1(f(self.tp), f(self.fp), f(self.fn), jnp)

  def f1(self) -> Array:
    """Mean per-label F1 (ABAW AU score)."""
    return self.per_label_f1().mean()

  def per_label_accuracy(self) -> Array:
    total = (self.tp + self.fp + self.fn + self.tn).astype(jnp.float32)
    return _safe_div((self.tp + self.tn).astype(jnp.float32), total, jnp,
                     jnp.nan)

  def compute(self) -> dict[str, Array]:
    return dict(f1=self.f1(), per_label_f1=self.per_label_f1(),
                per_label_accuracy=self.per_label_accuracy())


@flax.struct.dataclass
class AUF1(MultiLabelCounts):
  """`MultiLabelCounts` whose `compute()` is the mean F1 (ABAW AU score)."""

  def compute(self) -> Array:
    return self.f1()


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


################################################################################
# Cross-process merge of host-local metrics.
################################################################################


def allgather_merge(metric: M) -> M:
  """Merges a metric (or `clu.metrics.Collection`) over all JAX processes.

  Only for metrics accumulated from process-local data. A metric computed in
  the global-view jitted step from global arrays is already global: passing
  it here raises (it would be counted once per process). Every process must
  call this collectively with metrics of the same structure; all processes
  get the same result (merged in process order).
  """
  for leaf in jax.tree.leaves(metric):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      raise ValueError(
          "allgather_merge: the metric holds a global (not fully addressable)"
          " jax.Array, so it already covers all processes; use it as is.")
  stacked = multihost_utils.process_allgather(metric, tiled=False)
  parts = [jax.tree.map(lambda a, i=i: jnp.asarray(a[i]), stacked)
           for i in range(jax.process_count())]
  return functools.reduce(lambda a, b: a.merge(b), parts)
