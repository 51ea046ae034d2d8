"""grain input pipelines: per-host split, shuffle, clip sampling, augmentation, batching.

Sources (one record = one video):
  - `shards`: TFRecord shards written by `python -m data_prep` (schema: `jaxaffect.data.schema`),
    selected by split or fold membership ("train", "1:test", ...). Two readers:
      * `index` (default): random access through the manifest's byte offsets; a global shuffle,
        reshuffled every epoch, then a per-host split of each global batch (any host count sees
        the same global batches);
      * `stream`: pod-scale reading: shard files are shuffled per epoch and split per host by
        process index, each host interleaves its files (`cycle_length` open at once) and shuffles
        records in a window (`shuffle_window`); no random access needed (gcsfuse, slow disks).
  - `synthetic`: procedural face videos from `jaxaffect.data.synthetic`, generated in memory;
  - `list_file`: Former-DFER's annotation lists (`<frame dir> <num_frames> <label>` per line) over
    folders of JPEG frames (DFEW/AFEW/FERV39K as the official code reads them).
Only the sampled frames of a record are decoded.

The training iterator is a grain `DatasetIterator`: its state goes into the Orbax checkpoint and a
restored run continues with the identical next batch.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import threading
from typing import Any, Iterator

import grain
import jax
import ml_collections
import numpy as np

from jaxaffect.data import samplers, schema, vocab
from jaxaffect.errors import MissingFile, UserError


# ----------------------------------------------------------------------------------------- sources
class InMemoryVideos(grain.sources.RandomAccessDataSource):
  """Videos held as arrays: `frames (N,T,H,W,3) uint8`, `label (N,)`."""

  def __init__(self, frames: np.ndarray, labels: np.ndarray, name: str = "memory"):
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
      raise UserError(f"{name}: frames must be uint8 (N,T,H,W,3), got {frames.dtype}{frames.shape}")
    if len(frames) != len(labels):
      raise UserError(f"{name}: {len(frames)} videos but {len(labels)} labels")
    self.frames, self.labels, self.name = frames, np.asarray(labels, np.int32), name

  def __len__(self) -> int:
    return len(self.frames)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {"frames": self.frames[i], "label": self.labels[i], "index": np.int32(i)}

  def __repr__(self) -> str:
    return f"InMemoryVideos({self.name}, n={len(self)})"


_TRAILING_INT = re.compile(r"(\d+)(?=\D*$)")


def _frame_sort_key(path: str):
  m = _TRAILING_INT.search(os.path.basename(path))
  return (int(m.group(1)) if m else -1, os.path.basename(path))


class ListFileVideos(grain.sources.RandomAccessDataSource):
  """Former-DFER list files: one `<frame dir> <num_frames> <label>` line per video.

  Frames are the `*.jpg`/`*.png` files of the directory, sorted by their trailing integer (DFEW's
  `1.jpg … 105.jpg` would sort wrongly as strings). `root` replaces the absolute prefix of the
  paths in the list (the official `annotation/script.py` rewrites it by hand): a listed
  `/their/disk/AFEW_Face/train/Happiness/011603980` is looked up as the longest tail of it that
  exists under `root` (`root/train/Happiness/011603980` for root = your `AFEW_Face`, or
  `root/011603980` for a flat folder), so nested split folders are kept. A listed video found
  under no tail is an error naming the list line.
  """

  def __init__(self, list_path: str, *, root: str | None = None, image_size: int = 112,
               num_classes: int = 7):
    self.list_path, self.image_size = list_path, image_size
    self.items: list[tuple[str, int]] = []
    with open(list_path) as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        parts = line.split()
        if len(parts) != 3:
          raise UserError(f"{list_path}:{lineno}: expected '<frame dir> <num_frames> <label>', "
                          f"got {len(parts)} fields: {line.strip()!r}")
        path, _, label = parts
        try:
          label = int(label)
        except ValueError:
          raise UserError(f"{list_path}:{lineno}: field 'label' is not an integer: {label!r}")
        if not 0 <= label < num_classes:
          raise UserError(f"{list_path}:{lineno}: field 'label'={label} outside [0, {num_classes})")
        if root:
          path = self.under_root(root, path, f"{list_path}:{lineno}")
        self.items.append((path, label))
    if not self.items:
      raise UserError(f"{list_path}: no videos listed")

  @staticmethod
  def under_root(root: str, listed: str, where: str) -> str:
    """The longest tail of the listed path that is a directory under `root`."""
    parts = [p for p in listed.replace("\\", "/").split("/") if p]
    for k in range(len(parts)):
      cand = os.path.join(root, *parts[k:])
      if os.path.isdir(cand):
        return cand
    raise UserError(f"{where}: field 'frame dir' {listed!r}: no tail of it is a folder under "
                    f"data.root={root!r} (tried {os.path.join(root, *parts[-2:])!r}, ...)")

  def __len__(self) -> int:
    return len(self.items)

  def frame_paths(self, i: int) -> list[str]:
    d = self.items[i][0]
    files = [p for p in glob.glob(os.path.join(d, "*")) if p.lower().endswith((".jpg", ".jpeg", ".png"))]
    if not files:
      raise MissingFile(f"{self.list_path}: video {i} ({d}): no frames (*.jpg/*.png) found")
    return sorted(files, key=_frame_sort_key)

  def __getitem__(self, i: int) -> dict[str, Any]:
    # Frames are decoded lazily by the sampler (only the sampled ones), see `VideoClip`.
    return {"frame_paths": self.frame_paths(i), "label": np.int32(self.items[i][1]),
            "index": np.int32(i)}


def parse_select(select: str) -> tuple[str, str]:
  """"train" -> ("split", "train"); "1:test" / "fold1:test" -> ("fold", "1:test")."""
  if ":" in select:
    fold, role = select.split(":", 1)
    return "fold", f"{fold.removeprefix('fold')}:{role}"
  return "split", select


def select_records(manifest: dict, select: str) -> list[dict]:
  kind, value = parse_select(select)
  if kind == "split":
    recs = [r for r in manifest["records"] if r["split"] == value]
  else:
    recs = [r for r in manifest["records"] if value in r["folds"]]
  if not recs:
    splits = sorted(manifest["splits"])
    folds = sorted({f for r in manifest["records"] for f in r["folds"]})
    raise UserError(f"no record matches select={select!r}: splits {splits}, folds {folds}")
  return recs


class ShardRecords(grain.sources.RandomAccessDataSource):
  """Random access to the records of data_prep shards (byte offsets from `manifest.json`)."""

  def __init__(self, shard_dir: str, select: str, *, label_vocab: str = "",
               check_files: bool = True):
    self.dir, self.select, self.label_vocab = shard_dir, select, label_vocab
    self.manifest = schema.read_manifest(shard_dir)
    if self.manifest.get("schema_version") != schema.SCHEMA_VERSION:
      raise UserError(f"{shard_dir}/manifest.json: schema_version "
                      f"{self.manifest.get('schema_version')}, this reader reads {schema.SCHEMA_VERSION}")
    self.records = select_records(self.manifest, select)
    if check_files:
      sizes = {sh["file"]: sh["bytes"] for sp in self.manifest["splits"].values() for sh in sp["shards"]}
      for f in sorted({r["file"] for r in self.records}):
        path = os.path.join(shard_dir, f)
        if not os.path.exists(path):
          raise MissingFile(f"{path}: shard listed in manifest.json is missing")
        if os.path.getsize(path) != sizes[f]:
          raise UserError(f"{path}: {os.path.getsize(path)} bytes, manifest.json says {sizes[f]} "
                          f"(shard changed after the manifest was written)")
    self._files: dict[str, Any] = {}
    self._pid = os.getpid()
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.records)

  def check_label_maps(self, expr_vocab: str = "") -> None:
    """At start-up, not when a record is read: every clip label of the selection (manifest
    `label`) maps into `label_vocab`, and every per-frame expression class present (manifest
    `expr_hist`) maps into `expr_vocab`. The source vocabularies come from the first record of
    each shard file (a dataset has one)."""
    if not self.label_vocab and not expr_vocab:
      return
    first: dict[str, dict] = {}
    for r in self.records:
      first.setdefault(r["file"], r)
    for name, r in first.items():
      where = f"{os.path.join(self.dir, name)} record at byte {r['offset']} ({r['id']})"
      rec = schema.decode(schema.read_record_at(self._open(name), r["offset"], where), where)
      mine = [x for x in self.records if x["file"] == name]
      labels = np.asarray(sorted({int(x["label"]) for x in mine if int(x["label"]) >= 0}), np.int64)
      if self.label_vocab and len(labels):
        if not rec.vocab:
          raise UserError(f"{where}: field 'video/vocab' is empty but data.label_vocab="
                          f"{self.label_vocab!r}: the label's class order is unknown (prep the "
                          f"source with its --vocab)")
        try:
          vocab.convert(labels, rec.vocab, self.label_vocab)
        except ValueError as e:
          raise UserError(f"{self.dir}: data.label_vocab={self.label_vocab!r} cannot hold the "
                          f"clip labels of select={self.select!r} (field 'video/label', vocabulary "
                          f"{rec.vocab!r}): {e}") from None
      present = np.asarray(sorted({c for x in mine for c, n in enumerate(x.get("expr_hist") or [])
                                   if n}), np.int64)
      if expr_vocab and rec.expr_vocab and len(present):
        try:
          vocab.convert(present, rec.expr_vocab, expr_vocab)
        except ValueError as e:
          raise UserError(f"{self.dir}: data.expr_vocab={expr_vocab!r} cannot hold the per-frame "
                          f"expressions of select={self.select!r} (field 'frame/expr', "
                          f"vocabulary {rec.expr_vocab!r}): {e}") from None

  def _open(self, name: str):
    with self._lock:                        # grain reads from several threads
      if self._pid != os.getpid():          # forked worker: its own descriptors
        self._files, self._pid = {}, os.getpid()
      fd = self._files.get(name)
      if fd is None:                        # one descriptor per file; reads use pread (thread-safe)
        fd = self._files[name] = os.open(os.path.join(self.dir, name), os.O_RDONLY)
      return fd

  def __getitem__(self, i: int) -> dict[str, Any]:
    r = self.records[i]
    where = f"{os.path.join(self.dir, r['file'])} record at byte {r['offset']} ({r['id']})"
    data = schema.read_record_at(self._open(r["file"]), r["offset"], where)
    return record_to_example(schema.decode(data, where), i, self.label_vocab, where)

  def __getstate__(self):
    d = dict(self.__dict__)
    d["_files"] = {}
    d.pop("_lock", None)
    return d

  def __setstate__(self, d):
    self.__dict__.update(d)
    self._lock = threading.Lock()

  def __repr__(self) -> str:
    return f"ShardRecords({self.dir}, select={self.select!r}, n={len(self)})"


def record_to_example(rec: schema.VideoRecord, index: int, label_vocab: str = "",
                      where: str = "record") -> dict[str, Any]:
  """What the clip samplers read: the record, its clip label in `label_vocab`, its position.

  A labelled record must name its vocabulary when the config names one (no silent relabelling);
  a record without clip label (-1) is kept with `labelled=0`; the samplers turn it into the
  batch's `label_mask`, which masks it out of clip losses and metrics (and of nothing else: its
  per-frame labels still count)."""
  label = rec.label
  if label_vocab and label >= 0:
    if not rec.vocab:
      raise UserError(f"{where}: field 'video/vocab' is empty but data.label_vocab="
                      f"{label_vocab!r}: the label's class order is unknown (prep the source "
                      f"with its --vocab)")
    if rec.vocab != label_vocab:
      try:
        label = int(vocab.convert(np.asarray([label]), rec.vocab, label_vocab)[0])
      except ValueError as e:
        raise UserError(f"{where}: field 'video/label': {e}") from e
  return {"record": rec, "label": np.int32(label), "index": np.int32(index),
          "labelled": np.float32(label >= 0)}


def parse_stream_record(item: tuple[str, int, bytes], label_vocab: str = "") -> dict[str, Any]:
  path, offset, data = item
  where = f"{path} record at byte {offset}"
  rec = schema.decode(data, where)
  return record_to_example(rec, -1, label_vocab, f"{where} ({rec.video_id})")


class _ShardFileIterator(grain.DatasetIterator):
  """Sequential records of one shard file with CRC checks; state = the byte offset."""

  def __init__(self, path: str):
    super().__init__()
    self.path, self.offset, self.size = path, 0, os.path.getsize(path)
    self.fd = os.open(path, os.O_RDONLY)

  def __next__(self):
    if self.offset >= self.size:
      raise StopIteration
    off = self.offset
    data = schema.read_record_at(self.fd, off, self.path)
    self.offset = off + 16 + len(data)
    return self.path, off, data

  def get_state(self):
    return {"offset": self.offset}

  def set_state(self, state):
    self.offset = int(state["offset"])

  def __del__(self):
    try:
      os.close(self.fd)
    except (OSError, AttributeError):
      pass


class ShardFileRecords(grain.IterDataset):
  """`(path, offset, payload)` of every record of a shard file, CRC-checked (grain's own TFRecord
  reader checks no CRC and does not name the file in its errors)."""

  def __init__(self, path: str):
    super().__init__()
    self.path = path

  def __iter__(self):
    return _ShardFileIterator(self.path)


def shard_files(shard_dir: str, select: str) -> list[str]:
  """The shard files that hold records matching `select`, sorted."""
  recs = select_records(schema.read_manifest(shard_dir), select)
  return [os.path.join(shard_dir, f) for f in sorted({r["file"] for r in recs})]


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
    raise UserError(f"data.sampler={self.kind!r}: expected former_dfer, est, window, sequence "
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
      raise UserError(f"data.sampler={self.kind!r} reads data_prep shards (data.source='shards')")
    aug = self.train and rng is not None
    video, _ = augment.augment_clip(
        video, rng if aug else np.random.default_rng(0), size=self.image_size,
        crop=self.crop if aug else None, flip_prob=self.flip_prob if aug else 0.0,
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


def make_clip(cfg: ml_collections.ConfigDict, train: bool):
  """The sampler + augmentation of `config.data` (train or eval)."""
  if cfg.get("source", "") == "features":       # per-frame feature windows (data/features.py)
    from jaxaffect.data import features
    return features.make_clip(cfg, train)
  kind = cfg.get("sampler", "former_dfer")
  if kind == "former_dfer":
    if train:
      return VideoClip(cfg.num_segments, cfg.duration, cfg.image_size, train=True, hflip=cfg.hflip,
                       random_resized_crop=cfg.get("random_resized_crop", False))
    return VideoClip(cfg.num_segments, cfg.duration, cfg.image_size, train=False)
  return FrameSampler(kind, cfg.image_size, train, window=cfg.get("window", 300),
                      stride=cfg.get("stride", 200), crop=cfg.get("crop", None) or None,
                      flip_prob=0.5 if cfg.get("hflip", True) else 0.0,
                      color_jitter=cfg.get("color_jitter", 0.0),
                      expr_vocab=cfg.get("expr_vocab", ""))


# ---------------------------------------------------------------------------------------- builders
def build_sources(cfg: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """(train source, eval source) from `config.data`."""
  if cfg.source == "features":                  # per-frame feature windows (data/features.py)
    from jaxaffect.data import features
    return features.build_sources(cfg)
  if cfg.source == "synthetic":
    from jaxaffect.data import synthetic
    common = dict(num_frames=cfg.video_frames, size=cfg.image_size,
                  pose_amount=cfg.get("synthetic_pose", 1.0),
                  occlusion_prob=cfg.get("synthetic_occlusion", 0.2))
    tr = synthetic.generate_dataset(cfg.num_train, seed=cfg.seed, **common)
    ev = synthetic.generate_dataset(cfg.num_eval, seed=cfg.seed + 1_000_003, **common)

    def labels(y):   # the synthetic videos' classes are in `dfew7`, as in their data_prep shards:
      target = cfg.get("label_vocab", "")        # converted exactly as `ShardRecords` converts them
      if not target or target == synthetic.VOCAB:
        return y
      try:
        return vocab.convert(np.asarray(y), synthetic.VOCAB, target)
      except ValueError as e:
        raise UserError(f"config.data.label_vocab={target!r} with data.source='synthetic' "
                        f"(classes in {synthetic.VOCAB!r}): {e}") from None
    return (InMemoryVideos(tr["frames"], labels(tr["label"]), "synthetic-train"),
            InMemoryVideos(ev["frames"], labels(ev["label"]), "synthetic-eval"))
  if cfg.source == "shards":
    if not cfg.get("shards"):
      raise UserError("config.data.source='shards' needs data.shards (a data_prep output directory)")
    kw = dict(label_vocab=cfg.get("label_vocab", ""))
    out = (ShardRecords(cfg.shards, cfg.get("train_select", "train"), **kw),
           ShardRecords(cfg.shards, cfg.get("eval_select", "test"), **kw))
    for src in out:
      src.check_label_maps(cfg.get("expr_vocab", ""))
    return out
  if cfg.source == "list_file":
    if not cfg.train_list or not cfg.eval_list:
      raise UserError("config.data.source='list_file' needs data.train_list and data.eval_list")
    for field in ("train_list", "eval_list"):
      if not os.path.isfile(cfg[field]):
        raise MissingFile(f"config.data.{field}={cfg[field]!r}: no such file (a Former-DFER "
                          f"annotation list: `<frame dir> <num_frames> <label>` lines)")
    kw = dict(root=cfg.root or None, image_size=cfg.image_size, num_classes=cfg.num_classes)
    return ListFileVideos(cfg.train_list, **kw), ListFileVideos(cfg.eval_list, **kw)
  raise UserError(f"config.data.source={cfg.source!r}: expected 'shards', 'synthetic' or 'list_file'")


def local_batch_size(global_batch: int) -> int:
  pc = jax.process_count()
  if global_batch % pc:
    raise UserError(f"batch_size={global_batch} is not divisible by {pc} processes")
  return global_batch // pc


def train_iterator(source, cfg: ml_collections.ConfigDict, global_batch: int, seed: int):
  """Infinite, reshuffled every epoch, this host's share of each global batch; checkpointable."""
  clip = make_clip(cfg, train=True)
  if cfg.get("reader", "index") == "stream":
    if not isinstance(source, ShardRecords):
      raise UserError("data.reader='stream' reads data_prep shards (data.source='shards')")
    return stream_iterator(source, cfg, clip, global_batch, seed)
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
  # Random transforms are seeded by the position in the global order, before the per-host split,
  # so any number of hosts sees the same clips (and augmentations) in each global batch.
  ds = ds.random_map(lambda r, rng: clip(r, rng))
  ds = ds[jax.process_index()::jax.process_count()]
  ds = ds.batch(local_batch_size(global_batch), drop_remainder=True)
  # Elements are batches here: bound the read-ahead (grain's default is 500 elements).
  opts = grain.ReadOptions(num_threads=cfg.get("read_threads", 4),
                           prefetch_buffer_size=cfg.get("prefetch_batches", 4))
  return iter(ds.to_iter_dataset(opts))


