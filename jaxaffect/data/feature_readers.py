"""The stream side of feature streams (`jaxaffect.data.features`): stream specs from the config,
reading one stream of one video (feature shards, `.npy`/`.npz` files, arrays), joining the streams
on a video's timeline (`join`, `fill_nearest`) into `VideoFeatures` (`FeatureReader`,
`iter_videos`)."""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Sequence

import numpy as np

from jaxaffect.data import affwild2, samplers, schema
from jaxaffect.data.feature_timelines import (DEFAULT_NUM_AU, _empty_labels, _Fps, _ShardDir,
                                              _Timeline, affwild2_timelines, shard_timeline)
from jaxaffect.errors import MissingFile, UserError


KINDS = ("shards", "npy", "array")


# ------------------------------------------------------------------------------- the common form
@dataclasses.dataclass
class VideoFeatures:
  """One video's feature streams and per-frame labels (T frames).

  labels: `va (T,2) f32, va_mask (T,) f32, expr (T,) i32, expr_mask (T,) f32, au (T,A) f32,
  au_mask (T,A) f32` (as `pipeline.frame_labels`; a task the video lacks has zero masks)."""
  video_id: str
  streams: dict[str, np.ndarray]          # name -> (T, D) float32 (no-face rows filled)
  face: np.ndarray                        # (T,) bool
  frame_index: np.ndarray                 # (T,) int64, the dataset's frame numbers
  t_sec: np.ndarray                       # (T,) float32 (NaN: unknown)
  labels: dict[str, np.ndarray]
  label: int = -1                         # clip label (-1: none)
  split: str = ""
  folds: tuple[str, ...] = ()

  @property
  def num_frames(self) -> int:
    return len(self.frame_index)


