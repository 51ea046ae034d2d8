"""The shard writer: sources -> face stage -> TFRecord shards + manifest, resumable and parallel.

* Items of each split are dealt round-robin to `n` shards (`<dataset>-<split>.tfrecord-i-of-n`). A
  shard is one unit of work: written to `<name>.tmp-<pid>`, fsync'ed, its sidecar `<name>.json`
  (records, byte offsets, histograms, sha256, the job hash and a fingerprint of every input item)
  renamed into place, then the shard itself. A shard counts as done only when both exist, the
  file's sha256 equals the sidecar's, and the sidecar was made by this job from the same inputs
  (item keys + fingerprints: file sizes/mtimes of the item's source, hashes of its labels), so a
  killed job rerun redoes exactly the unfinished shards, and a rerun after inputs changed (a fixed
  JPEG, a new video) redoes the shards they fall in. The content of a shard depends only on its
  items and the recipe (never on workers or timing), so the result equals an uninterrupted run.
* `prep_job.json` pins the source, its arguments and the recipe; a rerun with different ones is
  refused (`--overwrite` deletes the directory's shards and starts over). It is written with the
  job's first shard (`Pin`): a run that fails before writing anything (a wrong `--src`, a forgotten
  flag, a `--strict` stop) leaves `--out` as it was and pins nothing. One job at a time per output
  directory (`.lock`, flock); a directory the failed run created is removed again.
* Inputs that cannot be used are logged with file, line/frame and field (`skipped.jsonl`, and in the
  manifest); `--strict` stops at the first one (an unreadable frame included; frames the dataset
  simply does not have, like Aff-Wild2 gaps, are counted, not errors) and commits nothing: shards
  are staged as temp files and committed (with the deletions the job implies) only when every one
  succeeded, so a strict failure leaves `--out` byte for byte as it was, for any `--workers` (a
  killed strict run therefore redoes all its shards).
* `--segment-frames N` writes long videos as consecutive records of at most N frames (e.g. 1000 for
  Aff-Wild2, ~5000 frames per video): readers then read one segment, not the whole video.
* `manifest.json` (written last, atomically, deterministic) aggregates the sidecars: counts, label
  histograms, status counts, checksums, the recipe, the per-record index and the mean landmark
  template of the template split.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import math
import multiprocessing as mp
import os
import sys
import threading
import time
from typing import Any

import numpy as np

from data_prep.sources import base
from jaxaffect.data import schema

PREP_VERSION = 2
JOB_FILE = "prep_job.json"
SKIP_LOG = "skipped.jsonl"
LOCK_FILE = ".lock"

# Fork-inherited state of the workers (the items hold closures that do not pickle).
_ITEMS: list = []
_JOB: dict = {}
_QUEUE = None
_STAGE = None


class PrepFailed(SystemExit):
  pass


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _atomic_json(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


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


def _stage() -> Stages:
  global _STAGE
  if _STAGE is None:
    _STAGE = Stages(_JOB["recipe_args"])
  return _STAGE


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


def _write_shard(task: dict) -> dict:
  """Writes one shard (temp + fsync + rename) and its sidecar; returns the sidecar."""
  final = os.path.join(_JOB["out"], task["name"])
  tmp = f"{final}.tmp-{os.getpid()}"
  stage = _stage()
  records, skipped, issues = [], [], []
  template = None                   # faces.TemplateAccumulator of this shard's landmarks
  try:
    with open(tmp, "wb") as f:
      w = schema.TFRecordWriter(f)
      for i in task["items"]:
        item = _ITEMS[i]
        try:
          try:
            rec, frame_issues = process_item(item, stage)
          except base.PrepError:
            raise
          except Exception as e:                  # decoder/library failures: located, not a crash
            raise base.PrepError(item.source_path or item.key, f"{type(e).__name__}: {e}",
                                 item=item.key) from e
        except base.PrepError as e:
          e.item = e.item or item.key
          if _JOB["strict"]:
            raise
          skipped.append(e.to_json())
          if _QUEUE is not None:
            _QUEUE.put(("skip", e.to_json()))
          continue
        if frame_issues and _JOB["strict"]:
          fi = frame_issues[0]
          raise base.PrepError(fi["path"] or item.key, f"frame {fi['status']}: {fi['reason']}",
                               frame=fi["frame"], item=item.key)
        issues.extend(frame_issues)
        for seg in split_segments(rec, _JOB["segment_frames"]):
          off, n = w.write(schema.encode(seg))
          records.append({"id": seg.video_id, "split": seg.split, "file": task["name"],
                          "offset": off, "length": n, "label": seg.label, "folds": list(seg.folds),
                          **_record_stats(seg)})
        if task["template"] and rec.landmarks.shape[1]:
          from data_prep import faces      # whole frames only (any NaN point: the frame is left out)
          if template is None:
            template = faces.TemplateAccumulator(rec.recipe["size"], rec.landmarks.shape[1])
          template.add(rec.landmarks, rec.face_found == 1)
        if _QUEUE is not None:
          _QUEUE.put(("item", rec.num_frames))
      f.flush()
      os.fsync(f.fileno())
    fields = dict(records=records, skipped=skipped, frame_issues=issues,
                  template=None if template is None else template.to_json())
    if _JOB["strict"]:              # staged: committed by the main process once all succeeded
      return {"staged": tmp, "final": final, "name": task["name"], "fields": fields}
    return commit_shard(tmp, final, task, _JOB["job_hash"], pin=_JOB["pin"], **fields)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def commit_shard(tmp: str, final: str, task: dict, job_hash: str, *, pin: "Pin | None" = None,
                 **fields) -> dict:
  """A fully written and fsync'ed shard `tmp` becomes `final`: the job is pinned (`pin.write()`,
  with the first shard), its sidecar (task, job hash, inputs, sha256, size, `fields`) is written,
  then the shard is renamed into place, so a shard without a matching sidecar is never taken as
  done."""
  if pin is not None:
    pin.write()
  side = {"name": task["name"], "split": task["split"], "index": task["index"],
          "count": task["count"], "job": job_hash, "inputs": task["inputs"], **fields,
          "sha256": _sha256(tmp), "bytes": os.path.getsize(tmp)}
  _atomic_json(final + ".json", side)
  os.replace(tmp, final)
  return side


def _worker_init(job, queue):
  global _JOB, _QUEUE, _STAGE
  _JOB, _QUEUE, _STAGE = job, queue, None     # the stage is built from this job's recipe


def _shard_done(out: str, task: dict, job_hash: str) -> dict | None:
  """The sidecar of a finished shard made by this job from the same inputs, else None."""
  name = task["name"]
  path, side = os.path.join(out, name), os.path.join(out, name + ".json")
  if not (os.path.exists(path) and os.path.exists(side)):
    return None
  try:
    with open(side) as f:
      s = json.load(f)
  except (OSError, ValueError):
    return None
  if s.get("job") != job_hash or s.get("inputs") != task["inputs"]:
    return None
  if s.get("sha256") != _sha256(path):
    return None
  return s


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


def _auto_shards(n_items: int) -> int:
  return max(1, min(256, math.ceil(n_items / 64)))


def _abs_if_path(v):
  if isinstance(v, str) and v not in ("", "-") and os.path.exists(v):
    return os.path.abspath(v)
  if isinstance(v, list):
    return [_abs_if_path(x) for x in v]
  return v


def _job_signature(args: argparse.Namespace, source_name: str, recipe: dict) -> dict:
  """What pins a job's output: the source, its arguments (paths made absolute) and the recipe.
  Workers, strictness, verbosity and the output path do not change the bytes written."""
  skip = {"workers", "overwrite", "progress", "out", "func", "quiet", "strict", "source"}
  a = {k: _abs_if_path(v) for k, v in sorted(vars(args).items()) if k not in skip and not callable(v)}
  return {"source": source_name, "args": a, "recipe": recipe, "prep_version": PREP_VERSION}


@contextlib.contextmanager
def _locked(out: str):
  f = open(os.path.join(out, LOCK_FILE), "w")
  try:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise PrepFailed(f"data_prep: another job is writing to {out} (lock {LOCK_FILE}); wait for it "
                       f"or use another --out") from None
    yield
  finally:
    f.close()


@contextlib.contextmanager
def output_dir(out: str):
  """`out` created if needed and locked for one job; if this run created it and fails leaving
  nothing but the lock file, the directory is removed again (a failed run leaves no trace)."""
  created = not os.path.isdir(out)
  os.makedirs(out, exist_ok=True)
  try:
    with _locked(out):
      yield
  except BaseException:
    if created:
      with contextlib.suppress(OSError):
        if os.listdir(out) == [LOCK_FILE]:
          os.remove(os.path.join(out, LOCK_FILE))
        os.rmdir(out)
    raise


def run(source_name: str, args: argparse.Namespace) -> dict:
  """Runs (or resumes) a preprocessing job; returns the manifest."""
  from data_prep import sources
  if source_name not in sources.SOURCES:
    raise PrepFailed(f"data_prep: unknown source {source_name!r}; known: {sorted(sources.SOURCES)}")
  for name, lo in (("shards", 0), ("workers", 1), ("segment_frames", 0), ("size", 1)):
    value = getattr(args, name, None)         # (the CLI's parser already refuses these)
    if value is not None and value < lo:
      raise PrepFailed(f"data_prep: --{name.replace('_', '-')} must be >= {lo}, got {value}")
  out = os.path.abspath(args.out)
  with output_dir(out):
    return _run_locked(source_name, args, out)


def _settings_diff(old: dict, new: dict) -> list[str]:
  """Which settings of two job files differ: keys of `args` and `recipe`, then other sections."""
  diff = []
  for section in ("args", "recipe"):
    a, b = old.get(section, {}), new.get(section, {})
    if isinstance(a, dict) and isinstance(b, dict):
      diff += sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    elif a != b:
      diff.append(section)
  diff += sorted(k for k in set(old) | set(new)
                 if k not in ("args", "recipe") and old.get(k) != new.get(k))
  return diff


@dataclasses.dataclass
class Pin:
  """A job's settings and what it replaces in its output directory, applied only when the job
  writes: `prepare()` just before its first shard (or, under --strict, once all are staged),
  `write()` (the job file) with the first committed shard. Until then `--out` is untouched."""
  out: str
  job: dict
  job_file: str
  overwrite: bool
  extra_outputs: tuple[str, ...]
  leftovers: tuple[str, ...]        # temp files of a killed run (present when the job started)
  written: bool = False

  def stale(self, keep: set[str]) -> list[str]:
    """Shard files and sidecars the job will delete: all of them with overwrite, else those of
    another layout (not in `keep`)."""
    return sorted(n for n in os.listdir(self.out) if ".tfrecord-" in n and ".tmp-" not in n
                  and (self.overwrite or n.removesuffix(".json") not in keep))

  def prepare(self, keep: set[str]) -> None:
    """Deletes what the job replaces: stale shards (`stale(keep)`), the manifest and
    `extra_outputs` (they describe the old content; rewritten at the end), the job file with
    overwrite, and the leftovers."""
    names = set(self.stale(keep)) | set(self.leftovers) | {schema.MANIFEST, *self.extra_outputs}
    if self.overwrite:
      names.add(self.job_file)
    for name in sorted(names):
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(self.out, name))

  def write(self) -> None:
    """Pins the settings (once per process; the same bytes if several workers do)."""
    if not self.written:
      _atomic_json(os.path.join(self.out, self.job_file), self.job)
      self.written = True


def pin_job(out: str, job: dict, *, overwrite: bool, prog: str, job_file: str = JOB_FILE,
            extra_outputs: tuple[str, ...] = ()) -> Pin:
  """Checks a job's settings against its output directory (`job_file`), under the directory lock,
  and returns the `Pin` that writes them with the job's first shard.

  Without `overwrite`, a directory pinned to other settings is refused (naming what differs), so
  one directory never mixes two recipes. Nothing is written or deleted here: a job that fails
  before its first shard (bad input, a --strict stop) leaves the directory as it was."""
  job_path = os.path.join(out, job_file)
  if not overwrite and os.path.exists(job_path):
    with open(job_path) as f:
      old = json.load(f)
    if old != job:
      raise PrepFailed(f"{prog}: {out} holds a job with other settings (differs in "
                       f"{_settings_diff(old, job)}); use another --out or --overwrite")
  leftovers = tuple(sorted(n for n in os.listdir(out) if ".tmp-" in n))
  return Pin(out, job, job_file, overwrite, tuple(extra_outputs), leftovers)


def _run_locked(source_name: str, args: argparse.Namespace, out: str) -> dict:
  from data_prep import sources
  global _ITEMS, _JOB, _STAGE
  recipe_args = dict(detector=args.detector or "auto", size=args.size, margin=args.margin,
                     jpeg_quality=args.jpeg_quality)
  recipe_args = {k: v for k, v in recipe_args.items() if v is not None}
  try:
    recipe = Stages(recipe_args).job_recipe()
  except (ValueError, FileNotFoundError, ImportError) as e:
    raise PrepFailed(f"data_prep: {e}") from e
  job = json.loads(json.dumps(_job_signature(args, source_name, recipe)))
  job_hash = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:24]
  pin = pin_job(out, job, overwrite=getattr(args, "overwrite", False), prog="data_prep",
                extra_outputs=(SKIP_LOG,))

  log = (lambda *a: None) if getattr(args, "quiet", False) else (
      lambda *a: print(*a, file=sys.stderr, flush=True))
  t0 = time.time()
  items, skipped = [], []
  try:
    for x in sources.SOURCES[source_name].items(args.src, args):
      if isinstance(x, base.Skip):
        if args.strict:
          raise PrepFailed(f"data_prep: {x.error} (--strict)")
        skipped.append(x.error.to_json())
        log(f"[data_prep] skip: {x.error}")
      else:
        items.append(x)
  except OSError as e:              # a path given on the command line that cannot be read
    raise base.PrepError(str(e.filename or args.src), f"cannot read: {e.strerror or e}") from e
  keys = collections.Counter(it.key for it in items)
  dup = [k for k, c in keys.items() if c > 1]
  if dup:
    raise PrepFailed(f"data_prep: {len(dup)} items listed twice, e.g. {dup[:3]}")
  if not items:
    raise PrepFailed(f"data_prep: source {source_name!r} found no usable item under {args.src}"
                     + (f" ({len(skipped)} skipped, first: {skipped[0]})" if skipped else ""))
  by_split: dict[str, list[int]] = collections.defaultdict(list)
  for i, it in enumerate(items):
    by_split[it.split].append(i)
  template_split = args.template_split or ("train" if "train" in by_split else sorted(by_split)[0])
  if template_split not in by_split:
    raise PrepFailed(f"data_prep: --template-split {template_split!r} is not a split of this job "
                     f"({sorted(by_split)})")
  tasks = []
  for split in sorted(by_split):
    idxs = by_split[split]
    n = min(args.shards or _auto_shards(len(idxs)), len(idxs))
    dataset = items[idxs[0]].dataset
    for j in range(n):
      mine = idxs[j::n]
      tasks.append({"name": schema.shard_name(dataset, split, j, n), "split": split, "index": j,
                    "count": n, "items": mine, "template": split == template_split,
                    "inputs": [[items[i].key, fingerprint(items[i])] for i in mine]})
  done = {t["name"]: None if pin.overwrite else _shard_done(out, t, job_hash) for t in tasks}
  names = {t["name"] for t in tasks}
  todo = [t for t in tasks if done[t["name"]] is None]
  strict = bool(args.strict)
  # Shards of an earlier layout (other counts) would mislead globs: deleted, with the old manifest,
  # when the job writes (under --strict: once every shard is staged).
  if (todo or pin.stale(names)) and not strict:
    pin.prepare(names)
  n_todo_items = sum(len(t["items"]) for t in todo)
  log(f"[data_prep] {source_name}: {len(items)} items in {len(by_split)} split(s), {len(tasks)} "
      f"shards ({len(tasks) - len(todo)} already done), {len(skipped)} skipped while listing")

  _ITEMS, _STAGE = items, None
  _JOB = {"out": out, "recipe": recipe, "recipe_args": recipe_args, "strict": strict,
          "job_hash": job_hash, "segment_frames": int(getattr(args, "segment_frames", 0) or 0),
          "pin": pin}
  staged: dict[str, dict] = {}      # --strict: shards written to temp files, not yet committed
  workers = max(1, min(int(args.workers or 1), len(todo) or 1))
  frames_done = [0]
  if todo:
    from tqdm import tqdm
    bar = tqdm(total=n_todo_items, unit="video", desc=f"prep {source_name}", file=sys.stderr,
               disable=getattr(args, "quiet", False), dynamic_ncols=True)

    def on_msg(msg):
      kind, val = msg
      if kind == "item":
        frames_done[0] += val
        bar.update(1)
        bar.set_postfix(frames=frames_done[0],
                        fps=f"{frames_done[0] / max(time.time() - t0, 1e-9):.1f}", refresh=False)
      else:
        bar.write(f"[data_prep] skip: {val}")

    def finished(res: dict) -> None:
      if "staged" in res:
        staged[res["name"]] = res
      else:
        done[res["name"]] = res

    futs: list = []
    try:
      if workers == 1:
        q = _LocalQueue(on_msg)
        _worker_init(_JOB, q)
        for t in todo:
          finished(_write_shard(t))
      else:
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        stop = threading.Event()

        def pump():
          while not stop.is_set() or not q.empty():
            try:
              on_msg(q.get(timeout=0.1))
            except Exception:
              pass
        th = threading.Thread(target=pump, daemon=True)
        th.start()
        try:
          # ProcessPoolExecutor (not Pool): a worker killed by the OS raises BrokenProcessPool
          # instead of hanging the job.
          with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx,
                                                      initializer=_worker_init,
                                                      initargs=(_JOB, q)) as ex:
            futs = [ex.submit(_write_shard, t) for t in todo]
            try:
              for fu in concurrent.futures.as_completed(futs):
                finished(fu.result())
            except BaseException:
              for fu in futs:
                fu.cancel()
              raise
        except concurrent.futures.process.BrokenProcessPool as e:
          raise PrepFailed(f"data_prep: a worker process died ({e}); finished shards are kept, "
                           f"rerun the same command to complete the job") from e
        finally:
          stop.set()
          th.join(timeout=5)
    except BaseException as e:
      if strict:                    # nothing is committed: staged shards go, also those of
        for fu in futs:             # workers that finished after the failure
          if fu.done() and not fu.cancelled() and fu.exception() is None:
            finished(fu.result())
        for res in staged.values():
          with contextlib.suppress(FileNotFoundError):
            os.remove(res["staged"])
      if isinstance(e, base.PrepError):
        raise PrepFailed(f"data_prep: {e} (--strict)") from e
      raise
    finally:
      bar.close()
  if strict and (staged or pin.stale(names)):
    pin.prepare(names)              # every shard succeeded: now the job replaces the old content
    for t in todo:
      res = staged[t["name"]]
      done[t["name"]] = commit_shard(res["staged"], res["final"], t, job_hash, pin=pin,
                                     **res["fields"])
  pin.write()
  manifest = _manifest(source_name, job, tasks, done, skipped, template_split)
  with open(os.path.join(out, SKIP_LOG + f".tmp-{os.getpid()}"), "w") as f:
    for s in manifest["skipped"] + manifest["frame_issues"]:
      f.write(json.dumps(s, sort_keys=True) + "\n")
  os.replace(os.path.join(out, SKIP_LOG + f".tmp-{os.getpid()}"), os.path.join(out, SKIP_LOG))
  _atomic_json(os.path.join(out, schema.MANIFEST), manifest)
  dt = time.time() - t0
  nf = manifest["totals"]["frames"]
  n_rec = len(manifest["records"])            # one per video, or per segment (--segment-frames)
  n_vid = len({(r["split"], r["id"]) for r in manifest["records"]})
  log(f"[data_prep] wrote {n_vid} videos{f' as {n_rec} records' if n_rec != n_vid else ''} / "
      f"{nf} frames in {len(tasks)} shards to {out}; {len(manifest['skipped'])} skipped, "
      f"{len(manifest['frame_issues'])} frame issues; {dt:.1f} s this run "
      f"({frames_done[0] / max(dt, 1e-9):.1f} frames/s)")
  return manifest


class _LocalQueue:
  def __init__(self, fn):
    self.fn = fn

  def put(self, msg):
    self.fn(msg)


def _manifest(source_name, job, tasks, done, listing_skipped, template_split) -> dict:
  from data_prep import faces
  splits: dict[str, Any] = {}
  records, skipped, issues = [], list(listing_skipped), []
  acc = None
  for t in tasks:
    side = done[t["name"]]
    sp = splits.setdefault(t["split"], {"shards": [], "videos": 0, "frames": 0,
                                        "status": [0, 0, 0, 0], "face_found": 0,
                                        "label_hist": {}, "fold_counts": {}, "expr_hist": [],
                                        "au_pos": None, "au_valid": None, "va_frames": 0})
    sp["shards"].append({"file": t["name"], "sha256": side["sha256"], "bytes": side["bytes"],
                         "records": len(side["records"])})
    for r in side["records"]:
      records.append(r)
      sp["videos"] += 1
      sp["frames"] += r["num_frames"]
      sp["status"] = [a + b for a, b in zip(sp["status"], r["status"])]
      sp["face_found"] += r["face_found"]
      sp["label_hist"][str(r["label"])] = sp["label_hist"].get(str(r["label"]), 0) + 1
      for fold in r["folds"]:
        fc = sp["fold_counts"].setdefault(fold, {"videos": 0, "label_hist": {}})
        fc["videos"] += 1
        fc["label_hist"][str(r["label"])] = fc["label_hist"].get(str(r["label"]), 0) + 1
      if "expr_hist" in r:
        h = r["expr_hist"]
        e = sp["expr_hist"] + [0] * max(0, len(h) - len(sp["expr_hist"]))
        sp["expr_hist"] = [a + (h[i] if i < len(h) else 0) for i, a in enumerate(e)]
      for k in ("au_pos", "au_valid"):
        if k in r:
          sp[k] = r[k] if sp[k] is None else [a + b for a, b in zip(sp[k], r[k])]
      sp["va_frames"] += r.get("va_frames", 0)
    skipped.extend(side["skipped"])
    issues.extend(side["frame_issues"])
    if side.get("template") is not None:
      part = faces.TemplateAccumulator.from_json(side["template"])
      acc = part if acc is None else acc.merge(part)
  for sp in splits.values():
    sp["label_hist"] = dict(sorted(sp["label_hist"].items(), key=lambda kv: int(kv[0])))
  template = None
  if acc is not None and acc.count > 0:
    mean, key7 = acc.result()
    template = {"split": template_split, "frames": acc.count,
                "landmarks": np.round(mean, 4).tolist()}
    if acc.num_points == 68:
      template["keypoints7"] = np.round(key7, 4).tolist()
  import jaxaffect
  return {"schema_version": schema.SCHEMA_VERSION, "prep_version": PREP_VERSION,
          "source": source_name, "job": job, "recipe": job["recipe"], "splits": splits,
          "totals": {"videos": len(records), "frames": sum(r["num_frames"] for r in records),
                     "shards": len(tasks), "skipped": len(skipped), "frame_issues": len(issues)},
          "records": records, "skipped": skipped, "frame_issues": issues, "template": template,
          "versions": {"jaxaffect": getattr(jaxaffect, "__version__", "?"),
                       "python": sys.version.split()[0]}}
