"""Clip samplers over one video: Former-DFER's segment sampler with its transforms (`VideoClip`,
`sample_resized_crop_box`, `crop_and_resize`) and the per-frame samplers of the other models
(`FrameSampler`), with the per-frame labels of a record (`frame_labels`)."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxaffect.data import samplers, schema, vocab
from jaxaffect.errors import UserError


def _load_frames(paths: list[str], size: int) -> np.ndarray:
  from PIL import Image
  out = np.empty((len(paths), size, size, 3), np.uint8)
  for j, p in enumerate(paths):
    try:
      with Image.open(p) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
          im = im.resize((size, size), Image.BILINEAR)
        out[j] = np.asarray(im)
    except OSError as e:
      raise UserError(f"{p}: cannot decode frame: {e}") from e
  return out


# ------------------------------------------------------------------------------------- transforms
def sample_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            area=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = 10):
  """(x0, y0, w, h) of Former-DFER's `GroupRandomSizedCrop` (TSN): up to 10 draws of a target area
  in `area` × frame area and an aspect ratio in `ratio`, w/h swapped with probability 0.5; the first
  draw that fits is placed uniformly; otherwise the whole frame (the official fallback scales and
  centre-crops the frame, which for square face crops is the whole frame)."""
  for _ in range(attempts):
    target = rng.uniform(*area) * height * width
    aspect = rng.uniform(*ratio)
    w = int(round(np.sqrt(target * aspect)))
    h = int(round(np.sqrt(target / aspect)))
    if rng.random() < 0.5:
      w, h = h, w
    if 0 < w <= width and 0 < h <= height:
      x0 = int(rng.integers(0, width - w + 1))
      y0 = int(rng.integers(0, height - h + 1))
      return x0, y0, w, h
  side = min(height, width)
  return (width - side) // 2, (height - side) // 2, side, side


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image
  return np.asarray(Image.fromarray(frame).resize((size, size), Image.BILINEAR))


def crop_and_resize(video: np.ndarray, box, size: int) -> np.ndarray:
  """The same crop for every frame, resized bilinearly (PIL) to size × size."""
  from PIL import Image
  x0, y0, w, h = box
  out = np.empty((len(video), size, size, 3), np.uint8)
  for i, frame in enumerate(video):
    im = Image.fromarray(np.ascontiguousarray(frame)).crop((x0, y0, x0 + w, y0 + h))
    out[i] = np.asarray(im.resize((size, size), Image.BILINEAR))
  return out


@dataclasses.dataclass(frozen=True)
class VideoClip:
  """Samples a clip (Former-DFER: `num_segments` × `duration` frames), decodes and augments it."""
  num_segments: int = 8
  duration: int = 2
  image_size: int = 112
  train: bool = True
  hflip: bool = True
  random_resized_crop: bool = False   # official Former-DFER training augmentation (same for all frames)

  def __call__(self, record: dict[str, Any], rng: np.random.Generator | None = None):
    if "record" in record:
      n = record["record"].num_frames
    elif "frames" in record:
      n = len(record["frames"])
    else:
      n = len(record["frame_paths"])
    idx = samplers.former_dfer_indices(n, num_segments=self.num_segments, duration=self.duration,
                                       train=self.train, rng=rng)
    crop = self.train and self.random_resized_crop and rng is not None
    if "record" in record:
      rec = record["record"]
      video = schema.decode_frames(rec.jpegs, idx, f"record {rec.dataset}/{rec.split}/{rec.video_id}")
      if not crop and video.shape[1:3] != (self.image_size, self.image_size):
        video = np.stack([_resize(f, self.image_size) for f in video])
    elif "frames" in record:
      video = record["frames"][idx]
      if not crop and video.shape[1:3] != (self.image_size, self.image_size):
        raise UserError(f"video {int(record['index'])}: frames are {video.shape[1:3]}, "
                        f"config data.image_size={self.image_size}")
    else:
      paths = record["frame_paths"]
      video = _load_frames([paths[i] for i in idx], self.image_size)
    if crop:
      box = sample_resized_crop_box(video.shape[1], video.shape[2], rng)
      video = crop_and_resize(video, box, self.image_size)
    if self.train and self.hflip and rng is not None and rng.random() < 0.5:
      video = video[:, :, ::-1]            # the same flip for every frame of the clip
    return {"video": np.ascontiguousarray(video), "label": np.int32(max(int(record["label"]), 0)),
            "mask": np.float32(1.0), "label_mask": np.float32(record.get("labelled", 1.0))}


def frame_labels(rec: schema.VideoRecord, idx: np.ndarray, *, expr_vocab: str = "",
                 series_method: str = "linear", series_max_gap: float | None = None
                 ) -> dict[str, np.ndarray]:
  """Per-frame labels of the frames `idx` (any shape) with their masks, from one record.

  VA comes from the record's per-frame `frame/va` or, when the dataset annotates on its own time
  base (RECOLA 25 Hz, SEWA 10 Hz), from its `series/va` resampled to the frames' `t_sec` here, at
  read time (`samplers.resample_series`). EXPR is converted to `expr_vocab` (explicit map; a class
  the target lacks is an error). AU masks are per unit. `face` marks frames with a face.
  """
  idx = np.asarray(idx)
  out: dict[str, np.ndarray] = {"face": rec.face_found[idx].astype(np.float32)}
  where = f"record {rec.dataset}/{rec.split}/{rec.video_id}"
  if rec.va is not None:
    out["va"], out["va_mask"] = rec.va[idx], rec.va_mask[idx].astype(np.float32)
  elif "va" in rec.series:
    s = rec.series["va"]
    cols = list(s["columns"])
    if cols[:2] != ["valence", "arousal"]:
      raise UserError(f"{where}: series 'va' columns {cols}, expected valence, arousal first")
    if not np.all(np.isfinite(rec.t_sec)):
      raise UserError(f"{where}: series labels need frame times (field 'frame/t_sec' has NaN: "
                      f"the source did not know the frame rate)")
    vals, mask = samplers.resample_series(s["times"], s["values"][:, :2], rec.t_sec,
                                          method=series_method, max_gap=series_max_gap)
    out["va"], out["va_mask"] = vals[idx].astype(np.float32), mask[idx].astype(np.float32)
  if rec.expr is not None:
    expr = rec.expr
    if expr_vocab and rec.expr_vocab and rec.expr_vocab != expr_vocab:
      try:
        expr = vocab.convert(expr, rec.expr_vocab, expr_vocab)
      except ValueError as e:
        raise UserError(f"{where}: field 'frame/expr': {e}") from e
    out["expr"] = expr[idx].astype(np.int32)
    out["expr_mask"] = (expr[idx] >= 0).astype(np.float32)
  if rec.au is not None:
    out["au"] = np.maximum(rec.au[idx], 0).astype(np.float32)
    out["au_mask"] = (rec.au[idx] >= 0).astype(np.float32)
  return out


@dataclasses.dataclass(frozen=True)
class FrameSampler:
  """Samplers beyond Former-DFER, over shard records, with per-frame labels and augmentation.

  kind:
    "est"      7 snippets x 5 frames (`samplers.est_indices`) -> video (35, H, W, 3), label;
    "window"   `window` consecutive frames (ABAW 300, stride `stride` 200): train draws one of the
               `sliding_windows(n, window, stride, tail="pad")` windows, eval takes the first;
               -> video (window, ...), per-frame labels, `valid` (inside the video);
    "sequence" `length` steps `stride` apart (TDLS 768, MGCT 400; `samplers.long_sequence`);
    "frame"    one frame (`samplers.frame_index`, over frames with a face) -> image (H, W, 3).
  Augmentation (`augment.augment_clip`, the same for every frame): crop "resized_crop" (torchvision
  RandomResizedCrop), "zoom" (1.1-1.5) or None, h-flip with `flip_prob`, colour jitter.
  """
  kind: str
  image_size: int
  train: bool
  window: int = 300
  stride: int = 200
  crop: str | None = None
  flip_prob: float = 0.5
  color_jitter: float = 0.0
  expr_vocab: str = ""
  crop_scale: tuple[float, float] = (0.08, 1.0)

  def indices(self, n: int, rec: schema.VideoRecord, rng) -> tuple[np.ndarray, np.ndarray]:
    if self.kind == "est":
      idx = samplers.est_indices(n, train=self.train, rng=rng if self.train else None).ravel()
      return idx, np.ones(len(idx), bool)
    if self.kind == "window":
      wins = samplers.sliding_windows(n, self.window, self.stride, tail="pad")
      k = int(rng.integers(len(wins))) if self.train else 0
      idx, valid = samplers.window_indices([wins[k]], self.window)
      return idx[0], valid[0]
    if self.kind == "sequence":
      idx, valid = samplers.long_sequence(n, self.window, train=self.train,
                                          rng=rng if self.train else None, stride=self.stride)
      return idx[0], valid[0]
    if self.kind == "frame":
      face = rec.face_found.astype(bool)
      idx = samplers.frame_index(n, rng if self.train else None, train=self.train,
                                 valid_mask=face if face.any() else None)
      return idx, np.ones(1, bool)
    raise UserError(f"data.sampler {self.kind!r}: expected former_dfer, est, window, sequence "
                    f"or frame")

  def __call__(self, record: dict[str, Any], rng: np.random.Generator | None = None):
    from jaxaffect.data import augment
    if "record" in record:
      rec = record["record"]
      where = f"record {rec.dataset}/{rec.split}/{rec.video_id}"
      idx, valid = self.indices(rec.num_frames, rec, rng)
      video = schema.decode_frames(rec.jpegs, idx, where)
    elif "frames" in record and self.kind in ("est", "window", "sequence"):
      rec = None                              # in-memory videos (benchmarks): no per-frame labels
      idx, valid = self.indices(len(record["frames"]), None, rng)
      video = record["frames"][idx]
    elif "frames" in record and self.kind == "frame":
      rec = None                              # in-memory stand-in (shapes only): the first frame
      idx, valid = np.zeros(1, np.int64), np.ones(1, bool)
      video = record["frames"][idx]
    else:
      raise UserError(f"data.sampler {self.kind!r} reads data_prep shards (data.source 'shards')")
    aug = self.train and rng is not None
    video, _ = augment.augment_clip(
        video, rng if aug else np.random.default_rng(0), size=self.image_size,
        crop=self.crop if aug else None, flip_prob=self.flip_prob if aug else 0.0,
        scale=tuple(self.crop_scale),
        brightness=self.color_jitter if aug else 0.0, contrast=self.color_jitter if aug else 0.0,
        saturation=self.color_jitter if aug else 0.0)
    # `mask`: a real example (0 only for eval padding); `label_mask`: it has a clip label. Per-frame
    # labels count whether or not the video has a clip label (Aff-Wild2 videos have none).
    out = {"label": np.int32(max(int(record["label"]), 0)), "mask": np.float32(1.0),
           "label_mask": np.float32(record.get("labelled", 1.0))}
    labels = frame_labels(rec, idx, expr_vocab=self.expr_vocab) if rec is not None else {}
    if self.kind == "frame":
      out["image"] = video[0]
      out.update({k: v[0] for k, v in labels.items()})
      return out
    out["video"] = np.ascontiguousarray(video)
    if self.kind != "est":
      out["valid"] = valid.astype(np.float32)
      for k, v in labels.items():          # padding positions are never labelled
        if k.endswith("_mask") or k == "face":
          v = v * valid.reshape(valid.shape + (1,) * (v.ndim - 1)).astype(np.float32)
        out[k] = v
    return out
