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
import contextlib
import hashlib
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np

from data_prep.sources import base
from jaxaffect.data import schema
# Re-exported: these were defined here (data_prep.features and tests use them).
from data_prep.shard_pool import (JOB_FILE, LOCK_FILE, Pin, PrepFailed, _atomic_json,  # noqa: F401
                                  _LocalQueue, _locked, _settings_diff, _sha256, _shard_done,
                                  commit_shard, output_dir, pin_job, run_tasks)
from data_prep.shard_records import (PREP_VERSION, Stages, _arr_hash, _check_rows,  # noqa: F401
                                     _nan, _path_stat, _record_stats, fingerprint, process_item,
                                     split_segments)

SKIP_LOG = "skipped.jsonl"

# Fork-inherited state of the workers (the items hold closures that do not pickle).
_ITEMS: list = []
_JOB: dict = {}
_QUEUE = None
_STAGE = None


def _stage() -> Stages:
  global _STAGE
  if _STAGE is None:
    _STAGE = Stages(_JOB["recipe_args"])
  return _STAGE


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


def _worker_init(job, queue):
  global _JOB, _QUEUE, _STAGE
  _JOB, _QUEUE, _STAGE = job, queue, None     # the stage is built from this job's recipe


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
  pinned_before = os.path.exists(os.path.join(out, JOB_FILE)) and not getattr(args, "overwrite",
                                                                              False)
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
    try:
      run_tasks(todo, _write_shard, _worker_init, _JOB, workers=workers, on_msg=on_msg,
                finished=finished, staged=staged, strict=strict)
    finally:
      bar.close()
  if strict and (staged or pin.stale(names)):
    pin.prepare(names)              # every shard succeeded: now the job replaces the old content
    for t in todo:
      res = staged[t["name"]]
      done[t["name"]] = commit_shard(res["staged"], res["final"], t, job_hash, pin=pin,
                                     **res["fields"])
  manifest = _manifest(source_name, job, tasks, done, skipped, template_split)
  if not manifest["records"]:       # every item failed: nothing usable, so nothing is committed
    for t in tasks:                 # (the job is not pinned; a fixed rerun is not refused)
      for name in (t["name"], t["name"] + ".json"):
        with contextlib.suppress(FileNotFoundError):
          os.remove(os.path.join(out, name))
    if not pinned_before:
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out, JOB_FILE))
    why = "; ".join(str(x.get("reason", x)) for x in manifest["skipped"][:3])
    raise PrepFailed(f"data_prep: no usable video: all {len(manifest['skipped'])} items failed "
                     f"(e.g. {why}); nothing written to {out}")
  pin.write()
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
