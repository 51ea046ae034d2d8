"""The record schema of jaxaffect shards: ONE module, imported by the writer (`data_prep`) and the
readers (grain pipeline here, tf.data in the interop test).

A shard is a TFRecord file of `tf.train.Example`s, one per video (one per image for image datasets).
The protobuf classes are built at import time from a descriptor that is wire-identical to
TensorFlow's `example.proto` (package `tensorflow`, in a private descriptor pool), so neither side
needs TensorFlow, and `tf.data.TFRecordDataset` + `tf.io.parse_single_example` read the shards.

Keys (T frames, K landmarks per frame, A action units; every per-frame field has T rows):

  video/id, video/dataset, video/split, video/track,    bytes    identity of the video
  video/source_path
  video/fps                                             float    source frame rate (0: unknown)
  video/num_frames                                      int64    T
  video/label, video/vocab                              int64, bytes  clip label (-1: none) and its vocabulary
  video/folds                                           bytes[]  fold memberships ("1:train", ...)
  video/soft_label                                      float[]  vote distribution (optional)
  video/meta_json                                       bytes    anything else the source knows (JSON)
  video/landmark_scheme, video/num_landmarks            bytes, int64
  recipe/json                                           bytes    the preprocessing recipe (JSON)
  frame/jpeg                                            bytes[T] aligned face crop, RGB JPEG
  frame/index                                           int64[T] the dataset's frame number
  frame/t_sec                                           float[T] presentation time
  frame/status                                          int64[T] 0 ok, 1 no face, 2 missing, 3 unreadable
  frame/face_found                                      int64[T] 1 where a face was found (or given)
  frame/score                                           float[T] detector score (NaN: none)
  frame/box                                             float[T*4] x0,y0,x1,y1 in source pixels (NaN: none)
  frame/matrix                                          float[T*6] affine source -> crop pixels (NaN: none)
  frame/landmarks                                       float[T*K*2] x,y in crop pixels (NaN: none)
  labels/tasks                                          bytes[]  which of va, expr, au are present
  frame/va, frame/va_mask                               float[T*2], int64[T]   (-5 where not annotated)
  frame/expr, frame/expr_mask, video/expr_vocab         int64[T], int64[T], bytes (-1 where invalid)
  frame/au, frame/au_mask, video/au_names               int64[T*A], int64[T*A], bytes[A] (-1 invalid)
  series/names                                          bytes[]  continuous labels on their own time base
  series/<name>/times, series/<name>/values             float[N], float[N*D]
  series/<name>/columns, series/<name>/rate_hz          bytes[D], float
  features/names                                        bytes[]  per-frame embedding streams (optional)
  features/<name>/values, features/<name>/dim           float[T*D], int64  one row per frame

Feature records (`python -m data_prep features`, read by `jaxaffect.data.features`) are records of
the face shards they were computed from, with every field copied except `frame/jpeg`, which holds
T empty strings (no images), and with `features/*` added. Records without `features/names` (all
face shards) read back with no features.

Shard files are named `<dataset>-<split>.tfrecord-<i:05d>-of-<n:05d>`; `manifest.json` next to them
holds counts, label histograms, checksums, the recipe and a per-record index (byte offsets) that gives
the readers random access.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import struct
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from jaxaffect.errors import MissingFile, UserError

SCHEMA_VERSION = 1
VA_MISSING = -5.0
STATUS_OK, STATUS_NO_FACE, STATUS_MISSING, STATUS_UNREADABLE = 0, 1, 2, 3
STATUS_NAMES = ("ok", "no_face", "missing", "unreadable")
TASKS = ("va", "expr", "au")
SHARD_RE = re.compile(r"^(?P<dataset>.+)-(?P<split>[^-]+)\.tfrecord-(?P<index>\d{5})-of-(?P<count>\d{5})$")
MANIFEST = "manifest.json"


def shard_name(dataset: str, split: str, index: int, count: int) -> str:
  if "-" in split:
    raise UserError(f"split name {split!r} must not contain '-'")
  return f"{dataset}-{split}.tfrecord-{index:05d}-of-{count:05d}"


# ------------------------------------------------------------------------------ protobuf classes
def _build_messages():
  F = descriptor_pb2.FieldDescriptorProto
  fdp = descriptor_pb2.FileDescriptorProto(name="jaxaffect/tf_example.proto", package="tensorflow",
                                           syntax="proto3")

  def msg(name, fields, nested=(), oneofs=()):
    m = fdp.message_type.add(name=name)
    for o in oneofs:
      m.oneof_decl.add(name=o)
    for n in nested:
      m.nested_type.add().CopyFrom(n)
    for fname, num, ftype, label, type_name, oneof in fields:
      f = m.field.add(name=fname, number=num, type=ftype, label=label)
      if type_name:
        f.type_name = type_name
      if oneof is not None:
        f.oneof_index = oneof
    return m

  rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
  msg("BytesList", [("value", 1, F.TYPE_BYTES, rep, None, None)])
  msg("FloatList", [("value", 1, F.TYPE_FLOAT, rep, None, None)])
  msg("Int64List", [("value", 1, F.TYPE_INT64, rep, None, None)])
  msg("Feature", [("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tensorflow.BytesList", 0),
                  ("float_list", 2, F.TYPE_MESSAGE, opt, ".tensorflow.FloatList", 0),
                  ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tensorflow.Int64List", 0)],
      oneofs=("kind",))
  entry = descriptor_pb2.DescriptorProto(name="FeatureEntry")
  entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
  entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt,
                  type_name=".tensorflow.Feature")
  entry.options.map_entry = True
  msg("Features", [("feature", 1, F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry", None)],
      nested=(entry,))
  msg("Example", [("features", 1, F.TYPE_MESSAGE, opt, ".tensorflow.Features", None)])
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{n}"))
          for n in ("Example", "Feature", "Features")}


_MSG = _build_messages()
Example = _MSG["Example"]


# ----------------------------------------------------------------------------- TFRecord framing
def _masked_crc(data: bytes) -> int:
  import google_crc32c
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
  """TFRecord framing: length, masked CRC32C of the length, data, masked CRC32C of the data."""
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


class TFRecordWriter:
  """Appends framed records to a binary file; returns each record's (offset, length)."""

  def __init__(self, f: BinaryIO):
    self.f, self.offset = f, 0

  def write(self, data: bytes) -> tuple[int, int]:
    rec = frame_record(data)
    self.f.write(rec)
    start, self.offset = self.offset, self.offset + len(rec)
    return start, len(rec)


