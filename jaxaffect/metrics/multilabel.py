"""ABAW AU detection (multi-label) metrics: per-AU counts and F1.

12 AUs: per-AU TP/FP/FN/TN counts; the AU score is the mean over AUs of the
per-AU binary F1 with zero_division=0 (sklearn `f1_score(average='macro',
zero_division=0)` on the indicator matrix), 0 with no valid sample.
"""

from __future__ import annotations

import functools
from typing import Literal

from clu import metrics as clu_metrics
import flax
import jax.numpy as jnp
import numpy as np

from jaxaffect.metrics.base import Array, ArrayLike, _bind, _f1, _row_mask, _safe_div


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
# clu metrics.
################################################################################


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
