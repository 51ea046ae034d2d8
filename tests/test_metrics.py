"""Tests of jaxaffect.metrics against sklearn, torchmetrics, torch autograd."""
import functools
import json
import os
import subprocess
import sys
import textwrap
import warnings

from clu import metrics as clu_metrics
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm
import torch
import torchmetrics
from torchmetrics import classification as tmc

from jaxaffect import metrics as M

SEEDS = (0, 1, 2)

# Jitted once at module level so that parametrised tests reuse compilations.
_cm_jit = jax.jit(M.ConfusionMatrix.from_model_output,
                  static_argnames=("num_classes",))
_auf1_jit = jax.jit(M.AUF1.from_model_output, static_argnames=("invalid",))
_ccc_jit = jax.jit(M.CCC.from_model_output, static_argnames=("invalid_value",))
_ps_jit = jax.jit(M.PerSequenceCCC.from_model_output,
                  static_argnames=("num_sequences", "invalid_value"))
_ccc_reduce_jit = jax.jit(lambda a, b: jax.vmap(
    lambda a, b: M.CCC.from_model_output(predictions=a, labels=b))(a,
                                                                    b).reduce())
_pva_coll = clu_metrics.Collection.create(p_va=M.MeanCCC.bind(2))
_pva_coll_jit = jax.jit(_pva_coll.single_from_model_output,
                        static_argnames=("invalid_value",))


