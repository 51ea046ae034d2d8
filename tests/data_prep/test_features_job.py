"""`python -m data_prep features`: per-frame embeddings over face shards -> feature shards.

Features equal a direct `module.apply(..., method="embed")` on the decoded frames up to rounding
(batches across videos, padded last batch, split over the 8 test devices or not: other programs,
see TINY_ULPS), every other field is copied, the
manifest is the face shards' layout plus the recipe, a rerun skips finished shards and redoes a
removed one byte-identically, a job killed mid-shard leaves no partial file, and the readers of
jaxaffect.data.features read the result (labels from the feature shards alone, or joined to a
stream of npy files).
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from data_prep import cli as prep_cli
from data_prep import features as job
from data_prep import shards as shards_lib
from jaxaffect.data import augment, features as F, pipeline, schema
from tests import tolerances

SYN = ["synthetic", "--src", "-", "--num-frames", "8", "--render-size", "64", "--size", "64",
       "--pose", "0.3", "--quiet"]


class TinyEncoder(nn.Module):
  """A stand-in image model with an `embed` method (conv, ReLU, global average pool, dense)."""
  dim: int = 5

  def setup(self):
    self.conv = nn.Conv(4, (3, 3), strides=(2, 2))
    self.proj = nn.Dense(self.dim)
    self.head = nn.Dense(2)

  def embed(self, x, train: bool = False):
    return self.proj(jnp.mean(nn.relu(self.conv(x)), axis=(1, 2)))

  def __call__(self, x, *, train: bool = False):
    return self.head(self.embed(x, train))


@pytest.fixture(scope="module")
def face_shards(tmp_path_factory):
  out = tmp_path_factory.mktemp("faces")
  args = prep_cli.build_parser().parse_args([*SYN, "--out", str(out), "--num-videos", "5",
                                             "--heldout-videos", "3", "--shards", "2"])
  shards_lib.run(args.source, args)
  return str(out)


@pytest.fixture(scope="module")
def model():
  m = TinyEncoder()
  v = m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  return m, v


def _embedder(model, size, batch):
  m, v = model
  return job.make_embedder(m, v, size, batch, {"model_name": "tiny", "checkpoint": "-", "step": 0})


def _records(d):
  m = schema.read_manifest(d)
  out = {}
  for r in m["records"]:
    with open(os.path.join(d, r["file"]), "rb") as f:
      out[(r["id"], r["split"])] = schema.decode(schema.read_record_at(f, r["offset"]))
  return m, out


# The job's features come from another program than the direct apply they are checked against
# (another batch shape, batches straddling videos, a padded last batch, a split over devices; the
# reference is one video, op by op): XLA sums the convolutions and the pooled mean in another order,
# so they are equal up to rounding, not bit for bit (batch 5 happens to be bit-identical on the
# Intel CPU the suite was written on, an AMD EPYC differs by 1 ulp). Allowed: `ulps` epsilons of
# the magnitude the rounding of those sums scales with, per element:
# * TinyEncoder: the network run on absolute values (the sum of |terms| through conv, ReLU, mean and
#   dense, `tolerances.abs_magnitude`), 16 ulps. Measured: ≤ 0.2 (batches 1, 3, 5, 16).
# * frame_resnet (BatchNorm: no Σ|terms| bound from absolute values): the frame's largest feature,
#   a smaller scale than the terms of its deep sums, 128 ulps. Measured: ≤ 1.7.
# The check cannot pass a frame off by one: each frame's features differ from the next frame's by
# more than the tolerance (asserted per video below; measured ≥ 1,300 ulps for TinyEncoder, ≥ 2e5
# for the ResNet), and a wrong normalisation (x/127.5 - 1 instead of x/255) is ~6e5 ulps off.
TINY_ULPS, RESNET_ULPS = 16, 128


def _check_features(face_dir, feat_dir, model, size, stream, magnitude, ulps):
  """Every record's features == `model.apply(..., method="embed")` on its decoded frames within
  `ulps` epsilons of `magnitude(x, direct)`; returns the manifest and the worst error in ulps of
  that magnitude."""
  m, v = model
  _, faces = _records(face_dir)
  man, feats = _records(feat_dir)
  assert sorted(feats) == sorted(faces)
  worst = 0.0
  for key, rec in faces.items():
    fr = feats[key]
    imgs = schema.decode_frames(rec.jpegs)
    if imgs.shape[1] != size:
      imgs, _ = augment.augment_clip(imgs, np.random.default_rng(0), size=size, crop=None,
                                     flip_prob=0.0)
    x = imgs.astype(np.float32) / np.float32(255)
    direct = np.asarray(m.apply(v, jnp.asarray(x), method="embed"))
    mag = magnitude(x, direct)
    unit = tolerances.rounding_atol(mag, ulps=1, dtype=np.float32)
    allowed = np.broadcast_to(ulps * unit, direct.shape)
    worst = max(worst, float((np.abs(fr.features[stream] - direct) / unit).max()))
    tolerances.assert_close_ulps(fr.features[stream], direct, magnitude=mag, ulps=ulps,
                                 dtype=np.float32, err_msg=str(key))
    # sensitivity: each frame differs from the next by more than the tolerance (in some feature),
    # so features shifted by one frame would fail the comparison above
    assert (np.abs(direct[1:] - direct[:-1]) > allowed[1:]).any(-1).all(), key
    assert fr.jpegs == [b""] * rec.num_frames
    for f in ("frame_index", "t_sec", "status", "face_found", "va", "expr", "au", "box",
              "landmarks"):
      np.testing.assert_array_equal(getattr(fr, f), getattr(rec, f), err_msg=f)
    for f in ("label", "vocab", "folds", "split", "expr_vocab", "au_names", "meta", "dataset"):
      assert getattr(fr, f) == getattr(rec, f), f
  return man, worst


def _tiny_magnitude(model):
  """Σ|terms| of TinyEncoder.embed (conv, ReLU, mean, dense): the network on absolute values."""
  m, v = model
  return lambda x, direct: np.asarray(tolerances.abs_magnitude(
      lambda v, x: m.apply(v, x, method="embed"), v, x))


@pytest.mark.parametrize("batch", [5, 16])
def test_features_equal_direct_apply(face_shards, model, tmp_path, batch):
  """batch 5: batches straddle videos (8 frames each) and the last is padded, one device. batch
  16: split over the 8 test devices (2 frames each). Either way another program than the
  unbatched apply: equal up to rounding (TINY_ULPS). Crops 64 px resized to the model's 32."""
  out = str(tmp_path / "feat")
  man = job.extract(face_shards, out, _embedder(model, 32, batch), stream="tiny", quiet=True)
  man2, worst = _check_features(face_shards, out, model, 32, "tiny", _tiny_magnitude(model),
                                TINY_ULPS)
  print(f"batch {batch}: max |feature - direct apply| = {worst:.3g} ulps of the magnitude")
  assert man == man2
  assert man["totals"] == {"videos": 8, "frames": 64, "shards": 4, "skipped": 0, "frame_issues": 0}
  fe = man["features"]
  assert fe["stream"] == "tiny" and fe["dim"] == 5 and fe["image_size"] == 32
  assert fe["source_manifest_sha256"] == shards_lib._sha256(os.path.join(face_shards,
                                                                         "manifest.json"))
  assert fe["model"] == {"model_name": "tiny", "checkpoint": "-", "step": 0}
  assert "numpy" in fe["versions"] and "jax" in fe["versions"]
  for sp in man["splits"].values():
    for sh in sp["shards"]:
      p = os.path.join(out, sh["file"])
      assert shards_lib._sha256(p) == sh["sha256"]
  # the feature shards read as shards (same manifest layout)
  src = pipeline.ShardRecords(out, "train")
  assert len(src) == 5 and src[0]["record"].features["tiny"].shape == (8, 5)


