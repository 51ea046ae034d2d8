"""Expression classification metrics (clip or frame level) from a confusion matrix.

DFEW, AFEW: 7 classes; ABAW EXPR: 8 classes per frame. From a confusion matrix:

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

With no valid sample UAR and WAR are nan, macro-F1 is 0.
"""

from __future__ import annotations

from clu import metrics as clu_metrics
import flax
import jax.numpy as jnp
import numpy as np

from jaxaffect.metrics.base import Array, ArrayLike, _bind, _f1, _safe_div, _xp


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