def stream_iterator(source: ShardRecords, cfg: ml_collections.ConfigDict, clip, global_batch: int,
                    seed: int):
  """Pod-scale reader: per-epoch shuffled shard files, split per host by process index, interleaved
  (`data.cycle_length` files open), records window-shuffled (`data.shuffle_window`), filtered to
  `select`, sampled + augmented, batched. Hosts read disjoint files, so (unlike `index`) the global
  batch depends on the host count. Checkpointable like the index reader."""
  files = shard_files(source.dir, source.select)
  pi, pc = jax.process_index(), jax.process_count()
  if len(files) < pc:
    raise UserError(f"{source.dir}: {len(files)} shard files for {source.select!r} but {pc} "
                    f"processes; write more shards (data_prep --shards) or use data.reader='index'")
  kind, value = parse_select(source.select)
  label_vocab = source.label_vocab

  def keep(ex):
    rec = ex["record"]
    return rec.split == value if kind == "split" else value in rec.folds

  ds = grain.MapDataset.source(files).seed(seed).shuffle().repeat(None)[pi::pc]
  ds = ds.map(ShardFileRecords)
  ds = grain.experimental.InterleaveIterDataset(ds, cycle_length=min(cfg.get("cycle_length", 4),
                                                                     len(files)))
  ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=cfg.get("shuffle_window", 64),
                                                   seed=seed + 1)
  ds = ds.map(lambda b: parse_stream_record(b, label_vocab)).filter(keep)
  ds = ds.random_map(lambda r, rng: clip(r, rng), seed=seed + 2 + pi)
  return iter(ds.batch(local_batch_size(global_batch), drop_remainder=True))