def test_select_rerun_skip_redo_and_refuse(face_shards, model, tmp_path):
  out = str(tmp_path / "feat")
  emb = _embedder(model, 64, 8)
  man = job.extract(face_shards, out, emb, select="test", quiet=True)
  assert man["totals"]["videos"] == 3 and sorted(man["splits"]) == ["test"]
  _check_features_subset = {r["id"] for r in man["records"]}
  assert len(_check_features_subset) == 3
  files = sorted(glob.glob(os.path.join(out, "*.tfrecord-*-of-*[0-9]")))
  mtimes = {f: os.stat(f).st_mtime_ns for f in files}
  calls = []
  counting = job.Embedder(lambda x: calls.append(1) or emb.fn(x), emb.batch, emb.image_size,
                          emb.dim, emb.info)
  assert job.extract(face_shards, out, counting, select="test", quiet=True) == man
  assert not calls and {f: os.stat(f).st_mtime_ns for f in files} == mtimes     # all skipped
  sha = {f: shards_lib._sha256(f) for f in files}
  os.remove(files[0])
  assert job.extract(face_shards, out, counting, select="test", quiet=True) == man
  assert calls and {f: shards_lib._sha256(f) for f in files} == sha            # redone, same bytes
  assert os.stat(files[1]).st_mtime_ns == mtimes[files[1]]
  with pytest.raises(shards_lib.PrepFailed, match=r"other settings \(differs in \['select'\]\)"):
    job.extract(face_shards, out, emb, select="train", quiet=True)
  with pytest.raises(shards_lib.PrepFailed, match=r"no record matches select='nope'"):
    job.extract(face_shards, str(tmp_path / "x"), emb, select="nope", quiet=True)
  man3 = job.extract(face_shards, out, emb, select="all", overwrite=True, quiet=True)
  assert man3["totals"]["videos"] == 8