def read_record_at(f: BinaryIO | int, offset: int, path: str = "?", check_crc: bool = True) -> bytes:
  """The payload of the record at byte `offset` of an open file (object or descriptor).

  Uses `os.pread`: no shared file position, so threads may read one descriptor concurrently."""
  fd = f if isinstance(f, int) else f.fileno()
  head = os.pread(fd, 12, offset)
  if len(head) != 12:
    raise UserError(f"{path}: truncated TFRecord header at byte {offset}")
  (n,) = struct.unpack("<Q", head[:8])
  if check_crc and struct.unpack("<I", head[8:])[0] != _masked_crc(head[:8]):
    raise UserError(f"{path}: bad length CRC at byte {offset} (corrupt or not a TFRecord file)")
  size = os.fstat(fd).st_size
  if offset + 16 + n > size:
    raise UserError(f"{path}: record at byte {offset} truncated (says {n} bytes, the file ends "
                    f"{size - offset - 16} bytes later)")
  body = os.pread(fd, n + 4, offset + 12)
  data, tail = body[:n], body[n:]
  if len(data) != n or len(tail) != 4:
    raise UserError(f"{path}: record at byte {offset} truncated ({len(data)} of {n} bytes)")
  if check_crc and struct.unpack("<I", tail)[0] != _masked_crc(data):
    raise UserError(f"{path}: bad data CRC in record at byte {offset}")
  return data