def fill_nearest(feat: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Rows where `valid` is False replaced by the nearest valid row (the earlier one on a tie).

  ABAW5 (Zhou et al.): "frames without a face take the features of the nearest frame with one".
  The ABAW6 team's released code does otherwise (upczww/abaw6
  `preprocess/construct_{VA,EXPR,AU}.py`): its training samples repeat the previous frame's
  features for a frame without a feature file (and cover only the frames from the video's first
  crop to just before its last), while `construct_*_testset.py` leaves such test frames at zeros.
  `fill_nearest` follows the ABAW5 rule for train and test alike.
  No valid row at all: returned unchanged (a copy)."""
  feat = np.asarray(feat)
  valid = np.asarray(valid, bool)
  if valid.shape != feat.shape[:1]:
    raise UserError(f"fill_nearest: valid has shape {valid.shape}, features {feat.shape}")
  out = feat.copy()
  good = np.flatnonzero(valid)
  if good.size == 0 or good.size == len(valid):
    return out
  bad = np.flatnonzero(~valid)
  j = np.searchsorted(good, bad)                 # first valid row after each invalid one
  after = good[np.minimum(j, len(good) - 1)]
  before = good[np.maximum(j - 1, 0)]
  take_before = (j > 0) & ((j == len(good)) | (bad - before <= after - bad))
  out[bad] = feat[np.where(take_before, before, after)]
  return out


# ------------------------------------------------------------------------------------ stream specs
@dataclasses.dataclass(frozen=True)
class StreamSpec:
  name: str
  kind: str
  path: str
  rate_hz: float | None = None
  key: str = ""            # npz array name
  stream: str = ""         # feature name inside shards (default: name)
  dim: int = 0             # optional: known width (for `spec_source`)
  fill: bool | None = None  # fill no-face rows from the nearest face frame (default: no rate)

  @property
  def fills(self) -> bool:
    return (self.rate_hz is None) if self.fill is None else bool(self.fill)


def _as_dict(x) -> dict:
  return x.to_dict() if hasattr(x, "to_dict") else dict(x)


def fields(cfg):
  """The flat fields of a `config.data` (by parts: `parts.view`), or `cfg` if already flat."""
  from jaxaffect.data import parts
  return parts.view(cfg) if hasattr(cfg.get("source", None), "keys") else cfg


def stream_specs(cfg) -> list[StreamSpec]:
  """`config.data.source.features` as `StreamSpec`s (checked: names unique, kinds known, paths exist)."""
  raw = fields(cfg).get("features", None) or []
  specs, names = [], set()
  for i, s in enumerate(raw):
    d = _as_dict(s)
    unknown = set(d) - {f.name for f in dataclasses.fields(StreamSpec)}
    where = f"config.data.source.features[{i}]"
    if unknown:
      raise UserError(f"{where}: unknown keys {sorted(unknown)}")
    for k in ("name", "kind", "path"):
      if not d.get(k):
        raise UserError(f"{where}: field '{k}' missing")
    if d["kind"] not in KINDS:
      raise UserError(f"{where} ({d['name']}): kind={d['kind']!r}, expected one of {KINDS}")
    if d["name"] in names:
      raise UserError(f"{where}: stream name {d['name']!r} used twice")
    if d.get("rate_hz") is not None:
      d["rate_hz"] = float(d["rate_hz"])
      if d["kind"] != "array" or d["rate_hz"] <= 0:
        raise UserError(f"{where} ({d['name']}): rate_hz={d['rate_hz']} needs kind='array' and "
                        f"a rate > 0")
    if not os.path.exists(d["path"]):
      raise MissingFile(f"{where} ({d['name']}): path {d['path']} does not exist")
    names.add(d["name"])
    specs.append(StreamSpec(**d))
  if not specs:
    raise UserError("data.source 'features' needs config.data.source.features (a list of streams "
                    "{name, kind: shards|npy|array, path, rate_hz?})")
  return specs


# ----------------------------------------------------------------------------------- stream reads
def _npy_load(path: str, key: str, stream: str) -> np.ndarray:
  try:
    if path.endswith(".npz"):
      with np.load(path) as z:
        names = list(z.files)
        if key:
          if key not in names:
            raise UserError(f"stream {stream!r}: {path} has no array {key!r} (has {names})")
          return np.asarray(z[key])
        if len(names) != 1:
          raise UserError(f"stream {stream!r}: {path} holds arrays {names}; set the stream's "
                          f"'key'")
        return np.asarray(z[names[0]])
    return np.load(path, allow_pickle=False)
  except UserError:
    raise
  except (OSError, EOFError, ValueError) as e:     # truncated / not an array file
    raise UserError(f"stream {stream!r}: cannot read {path}: {e}") from None


def _array_file(spec: StreamSpec, video_id: str) -> str | None:
  for vid in dict.fromkeys((video_id, affwild2.track_of(video_id)[0])):
    for ext in (".npy", ".npz"):
      p = os.path.join(spec.path, vid + ext)
      if os.path.isfile(p):
        return p
  return None


def _frame_files(spec: StreamSpec, video_id: str) -> dict[int, str] | None:
  d = os.path.join(spec.path, video_id)
  if not os.path.isdir(d):
    return None
  out = {}
  for name in os.listdir(d):
    stem, ext = os.path.splitext(name)
    if ext == ".npy":
      try:
        out[int(stem)] = os.path.join(d, name)
      except ValueError:
        raise UserError(f"stream {spec.name!r}: {os.path.join(d, name)}: not a frame file "
                        f"'<frame:05d>.npy'") from None
  return out


def read_stream(spec: StreamSpec, tl: _Timeline, shard_dirs: dict[str, _ShardDir]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """(features (T, D) float32, available (T,) bool, face (T,) bool or None) of one stream of one
  video, aligned to the timeline's frames."""
  t = len(tl.frame_index)
  vid = tl.video_id
  if spec.kind == "shards":
    recs = tl.records if tl.label_dir == os.path.abspath(spec.path) else None
    if recs is None:
      sd = shard_dirs[spec.name]
      key = sd.find(vid, tl.split, spec.name)
      if key is None:
        raise UserError(f"stream {spec.name!r} ({spec.path}): no record of video {vid!r}")
      recs = sd.read(key)
    feat_name = spec.stream or spec.name
    rows, idx, face = [], [], []
    for rec in recs:
      if feat_name not in rec.features:
        raise UserError(f"stream {spec.name!r} ({spec.path}): record {rec.video_id} has no "
                        f"feature {feat_name!r} (has {sorted(rec.features)})")
      rows.append(rec.features[feat_name])
      idx.append(rec.frame_index)
      face.append(rec.face_found.astype(bool))
    rows, idx, face = np.concatenate(rows), np.concatenate(idx), np.concatenate(face)
    pos = {int(k): i for i, k in enumerate(idx)}
    missing = [int(k) for k in tl.frame_index if int(k) not in pos]
    if missing:
      raise UserError(f"stream {spec.name!r} ({spec.path}): video {vid!r} has no row for frames "
                      f"{missing[:5]} ({len(missing)} of {t}); feature shards cover every frame")
    take = np.asarray([pos[int(k)] for k in tl.frame_index], np.int64)
    return rows[take].astype(np.float32), np.ones((t,), bool), face[take]
  frames = _frame_files(spec, vid) if spec.kind == "npy" else None
  if frames is not None:
    feat, avail, dim = None, np.zeros((t,), bool), None
    for i, k in enumerate(tl.frame_index):
      p = frames.get(int(k))
      if p is None:
        continue
      v = _npy_load(p, spec.key, spec.name).reshape(-1).astype(np.float32)
      if feat is None:
        dim = v.size
        feat = np.zeros((t, dim), np.float32)
      elif v.size != dim:
        raise UserError(f"stream {spec.name!r}: {p} has {v.size} values, earlier frames {dim}")
      feat[i], avail[i] = v, True
    if feat is None:
      if spec.dim <= 0:
        raise UserError(f"stream {spec.name!r}: {os.path.join(spec.path, vid)} has no frame file "
                        f"for any of the video's {t} frames (set the stream's 'dim' to read it "
                        f"as zeros)")
      feat = np.zeros((t, spec.dim), np.float32)
    return feat, avail, None
  path = _array_file(spec, vid)
  if path is None:
    looked = f"{os.path.join(spec.path, vid)}{'/ or ' if spec.kind == 'npy' else ''}.npy|.npz"
    raise UserError(f"stream {spec.name!r}: no features for video {vid!r} (looked for {looked})")
  arr = _npy_load(path, spec.key, spec.name)
  if arr.ndim == 3 and arr.shape[1] == 1:               # (T, 1, D) as the ABAW6 features
    arr = arr[:, 0]
  if arr.ndim != 2:
    raise UserError(f"stream {spec.name!r}: {path} has shape {arr.shape}, expected (T, D)")
  arr = arr.astype(np.float32)
  if spec.rate_hz is None:
    if len(arr) != t:
      raise UserError(f"stream {spec.name!r}: {path} has {len(arr)} rows, video {vid!r} has {t} "
                      f"frames (give the stream a rate_hz to interpolate)")
    return arr, np.ones((t,), bool), None
  if not np.all(np.isfinite(tl.t_sec)):
    raise UserError(f"stream {spec.name!r} (rate_hz={spec.rate_hz}): video {vid!r} has unknown "
                    f"frame times (t_sec NaN; set data.source.fps or data.source.fps_csv, or prep with a known "
                    f"frame rate)")
  times = np.arange(len(arr), dtype=np.float64) / spec.rate_hz
  ft = np.clip(tl.t_sec.astype(np.float64), times[0], times[-1])    # ends held, as np.interp
  vals, _ = samplers.resample_series(times, arr, ft, method="linear")
  return vals.astype(np.float32), np.ones((t,), bool), None