def test_killed_job_leaves_no_partial_shard_and_resumes(face_shards, model, tmp_path):
  emb = _embedder(model, 64, 8)
  ref = job.extract(face_shards, str(tmp_path / "ref"), emb, quiet=True)
  out = str(tmp_path / "feat")
  n = [0]

  def dies(x):
    n[0] += 1
    if n[0] == 4:     # shards test-0 (2 videos: 2 batches), test-1 (1), then mid train-0 (3)
      raise KeyboardInterrupt
    return emb.fn(x)

  with pytest.raises(KeyboardInterrupt):
    job.extract(face_shards, out, job.Embedder(dies, 8, 64, emb.dim, emb.info), quiet=True)
  left = sorted(os.listdir(out))
  assert not [f for f in left if ".tmp-" in f]
  assert [f for f in left if ".tfrecord-" in f] == [
      f"synthetic-test.tfrecord-0000{i}-of-00002{e}" for i in range(2) for e in ("", ".json")]
  assert "manifest.json" not in left
  man = job.extract(face_shards, out, emb, quiet=True)
  strip = lambda m: {k: v for k, v in m.items() if k not in ("features", "job")}
  assert strip(man) == strip(ref)                                # same records, offsets, sha256
  assert [s["sha256"] for sp in man["splits"].values() for s in sp["shards"]] == \
      [s["sha256"] for sp in ref["splits"].values() for s in sp["shards"]]