def _cls_data(seed, n=300, c=7, invalid_frac=0.0):
  """Random labels / logits with correlated predictions and some -1 labels."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, c, n)
  logits = rng.normal(size=(n, c)).astype(np.float32)
  logits[np.arange(n), labels] += rng.uniform(0, 2, n).astype(np.float32)
  labels[rng.random(n) < invalid_frac] = -1
  return labels, logits


################################################################################
# Classification.
################################################################################


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("c", (7, 8))
def test_confusion_metrics_match_sklearn(seed, c):
  labels, logits = _cls_data(seed, c=c, invalid_frac=0.1)
  rng = np.random.default_rng(100 + seed)
  mask = rng.random(labels.shape) < 0.9
  m = _cm_jit(logits=logits, labels=labels, mask=mask)
  keep = mask & (labels >= 0)
  yt, yp = labels[keep], logits.argmax(-1)[keep]
  np.testing.assert_array_equal(
      m.counts, skm.confusion_matrix(yt, yp, labels=range(c)))
  np.testing.assert_allclose(m.uar(), skm.balanced_accuracy_score(yt, yp),
                             rtol=1e-6)
  np.testing.assert_allclose(m.war(), skm.accuracy_score(yt, yp), rtol=1e-6)
  f1 = skm.f1_score(yt, yp, average="macro", labels=range(c), zero_division=0)
  np.testing.assert_allclose(m.macro_f1(), f1, rtol=1e-6)
  np.testing.assert_allclose(
      m.per_class_f1(),
      skm.f1_score(yt, yp, average=None, labels=range(c), zero_division=0),
      rtol=1e-6)
  np.testing.assert_allclose(
      m.per_class_recall(),
      skm.recall_score(yt, yp, average=None, labels=range(c)), rtol=1e-6)
  # Offline numpy functions, given the raw (-1 containing) labels + mask.
  pred = logits.argmax(-1)
  assert M.uar(labels, pred, mask=mask) == pytest.approx(
      skm.balanced_accuracy_score(yt, yp), abs=1e-12)
  assert M.war(labels, pred, mask=mask) == pytest.approx(
      skm.accuracy_score(yt, yp), abs=1e-12)
  assert M.macro_f1(labels, pred, num_classes=c, mask=mask) == pytest.approx(
      f1, abs=1e-12)
  if c == 8:
    assert M.abaw_expr_score(labels, pred, mask=mask) == pytest.approx(
        f1, abs=1e-12)
  out = m.compute()
  assert set(out) == {"uar", "war", "macro_f1", "per_class_recall",
                      "per_class_f1", "confusion_matrix"}


@pytest.mark.parametrize("seed", SEEDS)
def test_uar_matches_torchmetrics_macro_recall(seed):
  labels, logits = _cls_data(seed, invalid_frac=0.1)
  m = M.UAR.from_model_output(logits=logits, labels=labels)
  tm = tmc.MulticlassRecall(num_classes=7, average="macro", ignore_index=-1)
  ref = tm(torch.tensor(logits), torch.tensor(labels)).item()
  np.testing.assert_allclose(m.compute(), ref, rtol=1e-6)
  assert M.uar(labels, logits.argmax(-1)) == pytest.approx(ref, rel=1e-6)


def test_absent_class_uar_over_present_classes_and_f1_zero_division():
  # Class 3 never labelled but predicted once; classes 4..6 absent entirely.
  y_true = np.array([0, 0, 1, 1, 2, 2, 2])
  y_pred = np.array([0, 3, 1, 0, 2, 2, 1])
  c = 7
  m = M.ConfusionMatrix.from_model_output(predictions=y_pred, labels=y_true,
                                          num_classes=c)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # sklearn warns about class 3
    ref_uar = skm.balanced_accuracy_score(y_true, y_pred)
  assert ref_uar == pytest.approx((1 / 2 + 1 / 2 + 2 / 3) / 3)
  np.testing.assert_allclose(m.uar(), ref_uar, rtol=1e-6)
  assert M.uar(y_true, y_pred) == pytest.approx(ref_uar, abs=1e-12)
  ref_f1 = skm.f1_score(y_true, y_pred, average="macro", labels=range(c),
                        zero_division=0)
  np.testing.assert_allclose(m.macro_f1(), ref_f1, rtol=1e-6)
  assert np.isnan(np.asarray(m.per_class_recall())[3:]).all()
  # torchmetrics keeps the predicted-but-unlabelled class 3 with recall 0 (it
  # only drops classes with tp + fp + fn == 0): documented difference.
  tm = tmc.MulticlassRecall(num_classes=c, average="macro")(
      torch.tensor(y_pred), torch.tensor(y_true)).item()
  assert tm == pytest.approx(ref_uar * 3 / 4, rel=1e-6)


def test_classification_all_masked_and_single_sample():
  labels, logits = _cls_data(0, n=5)
  m = M.ConfusionMatrix.from_model_output(logits=logits, labels=labels,
                                          mask=np.zeros(5, bool))
  assert int(m.counts.sum()) == 0
  assert np.isnan(m.uar()) and np.isnan(m.war())
  assert float(m.macro_f1()) == 0.0
  m = M.ConfusionMatrix.from_model_output(
      logits=logits, labels=np.full(5, -1))
  assert np.isnan(m.uar())
  # Merging an empty metric is a no-op.
  one = M.ConfusionMatrix.from_model_output(
      predictions=np.array([2]), labels=np.array([2]), num_classes=7)
  assert float(one.merge(m).uar()) == 1.0 and float(one.war()) == 1.0
  assert float(one.macro_f1()) == pytest.approx(
      skm.f1_score([2], [2], average="macro", labels=range(7),
                   zero_division=0))
  wrong = M.ConfusionMatrix.from_model_output(
      predictions=np.array([1]), labels=np.array([2]), num_classes=7)
  assert float(wrong.uar()) == 0.0 and float(wrong.macro_f1()) == 0.0


def test_confusion_merge_of_chunks_equals_one_shot_and_collection():
  labels, logits = _cls_data(3, n=310, c=8, invalid_frac=0.2)
  one = _cm_jit(logits=logits, labels=labels)
  acc = M.ConfusionMatrix.empty(8)
  for i in range(0, 310, 62):
    acc = acc.merge(_cm_jit(logits=logits[i:i + 62], labels=labels[i:i + 62]))
  np.testing.assert_array_equal(acc.counts, one.counts)
  # clu Collection with bound class counts.
  coll = clu_metrics.Collection.create(
      uar=M.UAR.bind(8), war=M.WAR.bind(8), f1=M.MacroF1.bind(8))
  ms = coll.empty()
  for i in range(0, 310, 155):
    ms = ms.merge(jax.jit(coll.single_from_model_output)(
        logits=logits[i:i + 155], labels=labels[i:i + 155]))
  out = ms.compute()
  np.testing.assert_allclose(out["uar"], one.uar(), rtol=1e-6)
  np.testing.assert_allclose(out["war"], one.war(), rtol=1e-6)
  np.testing.assert_allclose(out["f1"], one.macro_f1(), rtol=1e-6)
  with pytest.raises(ValueError, match="merge"):
    one.merge(M.ConfusionMatrix.empty(7))
  with pytest.raises(ValueError, match="num_classes"):
    M.ConfusionMatrix.empty()


def test_all_metrics_in_global_view_sharded_jit():
  """Batch sharded over 8 devices on an Explicit mesh (the trainer's set-up):
  metrics come out global and equal to the one-device numpy references."""
  mesh = jax.make_mesh((8,), ("data",))
  labels, logits = _cls_data(4, n=64, c=7, invalid_frac=0.1)
  labels = labels.reshape(8, 8)  # per-frame labels (B, T)
  logits = logits.reshape(8, 8, 7)
  au_labels, au_logits = _au_data(4, n=64)
  au_labels, au_logits = au_labels.reshape(8, 8, 12), au_logits.reshape(
      8, 8, 12)
  x, y = _va_data(4, shape=(8, 8, 2))
  ids = np.random.default_rng(4).integers(0, 3, (8, 8))

  def step(lo, la, aul, aulo, x, y, ids):
    return (M.ConfusionMatrix.from_model_output(logits=lo, labels=la),
            M.MultiLabelCounts.from_model_output(logits=aulo, labels=aul),
            M.CCC.from_model_output(predictions=x, labels=y),
            M.PerSequenceCCC.from_model_output(
                predictions=x, labels=y, sequence_ids=ids, num_sequences=3))

  with jax.set_mesh(mesh):
    sh = jax.sharding.NamedSharding(mesh, jax.P("data"))
    args = jax.device_put((logits, labels, au_labels, au_logits, x, y, ids),
                          sh)
    cm, au, cc, ps = jax.jit(step)(*args)
  keep = labels >= 0
  np.testing.assert_array_equal(
      cm.counts, skm.confusion_matrix(labels[keep], logits.argmax(-1)[keep],
                                      labels=range(7)))
  np.testing.assert_allclose(
      au.f1(), skm.f1_score(au_labels.reshape(-1, 12),
                            (au_logits > 0).reshape(-1, 12),
                            average="macro", zero_division=0), rtol=1e-6)
  np.testing.assert_allclose(
      cc.compute(), _ccc_ref(x.reshape(-1, 2), y.reshape(-1, 2)), rtol=2e-6)
  np.testing.assert_allclose(
      ps.compute(), M.ccc_per_sequence(x.reshape(-1, 2), y.reshape(-1, 2),
                                       ids.reshape(-1)), rtol=2e-5)


def test_out_of_range_labels():
  # In jit, labels outside [0, C) are dropped; offline they raise.
  m = M.ConfusionMatrix.from_model_output(
      predictions=np.array([0, 1, 2]), labels=np.array([0, 7, -1]),
      num_classes=7)
  assert int(m.counts.sum()) == 1
  with pytest.raises(ValueError, match="outside"):
    M.confusion_matrix([0, 7], [0, 1], num_classes=7)
  with pytest.raises(ValueError, match="exactly one"):
    M.ConfusionMatrix.from_model_output(labels=np.array([0]))


################################################################################
# Multi-label AU.
################################################################################


def _au_data(seed, n=400, l=12):
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, l)) < rng.uniform(0.05, 0.5, l)).astype(np.int32)
  logits = (rng.normal(size=(n, l)) + 1.5 * (labels - 0.5)).astype(np.float32)
  return labels, logits


@pytest.mark.parametrize("seed", SEEDS)
def test_au_f1_matches_sklearn_and_torchmetrics(seed):
  labels, logits = _au_data(seed)
  probs = 1 / (1 + np.exp(-logits))
  pred = (logits > 0).astype(np.int32)
  ref = skm.f1_score(labels, pred, average="macro", zero_division=0)
  ref_per = skm.f1_score(labels, pred, average=None, zero_division=0)
  m_logits = _auf1_jit(logits=logits, labels=labels)
  m_probs = M.MultiLabelCounts.from_model_output(probs=probs, labels=labels)
  np.testing.assert_allclose(m_logits.compute(), ref, rtol=1e-6)
  np.testing.assert_allclose(m_probs.f1(), ref, rtol=1e-6)
  np.testing.assert_allclose(m_probs.per_label_f1(), ref_per, rtol=1e-6)
  np.testing.assert_allclose(
      m_probs.per_label_accuracy(), (pred == labels).mean(0), rtol=1e-6)
  tm = tmc.MultilabelF1Score(num_labels=12, average="macro", threshold=0.5)(
      torch.tensor(probs), torch.tensor(labels)).item()
  np.testing.assert_allclose(m_probs.f1(), tm, rtol=1e-6)
  assert M.au_f1(labels, pred) == pytest.approx(ref, abs=1e-12)
  assert M.abaw_au_score(labels, pred) == pytest.approx(ref, abs=1e-12)
  np.testing.assert_allclose(M.au_f1(labels, pred, average=None), ref_per)


@pytest.mark.parametrize("seed", SEEDS)
def test_au_invalid_rows_elements_and_masks(seed):
  labels, logits = _au_data(seed)
  rng = np.random.default_rng(seed + 10)
  labels[rng.random(400) < 0.1] = -1  # unannotated frames (whole row)
  labels[rng.random(labels.shape) < 0.02] = -1  # scattered -1 entries
  frame_mask = rng.random(400) < 0.8
  pred = (logits > 0).astype(np.int32)
  # 'row': ABAW drops frames with any -1.
  keep = frame_mask & (labels >= 0).all(-1)
  ref = skm.f1_score(labels[keep], pred[keep], average="macro",
                     zero_division=0)
  m = M.MultiLabelCounts.from_model_output(logits=logits, labels=labels,
                                           mask=frame_mask)
  np.testing.assert_allclose(m.f1(), ref, rtol=1e-6)
  assert M.au_f1(labels, pred, mask=frame_mask) == pytest.approx(ref,
                                                                 abs=1e-12)
  # 'element': only the -1 entries are dropped = torchmetrics ignore_index.
  tm = tmc.MultilabelF1Score(num_labels=12, average="macro", threshold=0.5,
                             ignore_index=-1)(
                                 torch.tensor(1 / (1 + np.exp(-logits))),
                                 torch.tensor(labels)).item()
  m = M.MultiLabelCounts.from_model_output(logits=logits, labels=labels,
                                           invalid="element")
  np.testing.assert_allclose(m.f1(), tm, rtol=1e-6)
  # A per-element mask equals dropping those entries column by column.
  elem_mask = rng.random(labels.shape) < 0.7
  m = M.MultiLabelCounts.from_model_output(logits=logits, labels=labels,
                                           mask=elem_mask, invalid="element")
  per = [skm.f1_score(labels[k, j], pred[k, j], zero_division=0)
         for j in range(12)
         for k in [elem_mask[:, j] & (labels[:, j] >= 0)]]
  np.testing.assert_allclose(m.per_label_f1(), per, rtol=1e-6)
  np.testing.assert_allclose(
      M.au_f1(labels, pred, mask=elem_mask, invalid="element", average=None),
      per, rtol=1e-12)


def test_au_merge_edge_cases():
  labels, logits = _au_data(5, n=90)
  step = jax.jit(lambda lo, la: M.MultiLabelCounts.from_model_output(
      logits=lo, labels=la))
  one = step(logits, labels)
  acc = M.MultiLabelCounts.bind(12).empty()
  for i in range(0, 90, 30):
    acc = acc.merge(step(logits[i:i + 30], labels[i:i + 30]))
  for f in ("tp", "fp", "fn", "tn"):
    np.testing.assert_array_equal(getattr(acc, f), getattr(one, f))
  # An AU never labelled and never predicted: F1 0 (zero_division=0).
  lab = np.zeros((4, 3), np.int32)
  lab[:, 0] = 1
  pr = lab.copy()
  m = M.MultiLabelCounts.from_model_output(predictions=pr, labels=lab)
  np.testing.assert_allclose(m.per_label_f1(), [1, 0, 0])
  assert float(m.f1()) == pytest.approx(
      skm.f1_score(lab, pr, average="macro", zero_division=0))
  # All masked: every F1 is 0; accuracy nan.
  m = M.MultiLabelCounts.from_model_output(predictions=pr, labels=lab,
                                           mask=np.zeros(4, bool))
  assert float(m.f1()) == 0.0 and np.isnan(m.per_label_accuracy()).all()
  # Single frame.
  m = M.MultiLabelCounts.from_model_output(
      predictions=np.array([[1, 0, 1]]), labels=np.array([[1, 0, 0]]))
  np.testing.assert_allclose(m.per_label_f1(), [1, 0, 0])


################################################################################
# CCC.
################################################################################


def _ccc_ref(x, y, ddof=0):
  """float64 textbook CCC, written independently of the library."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  n = x.shape[0]
  mx, my = x.mean(0), y.mean(0)
  sxy = ((x - mx) * (y - my)).sum(0) / (n - ddof)
  return 2 * sxy / (x.var(0, ddof=ddof) + y.var(0, ddof=ddof) + (mx - my)**2)


def _va_data(seed, shape=(6, 50, 2)):
  rng = np.random.default_rng(seed)
  y = np.clip(rng.normal(0.1, 0.4, shape), -1, 1).astype(np.float32)
  x = (0.7 * y + 0.15 + 0.3 * rng.normal(size=shape)).astype(np.float32)
  return x, y


@pytest.mark.parametrize("seed", SEEDS)
def test_ccc_matches_reference_and_torchmetrics(seed):
  x, y = _va_data(seed)
  xf, yf = x.reshape(-1, 2), y.reshape(-1, 2)
  ref0 = _ccc_ref(xf, yf, 0)
  np.testing.assert_allclose(M.ccc(xf, yf), ref0, rtol=1e-12)
  np.testing.assert_allclose(M.ccc(jnp.asarray(x), jnp.asarray(y),
                                   axis=(0, 1)), ref0, rtol=2e-6)
  m = _ccc_jit(predictions=x, labels=y)
  np.testing.assert_allclose(m.compute(), ref0, rtol=2e-6)
  np.testing.assert_allclose(m.mean(), ref0.mean(), rtol=2e-6)
  np.testing.assert_allclose(M.p_va(*m.compute()), ref0.mean(), rtol=2e-6)
  # torchmetrics = ddof=1 variances with an unscaled mean term.
  tm = torchmetrics.regression.ConcordanceCorrCoef(num_outputs=2)
  for i in range(x.shape[0]):  # also exercises its own batch merging
    tm.update(torch.tensor(x[i]), torch.tensor(y[i]))
  ref1 = tm.compute().numpy()
  np.testing.assert_allclose(_ccc_ref(xf, yf, 1), ref1, rtol=2e-6)
  np.testing.assert_allclose(M.ccc(xf, yf, ddof=1), ref1, rtol=2e-6)
  np.testing.assert_allclose(m.ccc(ddof=1), ref1, rtol=2e-6)
  assert not np.allclose(ref0, ref1, rtol=1e-6)  # the two definitions differ


@pytest.mark.parametrize("seed", SEEDS)
def test_ccc_merge_of_chunks_masks_and_invalid_value(seed):
  x, y = _va_data(seed)
  rng = np.random.default_rng(seed + 20)
  y[rng.random(y.shape[:2]) < 0.15] = -5.0  # ABAW invalid frames
  frame_mask = rng.random(y.shape[:2]) < 0.9
  keep = frame_mask & (y != -5).all(-1)
  ref = _ccc_ref(x[keep], y[keep])
  step = lambda a, b, k: _ccc_jit(predictions=a, labels=b, mask=k,
                                  invalid_value=-5.0)
  one = step(x, y, frame_mask)
  np.testing.assert_allclose(one.compute(), ref, rtol=2e-6)
  # Chunks of unequal size, one fully masked, in a different order.
  acc = M.CCC.bind(2).empty()
  for s in (slice(4, 6), slice(0, 1), slice(1, 4)):
    k = frame_mask[s].copy()
    if s.start == 0:
      k[:] = False  # an empty chunk must be a no-op
    acc = acc.merge(step(x[s], y[s], k))
  keep2 = keep.copy()
  keep2[0] = False
  np.testing.assert_allclose(acc.compute(), _ccc_ref(x[keep2], y[keep2]),
                             rtol=2e-6)
  # Per-element mask: each dimension keeps its own frames.
  elem = rng.random(x.shape) < 0.8
  m = M.CCC.from_model_output(predictions=x, labels=y, mask=elem)
  per = [_ccc_ref(x[..., d][elem[..., d]], y[..., d][elem[..., d]])
         for d in range(2)]
  np.testing.assert_allclose(m.compute(), per, rtol=2e-6)
  np.testing.assert_allclose(M.ccc(x, y, elem, axis=(0, 1)), per,
                             rtol=1e-12)
  # clu Collection + clu reduce (lax.scan of merges over a stacked metric).
  reduced = _ccc_reduce_jit(x, y)
  np.testing.assert_allclose(reduced.compute(),
                             _ccc_ref(x.reshape(-1, 2), y.reshape(-1, 2)),
                             rtol=2e-6)
  out = _pva_coll.empty().merge(_pva_coll_jit(
      predictions=x, labels=y, mask=frame_mask, invalid_value=-5.0)).compute()
  np.testing.assert_allclose(out["p_va"], ref.mean(), rtol=2e-6)


def test_ccc_large_n_float32_accumulation():
  """1e6 frames, mean >> spread: centred float32 state vs float64 reference."""
  rng = np.random.default_rng(0)
  n, chunk = 1_000_000, 1000
  y = (3.0 + 0.05 * rng.standard_normal((n, 2))).astype(np.float32)
  x = (0.8 * y + 0.6 + 0.025 * rng.standard_normal((n, 2))).astype(np.float32)
  ref = _ccc_ref(x, y)
  one = _ccc_jit(predictions=x, labels=y).compute()
  np.testing.assert_allclose(one, ref, atol=1e-6)
  # 1000 per-batch states merged by clu's reduce (lax.scan of merges), and
  # 10 large chunks merged eagerly on host.
  merged = _ccc_reduce_jit(x.reshape(-1, chunk, 2), y.reshape(-1, chunk, 2))
  err = np.abs(np.asarray(merged.compute()) - ref).max()
  assert err < 1e-5, err
  acc = M.CCC.empty(2)
  for i in range(0, n, n // 10):
    acc = acc.merge(_ccc_jit(predictions=x[i:i + n // 10],
                             labels=y[i:i + n // 10]))
  np.testing.assert_allclose(acc.compute(), ref, atol=1e-5)
  # Why centred statistics: the same accumulation with raw float32 power
  # sums (n, sum x, sum y, sum x^2, sum y^2, sum xy) is far off.
  xs, ys = jnp.asarray(x.reshape(-1, chunk, 2)), jnp.asarray(
      y.reshape(-1, chunk, 2))
  raw = [np.float32(0)] * 5
  sums = [np.asarray(v) for v in (xs.sum(1), ys.sum(1), (xs * xs).sum(1),
                                  (ys * ys).sum(1), (xs * ys).sum(1))]
  for s in zip(*sums):
    raw = [r + np.asarray(v, np.float32) for r, v in zip(raw, s)]
  sx, sy, sxx, syy, sxy = raw
  mx, my = sx / n, sy / n
  naive = 2 * (sxy / n - mx * my) / (sxx / n - mx**2 + syy / n - my**2 +
                                     (mx - my)**2)
  assert np.abs(naive - ref).max() > 100 * err


def test_ccc_edge_cases():
  rng = np.random.default_rng(0)
  y = rng.normal(size=20).astype(np.float32)
  const = np.full(20, 0.3, np.float32)
  ccc_jit = jax.jit(M.ccc, static_argnames=("ddof", "axis", "eps"))
  for xp_ in (np, jnp):
    ccc = M.ccc if xp_ is np else ccc_jit
    # Constant predictions: covariance 0, denominator > 0, CCC = 0.
    assert float(ccc(xp_.asarray(const), xp_.asarray(y))) == 0.0
    # Two constants with different means: 0.
    assert float(ccc(xp_.asarray(const), xp_.asarray(const + 1))) == 0.0
    # Identical constants: 0/0, nan.
    assert np.isnan(ccc(xp_.asarray(const), xp_.asarray(const)))
    # Single sample: ddof=0 -> 0 unless equal (nan); ddof=1 -> nan.
    assert float(ccc(xp_.asarray([0.5]), xp_.asarray([0.1]))) == 0.0
    assert np.isnan(ccc(xp_.asarray([0.5]), xp_.asarray([0.5])))
    assert np.isnan(ccc(xp_.asarray([0.5]), xp_.asarray([0.1]), ddof=1))
    # All masked: nan.
    assert np.isnan(ccc(xp_.asarray(y), xp_.asarray(y),
                      xp_.zeros(20, bool)))
    assert np.isnan(ccc(xp_.zeros(0), xp_.zeros(0)))
  # eps regularises the identical-constants case (in the denominator).
  assert float(M.ccc(const, const, eps=1e-3)) == 0.0
  np.testing.assert_allclose(M.ccc(const, y, eps=0.5), 0.0, atol=1e-12)
  np.testing.assert_allclose(
      M.ccc(y, 2 * y, eps=0.5),
      2 * y.var() * 2 / (y.var() + 4 * y.var() + y.mean()**2 + 0.5),
      rtol=1e-6)
  # The numbers above follow the formula. torchmetrics returns nan for an
  # exactly centrable constant (0.0) and rounding noise for 0.3 (documented
  # deviation: it has no defined value for constant predictions).
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tm0 = torchmetrics.functional.concordance_corrcoef(
        torch.zeros(20), torch.tensor(y))
    tm3 = torchmetrics.functional.concordance_corrcoef(
        torch.tensor(const), torch.tensor(y))
  assert torch.isnan(tm0).all() and float(M.ccc(np.zeros(20), y)) == 0.0
  # rounding noise (-1e-15 here; exactly 0 on a CPU whose float32 sum of the 20 copies of 0.3
  # rounds to 6.0: the summation order is the CPU's): x - mean(x) is one constant δ ~ 20·eps32·0.3,
  # so |ccc| ≲ 2·|δ|·|Σ(y - mean y)|/(n·var) ~ 1e-11, far below 1e-6
  assert abs(tm3.item()) < 1e-6
  # Same conventions in the metric.
  m = _ccc_jit(predictions=np.stack([const, y], -1),
               labels=np.stack([y, y], -1))
  np.testing.assert_allclose(m.compute(), [0.0, 1.0], atol=1e-6)
  m = _ccc_jit(predictions=np.ones((3, 2)), labels=np.ones((3, 2)),
               mask=np.zeros(3, bool))
  assert np.isnan(m.compute()).all()
  assert np.isnan(M.CCC.empty(2).merge(M.CCC.empty(2)).compute()).all()
  # Constant chunks merged: still exactly 0 / nan (shifted centring).
  c2 = np.stack([const, const], -1)
  m = _ccc_jit(predictions=c2[:7], labels=np.stack(
      [y, const], -1)[:7]).merge(_ccc_jit(
          predictions=c2[7:], labels=np.stack([y, const], -1)[7:]))
  out = np.asarray(m.compute())
  assert out[0] == 0.0 and np.isnan(out[1])
  ps = _ps_jit(predictions=c2, labels=np.stack([y, const], -1),
               sequence_ids=np.arange(20) % 2, num_sequences=3)
  table = np.asarray(ps.per_sequence())
  assert (table[:2, 0] == 0).all() and np.isnan(table[:, 1]).all()
  assert np.isnan(table[2]).all()  # absent sequence
  assert float(ps.compute()[0]) == 0.0 and np.isnan(ps.compute()[1])
  m = _ccc_jit(predictions=np.array([[0.5, 0.2]]),
               labels=np.array([[0.1, 0.2]]))
  np.testing.assert_array_equal(np.isnan(m.compute()), [False, True])
  assert float(m.compute()[0]) == 0.0
  with pytest.raises(ValueError, match="x\\[..., None\\]"):
    M.CCC.from_model_output(predictions=y, labels=y)


@functools.partial(jax.jit, static_argnums=3)
def _ccc_loss_grad(x, y, mask, ddof):
  return jax.value_and_grad(lambda a, b: 1 - M.ccc(a, b, mask, ddof=ddof),
                            argnums=(0, 1))(x, y)


def _torch_abaw6_ccc(x, y):
  """ABAW6-style CCC: rho from sums, torch.std (unbiased) scales."""
  xm, ym = x.mean(), y.mean()
  xs, ys = torch.std(x), torch.std(y)
  vx, vy = x - xm, y - ym
  rho = (vx * vy).sum() / (torch.sqrt((vx**2).sum()) *
                           torch.sqrt((vy**2).sum()))
  return 2 * rho * xs * ys / (xs**2 + ys**2 + (xm - ym)**2)


def _torch_ccc(x, y, ddof):
  xm, ym = x.mean(), y.mean()
  n = x.shape[0]
  cov = ((x - xm) * (y - ym)).sum() / (n - ddof)
  vx = ((x - xm)**2).sum() / (n - ddof)
  vy = ((y - ym)**2).sum() / (n - ddof)
  return 2 * cov / (vx + vy + (xm - ym)**2)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ddof", (0, 1))
def test_ccc_gradient_matches_torch_autograd(seed, ddof):
  x, y = _va_data(seed, shape=(40,))
  rng = np.random.default_rng(seed)
  mask = rng.random(40) < 0.8

  val, (gx, gy) = _ccc_loss_grad(jnp.asarray(x), jnp.asarray(y), mask, ddof)
  tx = torch.tensor(x[mask], dtype=torch.float64, requires_grad=True)
  ty = torch.tensor(y[mask], dtype=torch.float64, requires_grad=True)
  loss_t = 1 - (_torch_abaw6_ccc(tx, ty) if ddof == 1 else
                _torch_ccc(tx, ty, 0))
  loss_t.backward()
  np.testing.assert_allclose(val, loss_t.item(), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(gx)[mask], tx.grad.numpy(),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gy)[mask], ty.grad.numpy(),
                             rtol=1e-4, atol=1e-6)
  assert np.all(np.asarray(gx)[~mask] == 0)
  assert np.all(np.asarray(gy)[~mask] == 0)


def test_ccc_gradient_finite_for_constant_predictions():
  # A collapsed model (constant output) still gets a finite gradient, unlike
  # the sqrt-based rho formulation.
  y = jnp.asarray(np.random.default_rng(0).normal(size=16), jnp.float32)
  g = jax.jit(jax.grad(lambda a: 1 - M.ccc(a, y)))(jnp.zeros(16))
  tx = torch.zeros(16, dtype=torch.float64, requires_grad=True)
  (1 - _torch_ccc(tx, torch.tensor(np.asarray(y), dtype=torch.float64),
                  0)).backward()
  assert np.isfinite(np.asarray(g)).all()
  np.testing.assert_allclose(g, tx.grad.numpy(), rtol=1e-5, atol=1e-7)


################################################################################
# Per-sequence CCC.
################################################################################


@pytest.mark.parametrize("seed", SEEDS)
def test_per_sequence_ccc(seed):
  rng = np.random.default_rng(seed)
  n, s = 600, 5
  x, y = _va_data(seed, shape=(n, 2))
  ids = np.sort(rng.integers(0, s, n))
  ids[ids == 3] = 4  # sequence 3 absent
  mask = rng.random(n) < 0.9
  refs = {k: _ccc_ref(x[(ids == k) & mask], y[(ids == k) & mask])
          for k in np.unique(ids)}
  ref = np.mean(list(refs.values()), axis=0)
  mean, per = M.ccc_per_sequence(x, y, ids, mask, return_per_sequence=True)
  np.testing.assert_allclose(mean, ref, rtol=1e-12)
  assert sorted(per) == sorted(refs)
  np.testing.assert_allclose(per[1], refs[1], rtol=1e-12)
  # String ids and a single dimension.
  sid = np.array([f"vid{k}" for k in ids])
  assert M.ccc_per_sequence(x[:, 0], y[:, 0], sid, mask) == pytest.approx(
      ref[0], rel=1e-12)
  # Jittable accumulator: shuffled frames in 4 batches, -1 ids dropped.
  perm = rng.permutation(n)
  ids_b = ids.copy()
  ids_b[~mask] = -1
  step = lambda a, b, i: _ps_jit(predictions=a, labels=b, sequence_ids=i,
                                 num_sequences=s)
  acc = M.PerSequenceCCC.bind(s, 2).empty()
  for chunk in np.split(perm, 4):
    acc = acc.merge(step(x[chunk][None], y[chunk][None], ids_b[chunk][None]))
  np.testing.assert_allclose(acc.compute(), ref, rtol=2e-5)
  table = np.asarray(acc.per_sequence())
  assert np.isnan(table[3]).all()
  np.testing.assert_allclose(table[2], refs[2], rtol=2e-5)
  # Per-element mask leaving one dimension of one sequence empty.
  elem = np.ones((n, 2), bool)
  elem[ids == 0, 1] = False
  mean_e = M.ccc_per_sequence(x, y, ids, elem)
  ref_e = [np.mean([_ccc_ref(x[ids == k], y[ids == k])[0]
                    for k in refs]),
           np.mean([_ccc_ref(x[ids == k], y[ids == k])[1]
                    for k in refs if k != 0])]
  np.testing.assert_allclose(mean_e, ref_e, rtol=1e-12)
  m_e = _ps_jit(
      predictions=x, labels=y, sequence_ids=ids, num_sequences=s, mask=elem)
  np.testing.assert_allclose(m_e.compute(), ref_e, rtol=2e-5)


################################################################################
# Cross-process merge.
################################################################################

_WORKER = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    pid, port = int(sys.argv[1]), sys.argv[2]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2,
                               process_id=pid)
    from jaxaffect import metrics as M
    rng = np.random.default_rng(pid)
    x = rng.normal(size=(30 + 10 * pid, 2)).astype(np.float32)
    y = (x + rng.normal(size=x.shape)).astype(np.float32)
    lab = rng.integers(0, 7, 25 + pid)
    out = {}
    m = M.allgather_merge(M.CCC.from_model_output(predictions=x, labels=y))
    out["ccc"] = np.asarray(m.compute()).tolist()
    c = M.allgather_merge(M.ConfusionMatrix.from_model_output(
        predictions=lab, labels=lab[::-1], num_classes=7))
    out["counts"] = np.asarray(c.counts).tolist()
    # A metric from the global-view jit is already global: refused.
    mesh = jax.make_mesh((2,), ("data",))
    g = jax.make_array_from_process_local_data(
        jax.sharding.NamedSharding(mesh, jax.P("data")), x[:30])
    gm = jax.jit(lambda a: M.CCC.from_model_output(predictions=a,
                                                   labels=a))(g)
    try:
      M.allgather_merge(gm)
      out["refused"] = False
    except ValueError:
      out["refused"] = True
    print("RESULT" + json.dumps(out), flush=True)
    jax.distributed.shutdown()
""")


@pytest.mark.multiprocess
def test_allgather_merge_two_processes(tmp_path):
  import portpicker  # pylint: disable=g-import-not-at-top
  # Single process: identity.
  m = M.CCC.from_model_output(predictions=np.ones((3, 2)),
                              labels=np.arange(6.).reshape(3, 2))
  same = M.allgather_merge(m)
  for f in ("count", "mean_x", "m2_y", "c_xy"):
    np.testing.assert_array_equal(getattr(same, f), getattr(m, f))
  # Two JAX processes on localhost, one CPU device each.
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  port = str(portpicker.pick_unused_port())
  procs = [subprocess.Popen([sys.executable, str(script), str(i), port],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env) for i in range(2)]
  outs = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr[-2000:]
    line = [l for l in stdout.splitlines() if l.startswith("RESULT")]
    outs.append(json.loads(line[0][len("RESULT"):]))
  xs, ys, labs = [], [], []
  for pid in range(2):
    rng = np.random.default_rng(pid)
    x = rng.normal(size=(30 + 10 * pid, 2)).astype(np.float32)
    xs.append(x)
    ys.append((x + rng.normal(size=x.shape)).astype(np.float32))
    labs.append(rng.integers(0, 7, 25 + pid))
  ref = _ccc_ref(np.concatenate(xs), np.concatenate(ys))
  ref_counts = sum(skm.confusion_matrix(l[::-1], l, labels=range(7))
                   for l in labs)
  for out in outs:
    np.testing.assert_allclose(out["ccc"], ref, rtol=2e-6)
    np.testing.assert_array_equal(out["counts"], ref_counts)
    assert out["refused"]
