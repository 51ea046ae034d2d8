"""Tasks bind a model to its losses and metrics; the trainer only talks to this interface.

A task provides:
  - `init(rng, batch) -> (params, extra)`: `extra` holds non-parameter state (BatchNorm statistics,
    momentum encoders, queues), updated by the loss.
  - `loss(params, extra, batch, rng) -> (loss, (outputs, new_extra))` for training,
  - `predict(params, extra, batch) -> outputs` for evaluation (deterministic),
  - `train_metrics` / `eval_metrics`: `clu.metrics.Collection` classes built from `outputs | batch`;
    a field's computed dict is reported as `<field>/<key>`, or as `<key>` when the field's name
    starts with `_` (the clip tasks' `uar`, `war`, `confusion_matrix`);
  - `progress_keys`: the metrics the trainer's progress line shows beside the loss;
  - `eval_images(metrics, data_config) -> {tag: HWC uint8}`: the pictures an evaluation writes
    (a confusion matrix for classification); the trainer knows no metric, class or sampler name.
Every batch carries `mask` (1 for real examples, 0 for padding added to fill the last eval batch);
clip-level batches also carry `label_mask` (1 when the video has a clip label: Aff-Wild2 videos
have none, and count only through their per-frame labels). `clip_mask` is the product.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from clu import metrics as clu_metrics

from jaxaffect import metrics as jm
from jaxaffect.errors import UserError


# Shared by tasks and model files (e.g. EST's Eq. 7), in `losses.py` so that model files need not
# import the tasks (which import them): no import circle.
from jaxaffect.models.losses import (classification_loss, clip_mask, masked_mean,  # noqa: E402,F401
                                     video_to_float)


@dataclasses.dataclass(frozen=True)
class ClipClassificationTask:
  """One label per clip: `batch = {video (B,T,H,W,3) uint8, label (B,), mask (B,)}`."""
  NAME = "clip_classification"
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
    loss, ce = classification_loss(logits, batch["label"], clip_mask(batch), self.num_classes,
                                   self.label_smoothing)
    return loss, ({"logits": logits, "ce": ce}, dict(new_extra))

  def predict(self, params, extra, batch):
    logits = self.module.apply({"params": params, **extra}, video_to_float(batch["video"]),
                               train=False)
    _, ce = classification_loss(logits, batch["label"], clip_mask(batch), self.num_classes)
    return {"logits": logits, "ce": ce}

  @property
  def train_metrics(self):
    return clu_metrics.Collection.create(
        loss=clu_metrics.Average.from_output("loss"),
        _clip=jm.ConfusionMatrix.bind(num_classes=self.num_classes))

  @property
  def eval_metrics(self):
    return self.train_metrics

  progress_keys = ("war",)

  def eval_images(self, metrics: dict[str, Any], data_config) -> dict[str, Any]:
    return confusion_images(metrics, "confusion_matrix", data_config.get("class_names", ()))

  def metric_inputs(self, outputs, batch):
    """Keyword arguments for `Collection.single_from_model_output`."""
    return {"loss": outputs["ce"], "logits": outputs["logits"], "labels": batch["label"],
            "mask": clip_mask(batch)}


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
  NAME = "snippet_order"
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
                             clip_mask(batch), self.module.num_snippets, ssop_weight=self._lambda)
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
    mutable = [k for k in extra if k != "constants"]     # EST's PE table is read-only
    out, new_extra = self.module.apply({"params": params, **extra}, v, perm, train=True,
                                       mutable=mutable, rngs={"dropout": d_rng})
    loss, res = self._losses(out, batch, p)
    return loss, (res, {**extra, **new_extra})

  def predict(self, params, extra, batch):
    v = video_to_float(batch["video"])
    variables = {"params": params, **extra}
    out = self.module.apply(variables, v, self._identity(v.shape[0]), train=False)
    res = {"logits": out["logits"]}
    _, ce = classification_loss(out["logits"], batch["label"], clip_mask(batch), self.num_classes)
    res["ce"] = ce
    if getattr(self.module, "use_ssop", True):
      vs, perm, p = self._shuffled(v, jax.random.key(self.eval_seed))
      out_s = self.module.apply(variables, vs, perm, train=False)
      _, ce_s = classification_loss(out_s["perm_logits"], p, clip_mask(batch),
                                    self._perms.shape[0])
      res.update(perm_logits=out_s["perm_logits"], perm_label=p, perm_ce=ce_s)
    return res

  @property
  def train_metrics(self):
    fields = dict(loss=clu_metrics.Average.from_output("loss"),
                  _clip=jm.ConfusionMatrix.bind(num_classes=self.num_classes))
    if getattr(self.module, "use_ssop", True):
      fields["ssop_accuracy"] = clu_metrics.Average.from_output("ssop_correct")
      fields["ssop_loss"] = clu_metrics.Average.from_output("ssop_loss")
    return clu_metrics.Collection.create(**fields)

  @property
  def eval_metrics(self):
    return self.train_metrics

  progress_keys = ("war", "ssop_accuracy")

  def eval_images(self, metrics: dict[str, Any], data_config) -> dict[str, Any]:
    return confusion_images(metrics, "confusion_matrix", data_config.get("class_names", ()))

  def metric_inputs(self, outputs, batch):
    kw = {"loss": outputs["ce"], "logits": outputs["logits"], "labels": batch["label"],
          "mask": clip_mask(batch)}
    if "perm_logits" in outputs:
      correct = (jnp.argmax(outputs["perm_logits"], -1) == outputs["perm_label"]).astype(jnp.float32)
      kw.update(ssop_correct=correct, ssop_loss=outputs["perm_ce"])
    return kw


def confusion_images(metrics: dict[str, Any], key: str, class_names) -> dict[str, Any]:
  """`{"eval/<key>": image}` of a confusion matrix in `metrics` (nothing if absent)."""
  if key not in metrics:
    return {}
  from jaxaffect import plots
  cm = metrics[key]
  names = list(class_names) if len(class_names) == len(cm) else [str(i) for i in range(len(cm))]
  return {f"eval/{key}": plots.confusion_matrix_image(cm, names)}


def by_name(name: str):
  """The task class whose `NAME` is `name` (the classes of this module; no table to keep)."""
  found = {c.NAME: c for c in globals().values()
           if isinstance(c, type) and isinstance(getattr(c, "NAME", None), str)}
  if name not in found:
    raise UserError(f"config.task.name={name!r}: known tasks {sorted(found)} (or give the model "
                    f"module a `make_task`)")
  return found[name]


@flax.struct.dataclass
class BatchAverage(clu_metrics.Average):
  """Mean of a per-batch scalar (a loss that is not a sum over examples, e.g. 1 − CCC)."""

  @classmethod
  def from_model_output(cls, *, batch_loss: jax.Array, **_):
    return cls(total=jnp.asarray(batch_loss, jnp.float32), count=jnp.asarray(1, jnp.int32))


@flax.struct.dataclass
class VACCC(jm.CCC):
  """Concatenated CCC of (valence, arousal) over every labelled frame seen (ABAW VA protocol):
  `ccc_valence`, `ccc_arousal` and P_VA = their mean (population statistics, ddof 0)."""

  def compute(self):
    c = self.ccc()
    return {"ccc_valence": c[0], "ccc_arousal": c[1], "p_va": c.mean()}


PER_FRAME_OUTPUTS = ("va", "expr", "au")


@dataclasses.dataclass(frozen=True)
class FrameLabelsTask:
  """Per-frame valence/arousal, expression and action units (the three Aff-Wild2 tasks).

  Two input forms, one set of losses (`models.abaw_tcn`, the ABAW papers' equations):
    input="features"  windows of feature streams: `feat/<stream> (B, T, D)`, `valid (B, T)` (1
                      inside the video), labels `va (B,T,2)`, `va_mask (B,T)`, `expr (B,T)`,
                      `expr_mask`, `au (B,T,A)`, `au_mask (B,T,A)`; the module takes
                      `({stream: array}, train=, frame_mask=)` (ABAW TCN + Transformer);
    input="image"     single face crops: `image (B, H, W, 3)` uint8 and the same labels without
                      the T axis (the frame encoder, `models.frame_resnet.FrameResNet`).
  Every label mask is multiplied by the example `mask` (padding rows of the last eval batch) and,
  for windows, by `valid`. Losses: VA (1 − CCC_v) + (1 − CCC_a) over the masked frames of the
  global batch (`ccc_ddof`: 1 as the official `torch.std`); EXPR masked cross-entropy; AU BCE over
  frames whose units are all labelled. The total is Σ weight_k · L_k over `outputs`.
  Metrics: `va/{ccc_valence, ccc_arousal, p_va}` (CCC of all frames concatenated), `expr/macro_f1`
  (+ UAR/WAR/confusion), `au/f1` (mean F1 over units; frames with any unlabelled unit dropped).
  """
  NAME = "frame_labels"
  module: nn.Module
  outputs: tuple = PER_FRAME_OUTPUTS
  num_expr: int = 8
  num_au: int = 12
  input: str = "features"
  loss_weights: tuple = ()        # per output; () = all 1
  ccc_ddof: int = 1
  label_smoothing: float = 0.0    # EXPR cross-entropy (torch CrossEntropyLoss label_smoothing)

  def __post_init__(self):
    if not 0.0 <= self.label_smoothing < 1.0:
      raise UserError(f"task.label_smoothing={self.label_smoothing}: expected a value in [0, 1)")
    bad = [o for o in self.outputs if o not in PER_FRAME_OUTPUTS]
    if bad or not self.outputs:
      raise UserError(f"task.outputs={tuple(self.outputs)}: expected a non-empty subset of "
                      f"{PER_FRAME_OUTPUTS}")
    if self.input not in ("features", "image"):
      raise UserError(f"task.input={self.input!r}: expected 'features' or 'image'")
    if self.loss_weights and len(self.loss_weights) != len(self.outputs):
      raise UserError(f"task.loss_weights={tuple(self.loss_weights)} must have one weight per "
                      f"output {tuple(self.outputs)}")

  def _split(self, variables):
    variables = dict(variables)
    return variables.pop("params"), variables

  def inputs(self, batch):
    """(positional model input, keyword inputs, frame keep-mask) of a batch (also used by
    `jaxaffect predict`)."""
    if self.input == "image":
      return video_to_float(batch["image"]), {}, batch["mask"].astype(jnp.float32)
    feats = {k[len("feat/"):]: v for k, v in batch.items() if k.startswith("feat/")}
    if not feats:
      raise UserError(f"task.input='features' needs batch entries 'feat/<stream>'; batch has "
                      f"{sorted(batch)}")
    keep = batch["valid"].astype(jnp.float32) * batch["mask"].astype(jnp.float32)[:, None]
    return feats, {"frame_mask": keep}, keep

  def init(self, rng: jax.Array, batch: dict[str, Any]):
    p_rng, d_rng = jax.random.split(rng)
    x, kw, _ = self.inputs(batch)
    variables = self.module.init({"params": p_rng, "dropout": d_rng}, x, train=False, **kw)
    return self._split(variables)

  def _masks(self, batch, keep):
    m = {"va": batch.get("va_mask"), "expr": batch.get("expr_mask"), "au": batch.get("au_mask")}
    out = {}
    for o in self.outputs:
      if m[o] is None:
        raise UserError(f"task.outputs includes {o!r} but the batch has no '{o}_mask' (the data "
                        f"has no {o} labels); batch keys: {sorted(batch)}")
      mo = m[o].astype(jnp.float32)
      out[o] = mo * (keep[..., None] if mo.ndim > keep.ndim else keep)
    return out

  def _losses(self, out, batch, keep):
    from jaxaffect.models import abaw_tcn
    masks = self._masks(batch, keep)
    weights = dict(zip(self.outputs, self.loss_weights or (1.0,) * len(self.outputs)))
    parts = {}
    for o in self.outputs:
      if o == "va":
        parts[o], _ = abaw_tcn.va_ccc_loss(out["va"], batch["va"], masks["va"], ddof=self.ccc_ddof)
      elif o == "expr":
        parts[o] = abaw_tcn.expr_ce_loss(out["expr"], batch["expr"], masks["expr"],
                                          self.label_smoothing)
      else:
        parts[o] = abaw_tcn.au_bce_loss(out["au"], batch["au"], masks["au"])
    total = sum(weights[o] * parts[o] for o in self.outputs)
    return total, parts, masks

  def loss(self, params, extra, batch, rng):
    x, kw, keep = self.inputs(batch)
    out, new_extra = self.module.apply({"params": params, **extra}, x, train=True,
                                       mutable=list(extra.keys()), rngs={"dropout": rng}, **kw)
    total, parts, masks = self._losses(out, batch, keep)
    return total, ({**out, "loss": total, **{f"loss_{k}": v for k, v in parts.items()},
                    "masks": masks}, dict(new_extra))

  def predict(self, params, extra, batch):
    x, kw, keep = self.inputs(batch)
    out = self.module.apply({"params": params, **extra}, x, train=False, **kw)
    total, parts, masks = self._losses(out, batch, keep)
    return {**out, "loss": total, **{f"loss_{k}": v for k, v in parts.items()}, "masks": masks}

  def _fields(self):
    f = {"loss": BatchAverage}
    for o in self.outputs:
      f[f"loss_{o}"] = _named_batch_average(f"loss_{o}")
    if "va" in self.outputs:
      f["va"] = _named_metric(VACCC.bind(2), "va")
    if "expr" in self.outputs:
      f["expr"] = _named_metric(jm.ConfusionMatrix.bind(num_classes=self.num_expr), "expr")
    if "au" in self.outputs:
      f["au"] = _named_metric(jm.MultiLabelCounts.bind(num_labels=self.num_au), "au")
    return f

  @property
  def train_metrics(self):
    return clu_metrics.Collection.create(**self._fields())

  @property
  def eval_metrics(self):
    return self.train_metrics

  @property
  def progress_keys(self) -> tuple[str, ...]:
    own = {"va": "va/p_va", "expr": "expr/macro_f1", "au": "au/f1"}
    return tuple(own[o] for o in self.outputs)

  def eval_images(self, metrics: dict[str, Any], data_config) -> dict[str, Any]:
    return confusion_images(metrics, "expr/confusion_matrix", data_config.get("class_names", ()))

  def metric_inputs(self, outputs, batch):
    kw = {"batch_loss": outputs["loss"], "mask": batch["mask"]}
    for o in self.outputs:
      kw[f"loss_{o}"] = outputs[f"loss_{o}"]
      kw[f"{o}_inputs"] = {"out": outputs[o], "label": batch[o], "mask": outputs["masks"][o]}
    return kw


def _named_batch_average(key: str):
  @flax.struct.dataclass
  class _Avg(BatchAverage):
    @classmethod
    def from_model_output(cls, **kw):
      return cls(total=jnp.asarray(kw[key], jnp.float32), count=jnp.asarray(1, jnp.int32))
  _Avg.__name__ = f"BatchAverage_{key}"
  return _Avg


def _named_metric(metric_cls, name: str):
  """`metric_cls` reading its inputs from `<name>_inputs = {out, label, mask}` of the model output
  (several per-frame metrics share one `metric_inputs` dict without clashing keys)."""
  @flax.struct.dataclass
  class _M(metric_cls):
    @classmethod
    def from_model_output(cls, **kw):
      d = kw[f"{name}_inputs"]
      if name == "va":
        return super().from_model_output(predictions=d["out"], labels=d["label"], mask=d["mask"])
      if name == "expr":
        return super().from_model_output(logits=d["out"], labels=d["label"], mask=d["mask"])
      # ABAW: a frame counts only when all of its units are labelled (the official code drops
      # rows with any -1), so the per-unit mask becomes a per-frame one.
      return super().from_model_output(logits=d["out"], labels=d["label"],
                                       mask=jnp.all(d["mask"] > 0, axis=-1), invalid="row")
  _M.__name__ = f"{metric_cls.__name__}_{name}"
  return _M