def test_cli_end_to_end_with_a_trained_frame_resnet(face_shards, tmp_path):
  """`python -m data_prep features` over a 1-step frame_resnet checkpoint (restore_state): the
  features equal `task.module.apply(variables, frames / 255, train=False, method="embed")` on the
  decoded crops resized to the model's 32 px (BatchNorm from its statistics): exactly for the same
  batches on the same device (the same program), up to rounding (RESNET_ULPS) per video."""
  from configs import frame_resnet
  from jaxaffect.train import loop
  c = frame_resnet.get_config(f"smoke,shards={face_shards}")
  c.unlock()
  c.num_steps, c.batch_size, c.model.width, c.data.image_size = 1, 8, 4, 32
  c.checkpoint.async_save = False
  wd = str(tmp_path / "wd")
  loop.train(c, wd)
  out = str(tmp_path / "feat")
  assert prep_cli.main(["features", "--shards", face_shards, "--checkpoint", wd, "--out", out,
                        "--batch", "12", "--quiet"]) == 0
  _, setup, variables, step = loop.restore_state(wd)
  man = schema.read_manifest(out)
  fe = man["features"]
  assert fe["stream"] == "frame_resnet" and fe["dim"] == 32 and fe["image_size"] == 32
  assert step == 1
  assert fe["model"] == {"checkpoint": os.path.abspath(wd), "step": 1, "model_name": "frame_resnet"}
  assert man["totals"]["videos"] == 8

  # (1) exactly the same numbers as a jitted apply of the same (12, 32, 32, 3) batches: every
  # frame of the selected records in the job's order (shard files by name, records by offset),
  # resized, /255, zero-padded at the end.
  fm = schema.read_manifest(face_shards)
  order = sorted(fm["records"], key=lambda r: (r["file"], r["offset"]))
  frames, owner = [], []
  for r in order:
    with open(os.path.join(face_shards, r["file"]), "rb") as f:
      rec = schema.decode(schema.read_record_at(f, r["offset"]))
    img, _ = augment.augment_clip(schema.decode_frames(rec.jpegs), np.random.default_rng(0),
                                  size=32, crop=None, flip_prob=0.0)
    frames.append(img)
    owner += [(r["id"], r["split"])] * len(img)
  frames = np.concatenate(frames).astype(np.float32) / np.float32(255)
  n = len(frames)
  pad = np.concatenate([frames, np.zeros((-n % 12, 32, 32, 3), np.float32)])
  f = jax.jit(lambda v, x: setup.task.module.apply(v, x, train=False, method="embed"))
  direct = np.concatenate([np.asarray(f(variables, pad[i:i + 12]))
                           for i in range(0, len(pad), 12)])[:n]
  _, feats = _records(out)
  got = np.concatenate([feats[(r["id"], r["split"])].features["frame_resnet"] for r in order])
  # The frame's largest feature: the scale of the last convolutions' sums (BatchNorm in between:
  # no Σ|terms| bound from absolute values).
  frame_scale = lambda x, direct: np.abs(direct).max(-1, keepdims=True)
  ndev = jax.local_device_count()
  if ndev > 1 and 12 % ndev == 0:   # the job split its batches over the devices: another program
    tolerances.assert_close_ulps(got, direct, magnitude=frame_scale(None, direct),
                                 ulps=RESNET_ULPS, dtype=np.float32)
  else:                             # one device, same shapes and computation: the same program
    np.testing.assert_array_equal(got, direct)
  # (2) and up to rounding a per-video, unpadded, op-by-op apply (XLA convolutions round
  # differently with another batch size or fusion)
  class Direct:
    def apply(self, v, x, method):
      return setup.task.module.apply(v, x, train=False, method=method)

  _, worst = _check_features(face_shards, out, (Direct(), variables), 32, "frame_resnet",
                             frame_scale, RESNET_ULPS)
  print(f"frame_resnet: max |feature - per-video op-by-op apply| = {worst:.3g} ulps of the "
        f"frame's largest feature")
  # rerun: nothing to do
  assert prep_cli.main(["features", "--shards", face_shards, "--checkpoint", wd, "--out", out,
                        "--batch", "12", "--quiet"]) == 0
  assert schema.read_manifest(out) == man
  # --best: the step `loop.resolve_step` picks by the run's best metric (the last step evaluated)
  assert loop.resolve_step(wd, best=True) == 1
  assert job.load_embedder(wd, best=True, batch=12).info["step"] == 1


def test_cli_parses_and_refuses_missing_shards(tmp_path, capsys):
  args = prep_cli.build_parser().parse_args(["features", "--shards", "a", "--checkpoint", "b",
                                             "--out", "c", "--best", "--batch", "64"])
  assert args.source == "features" and args.best and args.step is None and args.batch == 64
  with pytest.raises(SystemExit):
    prep_cli.build_parser().parse_args(["features", "--shards", "a", "--checkpoint", "b",
                                        "--out", "c", "--best", "--step", "3"])
  emb = job.Embedder(lambda x: x, 4, 8, 1, {})
  with pytest.raises(shards_lib.PrepFailed, match="no manifest"):
    job.extract(str(tmp_path / "nothing"), str(tmp_path / "o"), emb)
  # no checkpoint: loop.resolve_step's FileNotFoundError becomes the CLI's PrepFailed (exit 2)
  ck = str(tmp_path / "no_run")
  with pytest.raises(shards_lib.PrepFailed, match=rf"--checkpoint {ck} --best: no checkpoint "
                                                  rf"under '{ck}'"):
    job.load_embedder(ck, best=True)
  assert prep_cli.main(["features", "--shards", "a", "--checkpoint", ck, "--out",
                        str(tmp_path / "o2"), "--quiet"]) == 2
  assert "no checkpoint under" in capsys.readouterr().err