def iter_records(path: str, check_crc: bool = True) -> Iterator[tuple[int, bytes]]:
  """(offset, payload) of every record of a TFRecord file, in order."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    off = 0
    while off < size:
      data = read_record_at(f, off, path, check_crc)
      yield off, data
      off += 16 + len(data)


# ------------------------------------------------------------------------------- encode / decode
def _bytes(v: Iterable) -> Any:
  return [x.encode() if isinstance(x, str) else bytes(x) for x in v]


def _put(feats, key: str, kind: str, values) -> None:
  feat = feats.feature[key]
  if kind == "bytes":
    feat.bytes_list.value.extend(_bytes(values))
  elif kind == "float":
    feat.float_list.value.extend(np.asarray(values, np.float32).ravel().tolist())
  else:
    feat.int64_list.value.extend(np.asarray(values, np.int64).ravel().tolist())


@dataclasses.dataclass
class VideoRecord:
  """Everything one record holds, in numpy form (what `encode` takes and `decode` returns)."""
  video_id: str
  dataset: str
  split: str
  jpegs: list[bytes]                       # T encoded crops (decode with `decode_frames`)
  frame_index: np.ndarray                  # (T,) int64
  t_sec: np.ndarray                        # (T,) float32
  status: np.ndarray                       # (T,) int64
  face_found: np.ndarray                   # (T,) int64
  score: np.ndarray                        # (T,) float32
  box: np.ndarray                          # (T, 4) float32
  matrix: np.ndarray                       # (T, 2, 3) float32
  landmarks: np.ndarray                    # (T, K, 2) float32
  landmark_scheme: str = ""
  track: str = ""
  source_path: str = ""
  fps: float = 0.0
  label: int = -1
  vocab: str = ""
  folds: tuple[str, ...] = ()
  soft_label: np.ndarray | None = None
  meta: dict = dataclasses.field(default_factory=dict)
  recipe: dict = dataclasses.field(default_factory=dict)
  va: np.ndarray | None = None             # (T, 2) float32, -5 where missing
  expr: np.ndarray | None = None           # (T,) int64, -1 where invalid
  expr_vocab: str = ""
  au: np.ndarray | None = None             # (T, A) int64, -1 where invalid
  au_names: tuple[str, ...] = ()
  series: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  # series[name] = {"times": (N,), "values": (N, D), "columns": tuple, "rate_hz": float}
  features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  # features[name] = (T, D) float32 per-frame embeddings (feature shards only)

  @property
  def num_frames(self) -> int:
    return len(self.jpegs)

  # Masks are derived from the sentinels, identically on both sides.
  @property
  def va_mask(self) -> np.ndarray:
    return np.all(self.va > VA_MISSING + 1e-6, axis=-1) if self.va is not None else None

  @property
  def expr_mask(self) -> np.ndarray:
    return self.expr >= 0 if self.expr is not None else None

  @property
  def au_mask(self) -> np.ndarray:
    return self.au >= 0 if self.au is not None else None


def encode(r: VideoRecord) -> bytes:
  """Serialises a record; checks every per-frame field has T rows."""
  t = r.num_frames
  where = f"record {r.dataset}/{r.split}/{r.video_id}"

  def rows(name, arr, shape_tail=()):
    a = np.asarray(arr)
    if a.shape[:1] != (t,) or a.shape[1:] != tuple(shape_tail):
      raise UserError(f"{where}: field '{name}' has shape {a.shape}, expected {(t, *shape_tail)}")
    return a

  ex = Example()
  fe = ex.features
  _put(fe, "schema/version", "int", [SCHEMA_VERSION])
  for key, val in (("video/id", r.video_id), ("video/dataset", r.dataset), ("video/split", r.split),
                   ("video/track", r.track), ("video/source_path", r.source_path),
                   ("video/vocab", r.vocab), ("video/landmark_scheme", r.landmark_scheme)):
    _put(fe, key, "bytes", [val])
  _put(fe, "video/fps", "float", [r.fps])
  _put(fe, "video/num_frames", "int", [t])
  _put(fe, "video/label", "int", [r.label])
  _put(fe, "video/folds", "bytes", list(r.folds))
  if r.soft_label is not None:
    _put(fe, "video/soft_label", "float", r.soft_label)
  _put(fe, "video/meta_json", "bytes", [json.dumps(r.meta, sort_keys=True)])
  _put(fe, "recipe/json", "bytes", [json.dumps(r.recipe, sort_keys=True)])
  _put(fe, "frame/jpeg", "bytes", r.jpegs)
  _put(fe, "frame/index", "int", rows("frame/index", r.frame_index))
  _put(fe, "frame/t_sec", "float", rows("frame/t_sec", r.t_sec))
  _put(fe, "frame/status", "int", rows("frame/status", r.status))
  _put(fe, "frame/face_found", "int", rows("frame/face_found", r.face_found))
  _put(fe, "frame/score", "float", rows("frame/score", r.score))
  _put(fe, "frame/box", "float", rows("frame/box", r.box, (4,)))
  _put(fe, "frame/matrix", "float", rows("frame/matrix", r.matrix, (2, 3)))
  lm = np.asarray(r.landmarks, np.float32)
  if lm.ndim != 3 or lm.shape[0] != t or lm.shape[2] != 2:
    raise UserError(f"{where}: field 'frame/landmarks' has shape {lm.shape}, expected ({t}, K, 2)")
  _put(fe, "video/num_landmarks", "int", [lm.shape[1]])
  _put(fe, "frame/landmarks", "float", lm)
  tasks = []
  if r.va is not None:
    tasks.append("va")
    _put(fe, "frame/va", "float", rows("frame/va", r.va, (2,)))
    _put(fe, "frame/va_mask", "int", r.va_mask)
  if r.expr is not None:
    tasks.append("expr")
    _put(fe, "frame/expr", "int", rows("frame/expr", r.expr))
    _put(fe, "frame/expr_mask", "int", r.expr_mask)
    _put(fe, "video/expr_vocab", "bytes", [r.expr_vocab])
  if r.au is not None:
    tasks.append("au")
    au = np.asarray(r.au)
    if au.ndim != 2 or au.shape[0] != t or au.shape[1] != len(r.au_names):
      raise UserError(f"{where}: field 'frame/au' has shape {au.shape}, expected ({t}, "
                      f"{len(r.au_names)}) for au_names {r.au_names}")
    _put(fe, "frame/au", "int", au)
    _put(fe, "frame/au_mask", "int", r.au_mask)
    _put(fe, "video/au_names", "bytes", list(r.au_names))
  _put(fe, "labels/tasks", "bytes", tasks)
  _put(fe, "series/names", "bytes", list(r.series))
  for name, s in r.series.items():
    vals = np.asarray(s["values"], np.float32)
    times = np.asarray(s["times"], np.float64)
    if vals.ndim != 2 or len(vals) != len(times) or vals.shape[1] != len(s["columns"]):
      raise UserError(f"{where}: series '{name}' has values {vals.shape} for {len(times)} times "
                      f"and columns {tuple(s['columns'])}")
    _put(fe, f"series/{name}/times", "float", times)
    _put(fe, f"series/{name}/values", "float", vals)
    _put(fe, f"series/{name}/columns", "bytes", list(s["columns"]))
    _put(fe, f"series/{name}/rate_hz", "float", [s["rate_hz"]])
  if r.features:                       # absent (not empty) on face shards: their bytes are unchanged
    _put(fe, "features/names", "bytes", list(r.features))
    for name, vals in r.features.items():
      vals = np.asarray(vals, np.float32)
      if vals.ndim != 2 or vals.shape[0] != t:
        raise UserError(f"{where}: field 'features/{name}/values' has shape {vals.shape}, "
                        f"expected ({t}, D)")
      _put(fe, f"features/{name}/dim", "int", [vals.shape[1]])
      _put(fe, f"features/{name}/values", "float", vals)
  return ex.SerializeToString(deterministic=True)


def _get(fmap, key: str, kind: str, where: str, required: bool = True):
  if key not in fmap:
    if required:
      raise UserError(f"{where}: field '{key}' missing")
    return None
  f = fmap[key]
  if kind == "bytes":
    return list(f.bytes_list.value)
  if kind == "float":
    return np.asarray(f.float_list.value, np.float32)
  return np.asarray(f.int64_list.value, np.int64)


def _str(fmap, key, where, required=True) -> str:
  v = _get(fmap, key, "bytes", where, required)
  return v[0].decode() if v else ""


def decode(data: bytes, where: str = "record") -> VideoRecord:
  """Parses a serialised record; errors name `where` (file and offset) and the field."""
  ex = Example()
  try:
    ex.ParseFromString(data)
  except Exception as e:  # protobuf raises DecodeError
    raise UserError(f"{where}: not a tf.train.Example ({e})") from e
  fm = ex.features.feature
  ver = _get(fm, "schema/version", "int", where)
  if ver.size != 1 or int(ver[0]) != SCHEMA_VERSION:
    raise UserError(f"{where}: field 'schema/version' is {ver.tolist()}, this reader reads "
                    f"{SCHEMA_VERSION}")
  def scalar(key, kind="int"):
    v = _get(fm, key, kind, where)
    if len(v) != 1:
      raise UserError(f"{where}: field '{key}' has {len(v)} values, expected 1")
    return v[0]

  t = int(scalar("video/num_frames"))
  k = int(scalar("video/num_landmarks"))

  def rows(key, kind, tail=()):
    a = _get(fm, key, kind, where)
    n = t * int(np.prod(tail, dtype=np.int64))
    if a.size != n:
      raise UserError(f"{where}: field '{key}' has {a.size} values, expected {n} "
                      f"({t} frames x {tail or 1})")
    return a.reshape((t, *tail))

  jpegs = _get(fm, "frame/jpeg", "bytes", where)
  if len(jpegs) != t:
    raise UserError(f"{where}: field 'frame/jpeg' has {len(jpegs)} values, expected {t}")
  tasks = {b.decode() for b in _get(fm, "labels/tasks", "bytes", where)}
  r = VideoRecord(
      video_id=_str(fm, "video/id", where), dataset=_str(fm, "video/dataset", where),
      split=_str(fm, "video/split", where), jpegs=jpegs,
      frame_index=rows("frame/index", "int"), t_sec=rows("frame/t_sec", "float"),
      status=rows("frame/status", "int"), face_found=rows("frame/face_found", "int"),
      score=rows("frame/score", "float"), box=rows("frame/box", "float", (4,)),
      matrix=rows("frame/matrix", "float", (2, 3)), landmarks=rows("frame/landmarks", "float", (k, 2)),
      landmark_scheme=_str(fm, "video/landmark_scheme", where), track=_str(fm, "video/track", where),
      source_path=_str(fm, "video/source_path", where),
      fps=float(scalar("video/fps", "float")),
      label=int(scalar("video/label")), vocab=_str(fm, "video/vocab", where),
      folds=tuple(b.decode() for b in _get(fm, "video/folds", "bytes", where)),
      soft_label=_get(fm, "video/soft_label", "float", where, required=False),
      meta=json.loads(_str(fm, "video/meta_json", where) or "{}"),
      recipe=json.loads(_str(fm, "recipe/json", where) or "{}"))
  if "va" in tasks:
    r.va = rows("frame/va", "float", (2,))
  if "expr" in tasks:
    r.expr = rows("frame/expr", "int")
    r.expr_vocab = _str(fm, "video/expr_vocab", where)
  if "au" in tasks:
    r.au_names = tuple(b.decode() for b in _get(fm, "video/au_names", "bytes", where))
    r.au = rows("frame/au", "int", (len(r.au_names),))
  for name in (b.decode() for b in _get(fm, "series/names", "bytes", where)):
    cols = tuple(b.decode() for b in _get(fm, f"series/{name}/columns", "bytes", where))
    times = _get(fm, f"series/{name}/times", "float", where).astype(np.float64)
    vals = _get(fm, f"series/{name}/values", "float", where)
    if vals.size != len(times) * len(cols):
      raise UserError(f"{where}: field 'series/{name}/values' has {vals.size} values, expected "
                      f"{len(times)} x {len(cols)}")
    r.series[name] = {"times": times, "values": vals.reshape(len(times), len(cols)),
                      "columns": cols,
                      "rate_hz": float(_get(fm, f"series/{name}/rate_hz", "float", where)[0])}
  for name in (b.decode() for b in _get(fm, "features/names", "bytes", where, required=False) or []):
    d = int(scalar(f"features/{name}/dim"))
    r.features[name] = rows(f"features/{name}/values", "float", (d,))
  return r


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
  """RGB uint8 (H, W, 3) -> baseline JPEG, 4:2:0 (PIL/libjpeg; deterministic for a given libjpeg)."""
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(image), "RGB").save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def decode_frames(jpegs: list[bytes], indices=None, where: str = "record") -> np.ndarray:
  """Decodes the frames at `indices` (all by default) to (n, H, W, 3) uint8 RGB (OpenCV's
  libjpeg-turbo, converted from BGR)."""
  import cv2
  idx = range(len(jpegs)) if indices is None else np.asarray(indices).ravel().tolist()
  out = None
  for j, i in enumerate(idx):
    buf = np.frombuffer(jpegs[i], np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
      raise UserError(f"{where}: field 'frame/jpeg' frame {i}: cannot decode JPEG ({buf.size} bytes)")
    if out is None:
      out = np.empty((len(idx), *img.shape), np.uint8)
    elif img.shape != out.shape[1:]:
      raise UserError(f"{where}: field 'frame/jpeg' frame {i}: size {img.shape} differs from "
                      f"frame {idx[0]} {out.shape[1:]}")
    cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=out[j])
  if out is None:
    raise UserError(f"{where}: no frames requested")
  return out


def parse_shard_name(path: str) -> dict[str, Any]:
  m = SHARD_RE.match(os.path.basename(path))
  if not m:
    raise UserError(f"{path}: not a shard name '<dataset>-<split>.tfrecord-NNNNN-of-NNNNN'")
  return {"dataset": m["dataset"], "split": m["split"], "index": int(m["index"]),
          "count": int(m["count"])}


def read_manifest(out_dir: str) -> dict[str, Any]:
  path = os.path.join(out_dir, MANIFEST)
  if not os.path.exists(path):
    raise MissingFile(f"{path}: no manifest; run `python -m data_prep` to write shards here "
                      f"(or it has not finished)")
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not a valid manifest ({e}); rerun the `python -m data_prep` job "
                    f"that wrote it (it rewrites the manifest from the shards' sidecars)") from None
