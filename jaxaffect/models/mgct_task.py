"""The MGCT stage-2 task (`models/mgct.py`: `make_task`): MGCT on windows of frozen per-frame
features (TDLS's, written by `data_prep features`), per-frame valence/arousal.

Batches: `feat/<stream> (B, T, D)` (several streams are concatenated on channels in name order),
`valid (B, T)`, `va (B, T, 2)`, `va_mask (B, T)`, `mask (B,)`, and from the `feature_windows`
sampler `video_index (B,)`, `start (B,)` (the window's first frame in its video).
  loss        Eq. 10 (`mgct.mgct_loss`: λ-weighted level losses against the labels averaged per
              group, `level_weights`, `level_loss` "ccc" | "mse"), masks as `FrameLabelsTask`
              (label mask × `valid` × example mask).
  metrics     `FrameLabelsTask`'s for ("va",): `va/{ccc_valence, ccc_arousal, p_va}` of the
              level-0 (final) prediction over all labelled frames, `loss`, `loss_va`.
  evaluation  also keeps the first `num_curves` windows of the first evaluation batch (every
              level's predictions, the labels, the window's video and start: `LevelCurves`), and
              `eval_images` draws them as `eval/level_curves` (Fig. 11 of the paper: valence and
              arousal over the window, one line per level at its groups' centres, labels in
              black), which the trainer writes to TensorBoard and as `tensorboard/images/*.png`.
  L_CCL       (Eq. 11) with `ccl_clips = N_c > 1`: each sampled window (one video's consecutive
              frames) is cut into N_c consecutive clips of window / N_c frames; MGCT runs on every
              clip on its own (the clip is the model's input length, in training and evaluation),
              L_MGCT is taken over all clips' levels (the clip length must be a multiple of
              g^L so the groups do not straddle clips), a main clip is drawn per window from the
              step's key, and `ccl_weight` · `mgct.cross_clip_loss(mode=ccl_mode)` is added
              (Eq. 12's γ = 0.1): stage 2's L = L_MGCT + 0.1 L_CCL. Evaluation metrics and the
              curves see the clips' predictions joined back into the window. `ccl_clips = 0`:
              MGCT on the whole window, no L_CCL (the "without CCL" ablation).
"""
from __future__ import annotations

import dataclasses
import io
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

from jaxaffect.errors import UserError
from jaxaffect.models import mgct, tasks

LEVEL_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")  # level 0, 1..


def _curves_metric(k: int, num_levels: int):
  @flax.struct.dataclass
  class LevelCurves(clu_metrics.Metric):
    """The first `k` windows seen: every level's predictions `(k, T_l, 2)` with their token
    masks, the labels `(k, T, 2)` and label mask, `real` (not a padding row), video index and
    start frame. `merge` keeps the first (the first evaluation batch)."""
    levels: tuple
    level_masks: tuple
    label: jax.Array
    label_mask: jax.Array
    real: jax.Array
    video: jax.Array
    start: jax.Array

    @classmethod
    def from_model_output(cls, *, curve_levels, curve_level_masks, curve_label, curve_label_mask,
                          mask, curve_video, curve_start, **_):
      n = min(k, mask.shape[0])
      f32 = lambda a: jnp.asarray(a[:n], jnp.float32)
      return cls(levels=tuple(f32(p) for p in curve_levels),
                 level_masks=tuple(f32(m) for m in curve_level_masks),
                 label=f32(curve_label), label_mask=f32(curve_label_mask), real=f32(mask),
                 video=jnp.asarray(curve_video[:n], jnp.int32),
                 start=jnp.asarray(curve_start[:n], jnp.int32))

    def merge(self, other):
      return self

    def compute(self):
      out = {f"curve_level_{l}": p for l, p in enumerate(self.levels)}
      out.update({f"curve_level_mask_{l}": m for l, m in enumerate(self.level_masks)})
      out.update(curve_label=self.label, curve_label_mask=self.label_mask,
                 curve_real=self.real, curve_video=self.video, curve_start=self.start)
      return out
  LevelCurves.__name__ = f"LevelCurves_{k}x{num_levels}"
  return LevelCurves


