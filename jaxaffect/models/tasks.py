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


@dataclasses.dataclass(frozen=True)
class SnippetOrderTask:
  """EST: clip class + shuffled snippet order prediction (SSOP), Eq. 7: L = L_cls + λ·L_S.

  `batch = {video (B, S·F, H, W, 3) uint8 in temporal snippet order, label (B,), mask (B,)}`.
  Training (as the official code): each clip draws a permutation row p ~ U{0..P-1} (the `dropout`
  stream's sibling key), its snippets are shuffled by `permutations[p]` and BOTH losses are
  computed on the shuffled input, the positional encoding following the snippets (`perm`).
  Evaluation: the class from the unshuffled input, the order from a shuffled copy (fixed key, so
  evaluation is deterministic). λ = 1/n with n = num_snippets (paper); the code's 0.1428 ≈ 1/7.
  With `module.use_ssop=False` (the paper's baseline) only L_cls is used.
  """
  module: nn.Module
  num_classes: int
  ssop_weight: float = 0.0      # 0: 1/num_snippets (Eq. 7)
  eval_seed: int = 1234

  @property
  def _perms(self):
    from jaxaffect.models import est
    return jnp.asarray(est.PERMUTATIONS_10[: self.module.num_permutations])

  @property
  def _lambda(self) -> float:
    return self.ssop_weight or 1.0 / self.module.num_snippets

  def _split(self, variables):
    variables = dict(variables)
    return variables.pop("params"), variables

  def _shuffled(self, video, rng):
    from jaxaffect.models import est
    b = video.shape[0]
    p = jax.random.randint(rng, (b,), 0, self._perms.shape[0])
    perm = self._perms[p]
    return est.shuffle_snippets(video, perm, self.module.num_snippets), perm, p

  def _identity(self, b):
    return jnp.broadcast_to(jnp.arange(self.module.num_snippets), (b, self.module.num_snippets))

  def init(self, rng: jax.Array, batch: dict[str, Any]):
    p_rng, d_rng = jax.random.split(rng)
    v = video_to_float(batch["video"])
    variables = self.module.init({"params": p_rng, "dropout": d_rng}, v, self._identity(v.shape[0]),
                                 train=False)
    return self._split(variables)

  def _losses(self, out, batch, p):
    from jaxaffect.models import est
    loss, aux = est.est_loss(out["logits"], batch["label"], out.get("perm_logits"), p,
                             batch["mask"], self.module.num_snippets, ssop_weight=self._lambda)
    res = {"logits": out["logits"], "ce": aux["ce"]}
    if "perm_logits" in out:
      res.update(perm_logits=out["perm_logits"], perm_label=p, perm_ce=aux["perm_ce"])
    return loss, res

  def loss(self, params, extra, batch, rng):
    s_rng, d_rng = jax.random.split(rng)
    v = video_to_float(batch["video"])
    if getattr(self.module, "use_ssop", True):
      v, perm, p = self._shuffled(v, s_rng)
    else:
      perm, p = self._identity(v.shape[0]), jnp.zeros(v.shape[0], jnp.int32)
    out, new_extra = self.module.apply({"params": params, **extra}, v, perm, train=True,
                                       mutable=list(extra.keys()), rngs={"dropout": d_rng})
    loss, res = self._losses(out, batch, p)
    return loss, (res, dict(new_extra))

  def predict(self, params, extra, batch):
    v = video_to_float(batch["video"])
    variables = {"params": params, **extra}
    out = self.module.apply(variables, v, self._identity(v.shape[0]), train=False)
    res = {"logits": out["logits"]}
    _, ce = classification_loss(out["logits"], batch["label"], batch["mask"], self.num_classes)
    res["ce"] = ce
    if getattr(self.module, "use_ssop", True):
      vs, perm, p = self._shuffled(v, jax.random.key(self.eval_seed))
      out_s = self.module.apply(variables, vs, perm, train=False)
      _, ce_s = classification_loss(out_s["perm_logits"], p, batch["mask"], self._perms.shape[0])
      res.update(perm_logits=out_s["perm_logits"], perm_label=p, perm_ce=ce_s)
    return res

  @property
  def train_metrics(self):
    fields = dict(loss=clu_metrics.Average.from_output("loss"),
                  confusion=jm.ConfusionMatrix.bind(num_classes=self.num_classes))
    if getattr(self.module, "use_ssop", True):
      fields["ssop_accuracy"] = clu_metrics.Average.from_output("ssop_correct")
      fields["ssop_loss"] = clu_metrics.Average.from_output("ssop_loss")
    return clu_metrics.Collection.create(**fields)

  @property
  def eval_metrics(self):
    return self.train_metrics

  def metric_inputs(self, outputs, batch):
    kw = {"loss": outputs["ce"], "logits": outputs["logits"], "labels": batch["label"],
          "mask": batch["mask"]}
    if "perm_logits" in outputs:
      correct = (jnp.argmax(outputs["perm_logits"], -1) == outputs["perm_label"]).astype(jnp.float32)
      kw.update(ssop_correct=correct, ssop_loss=outputs["perm_ce"])
    return kw