def join(tl: _Timeline, specs: Sequence[StreamSpec], shard_dirs: dict[str, _ShardDir]
         ) -> VideoFeatures:
  """Reads every stream of a video, joins them on the timeline's frames and fills no-face rows."""
  face = tl.face.copy()
  raw = {}
  for spec in specs:
    feat, avail, sface = read_stream(spec, tl, shard_dirs)
    if spec.dim > 0 and feat.shape[1] != spec.dim:
      raise UserError(f"stream {spec.name!r}: video {tl.video_id!r} has {feat.shape[1]}-wide "
                      f"features, the config says dim={spec.dim}")
    raw[spec.name] = (feat, avail)
    if sface is not None:
      face &= sface
    if spec.kind == "npy":
      face &= avail
  streams = {}
  for spec in specs:
    feat, avail = raw[spec.name]
    streams[spec.name] = fill_nearest(feat, avail & face) if spec.fills else feat
  return VideoFeatures(tl.video_id, streams, face, tl.frame_index, tl.t_sec, tl.labels, tl.label,
                       tl.split, tl.folds)


class FeatureReader:
  """The videos of `select` with their joined streams, from `config.data` (see module doc)."""

  def __init__(self, cfg):
    self.cfg = cfg = fields(cfg)
    self.specs = stream_specs(cfg)
    self.shard_dirs = {s.name: _ShardDir(os.path.abspath(s.path)) for s in self.specs
                       if s.kind == "shards"}
    labels = cfg.get("labels", "") or ""
    if not labels:
      first = next((s for s in self.specs if s.kind == "shards"), None)
      labels = os.path.abspath(first.path) if first else ""
    self.labels = labels
    self.label_shards = None
    if labels and os.path.exists(os.path.join(labels, schema.MANIFEST)):
      same = [sd for sd in self.shard_dirs.values() if sd.path == os.path.abspath(labels)]
      self.label_shards = same[0] if same else _ShardDir(os.path.abspath(labels))
    elif labels and not os.path.isdir(labels):
      raise MissingFile(f"data.source.labels={labels}: no such directory")

  def timelines(self, select: str) -> Iterator[_Timeline]:
    if self.label_shards is not None:
      for key in self.label_shards.keys(select):
        yield shard_timeline(self.label_shards, key, self.cfg)
    elif self.labels:
      yield from affwild2_timelines(self.labels, select, self.cfg)
    else:
      yield from self._unlabelled(select)

  def _unlabelled(self, select: str) -> Iterator[_Timeline]:
    """No labels: the videos and frames of the first stream (per-frame folders: frames 1..last
    file; arrays: one frame per row, numbered from 1)."""
    if select != "all":
      raise UserError(f"data.source.labels is empty (unlabelled streams): select={select!r}, only "
                      f"'all' is possible")
    spec = self.specs[0]
    if spec.rate_hz is not None:
      raise UserError(f"data.source.labels is empty and the first stream {spec.name!r} has a rate: "
                      f"the frames are unknown (put a per-frame stream first or give labels)")
    fps = _Fps(self.cfg)
    num_au = int(self.cfg.get("num_au", DEFAULT_NUM_AU))
    for entry in sorted(os.listdir(spec.path)):
      full = os.path.join(spec.path, entry)
      if os.path.isdir(full) and spec.kind == "npy":
        vid = entry
        files = _frame_files(spec, vid)
        if not files:
          continue
        t = max(files)
      elif entry.endswith((".npy", ".npz")):
        vid = os.path.splitext(entry)[0]
        t = len(_npy_load(full, spec.key, spec.name))
      else:
        continue
      idx = np.arange(1, t + 1, dtype=np.int64)
      f = fps(vid)
      ts = ((idx - 1) / f).astype(np.float32) if f > 0 else np.full((t,), np.nan, np.float32)
      yield _Timeline(vid, idx, ts, np.ones((t,), bool), _empty_labels(t, num_au))

  def videos(self, select: str) -> Iterator[VideoFeatures]:
    for tl in self.timelines(select):
      yield join(tl, self.specs, self.shard_dirs)


def iter_videos(cfg, select: str) -> Iterator[VideoFeatures]:
  """Every video of `select` ("train", "val", "1:test", "all") as `VideoFeatures` (inference)."""
  return FeatureReader(cfg).videos(select)


def load_videos(cfg, select: str) -> list[VideoFeatures]:
  videos = list(iter_videos(cfg, select))
  if not videos:
    raise UserError(f"data.source 'features': no video for select={select!r}")
  return videos
