"""The labels side of feature streams (`jaxaffect.data.features`): per video, the frame axis, the
per-frame labels and the clip label, from an Aff-Wild2 annotation folder (`affwild2_timelines`)
or from data_prep shards (`_ShardDir`, `shard_timeline`)."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from jaxaffect.data import affwild2, clips, records, schema
from jaxaffect.data import vocab as vocab_lib
from jaxaffect.errors import UserError


LABEL_KEYS = ("va", "va_mask", "expr", "expr_mask", "au", "au_mask")
DEFAULT_NUM_AU = 12



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
  sentinels, as `data_prep.sources.affwild2`), t_sec = (i - 1) / fps (`data.source.fps`, `data.source.fps_csv`;
  unknown: NaN)."""
  folders = affwild2.annotation_folders(root, option="data.source.labels")
  if not folders:
    raise UserError(f"data.source.labels={root}: neither a shard directory (manifest.json) nor an "
                    f"Aff-Wild2 annotation folder (VA_Set, EXPR_*, AU_* ...)")
  if select not in ("train", "val", "all"):
    raise UserError(f"data.source.labels={root} (Aff-Wild2 annotations): select={select!r}, expected "
                    f"'train', 'val' or 'all'")
  expr_vocab = cfg.get("expr_vocab", "") or ""
  num_au = int(cfg.get("num_au", DEFAULT_NUM_AU))
  fps = _Fps(cfg)
  files = affwild2.annotation_files(folders, None if select == "all" else (select,))
  if not files:
    raise UserError(f"data.source.labels={root}: no annotation file for select={select!r}")
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
                        f"({','.join(parsed['au'].names)}), config data.source.num_au={num_au}")
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
    self.path = path
    self.manifest = schema.read_manifest(path)
    if self.manifest.get("schema_version") != schema.SCHEMA_VERSION:
      raise UserError(f"{path}/manifest.json: schema_version {self.manifest.get('schema_version')}"
                      f", this reader reads {schema.SCHEMA_VERSION}")
    self._select = records.select_records
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
  recs = sd.read(key)
  num_au = int(cfg.get("num_au", DEFAULT_NUM_AU))
  parts = []
  for rec in recs:
    t = rec.num_frames
    lab = _empty_labels(t, num_au)
    got = clips.frame_labels(rec, np.arange(t), expr_vocab=cfg.get("expr_vocab", "") or "")
    got.pop("face", None)
    if "au" in got and got["au"].shape[1] != num_au:
      raise UserError(f"{sd.path}: record {rec.video_id}: field 'frame/au' has "
                      f"{got['au'].shape[1]} units, config data.source.num_au={num_au}")
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
