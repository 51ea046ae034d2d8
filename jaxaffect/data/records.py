"""The records of data_prep shards as the pipeline reads them: selection by split or fold
(`select_records`), random access through the manifest (`ShardRecords`, the `index` reader),
sequential CRC-checked reading of shard files (`ShardFileRecords`, `shard_files`, the `stream`
reader), and a record as the clip samplers take it (`record_to_example`)."""
from __future__ import annotations

import os
import threading
from typing import Any

import grain
import numpy as np

from jaxaffect.data import schema, vocab
from jaxaffect.errors import MissingFile, UserError


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
        except vocab.UnknownVocab:
          raise
        except ValueError as e:
          raise UserError(f"{self.dir}: data.label_vocab={self.label_vocab!r} cannot hold the "
                          f"clip labels of select={self.select!r} (field 'video/label', vocabulary "
                          f"{rec.vocab!r}): {e}") from None
      present = np.asarray(sorted({c for x in mine for c, n in enumerate(x.get("expr_hist") or [])
                                   if n}), np.int64)
      if expr_vocab and rec.expr_vocab and len(present):
        try:
          vocab.convert(present, rec.expr_vocab, expr_vocab)
        except vocab.UnknownVocab:
          raise
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
