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
  after_load  (init_from, import) the momentum copy = the loaded weights;
  after_update  EMA of the new parameters; the batch's momentum keys pushed
              (`hooks.queue_push_sharded`, shard_map + all-gather over the batch axes).
  use_tg=False  the Swin / RP / FL / TDLS baselines of Table IV trained on VA alone (no momentum
              copy, no queue).
Evaluation: VA of the unaugmented frame (`va/ccc_valence`, `va/ccc_arousal`, `va/p_va`), and
Fig. 8 of the paper as `eval/sampling_points` (TensorBoard and `tensorboard/images/*.png`): for the
first `num_fig8` evaluation frames, the first deformable block of the first deformable stage's
regular Swin grid (its map's cell centres), reference points p (FL-Swin: the face's own landmarks)
and deformed points p + Δp (the `sampling_points` the block sows), drawn on the faces
(`plots.sampling_points_sheet`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
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
  num_fig8: int = 4                # evaluation frames drawn in eval/sampling_points (0 = none)

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
    variables = self._model_vars(params, extra)
    if self._fig8():
      out, inter = self.module.apply(variables, x, train=False, mutable=["intermediates"], **kw)
      out = dict(out, **fig8_points(inter, variables.get("constants", {}), kw.get("landmarks"),
                                    x.shape[1]))
    else:
      out = self.module.apply(variables, x, train=False, **kw)
    total, parts, masks = self._losses(out, batch, keep)
    return {**out, "loss": total, **{f"loss_{k}": v for k, v in parts.items()}, "masks": masks}

  def after_load(self, variables):
    """`init_from` / `import` (train/loop.py): the momentum copy starts as the loaded online
    `backbone` + `proj` (MoCo's key encoder = query encoder at the start), not at the fresh
    random init (with m = 0.999 that would take thousands of steps to wash out)."""
    if not self.use_tg or "momentum" not in variables:
      return variables
    copy = {k: jax.tree.map(np.array, variables["params"][k]) for k in MOMENTUM_PARTS}
    return {**variables, "momentum": {"params": copy}}

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

  def _fig8(self) -> bool:
    return self.num_fig8 > 0 and self.module.mode != "swin"

  @property
  def eval_metrics(self):
    f = self._fields()
    if self._fig8():
      f["_fig8"] = _fig8_metric(self.num_fig8)
    return clu_metrics.Collection.create(**f)

  def metric_inputs(self, outputs, batch):
    kw = super().metric_inputs(outputs, batch)
    if "loss_tg" in outputs:
      kw["loss_tg"], kw["tg_pairs"] = outputs["loss_tg"], outputs["tg_pairs"]
    if "fig8_points" in outputs:
      kw.update(fig8_image=batch["image"], fig8_points=outputs["fig8_points"],
                fig8_ref=outputs["fig8_ref"])
    return kw

  def eval_images(self, metrics: dict[str, Any], data_config) -> dict[str, Any]:
    if "fig8_image" not in metrics:
      return {}
    keep = np.asarray(metrics["fig8_real"]) > 0
    if not keep.any():
      return {}
    from jaxaffect import plots
    m = self.module
    n = max(m.img_size // (m.patch_size * 2 ** min(m.deformable_stages)), 1)
    g = (np.arange(n) + 0.5) / n * 2 - 1
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    img = np.clip(np.rint(np.asarray(metrics["fig8_image"])[keep]), 0, 255).astype(np.uint8)
    ref = "landmarks p'" if m.mode == "fl" else "reference p"
    sheet = plots.sampling_points_sheet(
        img, [grid, np.asarray(metrics["fig8_ref"])[keep],
              np.asarray(metrics["fig8_points"])[keep]],
        [f"Swin grid {n}x{n}", ref, "deformed p+dp" if m.mode == "tdls" else "sampled"],
        scale=max(1, 192 // img.shape[1]))
    return {"eval/sampling_points": sheet}


def fig8_points(intermediates, constants, landmarks, size: int) -> dict[str, jax.Array]:
  """The first deformable block's sown `sampling_points` (B, N, 2) and its reference points
  (B, N, 2): the block's constant p, or with per-image landmarks (FL-Swin) those landmarks."""
  inter = intermediates["intermediates"]["backbone"]
  stage = sorted(inter, key=lambda k: int(k.split("_")[-1]))[0]
  block = sorted(inter[stage], key=lambda k: int(k.split("_")[-1]))[0]
  pts = inter[stage][block]["attn"]["sampling_points"][0]
  if landmarks is not None:
    ref = tdls.landmarks_to_points(landmarks, size)
  else:
    ref = jnp.broadcast_to(constants["backbone"][stage][block]["attn"]["ref_points"], pts.shape)
  return {"fig8_points": pts.astype(jnp.float32), "fig8_ref": ref.astype(jnp.float32)}


def _fig8_metric(k: int):
  @flax.struct.dataclass
  class SamplingPoints(clu_metrics.Metric):
    """The first `k` evaluation frames with their points (`merge` keeps the first batch)."""
    image: jax.Array
    points: jax.Array
    ref: jax.Array
    real: jax.Array

    @classmethod
    def from_model_output(cls, *, fig8_image, fig8_points, fig8_ref, mask, **_):
      n = min(k, mask.shape[0])
      return cls(image=jnp.asarray(fig8_image[:n], jnp.float32),
                 points=jnp.asarray(fig8_points[:n], jnp.float32),
                 ref=jnp.asarray(fig8_ref[:n], jnp.float32),
                 real=jnp.asarray(mask[:n], jnp.float32))

    def merge(self, other):
      return self

    def compute(self):
      return {"fig8_image": self.image, "fig8_points": self.points, "fig8_ref": self.ref,
              "fig8_real": self.real}
  SamplingPoints.__name__ = f"SamplingPoints_{k}"
  return SamplingPoints


def make_task(module, task_config) -> TDLSTask:
  kw = {k: v for k, v in dict(task_config).items() if k not in ("name", "outputs", "input")}
  try:
    return TDLSTask(module=module, outputs=("va",), input="image", **kw)
  except TypeError as e:
    raise UserError(f"config.task of tdls: {e}") from None
