"""FrameLabelsTask (per-frame VA / EXPR / AU): losses are the ABAW equations over exactly the
labelled, real, in-video frames; metrics equal sklearn / numpy on the same frames; `predict`
merges overlapping windows by averaging."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import f1_score

from jaxaffect import metrics as jm
from jaxaffect.models import abaw_tcn, frame_resnet, tasks

B, T, D, C, A = 4, 12, 6, 7, 12


def _window_batch(seed=0):
  r = np.random.default_rng(seed)
  valid = np.ones((B, T), np.float32)
  valid[1, 9:] = 0                     # a padded tail window
  mask = np.array([1, 1, 1, 0], np.float32)   # the last row is eval padding
  au_mask = (r.random((B, T, A)) > 0.1).astype(np.float32)
  return {
      "feat/s": r.standard_normal((B, T, D)).astype(np.float32),
      "valid": valid, "mask": mask,
      "va": r.uniform(-1, 1, (B, T, 2)).astype(np.float32),
      "va_mask": (r.random((B, T)) > 0.2).astype(np.float32),
      "expr": r.integers(0, C, (B, T)).astype(np.int32),
      "expr_mask": (r.random((B, T)) > 0.2).astype(np.float32),
      "au": r.integers(0, 2, (B, T, A)).astype(np.float32),
      "au_mask": au_mask,
  }


def _seq_task():
  m = abaw_tcn.ABAWTCN(streams=(("s", (8, 8)),), outputs=("va", "expr", "au"),
                       num_expr_classes=C, kernel_size=3, d_model=16, num_heads=2, num_layers=1,
                       dim_feedforward=16)
  return tasks.FrameLabelsTask(m, outputs=("va", "expr", "au"), num_expr=C, num_au=A)


def test_window_losses_use_only_labelled_real_frames():
  task = _seq_task()
  batch = _window_batch()
  params, extra = task.init(jax.random.key(0), batch)
  loss, (out, _) = task.loss(params, extra, batch, jax.random.key(1))
  keep = batch["valid"] * batch["mask"][:, None]
  want = (abaw_tcn.va_ccc_loss(out["va"], batch["va"], batch["va_mask"] * keep, ddof=1)[0]
          + abaw_tcn.expr_ce_loss(out["expr"], batch["expr"], batch["expr_mask"] * keep)
          + abaw_tcn.au_bce_loss(out["au"], batch["au"], batch["au_mask"] * keep[..., None]))
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
  # Changing a label on a padding frame, a padded row or an unlabelled frame changes nothing.
  b2 = {k: np.array(v) for k, v in batch.items()}
  b2["va"][1, 10] = 0.99
  b2["expr"][3, :] = (b2["expr"][3, :] + 1) % C
  b2["au"][3] = 1 - b2["au"][3]
  b2["va"][0][batch["va_mask"][0] == 0] = -0.7
  loss2, _ = task.loss(params, extra, b2, jax.random.key(1))
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
  # Loss weights: the total is the weighted sum of the three parts.
  wtask = tasks.FrameLabelsTask(task.module, outputs=task.outputs, num_expr=C, num_au=A,
                                loss_weights=(2.0, 0.5, 1.0))
  lw, (ow, _) = wtask.loss(params, extra, batch, jax.random.key(1))
  np.testing.assert_allclose(float(lw), float(2 * ow["loss_va"] + 0.5 * ow["loss_expr"]
                                              + ow["loss_au"]), rtol=1e-6)


def test_window_metrics_equal_sklearn_and_numpy_on_the_kept_frames():
  task = _seq_task()
  batch = _window_batch(3)
  params, extra = task.init(jax.random.key(0), batch)
  out = task.predict(params, extra, batch)
  m = task.eval_metrics.single_from_model_output(**task.metric_inputs(out, batch)).compute()
  keep = (batch["valid"] * batch["mask"][:, None]) > 0
  kv = keep & (batch["va_mask"] > 0)
  c = jm.ccc(np.asarray(out["va"])[kv], batch["va"][kv])
  np.testing.assert_allclose([m["va"]["ccc_valence"], m["va"]["ccc_arousal"]], c, rtol=1e-4)
  ke = keep & (batch["expr_mask"] > 0)
  pe = np.argmax(np.asarray(out["expr"]), -1)
  np.testing.assert_allclose(m["expr"]["macro_f1"], f1_score(
      batch["expr"][ke], pe[ke], average="macro", labels=range(C), zero_division=0), rtol=1e-5)
  ka = keep & (batch["au_mask"] > 0).all(-1)         # ABAW: frames with any unlabelled unit out
  pa = (np.asarray(out["au"]) > 0).astype(int)
  want = f1_score(batch["au"][ka].astype(int), pa[ka], average="macro", zero_division=0)
  np.testing.assert_allclose(m["au"]["f1"], want, rtol=1e-5)


def test_image_task_trains_the_frame_encoder_heads():
  m = frame_resnet.FrameResNet(width=4, num_expr=C)
  task = tasks.FrameLabelsTask(m, outputs=("va", "expr", "au"), num_expr=C, input="image")
  r = np.random.default_rng(0)
  batch = {"image": r.integers(0, 255, (B, 32, 32, 3), dtype=np.uint8),
           "mask": np.ones(B, np.float32),
           "va": r.uniform(-1, 1, (B, 2)).astype(np.float32), "va_mask": np.ones(B, np.float32),
           "expr": r.integers(0, C, B).astype(np.int32), "expr_mask": np.ones(B, np.float32),
           "au": r.integers(0, 2, (B, A)).astype(np.float32), "au_mask": np.ones((B, A), np.float32)}
  params, extra = task.init(jax.random.key(0), batch)
  assert set(params) == {"backbone", "heads_va", "heads_expr", "heads_au"}
  (loss, (out, new_extra)), g = jax.value_and_grad(task.loss, has_aux=True)(
      params, extra, batch, jax.random.key(1))
  v = {"params": params, **extra}
  o, _ = m.apply(v, batch["image"].astype(np.float32) / 255, train=True, mutable=["batch_stats"])
  want = (abaw_tcn.va_ccc_loss(o["va"], batch["va"], batch["va_mask"])[0]
          + abaw_tcn.expr_ce_loss(o["expr"], batch["expr"], batch["expr_mask"])
          + abaw_tcn.au_bce_loss(o["au"], batch["au"], batch["au_mask"]))
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
  assert np.all(np.abs(o["va"]) <= 1)                         # tanh head
  assert float(jnp.abs(g["heads_au"]["kernel"]).sum()) > 0
  emb = m.apply(v, batch["image"].astype(np.float32) / 255, method="embed")
  assert emb.shape == (B, m.embed_dim) == (B, 32)


def test_bad_task_settings_and_missing_labels_are_errors():
  m = frame_resnet.FrameResNet(width=4)
  with pytest.raises(ValueError, match="outputs"):
    tasks.FrameLabelsTask(m, outputs=("valence",))
  with pytest.raises(ValueError, match="loss_weights"):
    tasks.FrameLabelsTask(m, outputs=("va", "au"), loss_weights=(1.0,))
  task = _seq_task()
  batch = _window_batch()
  params, extra = task.init(jax.random.key(0), batch)
  del batch["au_mask"]
  with pytest.raises(ValueError, match="au_mask"):
    task.loss(params, extra, batch, jax.random.key(1))


def test_predict_video_merges_overlapping_windows_by_averaging():
  from jaxaffect import predict
  from jaxaffect.data import features
  task = _seq_task()
  r = np.random.default_rng(5)
  n = 29
  labels = {"va": np.zeros((n, 2), np.float32), "va_mask": np.zeros(n, np.float32),
            "expr": np.zeros(n, np.int32), "expr_mask": np.zeros(n, np.float32),
            "au": np.zeros((n, A), np.float32), "au_mask": np.zeros((n, A), np.float32)}
  vf = features.VideoFeatures("v", {"s": r.standard_normal((n, D)).astype(np.float32)},
                              np.ones(n, bool), np.arange(1, n + 1), np.zeros(n, np.float32),
                              labels)
  params, extra = task.init(jax.random.key(0), _window_batch())
  variables = {"params": params, **extra}
  run = predict._windows_fn(task, variables)
  got = predict.predict_video(run, vf, window=T, stride=5, batch_size=3)
  # By hand: each window alone (the reader's windows: the tail one padded), eval mode, then the
  # mean over the windows that cover a frame.
  acc = {k: np.zeros((n, d)) for k, d in (("va", 2), ("expr", C), ("au", A))}
  cnt = np.zeros(n)
  wb, wins_used = features.video_windows(vf, T, 5)
  for i, (s, e) in enumerate(wins_used):
    o = task.module.apply(variables, {"s": wb["feat/s"][i:i + 1]}, train=False,
                          frame_mask=wb["valid"][i:i + 1])
    for k in acc:
      acc[k][s:e] += np.asarray(o[k])[0, :e - s]
    cnt[s:e] += 1
  assert cnt.min() >= 1 and cnt.max() >= 2          # overlapping, every frame covered
  for k in acc:
    np.testing.assert_allclose(got[k], acc[k] / cnt[:, None], rtol=1e-5, atol=1e-6)
