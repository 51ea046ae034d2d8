"""Per-frame feature streams for sequence models (ABAW5/6 TCN + Transformer): readers, windows,
whole-video inference helpers.

Every reader produces the same per-video form, `VideoFeatures`: the video's frames (frame numbers,
times, a face flag) with one `(T, D)` float32 array per stream and the per-frame labels with masks.

Streams (`config.data.features`, a list of specs `{name, kind, path, rate_hz?, key?, stream?,
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

Labels (`config.data.labels`): a shard directory (face or feature shards: `manifest.json`; the
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
non-overlapping, so masked per-frame metrics count every frame once), dispatched from
`pipeline.build_sources` / `make_clip` when `config.data.source == "features"`. Whole-video
inference: `iter_videos`, `video_windows`, `merge`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from jaxaffect.data import affwild2, samplers, schema, vocab as vocab_lib
from jaxaffect.errors import MissingFile, UserError

KINDS = ("shards", "npy", "array")
LABEL_KEYS = ("va", "va_mask", "expr", "expr_mask", "au", "au_mask")
DEFAULT_NUM_AU = 12


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


def stream_specs(cfg) -> list[StreamSpec]:
  """`config.data.features` as `StreamSpec`s (checked: names unique, kinds known, paths exist)."""
  raw = cfg.get("features", None) or []
  specs, names = [], set()
  for i, s in enumerate(raw):
    d = _as_dict(s)
    unknown = set(d) - {f.name for f in dataclasses.fields(StreamSpec)}
    where = f"config.data.features[{i}]"
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
    raise UserError("config.data.source='features' needs data.features (a list of streams "
                    "{name, kind: shards|npy|array, path, rate_hz?})")
  return specs


# ---------------------------------------------------------------------- timelines (the labels side)
@dataclasses.dataclass
class _Timeline:
  """What the labels side says about one video (before the streams are joined)."""
  video_id: str
  frame_index: np.ndarray
  t_sec: np.ndarray
  face: np.ndarray
  labels: dict[str, np.ndarray]
  label: int = -1
  split: str = ""
  folds: tuple[str, ...] = ()
  records: list | None = None            # decoded shard records (segments) when from shards
  label_dir: str = ""


def _empty_labels(t: int, num_au: int) -> dict[str, np.ndarray]:
  return {"va": np.zeros((t, 2), np.float32), "va_mask": np.zeros((t,), np.float32),
          "expr": np.zeros((t,), np.int32), "expr_mask": np.zeros((t,), np.float32),
          "au": np.zeros((t, num_au), np.float32), "au_mask": np.zeros((t, num_au), np.float32)}


class _Fps:
  def __init__(self, cfg):
    self.default = float(cfg.get("fps", 0.0) or 0.0)
    csv = cfg.get("fps_csv", "") or ""
    self.table = affwild2.read_fps_csv(csv) if csv else {}

  def __call__(self, video_id: str) -> float:
    return affwild2.lookup(self.table, video_id, self.default)


def affwild2_timelines(root: str, select: str, cfg) -> list[_Timeline]:
  """Videos of an Aff-Wild2 annotation folder in `select` ("train", "val" or "all"): frames
  1..T with T the most label lines over the video's tasks (shorter tasks padded with their
  sentinels, as `data_prep.sources.affwild2`), t_sec = (i - 1) / fps (`data.fps`, `data.fps_csv`;
  unknown: NaN)."""
  folders = affwild2.annotation_folders(root, option="data.labels")
  if not folders:
    raise UserError(f"data.labels={root}: neither a shard directory (manifest.json) nor an "
                    f"Aff-Wild2 annotation folder (VA_Set, EXPR_*, AU_* ...)")
  if select not in ("train", "val", "all"):
    raise UserError(f"data.labels={root} (Aff-Wild2 annotations): select={select!r}, expected "
                    f"'train', 'val' or 'all'")
  expr_vocab = cfg.get("expr_vocab", "") or ""
  num_au = int(cfg.get("num_au", DEFAULT_NUM_AU))
  fps = _Fps(cfg)
  files = affwild2.annotation_files(folders, None if select == "all" else (select,))
  if not files:
    raise UserError(f"data.labels={root}: no annotation file for select={select!r}")
  tasks = tuple(cfg.get("label_tasks", ()) or ())   # () = every task's files
  out = []
  for (split, vid), paths in sorted(files.items()):
    # Only the files of the tasks the run uses are read (a bad EXPR file does not stop a VA run).
    paths = {task: p for task, p in paths.items() if not tasks or task in tasks}
    if not paths:
      continue
    parsed = {task: affwild2.parse_label_file(p, task, item=vid) for task, p in paths.items()}
    t = affwild2.num_frames(parsed)
    labels = _empty_labels(t, num_au)
    if "va" in parsed:
      va = affwild2.padded(parsed, "va", t)
      m = np.all(va > schema.VA_MISSING + 1e-6, axis=-1)
      labels["va"], labels["va_mask"] = np.where(m[:, None], va, 0).astype(np.float32), \
          m.astype(np.float32)
    if "expr" in parsed:
      e = affwild2.padded(parsed, "expr", t)
      ev = parsed["expr"].vocab
      if expr_vocab and ev != expr_vocab:
        try:
          e = vocab_lib.convert(e, ev, expr_vocab)
        except ValueError as err:
          raise UserError(f"{paths['expr']}: field 'expression': {err}") from err
      labels["expr"], labels["expr_mask"] = np.maximum(e, 0).astype(np.int32), \
          (e >= 0).astype(np.float32)
    if "au" in parsed:
      au = affwild2.padded(parsed, "au", t)
      if au.shape[1] != num_au:
        raise UserError(f"{paths['au']}: {au.shape[1]} action units "
                        f"({','.join(parsed['au'].names)}), config data.num_au={num_au}")
      labels["au"], labels["au_mask"] = np.maximum(au, 0).astype(np.float32), \
          (au >= 0).astype(np.float32)
    f = fps(vid)
    idx = np.arange(1, t + 1, dtype=np.int64)
    ts = ((idx - 1) / f).astype(np.float32) if f > 0 else np.full((t,), np.nan, np.float32)
    out.append(_Timeline(vid, idx, ts, np.ones((t,), bool), labels, split=split))
  return out


# ------------------------------------------------------------------------------- shard directories
class _ShardDir:
  """Random access to the records of a shard directory, grouped by video (segments joined)."""

  def __init__(self, path: str):
    from jaxaffect.data import pipeline
    self.path = path
    self.manifest = schema.read_manifest(path)
    if self.manifest.get("schema_version") != schema.SCHEMA_VERSION:
      raise UserError(f"{path}/manifest.json: schema_version {self.manifest.get('schema_version')}"
                      f", this reader reads {schema.SCHEMA_VERSION}")
    self._select = pipeline.select_records
    self.by_key: dict[tuple[str, str], list[dict]] = {}
    for r in self.manifest["records"]:
      self.by_key.setdefault((r["id"], r["split"]), []).append(r)
    self.by_id: dict[str, list[tuple[str, str]]] = {}
    for k in self.by_key:
      self.by_id.setdefault(k[0], []).append(k)

  def keys(self, select: str) -> list[tuple[str, str]]:
    recs = self.manifest["records"] if select == "all" else self._select(self.manifest, select)
    seen, out = set(), []
    for r in recs:
      k = (r["id"], r["split"])
      if k not in seen:
        seen.add(k)
        out.append(k)
    return out

  def find(self, video_id: str, split: str, stream: str) -> tuple[str, str] | None:
    if (video_id, split) in self.by_key:
      return video_id, split
    ks = self.by_id.get(video_id, [])
    if len(ks) > 1:
      raise UserError(f"stream {stream!r} ({self.path}): video {video_id!r} is in several splits "
                      f"{sorted(k[1] for k in ks)} and none is {split!r}")
    return ks[0] if ks else None

  def read(self, key: tuple[str, str]) -> list[schema.VideoRecord]:
    recs = []
    for r in self.by_key[key]:
      path = os.path.join(self.path, r["file"])
      where = f"{path} record at byte {r['offset']} ({r['id']})"
      with open(path, "rb") as f:
        recs.append(schema.decode(schema.read_record_at(f, r["offset"], where), where))
    recs.sort(key=lambda rec: rec.meta.get("segment", {}).get("index", 0))
    return recs


def shard_timeline(sd: _ShardDir, key: tuple[str, str], cfg) -> _Timeline:
  """Frames, labels, clip label, split, folds of one video of a shard directory."""
  from jaxaffect.data import pipeline
  recs = sd.read(key)
  num_au = int(cfg.get("num_au", DEFAULT_NUM_AU))
  parts = []
  for rec in recs:
    t = rec.num_frames
    lab = _empty_labels(t, num_au)
    got = pipeline.frame_labels(rec, np.arange(t), expr_vocab=cfg.get("expr_vocab", "") or "")
    got.pop("face", None)
    if "au" in got and got["au"].shape[1] != num_au:
      raise UserError(f"{sd.path}: record {rec.video_id}: field 'frame/au' has "
                      f"{got['au'].shape[1]} units, config data.num_au={num_au}")
    lab.update(got)
    if "va" in got:                    # -5 sentinels -> 0 under a zero mask (as the txt reader)
      lab["va"] = (got["va"] * (got["va_mask"][:, None] > 0)).astype(np.float32)
    parts.append(lab)
  r0 = recs[0]
  return _Timeline(
      r0.video_id, np.concatenate([r.frame_index for r in recs]),
      np.concatenate([r.t_sec for r in recs]).astype(np.float32),
      np.concatenate([r.face_found for r in recs]).astype(bool),
      {k: np.concatenate([p[k] for p in parts]) for k in LABEL_KEYS},
      label=int(r0.label), split=r0.split, folds=tuple(r0.folds), records=recs, label_dir=sd.path)


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
                    f"frame times (t_sec NaN; set data.fps or data.fps_csv, or prep with a known "
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
    self.cfg = cfg
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
      raise MissingFile(f"data.labels={labels}: no such directory")

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
      raise UserError(f"data.labels is empty (unlabelled streams): select={select!r}, only "
                      f"'all' is possible")
    spec = self.specs[0]
    if spec.rate_hz is not None:
      raise UserError(f"data.labels is empty and the first stream {spec.name!r} has a rate: "
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
    raise UserError(f"data.source='features': no video for select={select!r}")
  return videos


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


def make_clip(cfg, train: bool) -> FeatureClip:
  return FeatureClip(train, float(cfg.get("feature_dropout", 0.0) or 0.0) if train else 0.0)


def check_window(window: int, stride: int, window_name: str, stride_name: str) -> None:
  """Windows must cover every frame: 1 <= stride <= window (errors name the user's setting)."""
  if window < 1:
    raise UserError(f"{window_name}={window}: expected a window of >= 1 frames")
  if not 1 <= stride <= window:
    raise UserError(f"{stride_name}={stride} with {window_name}={window}: expected 1 <= stride <= "
                    f"window (a larger stride leaves frames between windows unpredicted)")


def build_sources(cfg) -> tuple[FeatureWindows, FeatureWindows]:
  """(train, eval) window sources of `config.data`: `train_select` windows `window`/`stride`
  (300/200), `eval_select` windows `window`/`eval_stride` (default: `window`, non-overlapping)."""
  w = int(cfg.get("window", 300))
  check_window(w, int(cfg.get("stride", 200)), "config.data.window", "config.data.stride")
  check_window(w, int(cfg.get("eval_stride", 0) or w), "config.data.window",
               "config.data.eval_stride")
  reader = FeatureReader(cfg)
  tr_sel, ev_sel = cfg.get("train_select", "train"), cfg.get("eval_select", "val")
  tr = list(reader.videos(tr_sel))
  ev = list(reader.videos(ev_sel))
  for sel, vids in ((tr_sel, tr), (ev_sel, ev)):
    if not vids:
      raise UserError(f"data.source='features': no video for select={sel!r}")
  return (FeatureWindows(tr, w, int(cfg.get("stride", 200)), f"features-{tr_sel}"),
          FeatureWindows(ev, w, int(cfg.get("eval_stride", 0) or w), f"features-{ev_sel}"))


def spec_source(cfg, num_frames: int | None = None) -> FeatureWindows:
  """A one-video stand-in with the configured shapes (every stream needs its `dim`), to build a
  model or restore a checkpoint without reading data."""
  w = int(cfg.get("window", 300))
  t = num_frames or w
  streams = {}
  for i, s in enumerate(cfg.get("features", None) or []):
    d = _as_dict(s)
    if int(d.get("dim", 0) or 0) <= 0:
      raise UserError(f"config.data.features[{i}] ({d.get('name')}): field 'dim' is needed to "
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