# ----------------------------------------------------------------------------- readers over shards
def _cfg(**kw):
  from jaxaffect.data import parts
  return parts.from_flat(dict(dict(source="features", sampler="feature_windows", labels="",
                                   window=4, stride=2, eval_stride=0, train_select="train",
                                   eval_select="test", expr_vocab="", num_au=12, fps=0.0,
                                   fps_csv=""), **kw))


def test_readers_over_feature_shards(face_shards, model, tmp_path):
  out = str(tmp_path / "feat")
  job.extract(face_shards, out, _embedder(model, 64, 8), stream="tiny", quiet=True)
  _, feats = _records(out)
  cfg = _cfg(features=[dict(name="img", kind="shards", path=out, stream="tiny")])
  vids = {(v.video_id, v.split): v for v in F.iter_videos(cfg, "all")}
  assert sorted(vids) == sorted(feats)
  for key, rec in feats.items():
    v = vids[key]
    np.testing.assert_array_equal(v.streams["img"], rec.features["tiny"])   # every frame has a face
    got = pipeline.frame_labels(rec, np.arange(rec.num_frames))
    np.testing.assert_array_equal(v.labels["va"], got["va"])
    np.testing.assert_array_equal(v.labels["expr"], got["expr"])
    np.testing.assert_array_equal(v.labels["au"], got["au"])
    np.testing.assert_array_equal(v.labels["au_mask"], got["au_mask"])
    assert v.label == rec.label and v.folds == rec.folds and v.face.all()
    np.testing.assert_array_equal(v.t_sec, rec.t_sec)
  # labels from the face shards, features joined from the feature shards and from npy files with
  # gaps (ABAW layout, numbered by the shards' frame index)
  npy = tmp_path / "npy"                   # (npy folders are named by video id: train only)
  for (vid, split), rec in feats.items():
    if split != "train":
      continue
    os.makedirs(npy / vid)
    for k, fi in enumerate(rec.frame_index):
      if k not in (2, 3):
        np.save(npy / vid / f"{fi:05d}.npy", rec.features["tiny"][k] * 2)
  cfg = _cfg(labels=face_shards, train_select="train", eval_select="train", features=[
      dict(name="img", kind="shards", path=out, stream="tiny"),
      dict(name="twice", kind="npy", path=str(npy))])
  tr, ev = pipeline.build_sources(cfg)
  assert len(tr.videos) == 5 and len(ev) == 5 * 2 and len(tr) == 5 * 3    # 8 frames: w4 s2 / s4
  for v in tr.videos:
    rec = feats[(v.video_id, "train")]
    face = np.ones(8, bool)
    face[[2, 3]] = False
    np.testing.assert_array_equal(v.face, face)
    near = [0, 1, 1, 4, 4, 5, 6, 7]
    np.testing.assert_array_equal(v.streams["img"], rec.features["tiny"][near])
    np.testing.assert_array_equal(v.streams["twice"], 2 * rec.features["tiny"][near])
    assert v.split == "train" and v.label == rec.label
  # a stream lacking a video of the labels: the error names stream and video
  import shutil
  vid = tr.videos[1].video_id
  shutil.rmtree(npy / vid)
  with pytest.raises(ValueError, match=rf"stream 'twice': no features for video '{vid}'"):
    F.load_videos(cfg, "train")
  cfg = _cfg(labels=face_shards, features=[dict(name="img", kind="shards", path=out, stream="x")])
  with pytest.raises(ValueError, match=r"stream 'img' .* has no feature 'x' \(has \['tiny'\]\)"):
    list(F.iter_videos(cfg, "train"))


# Frames without a face, per video (0-based positions in 8 frames): NO_FACE (the item's landmarks
# and box are NaN there: the face stage crops the centre or the last face's place, face_found=0),
# MISSING (no image: a black crop), and MISSING frames whose crop is stored as an empty JPEG.
GAPS = {"000000": dict(no_face=[0, 3, 5], missing=[4], empty=[]),
        "000001": dict(no_face=[2], missing=[], empty=[6, 7]),
        "000002": dict(no_face=[0, 1, 2, 3, 4, 5], missing=[6], empty=[7])}


