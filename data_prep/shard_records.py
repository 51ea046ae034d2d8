"""Item -> record: the face stage(s) of a job (`Stages`: a fixed detector or `auto` per item), one
item's frames through it into a `schema.VideoRecord` (`process_item`), long videos as segments
(`split_segments`), the per-record statistics of sidecars and manifests (`_record_stats`), and
what an item was made from (`fingerprint`: a changed input redoes its shard). Used by the job in
`data_prep.shards`."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from typing import Any

import numpy as np

from data_prep.sources import base
from jaxaffect.data import schema

PREP_VERSION = 2


class Stages:
  """The face stage(s) of a job. A fixed detector uses one `FaceStage`; `auto` picks per item:
  the item's own geometry -> "precomputed", dataset-provided aligned crops (`Frame.precomputed`)
  -> "none", anything else -> "blazeface". Each record stores the recipe that made it."""
  AUTO_DETECTOR = "blazeface"

  def __init__(self, recipe_args: dict):
    self.args = dict(recipe_args)
    self.auto = self.args.get("detector", "auto") == "auto"
    self._stages: dict[str, Any] = {}

  def get(self, detector: str):
    if detector not in self._stages:
      from data_prep import faces
      self._stages[detector] = faces.FaceStage(faces.FaceRecipe(**{**self.args, "detector": detector}))
    return self._stages[detector]

  def recipe(self, detector: str) -> dict:
    from data_prep import faces
    r = faces.FaceRecipe(**{**self.args, "detector": detector}).to_json()
    return dict(r, prep_version=PREP_VERSION, schema_version=schema.SCHEMA_VERSION)

  def job_recipe(self) -> dict:
    if not self.auto:
      return self.recipe(self.args["detector"])
    return {"detector": "auto", "prep_version": PREP_VERSION, "schema_version": schema.SCHEMA_VERSION,
            "stages": {d: self.recipe(d) for d in ("precomputed", "none", self.AUTO_DETECTOR)}}

  def pick(self, item: base.VideoItem):
    """(detector name, FaceStage, frames iterator) for an item."""
    frames = item.frames()
    if not self.auto:
      det = self.args["detector"]
      return det, self.get(det), frames
    if item.boxes is not None or item.landmarks is not None:
      return "precomputed", self.get("precomputed"), frames
    head = []                    # frames before the first one with an image (gaps, broken files)
    for fr in frames:
      head.append(fr)
      if fr.image is not None:
        break
    first = head[-1] if head and head[-1].image is not None else None
    det = "none" if first is not None and first.precomputed else self.AUTO_DETECTOR
    return det, self.get(det), itertools.chain(head, frames)


def _nan(shape) -> np.ndarray:
  return np.full(shape, np.nan, np.float32)


def _check_rows(item: base.VideoItem, name: str, arr, t: int):
  if arr is not None and len(arr) != t:
    raise base.PrepError(item.source_path or item.key, f"{len(arr)} label rows for {t} frames "
                         f"(frame count does not match)", field=name, item=item.key)


def process_item(item: base.VideoItem, stages: Stages) -> tuple[schema.VideoRecord, list[dict]]:
  """Runs the face stage over one item's frames; returns the record and its per-frame issues."""
  if item.resolve is not None:
    item = item.resolve()
  jpegs, idx, ts, status, found, score, box, mat, lms, issues = ([] for _ in range(10))
  detector, stage, frames = stages.pick(item)
  recipe = stages.recipe(detector)
  quality = int(recipe.get("jpeg_quality", 95))
  scheme = ""
  results = stage.process_video(frames, boxes=item.boxes, landmarks=item.landmarks,
                                landmark_scheme=item.landmark_scheme,
                                source=item.source_path or item.key, track=item.track)
  for res in results:
    scheme = res.landmark_scheme or scheme
    fr = res.frame
    jpegs.append(schema.encode_jpeg(res.crop, quality))
    idx.append(fr.index)
    ts.append(fr.t_sec)
    status.append(res.status)
    found.append(int(res.face_found))
    score.append(res.score)
    box.append(res.box)
    mat.append(res.matrix)
    lms.append(res.landmarks)
    if res.status == base.UNREADABLE:     # MISSING (the dataset has no image) is counted, not an issue
      issues.append({"item": item.key, "frame": int(fr.index), "status": base.STATUS_NAMES[res.status],
                     "path": item.source_path, "reason": fr.error or base.STATUS_NAMES[res.status]})
  t = len(jpegs)
  if t == 0:
    raise base.PrepError(item.source_path or item.key, "no frames (empty folder or undecodable "
                         "video)", item=item.key)
  if item.num_frames is not None and item.num_frames != t and "container_frames" not in item.meta:
    raise base.PrepError(item.source_path or item.key, f"expected {item.num_frames} frames, decoded "
                         f"{t} (frame count does not match)", field="num_frames", item=item.key)
  for name in ("va", "expr", "au", "boxes", "landmarks"):
    _check_rows(item, name, getattr(item, name), t)
  lm = np.stack(lms).astype(np.float32)
  rec = schema.VideoRecord(
      video_id=item.video_id, dataset=item.dataset, split=item.split, jpegs=jpegs,
      frame_index=np.asarray(idx, np.int64), t_sec=np.asarray(ts, np.float32),
      status=np.asarray(status, np.int64), face_found=np.asarray(found, np.int64),
      score=np.asarray(score, np.float32), box=np.stack(box).astype(np.float32),
      matrix=np.stack(mat).astype(np.float32), landmarks=lm,
      landmark_scheme=scheme,
      track=item.track, source_path=item.source_path, fps=float(item.fps), label=int(item.clip_label),
      vocab=item.vocab, folds=tuple(item.folds), soft_label=item.soft_label, meta=item.meta,
      recipe=recipe, va=None if item.va is None else np.asarray(item.va, np.float32),
      expr=None if item.expr is None else np.asarray(item.expr, np.int64), expr_vocab=item.expr_vocab,
      au=None if item.au is None else np.asarray(item.au, np.int64), au_names=tuple(item.au_names),
      series={k: {"times": s.times, "values": s.values, "columns": s.names, "rate_hz": s.rate_hz}
              for k, s in item.series.items()})
  return rec, issues


