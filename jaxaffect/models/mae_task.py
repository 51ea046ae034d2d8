"""The MAE pretraining task (`models/mae.py`: `make_task`): batches of single images, no labels.

`batch = {image (B, H, W, 3) uint8, mask (B,)}` (the `frame` sampler over image or video shards).
  loss        the masked-patch loss (`mae.masked_patch_loss`) with noise from the `masking` stream
              (a sibling of the step's `dropout` key); padding rows weigh 0.
  metrics     (train and eval, bare keys) `loss` = Σ patch loss · mask / Σ mask over everything seen,
              `mean_baseline_loss` = the same for `mae.mean_baseline_pred` (every patch predicted as
              the mean of the image's visible pixel values, in target space: 0 with norm_pix_loss), `loss_ratio` =
              loss / mean_baseline_loss (the learning test asks ≤ 0.5 on held-out images).
  evaluation  masking from the fixed key `eval_seed` (deterministic; the same noise for every
              batch); the first `num_samples` images of the first batch give `eval_images`:
              `eval/reconstruction`, a sheet with one row per image and four columns: original /
              masked (removed patches grey) / reconstruction / reconstruction with the visible
              patches pasted (MAE's `run_one_image`). The trainer writes it to TensorBoard and PNG.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

from jaxaffect.models import mae


@flax.struct.dataclass
class MaskedLossRatio(clu_metrics.Metric):
  """Σ loss·w, Σ baseline·w, Σ w over patches (w = removed patch × real example)."""
  loss_sum: jax.Array
  base_sum: jax.Array
  count: jax.Array

  @classmethod
  def from_model_output(cls, *, patch_loss, baseline_patch_loss, patch_weight, **_):
    w = patch_weight.astype(jnp.float32)
    return cls(loss_sum=jnp.sum(patch_loss * w), base_sum=jnp.sum(baseline_patch_loss * w),
               count=jnp.sum(w))

  def merge(self, other):
    return type(self)(self.loss_sum + other.loss_sum, self.base_sum + other.base_sum,
                      self.count + other.count)

  def compute(self):
    n = jnp.maximum(self.count, 1.0)
    return {"loss": self.loss_sum / n, "mean_baseline_loss": self.base_sum / n,
            "loss_ratio": self.loss_sum / jnp.maximum(self.base_sum, 1e-30)}


def _samples_metric(k: int):
  @flax.struct.dataclass
  class ReconSamples(clu_metrics.Metric):
    """The first `k` examples seen (images in [0, 1], patch mask): merge keeps the first."""
    original: jax.Array
    recon: jax.Array
    patch_mask: jax.Array
    real: jax.Array

    @classmethod
    def from_model_output(cls, *, sample_original, sample_recon, sample_mask, mask, **_):
      n = min(k, sample_original.shape[0])
      return cls(original=sample_original[:n], recon=sample_recon[:n],
                 patch_mask=sample_mask[:n], real=mask[:n].astype(jnp.float32))

    def merge(self, other):
      return self

    def compute(self):
      return {"recon_original": self.original, "recon_pred": self.recon,
              "recon_mask": self.patch_mask, "recon_real": self.real}
  return ReconSamples


@dataclasses.dataclass(frozen=True)
class MAEPretrainTask:
  """MAE pretraining on single images (module docstring)."""
  NAME = "mae_pretrain"
  module: nn.Module
  input: str = "image"            # the batch entry holding the images
  eval_seed: int = 1234           # masking key of evaluation
  num_samples: int = 8            # images on the reconstruction sheet

  def _split(self, variables):
    variables = dict(variables)
    return variables.pop("params"), variables

  def init(self, rng, batch):
    return self._split(mae.init_variables(self.module, rng, batch[self.input]))

  def _outputs(self, out, batch, images: bool):
    m = self.module
    w = batch["mask"].astype(jnp.float32)
    base = mae.mean_baseline_pred(out["image"], out["mask"], m.patch_size, m.norm_pix_loss)
    res = {"patch_loss": mae.per_patch_loss(out["pred"], out["target"]),
           "baseline_patch_loss": mae.per_patch_loss(base, out["target"]),
           "patch_weight": out["mask"] * w[:, None]}
    res["loss"] = jnp.sum(res["patch_loss"] * res["patch_weight"]) / jnp.maximum(
        jnp.sum(res["patch_weight"]), 1.0)
    if images:
      px = mae.pred_to_pixels(out["pred"], out["image"], m.patch_size, m.norm_pix_loss,
                              m.normalize)
      orig = batch[self.input]
      orig = orig.astype(jnp.float32) / 255.0 if orig.dtype == jnp.uint8 else orig
      res.update(sample_original=orig.astype(jnp.float32), sample_recon=px,
                 sample_mask=out["mask"])
    return res

  def loss(self, params, extra, batch, rng):
    m_rng, d_rng = jax.random.split(rng)
    out = self.module.apply({"params": params, **extra}, batch[self.input], train=True,
                            rngs={"masking": m_rng, "dropout": d_rng})
    res = self._outputs(out, batch, images=False)
    return res["loss"], (res, extra)

  def predict(self, params, extra, batch):
    out = self.module.apply({"params": params, **extra}, batch[self.input], train=False,
                            rngs={"masking": jax.random.key(self.eval_seed)})
    return self._outputs(out, batch, images=True)

  @property
  def train_metrics(self):
    return clu_metrics.Collection.create(_mae=MaskedLossRatio)

  @property
  def eval_metrics(self):
    return clu_metrics.Collection.create(_mae=MaskedLossRatio,
                                         _recon=_samples_metric(self.num_samples))

  progress_keys = ("loss_ratio",)

  def metric_inputs(self, outputs, batch):
    return {**outputs, "mask": batch["mask"]}

  def eval_images(self, metrics: dict[str, Any], data_config) -> dict[str, Any]:
    if "recon_original" not in metrics:
      return {}
    keep = np.asarray(metrics["recon_real"]) > 0
    sheet = reconstruction_sheet(np.asarray(metrics["recon_original"])[keep],
                                 np.asarray(metrics["recon_mask"])[keep],
                                 np.asarray(metrics["recon_pred"])[keep], self.module.patch_size)
    return {"eval/reconstruction": sheet} if sheet is not None else {}


def reconstruction_sheet(original: np.ndarray, patch_mask: np.ndarray, recon: np.ndarray,
                         patch: int, min_size: int = 96, gap: int = 2) -> np.ndarray | None:
  """(N, H, W, 3) images in [0, 1], (N, L) patch mask (1 = removed), (N, H, W, 3) reconstructions
  → one HWC uint8 sheet: a row per image, columns original / masked (removed patches grey) /
  reconstruction / reconstruction with the visible patches pasted; small images are enlarged
  (nearest) to at least `min_size` pixels."""
  n = len(original)
  if n == 0:
    return None
  _, h, w, _ = original.shape
  gh, gw = h // patch, w // patch
  m = patch_mask.reshape(n, gh, gw).repeat(patch, 1).repeat(patch, 2)[..., None]
  masked = original * (1 - m) + 0.5 * m
  pasted = original * (1 - m) + recon * m
  cols = [original, masked, recon, pasted]
  up = max(1, -(-min_size // h))
  cols = [c.repeat(up, 1).repeat(up, 2) for c in cols]
  hh, ww = h * up, w * up
  sheet = np.ones((n * hh + (n + 1) * gap, 4 * ww + 5 * gap, 3), np.float32)
  for i in range(n):
    for j, c in enumerate(cols):
      y, x = gap + i * (hh + gap), gap + j * (ww + gap)
      sheet[y:y + hh, x:x + ww] = c[i]
  return (np.clip(sheet, 0, 1) * 255 + 0.5).astype(np.uint8)