def _with_gaps(resolve):
  from data_prep.sources.base import MISSING, Frame
  item = resolve()
  g = GAPS[item.video_id]
  boxes, lms = item.boxes.copy(), item.landmarks.copy()
  boxes[g["no_face"]] = np.nan
  lms[g["no_face"]] = np.nan
  frames = list(item.frames())
  for k in g["missing"] + g["empty"]:
    f = frames[k]
    frames[k] = Frame(f.index, f.t_sec, None, MISSING, error="no crop")
  return dataclasses.replace(item, boxes=boxes, landmarks=lms, frames=lambda: iter(frames))


def _nearest_face(face: np.ndarray) -> np.ndarray:
  """Independent reference of fill_nearest's choice: for each frame the face frame at the smallest
  distance, the earlier on a tie (itself when it has a face)."""
  good = np.flatnonzero(face)
  if not len(good):
    return np.arange(len(face))
  return np.asarray([min(good, key=lambda j: (abs(j - i), j)) for i in range(len(face))])


def test_frames_without_a_face_keep_their_rows_and_are_filled(model, tmp_path, monkeypatch):
  """Face shards with NO_FACE frames (a real crop, face_found=0), MISSING frames (black crops) and
  MISSING frames stored as empty JPEGs: the feature shards keep one row per frame (the embedding
  of the stored crop, of a black image for an empty JPEG) and face_found; the reader's face flag
  is 0 exactly there and, with the default fill, those rows hold the nearest face frame's
  features (the earlier one on a tie); a video without any face keeps its rows; fill=False keeps
  the raw rows."""
  import types
  from data_prep import sources
  from data_prep.sources import base, synthetic as syn_src

  def items(src, args):
    for it in syn_src.items(src, args):
      yield dataclasses.replace(it, resolve=functools.partial(_with_gaps, it.resolve))

  process = shards_lib.process_item

  def process_item(item, stages):     # a writer that stores no image for the `empty` frames
    rec, issues = process(item, stages)
    for k in GAPS[rec.video_id]["empty"]:
      rec.jpegs[k] = b""
    return rec, issues

  monkeypatch.setitem(sources.SOURCES, "synthetic",
                      types.SimpleNamespace(items=items, add_arguments=syn_src.add_arguments))
  monkeypatch.setattr(shards_lib, "process_item", process_item)
  faces = str(tmp_path / "faces")
  args = prep_cli.build_parser().parse_args([*SYN, "--out", faces, "--num-videos", "3",
                                             "--occlusion", "0"])
  fm = shards_lib.run(args.source, args)
  assert fm["totals"]["videos"] == 3 and fm["totals"]["frames"] == 24
  out = str(tmp_path / "feat")
  job.extract(faces, out, _embedder(model, 32, 5), stream="tiny", quiet=True)
  _, face_recs = _records(faces)
  _, feat_recs = _records(out)
  m, v = model
  black = np.asarray(m.apply(v, jnp.zeros((1, 32, 32, 3)), method="embed"))[0]
  tiny_mag = _tiny_magnitude(model)
  black_mag = tiny_mag(np.zeros((1, 32, 32, 3), np.float32), None)[0]
  cfg = _cfg(features=[dict(name="img", kind="shards", path=out, stream="tiny")])
  vids = {x.video_id: x for x in F.iter_videos(cfg, "train")}
  raw = {x.video_id: x for x in F.iter_videos(
      _cfg(features=[dict(name="img", kind="shards", path=out, stream="tiny", fill=False)]),
      "train")}
  assert sorted(vids) == sorted(GAPS)
  for vid, g in GAPS.items():
    rec, fr = face_recs[(vid, "train")], feat_recs[(vid, "train")]
    gap = sorted(g["no_face"] + g["missing"] + g["empty"])
    face = np.ones(8, bool)
    face[gap] = False
    # the face shards are what the test asked for
    np.testing.assert_array_equal(rec.face_found, face.astype(np.int64))
    status = np.zeros(8, np.int64)
    status[g["no_face"]] = base.NO_FACE
    status[g["missing"] + g["empty"]] = base.MISSING
    np.testing.assert_array_equal(rec.status, status)
    assert [k for k in range(8) if not rec.jpegs[k]] == g["empty"]
    # feature shards: a row per frame, every field kept, embeddings of the stored crops
    assert fr.features["tiny"].shape == (8, 5) and fr.num_frames == 8
    for f in ("frame_index", "t_sec", "status", "face_found"):
      np.testing.assert_array_equal(getattr(fr, f), getattr(rec, f), err_msg=f)
    have = [k for k in range(8) if k not in g["empty"]]
    imgs, _ = augment.augment_clip(schema.decode_frames(rec.jpegs, have), np.random.default_rng(0),
                                   size=32, crop=None, flip_prob=0.0)
    xs = imgs.astype(np.float32) / np.float32(255)
    direct = np.asarray(m.apply(v, jnp.asarray(xs), method="embed"))
    tolerances.assert_close_ulps(fr.features["tiny"][have], direct, magnitude=tiny_mag(xs, direct),
                                 ulps=TINY_ULPS, dtype=np.float32, err_msg=vid)
    for k in g["missing"] + g["empty"]:          # black crop or no image: the black embedding
      tolerances.assert_close_ulps(fr.features["tiny"][k], black, magnitude=black_mag,
                                   ulps=TINY_ULPS, dtype=np.float32, err_msg=f"{vid} frame {k}")
    for k in g["no_face"]:                       # a real (non-black) crop was embedded
      assert schema.decode_frames(rec.jpegs, [k]).max() > 0
    # the reader: face flag exactly at the gaps, rows from the nearest face frame
    x = vids[vid]
    np.testing.assert_array_equal(x.face, face)
    np.testing.assert_array_equal(x.frame_index, rec.frame_index)
    near = _nearest_face(face)
    np.testing.assert_array_equal(x.streams["img"], fr.features["tiny"][near])
    np.testing.assert_array_equal(raw[vid].streams["img"], fr.features["tiny"])
    np.testing.assert_array_equal(raw[vid].face, face)
    if face.any():                               # the fill changed every gap row
      assert not np.isclose(x.streams["img"][gap], fr.features["tiny"][gap]).all(-1).any()
  # the nearest-face choices of the hand-made gaps (a tie at frame 4 of 000000 takes frame 2)
  assert _nearest_face(vids["000000"].face).tolist() == [1, 1, 2, 2, 2, 6, 6, 7]
  assert _nearest_face(vids["000001"].face).tolist() == [0, 1, 1, 3, 4, 5, 5, 5]
  assert not vids["000002"].face.any()
  # windows carry the flag: `face` 0 on those frames, 1 elsewhere inside the video
  item = F.FeatureWindows([vids["000000"]], 8, 8)[0]
  np.testing.assert_array_equal(item["face"], vids["000000"].face.astype(np.float32))


