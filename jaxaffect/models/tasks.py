"""Tasks bind a model to its losses and metrics; the trainer only talks to this interface.

A task provides:
  - `init(rng, batch) -> (params, extra)`: `extra` holds non-parameter state (BatchNorm statistics,
    momentum encoders, queues), updated by the loss.
  - `loss(params, extra, batch, rng) -> (loss, (outputs, new_extra))` for training,
  - `predict(params, extra, batch) -> outputs` for evaluation (deterministic),
  - `train_metrics` / `eval_metrics`: `clu.metrics.Collection` classes built from `outputs | batch`.
Every batch carries `mask` (1 for real examples, 0 for padding added to fill the last eval batch).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics

from jaxaffect import metrics as jm


def video_to_float(video: jax.Array, dtype=jnp.float32) -> jax.Array:
  """uint8 frames (B,T,H,W,3) → float pixels in [0,1] (Former-DFER/EST: no mean/std normalisation)."""
  return video.astype(dtype) / 255.0


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  mask = mask.astype(x.dtype)
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def classification_loss(logits, labels, mask, num_classes: int, label_smoothing: float = 0.0):
  """Cross-entropy averaged over the real examples of the global batch (torch `CrossEntropyLoss`)."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) \
      if label_smoothing else jax.nn.one_hot(labels, num_classes)
  ce = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
  return masked_mean(ce, mask), ce


@dataclasses.dataclass(frozen=True)
class ClipClassificationTask:
  """One label per clip: `batch = {video (B,T,H,W,3) uint8, label (B,), mask (B,)}`."""
  module: nn.Module
  num_classes: int
  label_smoothing: float = 0.0

  def _split(self, variables):
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables

  def init(self, rng: jax.Array, batch: dict[str, Any]):
    p_rng, d_rng = jax.random.split(rng)
    variables = self.module.init({"params": p_rng, "dropout": d_rng},
                                 video_to_float(batch["video"]), train=False)
    return self._split(variables)

  def loss(self, params, extra, batch, rng):
    logits, new_extra = self.module.apply(
        {"params": params, **extra}, video_to_float(batch["video"]), train=True,
        mutable=list(extra.keys()), rngs={"dropout": rng})
    loss, ce = classification_loss(logits, batch["label"], batch["mask"], self.num_classes,
                                   self.label_smoothing)
    return loss, ({"logits": logits, "ce": ce}, dict(new_extra))

  def predict(self, params, extra, batch):
    logits = self.module.apply({"params": params, **extra}, video_to_float(batch["video"]),
                               train=False)
    _, ce = classification_loss(logits, batch["label"], batch["mask"], self.num_classes)
    return {"logits": logits, "ce": ce}

  @property
  def train_metrics(self):
    return clu_metrics.Collection.create(
        loss=clu_metrics.Average.from_output("loss"),
        confusion=jm.ConfusionMatrix.bind(num_classes=self.num_classes))

  @property
  def eval_metrics(self):
    return self.train_metrics

  def metric_inputs(self, outputs, batch):
    """Keyword arguments for `Collection.single_from_model_output`."""
    return {"loss": outputs["ce"], "logits": outputs["logits"], "labels": batch["label"],
            "mask": batch["mask"]}
