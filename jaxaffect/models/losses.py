"""Losses and batch helpers shared by the tasks (`tasks.py`) and the model files (EST's Eq. 7):
a module of its own, importing no task or model, so neither side imports the other."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def video_to_float(video: jax.Array, dtype=jnp.float32) -> jax.Array:
  """uint8 frames (B,T,H,W,3) → float pixels in [0,1] (Former-DFER/EST: no mean/std normalisation)."""
  return video.astype(dtype) / 255.0


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  mask = mask.astype(x.dtype)
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def clip_mask(batch: dict[str, Any]) -> jax.Array:
  """Examples that count for clip-level losses and metrics: real (`mask`) and clip-labelled
  (`label_mask`, when the batch has it)."""
  m = batch["mask"].astype(jnp.float32)
  if "label_mask" in batch:
    m = m * batch["label_mask"].astype(jnp.float32)
  return m


def classification_loss(logits, labels, mask, num_classes: int, label_smoothing: float = 0.0):
  """Cross-entropy averaged over the real examples of the global batch (torch `CrossEntropyLoss`)."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) \
      if label_smoothing else jax.nn.one_hot(labels, num_classes)
  ce = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
  return masked_mean(ce, mask), ce
