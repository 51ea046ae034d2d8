"""Per-frame feature streams for sequence models (ABAW5/6 TCN + Transformer): readers, windows,
whole-video inference helpers.

Every reader produces the same per-video form, `VideoFeatures`: the video's frames (frame numbers,
times, a face flag) with one `(T, D)` float32 array per stream and the per-frame labels with masks.

Streams (`config.data.source.features`, a list of specs `{name, kind, path, rate_hz?, key?, stream?,
dim?, fill?}`):

* `kind="shards"`: feature shards written by `python -m data_prep features` (records of the face
  shards with `features/<stream>` added; `stream` names the feature inside them, default `name`).
  Rows are joined to the frames by frame number; every frame must have its row.
* `kind="npy"`: features as ABAW teams share them, under `path` (the stream's folder):
  per-frame files `<path>/<video>/<frame:05d>.npy` (1-based 5-digit names as the Aff-Wild2 crops;
  a frame without a file is a frame without a face: we keep the row and mark `face=0`), or
  per-video arrays `<path>/<video>.npy` / `.npz` (`key` names the array of a several-array npz)
  with one row per frame (the length must equal the video's frame count).
* `kind="array"`: per-video arrays only (`<path>/<video>.npy|.npz`); with `rate_hz` the rows are
  samples at `k / rate_hz` seconds (audio features at their own rate) and are linearly
  interpolated to the frames' `t_sec` at read time (`samplers.resample_series`, ends held as
  `np.interp` does); frames with unknown times (NaN) are an error. Two-person Aff-Wild2 videos
  (`..._left`, `..._right`) fall back to the array of the shared name (one audio track).

Labels (`config.data.source.labels`): a shard directory (face or feature shards: `manifest.json`; the
frames, labels, clip label, split and folds of each record; segments of one video are joined), an
Aff-Wild2 annotation folder (any ABAW edition's `VA_*`, `EXPR_*`, `AU_*` folders with
`Train_Set`/`Validation_Set` of `<video>.txt`, parsed by `jaxaffect.data.affwild2` -- the parser
`data_prep` uses too: header line, then line i+1 is frame i; VA `v,a` with -5 not annotated, EXPR
int (8 or 7 classes) with -1 invalid, 12 (or ABAW1's 8) AU ints with -1 invalid; split
"train"/"val"; errors name file, line and field), or "" (the first `shards` stream's directory if
there is one; otherwise the videos and frames of the first stream, unlabelled). Several streams
are joined by video id and frame number: a stream that lacks a video is an error naming both;
lengths that differ are an error unless the stream has a rate.

Frames without a face keep their row and `face=0`; their features are filled from the nearest
frame with a face by `fill_nearest` (the ABAW5 paper's rule; the ABAW6 team's code instead repeats
the previous frame's features in its training data and leaves zeros in the test set, see
`fill_nearest`), for every stream without a rate (spec `fill`).

Where the face flag comes from: shard labels and `shards` streams carry `frame/face_found` (0 for
NO_FACE and MISSING frames); Aff-Wild2 txt labels and unlabelled streams say nothing about faces,
so with `npy` / `array` streams over txt labels `face` is all True except the frames whose
per-frame `<frame:05d>.npy` file is missing in some `npy` stream (per-video arrays have a row for
every frame and never clear it). A frame's flag is the AND over all streams, so a gap in one
per-frame stream also fills the other streams' rows at that frame.

Windows: `FeatureWindows`, a grain source of (video, window) items (train `w=300, s=200`; eval
non-overlapping, so masked per-frame metrics count every frame once), made by the
`feature_windows` sampler over the `features` source (data/sampler_parts.py, source_parts.py). Whole-video
inference: `iter_videos`, `video_windows`, `merge`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from jaxaffect.data import samplers
# Re-exported: the readers and timelines were defined here (predict, bench and tests use them).
from jaxaffect.data.feature_readers import (KINDS, FeatureReader, StreamSpec, _as_dict,  # noqa: F401
                                            VideoFeatures, fields, fill_nearest, iter_videos,
                                            join,
                                            load_videos, read_stream, stream_specs)
from jaxaffect.data.feature_timelines import (DEFAULT_NUM_AU, LABEL_KEYS,  # noqa: F401
                                              _empty_labels, affwild2_timelines,
                                              shard_timeline)
from jaxaffect.errors import UserError



# ----------------------------------------------------------------------------------------- windows
def window_item(vf: VideoFeatures, start: int, stop: int, window: int,
                video_index: int = 0) -> dict[str, np.ndarray]:
  """The model input of frames [start, stop) padded to `window` (see `FeatureWindows`)."""
  idx, valid = samplers.window_indices([(start, stop)], window)
  idx, valid = idx[0], valid[0]
  v = valid.astype(np.float32)
  out: dict[str, np.ndarray] = {f"feat/{k}": s[idx] for k, s in vf.streams.items()}
  out["valid"] = v
  out["face"] = vf.face[idx].astype(np.float32) * v
  for k in LABEL_KEYS:
    x = vf.labels[k][idx]
    vv = v.reshape(v.shape + (1,) * (x.ndim - 1))
    out[k] = (x * vv).astype(x.dtype)             # labels and masks zero on padding frames
  out["mask"] = np.float32(1.0)
  out["label"] = np.int32(max(int(vf.label), 0))
  out["video_index"] = np.int32(video_index)
  out["start"] = np.int32(start)
  return out


class FeatureWindows(grain.sources.RandomAccessDataSource):
  """(video, window) items over whole videos: `samplers.sliding_windows(T, window, stride,
  tail="pad")` per video, so every frame is in some window and the last one is padded.

  Item: `feat/<stream> (w, D) f32`, `valid (w,)` (inside the video), `face (w,)`, `va (w, 2)`,
  `va_mask (w,)`, `expr (w,) i32`, `expr_mask (w,)`, `au (w, A)`, `au_mask (w, A)` (label masks
  zero on padding), `mask ()` = 1, `label ()` i32 (clip label or 0), `video_index ()`, `start ()`.
  With stride == window (the eval source) every frame is in exactly one window."""

  def __init__(self, videos: Sequence[VideoFeatures], window: int = 300, stride: int = 200,
               name: str = "features"):
    if not videos:
      raise UserError(f"{name}: no videos")
    self.videos, self.window, self.stride, self.name = list(videos), int(window), int(stride), name
    self.items: list[tuple[int, int, int]] = []
    dims = None
    for vi, vf in enumerate(self.videos):
      d = {k: s.shape[1:] for k, s in vf.streams.items()}
      if dims is None:
        dims = d
      elif d != dims:
        raise UserError(f"{name}: video {vf.video_id!r} has stream widths {d}, the first video "
                        f"{self.videos[0].video_id!r} {dims}")
      for s, e in samplers.sliding_windows(vf.num_frames, self.window, self.stride, tail="pad"):
        self.items.append((vi, s, e))

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    vi, s, e = self.items[i]
    return window_item(self.videos[vi], s, e, self.window, vi)

  def __repr__(self) -> str:
    return (f"FeatureWindows({self.name}, videos={len(self.videos)}, windows={len(self)}, "
            f"w={self.window}, s={self.stride})")


@dataclasses.dataclass(frozen=True)
class FeatureClip:
  """The clip function of feature windows: the identity, or in training (with an rng) inverted
  element dropout of the features with probability `feature_dropout`."""
  train: bool = False
  feature_dropout: float = 0.0

  def __call__(self, item: dict[str, Any], rng: np.random.Generator | None = None):
    out = dict(item)
    p = self.feature_dropout
    if self.train and rng is not None and p > 0:
      for k in sorted(out):
        if k.startswith("feat/"):
          keep = rng.random(out[k].shape) >= p
          out[k] = (out[k] * keep / np.float32(1 - p)).astype(np.float32)
    return out


def check_window(window: int, stride: int, window_name: str, stride_name: str) -> None:
  """Windows must cover every frame: 1 <= stride <= window (errors name the user's setting)."""
  if window < 1:
    raise UserError(f"{window_name}={window}: expected a window of >= 1 frames")
  if not 1 <= stride <= window:
    raise UserError(f"{stride_name}={stride} with {window_name}={window}: expected 1 <= stride <= "
                    f"window (a larger stride leaves frames between windows unpredicted)")


def spec_source(cfg, num_frames: int | None = None) -> FeatureWindows:
  """A one-video stand-in with the configured shapes (every stream needs its `dim`), to build a
  model or restore a checkpoint without reading data."""
  cfg = fields(cfg)
  w = int(cfg.get("window", 300))
  t = num_frames or w
  streams = {}
  for i, s in enumerate(cfg.get("features", None) or []):
    d = _as_dict(s)
    if int(d.get("dim", 0) or 0) <= 0:
      raise UserError(f"config.data.source.features[{i}] ({d.get('name')}): field 'dim' is needed to "
                      f"build shapes without reading data")
    streams[d["name"]] = np.zeros((t, int(d["dim"])), np.float32)
  vf = VideoFeatures("spec", streams, np.ones((t,), bool), np.arange(t), np.zeros(t, np.float32),
                     _empty_labels(t, int(cfg.get("num_au", DEFAULT_NUM_AU))))
  return FeatureWindows([vf], w, w, "spec")


def video_windows(vf: VideoFeatures, window: int, stride: int | None = None
                  ) -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]:
  """All windows of one video stacked `(W, window, ...)` (keys as `FeatureWindows` items) and the
  windows `[(start, stop)]` (tail "pad"; stride default = window)."""
  wins = samplers.sliding_windows(vf.num_frames, window, stride or window, tail="pad")
  items = [window_item(vf, s, e, window) for s, e in wins]
  return {k: np.stack([it[k] for it in items]) for k in items[0]}, wins


def merge(num_frames: int | VideoFeatures, windows: list[tuple[int, int]], preds) -> np.ndarray:
  """Per-frame `(T, ...)` predictions from window predictions `(W, window, ...)`: each frame the
  mean over the windows that cover it (`samplers.merge_window_predictions`)."""
  t = num_frames.num_frames if isinstance(num_frames, VideoFeatures) else int(num_frames)
  return samplers.merge_window_predictions(t, windows, preds)