def eval_batches(source, cfg: ml_collections.ConfigDict, global_batch: int) -> Iterator[dict]:
  """Every eval video exactly once: this host's videos, the last batch padded with `mask=0`.

  Every host yields the same number of batches (collectives need it).
  """
  clip = make_clip(cfg, train=False)
  pi, pc = jax.process_index(), jax.process_count()
  lb = local_batch_size(global_batch)
  mine = list(range(pi, len(source), pc))
  per_host = -(-len(source) // pc)
  n_batches = -(-per_host // lb)
  ds = grain.MapDataset.source(source)[pi::pc].map(clip)
  template = None
  for b in range(n_batches):
    rows = [ds[i] for i in range(b * lb, min((b + 1) * lb, len(mine)))]
    if rows:
      template = rows[0]
    elif template is None:
      template = clip(source[0])
    while len(rows) < lb:
      pad = dict(template)
      for k in pad:                      # a padding row carries no label of any kind
        if k == "mask" or k.endswith("_mask") or k in ("valid", "face"):
          pad[k] = np.zeros_like(pad[k])
      rows.append(pad)
    yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def spec_sources(cfg: ml_collections.ConfigDict):
  """A one-example stand-in source whose batches have the configured shapes (to build or restore
  a model without reading data): the samplers' outputs do not depend on the video length, so a
  black video long enough for the clip sampler stands in; feature windows come from the
  streams' configured `dim`s."""
  if cfg.get("source", "") == "features":
    from jaxaffect.data import features
    return features.spec_source(cfg)
  t = max(cfg.get("video_frames", 0) or 0, cfg.get("num_segments", 1) * cfg.get("duration", 1),
          cfg.get("window", 1) if cfg.get("sampler", "") in ("window", "sequence") else 1)
  return InMemoryVideos(np.zeros((1, t, cfg.image_size, cfg.image_size, 3), np.uint8),
                        np.zeros((1,), np.int32), "spec")


def batch_spec(source, cfg: ml_collections.ConfigDict, global_batch: int):
  """Global shapes/dtypes of one batch (for `eval_shape` and sharded init)."""
  clip = make_clip(cfg, train=False)
  ex = clip(source[0])
  return {k: jax.ShapeDtypeStruct((global_batch,) + np.shape(v), np.asarray(v).dtype)
          for k, v in ex.items()}
