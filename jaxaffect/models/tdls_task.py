"""The TDLS stage-1 task (models/tdls.py, Eq. 7 and Eq. 12's first stage): frame-level VA with
the temporal-cue guided loss, a momentum encoder and a queue in the training state.

Batch (`frame_views` sampler, `num_views=2`): `image`, `view_2` (two augmentations of one frame),
`va (B, 2)`, `va_mask`, `mask`, `index` (the record: the video id of the queue), `frame` (its
time), and with mode "fl" `landmarks` / `landmarks_2` (68 points in output pixels).

  loss        L_VA (`FrameLabelsTask`: 1 − CCC of valence + of arousal over the batch's labelled
              frames) + `tg_weight` · L_TG (`tdls.tg_loss`, against the queue as it was before
              this step); metrics `loss`, `loss_va`, `loss_tg`, `tg_pairs` (the number of
              (frame, neighbour) pairs L_TG used: 0 while the queue holds no neighbour), `va/...`.
  extra       `constants` (the reference points), `momentum` = {"params": {backbone, proj}}
              (EMA, `momentum`), `queue` (`tdls.queue_init`: keys, va, va_mask, video, time).
  after_update  EMA of the new parameters; the batch's momentum keys pushed
              (`hooks.queue_push_sharded`, shard_map + all-gather over the batch axes).
  use_tg=False  the Swin / RP / FL / TDLS baselines of Table IV trained on VA alone (no momentum
              copy, no queue).
Evaluation: VA of the unaugmented frame (`va/ccc_valence`, `va/ccc_arousal`, `va/p_va`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from clu import metrics as clu_metrics

from jaxaffect.errors import UserError
from jaxaffect.models import tasks, tdls
from jaxaffect.models.tasks import video_to_float

STATE = ("momentum", "queue")
MOMENTUM_PARTS = ("backbone", "proj")


@dataclasses.dataclass(frozen=True)
class TDLSTask(tasks.FrameLabelsTask):
  NAME = "tdls"
  momentum: float = 0.999          # m of the momentum encoder
  queue_size: int = 8192           # rows of the queue (the paper gives none)
  num_neighbours: int = 768        # N_k
  neighbours: str = "time"         # "time" (same video, nearest in time) | "label"
  tg_error: str = "mse"            # "mse" | "l1"
  tg_weight: float = 0.1           # β of Eq. 12
  use_tg: bool = True

  def __post_init__(self):
    super().__post_init__()
    if self.outputs != ("va",) or self.input != "image":
      raise UserError(f"task tdls: outputs must be ('va',) and input 'image', got "
                      f"{tuple(self.outputs)} / {self.input!r}")
    if not 0.0 <= self.momentum < 1.0:
      raise UserError(f"task.momentum={self.momentum}: expected a value in [0, 1)")
    if self.use_tg and not 1 <= self.num_neighbours <= self.queue_size:
      raise UserError(f"task.num_neighbours={self.num_neighbours} must be in [1, queue_size="
                      f"{self.queue_size}]")
    if self.neighbours not in tdls.NEIGHBOURS or self.tg_error not in tdls.TG_ERRORS:
      raise UserError(f"task.neighbours={self.neighbours!r} (one of {tdls.NEIGHBOURS}), "
                      f"task.tg_error={self.tg_error!r} (one of {tdls.TG_ERRORS})")

  def _landmarks(self, batch, key="landmarks"):
    if self.module.mode != "fl":
      return None
    if key not in batch:
      raise UserError(f"TDLS mode 'fl' needs batch '{key}' (data.sampler 'frame_views' with "
                      f"landmarks=True); batch has {sorted(batch)}")
    return batch[key]

  def inputs(self, batch):
    return video_to_float(batch["image"]), {"landmarks": self._landmarks(batch)}, \
        batch["mask"].astype(jnp.float32)

  def init(self, rng, batch):
    p_rng, d_rng = jax.random.split(rng)
    x, kw, _ = self.inputs(batch)
    variables = dict(self.module.init({"params": p_rng, "dropout": d_rng}, x, train=False, **kw))
    params = variables.pop("params")
    extra = dict(variables)
    if self.use_tg:
      extra["momentum"] = {"params": {k: jax.tree.map(jnp.copy, params[k])
                                      for k in MOMENTUM_PARTS}}
      extra["queue"] = tdls.queue_init(self.queue_size, self.module.proj_dim)
    return params, extra

  @staticmethod
  def _model_vars(params, extra):
    return {"params": params, **{k: v for k, v in extra.items() if k not in STATE}}

  def loss(self, params, extra, batch, rng):
    x, kw, keep = self.inputs(batch)
    out = self.module.apply(self._model_vars(params, extra), x, train=True,
                            rngs={"dropout": rng}, **kw)
    total, parts, masks = self._losses(out, batch, keep)
    out = dict(out)
    if self.use_tg:
      consts = {k: v for k, v in extra.items() if k not in STATE}
      keys = self.module.apply({**consts, "params": extra["momentum"]["params"]},
                               video_to_float(batch["view_2"]),
                               landmarks=self._landmarks(batch, "landmarks_2"),
                               method=tdls.TDLS.keys)
      out["keys"] = jax.lax.stop_gradient(keys)
      query = {"video": batch["index"], "time": batch["frame"], "va": batch["va"],
               "va_mask": masks["va"]}
      parts["tg"], out["tg_pairs"] = tdls.tg_loss(
          self.module, params, out["proj"], query, extra["queue"], k=self.num_neighbours,
          how=self.neighbours, error=self.tg_error)
      total = total + self.tg_weight * parts["tg"]
    return total, ({**out, "loss": total, **{f"loss_{k}": v for k, v in parts.items()},
                    "masks": masks}, dict(extra))

  def predict(self, params, extra, batch):
    x, kw, keep = self.inputs(batch)
    out = self.module.apply(self._model_vars(params, extra), x, train=False, **kw)
    total, parts, masks = self._losses(out, batch, keep)
    return {**out, "loss": total, **{f"loss_{k}": v for k, v in parts.items()}, "masks": masks}

  def after_update(self, extra, params, outputs, batch, step):
    if not self.use_tg:
      return extra
    from jaxaffect.train import hooks
    mom = hooks.ema_update(extra["momentum"]["params"],
                           {k: params[k] for k in MOMENTUM_PARTS}, self.momentum)
    rows = {"keys": outputs["keys"], "va": batch["va"], "va_mask": outputs["masks"]["va"],
            "video": batch["index"], "time": batch["frame"]}
    return {**extra, "momentum": {"params": mom},
            "queue": hooks.queue_push_sharded(extra["queue"], rows)}

  @property
  def train_metrics(self):
    f = self._fields()
    if self.use_tg:
      f["loss_tg"] = tasks._named_batch_average("loss_tg")
      f["tg_pairs"] = tasks._named_batch_average("tg_pairs")
    return clu_metrics.Collection.create(**f)

  @property
  def eval_metrics(self):
    return clu_metrics.Collection.create(**self._fields())

  def metric_inputs(self, outputs, batch):
    kw = super().metric_inputs(outputs, batch)
    if "loss_tg" in outputs:
      kw["loss_tg"], kw["tg_pairs"] = outputs["loss_tg"], outputs["tg_pairs"]
    return kw

  def eval_images(self, metrics: dict[str, Any], data_config) -> dict[str, Any]:
    return {}


def make_task(module, task_config) -> TDLSTask:
  kw = {k: v for k, v in dict(task_config).items() if k not in ("name", "outputs", "input")}
  try:
    return TDLSTask(module=module, outputs=("va",), input="image", **kw)
  except TypeError as e:
    raise UserError(f"config.task of tdls: {e}") from None
