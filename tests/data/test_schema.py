"""The record schema: round trip, TFRecord framing, tf.data interop (both directions), errors."""
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxaffect.data import schema

HERE = os.path.dirname(__file__)


def make_record(t=6, k=68, seed=0, with_labels=True, vid="00042"):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:24, 0:24]
  base = np.stack([xx * 10, yy * 10, (xx + yy) * 5], -1)
  imgs = np.stack([np.clip(base + 7 * i, 0, 255) for i in range(t)]).astype(np.uint8)
  lm = rng.uniform(0, 24, (t, k, 2)).astype(np.float32)
  lm[1] = np.nan                                        # a frame without a face
  r = schema.VideoRecord(
      video_id=vid, dataset="testset", split="train",
      jpegs=[schema.encode_jpeg(im) for im in imgs], frame_index=np.arange(1, t + 1) * 3,
      t_sec=(np.arange(t) / 30.0).astype(np.float32), status=np.array([0, 1] + [0] * (t - 2)),
      face_found=np.array([1, 0] + [1] * (t - 2)), score=rng.uniform(size=t).astype(np.float32),
      box=rng.uniform(0, 99, (t, 4)).astype(np.float32),
      matrix=rng.normal(size=(t, 2, 3)).astype(np.float32), landmarks=lm,
      landmark_scheme="ibug68", track="left", source_path="/x/y", fps=29.97, label=4, vocab="dfew7",
      folds=("1:train", "3:test"), soft_label=np.array([.1, .2, .3, .4, 0, 0, 0], np.float32),
      meta={"a": 1}, recipe={"detector": "none", "size": 24})
  if with_labels:
    r.va = rng.uniform(-1, 1, (t, 2)).astype(np.float32)
    r.va[2] = -5
    r.expr = rng.integers(-1, 8, t)
    r.expr_vocab = "abaw8"
    r.au = rng.integers(-1, 2, (t, 12))
    r.au_names = tuple(f"AU{i}" for i in range(12))
    r.series = {"va": {"times": np.arange(9) * 0.04, "values": rng.normal(size=(9, 2)),
                       "columns": ("valence", "arousal"), "rate_hz": 25.0}}
  return r, imgs


def test_round_trip_every_field():
  r, imgs = make_record()
  d = schema.decode(schema.encode(r))
  for f in ("video_id", "dataset", "split", "landmark_scheme", "track", "source_path", "label",
            "vocab", "folds", "meta", "recipe", "expr_vocab", "au_names"):
    assert getattr(d, f) == getattr(r, f), f
  assert d.fps == pytest.approx(29.97, rel=1e-6)
  for f in ("frame_index", "status", "face_found", "expr", "au"):
    np.testing.assert_array_equal(getattr(d, f), getattr(r, f), err_msg=f)
  for f in ("t_sec", "score", "box", "matrix", "landmarks", "va", "soft_label"):
    np.testing.assert_array_equal(getattr(d, f), getattr(r, f), err_msg=f)   # float32 exact, NaNs too
  np.testing.assert_array_equal(d.va_mask, [True, True, False, True, True, True])
  np.testing.assert_array_equal(d.expr_mask, r.expr >= 0)
  np.testing.assert_allclose(d.series["va"]["times"], np.arange(9) * 0.04, rtol=1e-6)
  np.testing.assert_array_equal(d.series["va"]["values"], r.series["va"]["values"].astype(np.float32))
  # JPEG: decode equals PIL's decode of the same bytes, and is close to the source pixels.
  from PIL import Image
  import io
  dec = schema.decode_frames(d.jpegs, [0, 5])
  np.testing.assert_array_equal(dec[1], np.asarray(Image.open(io.BytesIO(d.jpegs[5])).convert("RGB")))
  assert np.abs(dec.astype(int) - imgs[[0, 5]]).mean() < 3        # smooth images survive q=95


def test_optional_fields_absent():
  r, _ = make_record(with_labels=False)
  r.soft_label = None
  d = schema.decode(schema.encode(r))
  assert d.va is None and d.expr is None and d.au is None and d.soft_label is None and not d.series


def test_encode_checks_rows():
  r, _ = make_record()
  r.va = r.va[:-1]
  with pytest.raises(ValueError, match=r"record testset/train/00042: field 'frame/va' has shape \(5, 2\)"):
    schema.encode(r)