def test_segmented_videos_are_joined(model, tmp_path):
  """Face shards written with --segment-frames: feature records mirror the segments, the readers
  join them back into one video in segment order."""
  faces = str(tmp_path / "faces")
  args = prep_cli.build_parser().parse_args([*SYN, "--out", faces, "--num-videos", "2",
                                             "--heldout-videos", "0", "--segment-frames", "3"])
  shards_lib.run(args.source, args)
  out = str(tmp_path / "feat")
  man = job.extract(faces, out, _embedder(model, 64, 8), stream="tiny", quiet=True)
  assert man["totals"]["videos"] == 6 and man["totals"]["frames"] == 16     # 3 segments each
  m, v = model
  cfg = _cfg(features=[dict(name="img", kind="shards", path=out, stream="tiny")])
  vids = F.load_videos(cfg, "train")
  assert [x.video_id for x in vids] == ["000000", "000001"]
  face = schema.read_manifest(faces)
  for x in vids:
    assert x.num_frames == 8
    np.testing.assert_array_equal(x.frame_index, np.arange(8))
    segs = sorted((r for r in face["records"] if r["id"] == x.video_id), key=lambda r: r["offset"])
    imgs = []
    for r in segs:
      with open(os.path.join(faces, r["file"]), "rb") as f:
        rec = schema.decode(schema.read_record_at(f, r["offset"]))
      imgs.append((rec.meta["segment"]["index"], schema.decode_frames(rec.jpegs)))
    imgs = np.concatenate([i for _, i in sorted(imgs, key=lambda t: t[0])])
    xs = imgs.astype(np.float32) / np.float32(255)
    direct = np.asarray(m.apply(v, jnp.asarray(xs), method="embed"))
    tolerances.assert_close_ulps(x.streams["img"], direct,
                                 magnitude=_tiny_magnitude(model)(xs, direct), ulps=TINY_ULPS,
                                 dtype=np.float32, err_msg=x.video_id)
