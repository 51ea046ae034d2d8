"""Frame-level reading of data_prep shards, for image models trained on video datasets (TDLS).

`FrameRecords` is a random-access source whose items are frames, not videos:
  * `frames_per_video=0` (default): every frame with a face (`frame/face_found`) of every record
    of the selection, one item each (counts from the manifest's per-record `face_found`);
  * `frames_per_video=K > 0`: K items per record that has a face. The record's face frames are cut
    into K equal strata; item k draws one frame uniformly inside stratum k with the sampler's
    per-example rng (grain seeds it from the seed and the position in the epoch's global order), so
    each epoch sees a different, evenly spread K-subset, the same one for the same seed; without
    rng (eval) the stratum's middle frame. A record with fewer than K face frames repeats frames.
Items are `record_to_example` dicts plus `item` (the item index) and `candidates` (the frame
indices the item may take), so grain's index reader (`pipeline.train_iterator`, `eval_batches`)
shuffles, splits and pads them like videos.

`FrameViews` (sampler `frame_views`) samples one frame of an item and returns
`image` (H, W, 3) uint8 and its `landmarks` (68, 2) float32 (x, y in output pixels, moved with the
crop, resize and flip; `augment.transform_points`), with `data.num_views=2` a second, independent
augmentation `view_2` / `landmarks_2` of the same frame (momentum-contrast pairs), the frame's
per-frame labels (`clips.frame_labels`), `frame` (its index in the record), `index` (the record),
`landmarks_mask` (0 where the record has no landmarks for the frame), `mask` and `label_mask`.
Eval does not augment: with num_views=2 both views are the same (unaugmented) image, so a model's
eval step sees the training batch layout.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from jaxaffect.data import augment, clips, schema
from jaxaffect.data.records import ShardRecords
from jaxaffect.errors import UserError


class FrameRecords(grain.sources.RandomAccessDataSource):
  """Frames of the records of a `ShardRecords` (see the module doc)."""

  def __init__(self, records: ShardRecords, frames_per_video: int = 0):
    k = int(frames_per_video)
    if k < 0:
      raise UserError(f"config.data.sampler.frames_per_video={frames_per_video}: expected 0 (every face "
                      f"frame) or K > 0 frames per video")
    self.records, self.k = records, k
    faces = np.asarray([int(r.get("face_found", r.get("num_frames", 0)))
                        for r in records.records], np.int64)
    per = faces if k == 0 else np.where(faces > 0, k, 0)
    self.rec_of_item = np.repeat(np.arange(len(faces)), per)
    starts = np.concatenate([[0], np.cumsum(per)[:-1]]).astype(np.int64)
    self.slot_of_item = np.arange(len(self.rec_of_item)) - starts[self.rec_of_item]

  def __len__(self) -> int:
    return len(self.rec_of_item)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"FrameRecords: item {i} of {len(self)}")
    r, slot = int(self.rec_of_item[i]), int(self.slot_of_item[i])
    ex = self.records[r]
    rec = ex["record"]
    face = np.flatnonzero(rec.face_found.astype(bool))
    if self.k == 0:
      if slot >= len(face):
        raise UserError(f"{self.records.dir}: record {rec.video_id} has {len(face)} face frames, "
                        f"manifest.json says more (field 'frame/face_found'; rewrite the manifest)")
      cand = face[slot:slot + 1]
    else:
      lo = int(np.floor(slot * len(face) / self.k))
      hi = max(lo + 1, int(np.floor((slot + 1) * len(face) / self.k)))
      cand = face[lo:min(hi, len(face))] if len(face) else np.zeros(0, np.int64)
      if not len(cand):
        raise UserError(f"{self.records.dir}: record {rec.video_id} has no face frame, "
                        f"manifest.json says it has (field 'frame/face_found')")
    return dict(ex, item=np.int32(i), candidates=cand.astype(np.int64))

  def __repr__(self) -> str:
    k = "every face frame" if self.k == 0 else f"{self.k} per video"
    return f"FrameRecords({self.records!r}, {k}, n={len(self)})"


def pick_frame(candidates: np.ndarray, rng: np.random.Generator | None) -> int:
  """One of an item's candidate frames: uniform with `rng`, the middle one without."""
  if rng is None:
    return int(candidates[(len(candidates) - 1) // 2])
  return int(candidates[int(rng.integers(len(candidates)))])


@dataclasses.dataclass(frozen=True)
class FrameViews:
  """One frame, its landmarks moved with the augmentation, and optionally a second view."""
  image_size: int
  train: bool
  num_views: int = 1
  crop: str | None = "resized_crop"
  flip_prob: float = 0.5
  color_jitter: float = 0.0
  expr_vocab: str = ""
  crop_scale: tuple[float, float] = (0.08, 1.0)
  landmarks: bool = True            # False: images (and labels) only, no landmark fields needed

  def __post_init__(self):
    if self.num_views not in (1, 2):
      raise UserError(f"config.data.sampler.num_views={self.num_views}: expected 1 or 2")

  def _view(self, frame: np.ndarray, lm: np.ndarray, rng):
    aug = self.train and rng is not None
    j = self.color_jitter if aug else 0.0
    img, params = augment.augment_clip(
        frame[None], rng if aug else np.random.default_rng(0), size=self.image_size,
        crop=self.crop if aug else None, flip_prob=self.flip_prob if aug else 0.0,
        scale=tuple(self.crop_scale), brightness=j, contrast=j, saturation=j)
    return img[0], augment.transform_points(lm, params).astype(np.float32)

  def __call__(self, example: dict[str, Any], rng: np.random.Generator | None = None):
    out = {"label": np.int32(max(int(example["label"]), 0)), "mask": np.float32(1.0),
           "label_mask": np.float32(example.get("labelled", 1.0))}
    if "record" in example:
      rec = example["record"]
      where = f"record {rec.dataset}/{rec.split}/{rec.video_id}"
      lms = np.asarray(rec.landmarks, np.float32)
      if not self.landmarks:
        lms = np.zeros((rec.num_frames, 68, 2), np.float32)
      elif lms.ndim != 3 or lms.shape[1:] != (68, 2) or (
          rec.landmark_scheme and not rec.landmark_scheme.startswith("ibug68")):
        raise UserError(f"{where}: data.sampler 'frame_views' needs iBUG-68 landmarks (field "
                        f"'frame/landmarks' has shape {lms.shape}, 'video/landmark_scheme' "
                        f"{rec.landmark_scheme!r}); prep the source with a 68-point landmarker")
      if "candidates" in example:
        i = pick_frame(example["candidates"], rng if self.train else None)
      else:                                  # a plain ShardRecords item: any face frame
        face = rec.face_found.astype(bool)
        cand = np.flatnonzero(face) if face.any() else np.arange(rec.num_frames)
        i = pick_frame(cand, rng if self.train else None)
      frame = schema.decode_frames(rec.jpegs, [i], where)[0]
      lm = lms[i]
      labels = {k: v[0] for k, v in clips.frame_labels(rec, np.asarray([i]),
                                                       expr_vocab=self.expr_vocab).items()}
    elif "frames" in example:                # in-memory stand-in (shapes only): the first frame
      i, frame, lm, labels = 0, np.asarray(example["frames"][0]), np.zeros((68, 2), np.float32), {}
    else:
      raise UserError("data.sampler 'frame_views' reads data_prep shards (data.source 'shards')")
    ok = bool(np.all(np.isfinite(lm)))
    lm = lm if ok else np.zeros_like(lm)
    out["image"], out["landmarks"] = self._view(frame, lm, rng)
    if self.num_views == 2:
      out["view_2"], out["landmarks_2"] = self._view(frame, lm, rng)
    out["landmarks_mask"] = np.float32(ok)
    if not self.landmarks:
      for k in ("landmarks", "landmarks_2", "landmarks_mask"):
        out.pop(k, None)
    out["frame"] = np.int32(i)
    out["index"] = np.int32(example.get("index", -1))
    out.update(labels)
    return out


def make_views(cfg, train: bool) -> FrameViews:
  """`FrameViews` of `config.data` (sampler "frame_views")."""
  return FrameViews(cfg.image_size, train, num_views=int(cfg.get("num_views", 1)),
                    crop=cfg.get("crop", "resized_crop") or None,
                    flip_prob=0.5 if cfg.get("hflip", True) else 0.0,
                    color_jitter=cfg.get("color_jitter", 0.0),
                    expr_vocab=cfg.get("expr_vocab", ""),
                    crop_scale=tuple(cfg.get("crop_scale", (0.08, 1.0))),
                    landmarks=bool(cfg.get("landmarks", True)))


def check_frames_per_video(cfg) -> int:
  k = cfg.get("frames_per_video", 0) or 0
  if not isinstance(k, (int, np.integer)) or k < 0:
    raise UserError(f"config.data.sampler.frames_per_video={k!r}: expected 0 (every face frame) or an "
                    f"integer K > 0 (frames per video per epoch)")
  return int(k)