def split_segments(rec: schema.VideoRecord, max_frames: int) -> list[schema.VideoRecord]:
  """Consecutive records of at most `max_frames` frames (0: the whole video); each keeps the
  video-level fields and continuous series, and says where it sits in `meta["segment"]`."""
  t = rec.num_frames
  if not max_frames or t <= max_frames:
    return [rec]
  starts = list(range(0, t, max_frames))
  out = []
  for k, a in enumerate(starts):
    b = min(a + max_frames, t)
    sl = slice(a, b)
    seg = schema.VideoRecord(**{f: getattr(rec, f) for f in rec.__dataclass_fields__})
    seg.jpegs = rec.jpegs[sl]
    for f in ("frame_index", "t_sec", "status", "face_found", "score", "box", "matrix", "landmarks",
              "va", "expr", "au"):
      v = getattr(rec, f)
      if v is not None:
        setattr(seg, f, v[sl])
    seg.meta = dict(rec.meta, segment={"index": k, "count": len(starts), "start": a, "stop": b,
                                       "video_frames": t})
    out.append(seg)
  return out


def _record_stats(rec: schema.VideoRecord) -> dict:
  st = {"num_frames": rec.num_frames, "segment": rec.meta.get("segment", {}).get("index", 0),
        "status": np.bincount(rec.status, minlength=4).tolist(),
        "face_found": int(rec.face_found.sum())}
  if rec.expr is not None:
    st["expr_hist"] = np.bincount(rec.expr[rec.expr >= 0], minlength=1).tolist()
  if rec.au is not None:
    st["au_pos"] = (rec.au == 1).sum(0).tolist()
    st["au_valid"] = (rec.au >= 0).sum(0).tolist()
  if rec.va is not None:
    st["va_frames"] = int(rec.va_mask.sum())
  return st


def _arr_hash(h, a) -> None:
  if a is None:
    h.update(b"-")
  else:
    a = np.ascontiguousarray(a)
    h.update(str((a.dtype.str, a.shape)).encode())
    h.update(a.tobytes())


def _path_stat(path: str) -> list:
  """Sizes and mtimes of a file, or of a folder's entries (frames added/fixed change it)."""
  try:
    if os.path.isdir(path):
      return sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path))
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]
  except OSError:
    return []


def fingerprint(item: base.VideoItem) -> str:
  """What the item was made from: its source path's files, its labels and every other field the
  record stores (fps, which sets the times: e.g. Aff-Wild2's `--fps-csv`; meta); for light items
  whose labels come from `resolve()`, the label files are in `meta["label_files"]` if the source
  says so; synthetic items are fully determined by the pinned job arguments."""
  h = hashlib.sha256()
  h.update(json.dumps([item.key, item.source_path, _path_stat(item.source_path) if item.source_path
                       else [], item.clip_label, item.vocab, list(item.folds), item.track,
                       item.expr_vocab, list(item.au_names), item.num_frames],
                      default=str).encode())
  h.update(json.dumps([repr(float(item.fps)), item.landmark_scheme, item.meta], sort_keys=True,
                      default=str).encode())
  for f in (item.va, item.expr, item.au, item.boxes, item.landmarks, item.soft_label):
    _arr_hash(h, f)
  for k in sorted(item.series):
    _arr_hash(h, item.series[k].times)
    _arr_hash(h, item.series[k].values)
    h.update(json.dumps([k, list(item.series[k].names), repr(float(item.series[k].rate_hz))])
             .encode())
  for lf in sorted(item.meta.get("label_files", []) or []):
    h.update(json.dumps([lf, _path_stat(lf)]).encode())
  return h.hexdigest()[:24]