@dataclasses.dataclass(frozen=True)
class MGCTTask(tasks.FrameLabelsTask):
  """Stage 2 as a per-frame VA task (module docstring): `FrameLabelsTask(input="features",
  outputs=("va",))` with the loss replaced by Eq. 10 and the level curves as evaluation pictures."""
  NAME = "mgct"
  level_weights: tuple = mgct.LEVEL_WEIGHTS
  level_loss: str = "ccc"
  num_curves: int = 2             # windows drawn in `eval/level_curves` (0 = no picture)
  ccl_clips: int = 0              # N_c of Eq. 11 (0: no clips, no L_CCL)
  ccl_weight: float = 0.1         # γ of Eq. 12
  ccl_mode: str = "stats"         # `mgct.cross_clip_loss` mode: stats | relative | overlap

  def __post_init__(self):
    super().__post_init__()
    if self.ccl_clips == 1 or self.ccl_clips < 0:
      raise UserError(f"task.ccl_clips={self.ccl_clips}: 0 (no L_CCL) or N_c >= 2")
    if self.ccl_mode not in mgct.CCL_MODES:
      raise UserError(f"task.ccl_mode={self.ccl_mode!r}: expected one of {mgct.CCL_MODES}")

  def _apply(self, params, extra, batch, *, train: bool, rng=None):
    """The model on the batch's windows, or on their N_c clips joined back (module docstring).
    Returns (outputs with `va`, `levels`, `level_masks` over the window and, with clips,
    `clip_va (B, N_c, T_c, 2)`, keep mask)."""
    x, kw, keep = self.inputs(batch)
    variables = {"params": params, **extra}
    rngs = {"dropout": rng} if train else {}
    nc = self.ccl_clips
    if nc < 2:
      return self.module.apply(variables, x, train=train, rngs=rngs, **kw), keep
    b, w, d = x.shape
    span = self.module.group_size ** self.module.num_levels
    if w % nc or (w // nc) % span:
      raise UserError(f"task.ccl_clips={nc}: the window of {w} frames must split into {nc} clips "
                      f"whose length is a multiple of group_size^num_levels = {span} "
                      f"(config.data.sampler.window = N_c x clip length)")
    t = w // nc
    out = self.module.apply(variables, x.reshape(b * nc, t, d), train=train, rngs=rngs,
                            frame_mask=kw["frame_mask"].reshape(b * nc, t))
    join = lambda a: a.reshape((b, nc * a.shape[1]) + a.shape[2:])
    return {"va": join(out["va"]), "levels": tuple(join(p) for p in out["levels"]),
            "level_masks": tuple(join(m) for m in out["level_masks"]),
            "clip_va": out["va"].reshape(b, nc, t, -1)}, keep

  def forward(self, params, extra, batch):
    """Evaluation outputs on windows without labels (`jaxaffect predict`)."""
    return self._apply(params, extra, batch, train=False)[0]

  def loss(self, params, extra, batch, rng):
    d_rng, m_rng = jax.random.split(rng)
    out, keep = self._apply(params, extra, batch, train=True, rng=d_rng)
    total, parts, masks = self._losses(out, batch, keep)
    if self.ccl_clips >= 2:
      b, nc, t, _ = out["clip_va"].shape
      main = jax.random.randint(m_rng, (b,), 0, nc)                 # a random main clip
      parts["ccl"] = mgct.cross_clip_loss(
          out["clip_va"], masks["va"].reshape(b, nc, t), main, mode=self.ccl_mode,
          labels=batch["va"].reshape(b, nc, t, -1),
          starts=jnp.broadcast_to(jnp.arange(nc) * t, (b, nc)))
      total = total + self.ccl_weight * parts["ccl"]
    out = {k: v for k, v in out.items() if k != "clip_va"}
    return total, ({**out, "loss": total, **{f"loss_{k}": v for k, v in parts.items()},
                    "masks": masks}, dict(extra))

  def predict(self, params, extra, batch):
    out, keep = self._apply(params, extra, batch, train=False)
    total, parts, masks = self._losses(out, batch, keep)
    out = {k: v for k, v in out.items() if k != "clip_va"}
    return {**out, "loss": total, **{f"loss_{k}": v for k, v in parts.items()}, "masks": masks}

  @property
  def train_metrics(self):
    f = self._fields()
    if self.ccl_clips >= 2:
      f["loss_ccl"] = tasks._named_batch_average("loss_ccl")
    return clu_metrics.Collection.create(**f)

  def inputs(self, batch):
    feats, kw, keep = super().inputs(batch)
    x = jnp.concatenate([feats[k] for k in sorted(feats)], axis=-1)
    return x, kw, keep

  def _losses(self, out, batch, keep):
    masks = self._masks(batch, keep)
    total, _ = mgct.mgct_loss(out, batch["va"], masks["va"], group_size=self.module.group_size,
                              weights=self.level_weights, kind=self.level_loss)
    return total, {"va": total}, masks

  @property
  def eval_metrics(self):
    fields = self._fields()
    if self.num_curves > 0:
      fields["_curves"] = _curves_metric(self.num_curves, self.module.num_levels)
    return clu_metrics.Collection.create(**fields)

  def metric_inputs(self, outputs, batch):
    kw = super().metric_inputs(outputs, batch)
    if "loss_ccl" in outputs:
      kw["loss_ccl"] = outputs["loss_ccl"]
    b = batch["mask"].shape[0]
    zeros = jnp.zeros((b,), jnp.int32)
    kw.update(curve_levels=outputs["levels"], curve_level_masks=outputs["level_masks"],
              curve_label=batch["va"], curve_label_mask=outputs["masks"]["va"],
              curve_video=batch.get("video_index", zeros), curve_start=batch.get("start", zeros))
    return kw

  def eval_images(self, metrics: dict[str, Any], data_config) -> dict[str, Any]:
    if "curve_label" not in metrics:
      return {}
    nl = self.module.num_levels
    keep = np.asarray(metrics["curve_real"]) > 0
    if not keep.any():
      return {}
    sel = lambda a: np.asarray(a)[keep]
    img = level_curves_image(
        [sel(metrics[f"curve_level_{l}"]) for l in range(nl + 1)],
        [sel(metrics[f"curve_level_mask_{l}"]) for l in range(nl + 1)],
        sel(metrics["curve_label"]), sel(metrics["curve_label_mask"]), self.module.group_size,
        videos=sel(metrics["curve_video"]), starts=sel(metrics["curve_start"]))
    return {"eval/level_curves": img}


def level_curves_image(levels: Sequence[np.ndarray], level_masks: Sequence[np.ndarray],
                       labels: np.ndarray, label_mask: np.ndarray, group_size: int, *,
                       videos: np.ndarray | None = None, starts: np.ndarray | None = None,
                       dpi: int = 80) -> np.ndarray:
  """Fig. 11: per window (a row) and per dimension (valence, arousal: two panels), the labels in
  black (gaps where unlabelled) and every level's predictions, level l's token j drawn at its
  group's centre frame (j + 0.5)·g^l − 0.5 (where the expansion of Eq. 9 places it), padded tokens
  left out; level 0 is the final prediction. x axis: the frame in the video (window start + t).
  `levels[l] (N, T_l, 2)`, `level_masks[l] (N, T_l)`, `labels (N, T, 2)`, `label_mask (N, T)`.
  Returns an HWC uint8 RGB image."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n, t = labels.shape[:2]
  starts = np.zeros(n, int) if starts is None else np.asarray(starts).astype(int)
  fig, axes = plt.subplots(n, 2, figsize=(10, 2.2 * n + 0.7), dpi=dpi, squeeze=False,
                           sharey=True)
  for i in range(n):
    frames = starts[i] + np.arange(t)
    for d, name in enumerate(("valence", "arousal")):
      ax = axes[i, d]
      y = np.where(np.asarray(label_mask[i]) > 0, labels[i, :, d], np.nan)
      ax.plot(frames, y, color="black", lw=1.6, label="label")
      for l, (p, m) in enumerate(zip(levels, level_masks)):
        size = group_size ** l
        centre = starts[i] + (np.arange(p.shape[1]) + 0.5) * size - 0.5
        ok = np.asarray(m[i]) > 0
        ax.plot(centre[ok], p[i, ok, d], color=LEVEL_COLOURS[l % len(LEVEL_COLOURS)],
                lw=1.2 if l == 0 else 1.0, marker=None if l == 0 else ".", ms=3,
                label="level 0 (final)" if l == 0 else f"level {l} (groups of {size})")
      ax.set_ylim(-1.05, 1.05)
      ax.grid(alpha=0.3)
      vid = f"video {int(videos[i])}, " if videos is not None else ""
      ax.set_title(f"{name} ({vid}frames {starts[i]}-{starts[i] + t - 1})", fontsize=8)
      ax.tick_params(labelsize=7)
  axes[-1, 0].set_xlabel("frame", fontsize=8)
  axes[-1, 1].set_xlabel("frame", fontsize=8)
  handles, names = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=7, frameon=False)
  fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1))
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  buf.seek(0)
  from PIL import Image
  return np.asarray(Image.open(buf).convert("RGB"), np.uint8)


def make_task(module: mgct.MGCT, task_config) -> MGCTTask:
  """`config.task` fields `level_weights`, `level_loss`, `num_curves` and the `FrameLabelsTask`
  ones (`ccc_ddof` is unused here: the loss is Eq. 10's and the VA metric is the population CCC);
  `name`, `outputs` and `input` are ignored (always ("va",) from "features")."""
  kw = {k: v for k, v in dict(task_config).items() if k not in ("name", "outputs", "input")}
  if "level_weights" in kw:
    kw["level_weights"] = tuple(kw["level_weights"])
  try:
    return MGCTTask(module=module, outputs=("va",), input="features", **kw)
  except TypeError as e:
    raise UserError(f"config.task of mgct: {e}") from None