def test_decode_names_missing_field_and_version():
  r, _ = make_record()
  ex = schema.Example()
  ex.ParseFromString(schema.encode(r))
  del ex.features.feature["frame/index"]
  with pytest.raises(ValueError, match="shard-7 byte 99: field 'frame/index' missing"):
    schema.decode(ex.SerializeToString(), "shard-7 byte 99")
  ex.ParseFromString(schema.encode(r))
  ex.features.feature["schema/version"].int64_list.value[0] = 99
  with pytest.raises(ValueError, match="schema/version"):
    schema.decode(ex.SerializeToString())
  with pytest.raises(ValueError, match="not a tf.train.Example"):
    schema.decode(b"\xff\xff\xff garbage")


def _write(path, records):
  with open(path, "wb") as f:
    w = schema.TFRecordWriter(f)
    return [w.write(schema.encode(r)) for r in records]


def test_framing_offsets_and_corruption(tmp_path):
  recs = [make_record(seed=s, vid=f"v{s}")[0] for s in range(3)]
  path = str(tmp_path / "a.tfrecord")
  offs = _write(path, recs)
  got = list(schema.iter_records(path))
  assert [o for o, _ in got] == [o for o, _ in offs]
  with open(path, "rb") as f:
    assert schema.decode(schema.read_record_at(f, offs[1][0])).video_id == "v1"
  data = bytearray(open(path, "rb").read())
  data[offs[1][0] + 40] ^= 0xFF                       # flip a payload byte of record 1
  open(path, "wb").write(bytes(data))
  with pytest.raises(ValueError, match=rf"a.tfrecord: bad data CRC in record at byte {offs[1][0]}"):
    list(schema.iter_records(path))
  open(path, "wb").write(bytes(data[: offs[2][0] + 30]))   # truncated in record 2
  with pytest.raises(ValueError, match="truncated"):
    list(schema.iter_records(path, check_crc=False))


def test_crc_matches_reference_vector():
  # CRC-32C check value of "123456789" (RFC 3720 / iSCSI) is 0xE3069283; TFRecord masks it.
  import google_crc32c
  assert google_crc32c.value(b"123456789") == 0xE3069283
  crc = 0xE3069283
  assert schema._masked_crc(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_shard_names():
  n = schema.shard_name("dfew", "all", 3, 16)
  assert n == "dfew-all.tfrecord-00003-of-00016"
  assert schema.parse_shard_name("/a/" + n) == {"dataset": "dfew", "split": "all", "index": 3, "count": 16}
  with pytest.raises(ValueError):
    schema.shard_name("dfew", "fold-1", 0, 1)


def test_tf_data_reads_our_records_and_we_read_tf_written(tmp_path):
  """tf.data (TFRecordDataset + parse_single_example + decode_jpeg) reads our files, and TF's
  TFRecordWriter output reads back through our reader (TensorFlow in a subprocess)."""
  recs = [make_record(seed=s, vid=f"v{s}")[0] for s in range(3)]
  recs[2] = make_record(seed=2, vid="v2", with_labels=False)[0]
  path = str(tmp_path / "testset-train.tfrecord-00000-of-00001")
  _write(path, recs)
  out = str(tmp_path / "tf.npz")
  subprocess.run([sys.executable, os.path.join(HERE, "tf_read_shards.py"), out, path], check=True,
                 timeout=300, capture_output=True)
  z = np.load(out)
  assert int(z["count"]) == 3
  for i, r in enumerate(recs):
    assert z[f"id_{i}"].item() == r.video_id.encode()
    assert int(z[f"label_{i}"]) == r.label
    np.testing.assert_array_equal(z[f"frame_index_{i}"], r.frame_index)
    np.testing.assert_array_equal(z[f"status_{i}"], r.status)
    np.testing.assert_array_equal(z[f"landmarks_{i}"], r.landmarks)
    if r.va is not None:
      np.testing.assert_array_equal(z[f"va_{i}"], r.va)
    else:
      assert f"va_{i}" not in z
    # TF's and OpenCV's JPEG decoders differ in chroma upsampling / IDCT rounding by a few levels.
    d = np.abs(z[f"jpeg0_{i}"].astype(int) - schema.decode_frames(r.jpegs, [0])[0].astype(int))
    assert d.max() <= 8 and d.mean() < 1.0, (d.max(), d.mean())
  (off, data), = schema.iter_records(str(tmp_path / "tf_written.tfrecord"))
  assert schema.decode(data).video_id == "v0"
