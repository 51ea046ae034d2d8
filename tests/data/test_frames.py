"""Frame-level sources and the `frame_views` sampler: item counts, per-epoch K-subsets, landmarks
that follow the augmented image, two views of one frame, eval coverage with masked padding."""
import ml_collections
import numpy as np
import pytest

from data_prep import cli as prep_cli
from data_prep import shards
from jaxaffect.data import augment, frames, parts, pipeline
from jaxaffect.errors import UserError


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("synf")
  args = prep_cli.build_parser().parse_args(
      ["synthetic", "--src", "-", "--out", str(out), "--num-videos", "4", "--num-frames", "10",
       "--render-size", "48", "--size", "48", "--quiet", "--occlusion", "0"])
  shards.run("synthetic", args)
  return str(out)


def _cfg(shard_dir, **kw):
  d = dict(source="shards", shards=shard_dir, sampler="frame_views", image_size=32,
           train_select="train", eval_select="train", num_views=2, frames_per_video=0,
           crop="resized_crop", hflip=True, color_jitter=0.0, read_threads=1, prefetch_batches=1)
  d.update(kw)
  return parts.from_flat(d)


# ------------------------------------------------------------------------------ augment params
def test_flip_permutation_is_an_involution():
  p = augment.IBUG68_MIRROR
  np.testing.assert_array_equal(p[p], np.arange(68))
  assert p[36] == 45 and p[45] == 36 and p[8] == 8 and p[30] == 30


def _dot_image(h, w, x, y):
  img = np.zeros((h, w, 3), np.uint8)
  img[y, x] = 255
  return img


def _brightest(img):
  g = img.astype(np.float32).sum(-1)
  i, j = np.unravel_index(np.argmax(g), g.shape)
  return np.array([j, i], np.float32)


def _centroid(img):
  """Intensity-weighted centre (x, y) of the pixels above half the maximum (a dot's centre)."""
  g = img.astype(np.float32).sum(-1)
  w = np.where(g >= g.max() / 2, g, 0)
  ys, xs = np.mgrid[:g.shape[0], :g.shape[1]]
  return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()], np.float32)


@pytest.mark.parametrize("crop,flip_prob", [("resized_crop", 0.0), ("resized_crop", 1.0),
                                            ("zoom", 1.0), (None, 1.0), (None, 0.0)])
def test_dot_follows_transformed_landmark(crop, flip_prob):
  rng0 = np.random.default_rng(3)
  lm = rng0.uniform(20, 44, (68, 2)).astype(np.float32).round()
  checked = 0
  for seed in range(12):
    k = 36
    img = _dot_image(64, 64, int(lm[k, 0]), int(lm[k, 1]))
    out, params = augment.augment_clip(img[None], np.random.default_rng(seed), size=40, crop=crop,
                                       scale=(0.3, 1.0), flip_prob=flip_prob)
    assert params.size == (40, 40)
    t = augment.transform_points(lm, params)
    # After a flip, point k of the original is point IBUG68_MIRROR[k] of the result.
    j = augment.IBUG68_MIRROR[k] if params.flip else k
    assert params.flip == (flip_prob == 1.0)
    if not (0 <= t[j, 0] <= 39 and 0 <= t[j, 1] <= 39) or out[0].max() < 20:
      continue                          # the crop cut the dot out
    assert np.abs(_brightest(out[0]) - t[j]).max() <= 1.0, (seed, params, t[j])
    checked += 1
  assert checked >= 4


# ------------------------------------------------------------------------------------ sources
def test_every_face_frame_and_k_per_video(shard_dir):
  recs = pipeline.ShardRecords(shard_dir, "train")
  faces = [int(recs[i]["record"].face_found.sum()) for i in range(len(recs))]
  every = frames.FrameRecords(recs, 0)
  assert len(every) == sum(faces)
  seen = {(int(every[i]["index"]), int(every[i]["candidates"][0])) for i in range(len(every))}
  want = {(r, int(f)) for r in range(len(recs))
          for f in np.flatnonzero(recs[r]["record"].face_found)}
  assert seen == want
  k3 = frames.FrameRecords(recs, 3)
  assert len(k3) == 3 * sum(f > 0 for f in faces)
  with pytest.raises(IndexError):
    every[len(every)]
  with pytest.raises(UserError, match="frames_per_video"):
    frames.FrameRecords(recs, -1)
  with pytest.raises(UserError, match="frames_per_video"):
    pipeline.build_sources(_cfg(shard_dir, frames_per_video=-2))
  with pytest.raises(UserError, match=r"sampler.name='frame_views' reads only data.source "
                                      r"\['shards'\], not 'synthetic'"):
    pipeline.build_sources(_cfg(shard_dir, source="synthetic"))
  with pytest.raises(UserError, match="num_views"):
    pipeline.make_clip(_cfg(shard_dir, num_views=3), train=True)


def _epochs(cfg, n_items, seed, epochs=2):
  tr, _ = pipeline.build_sources(cfg)
  it = pipeline.train_iterator(tr, cfg, global_batch=n_items, seed=seed)
  out = []
  for _ in range(epochs):
    b = next(it)
    out.append(sorted(zip(b["index"].tolist(), b["frame"].tolist())))
  return out


def test_k_subsets_change_per_epoch_and_are_deterministic(shard_dir):
  cfg = _cfg(shard_dir, frames_per_video=3, num_views=1)
  n = len(pipeline.build_sources(cfg)[0])
  a = _epochs(cfg, n, seed=7, epochs=3)
  assert a == _epochs(cfg, n, seed=7, epochs=3)
  assert a[0] != a[1] or a[1] != a[2]
  for ep in a:                                  # K per video, spread over the video's strata
    per = {}
    for r, f in ep:
      per.setdefault(r, []).append(f)
    assert all(len(v) == 3 for v in per.values())
    assert all(len(set(v)) == 3 for v in per.values())   # one frame per stratum (10 face frames)


# ------------------------------------------------------------------------------------- sampler
def test_frame_views_landmarks_follow_the_image(shard_dir):
  recs = pipeline.ShardRecords(shard_dir, "train")
  ex = frames.FrameRecords(recs, 0)[3]
  rec = ex["record"]
  i = int(ex["candidates"][0])
  assert np.isfinite(rec.landmarks[i]).all()
  # Replace the frame by a dot at landmark 45 (the JPEG round trip blurs it a little).
  k = 45
  x, y = (int(round(v)) for v in rec.landmarks[i, k])
  from jaxaffect.data import schema
  img = np.full((48, 48, 3), 0, np.uint8)
  img[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = 255
  rec.jpegs = list(rec.jpegs)
  rec.jpegs[i] = schema.encode_jpeg(img, quality=100)
  rec.landmarks = rec.landmarks.copy()
  rec.landmarks[i, k] = (x, y)
  s = pipeline.make_clip(_cfg(shard_dir, image_size=40), train=True)
  checked = flips = 0
  for seed in range(16):
    out = s(ex, np.random.default_rng(seed))
    assert out["image"].shape == (40, 40, 3) and out["image"].dtype == np.uint8
    assert out["landmarks"].shape == (68, 2) and out["landmarks"].dtype == np.float32
    assert out["frame"] == i and out["landmarks_mask"] == 1
    for v, lk in (("image", "landmarks"), ("view_2", "landmarks_2")):
      lm = out[lk]
      # Which index holds the dot: k without a flip, IBUG68_MIRROR[k] with one; the dot lies at
      # exactly one of the two transformed positions.
      cands = [lm[k], lm[augment.IBUG68_MIRROR[k]]]
      if out[v].max() < 100:
        continue
      if out[v].reshape(-1, 3)[:, 0].reshape(40, 40)[[0, -1]].max() > 100 or \
         out[v][:, [0, -1]].max() > 100:
        continue                         # the dot is cut by the crop's border
      pos = _centroid(out[v])
      d = [np.abs(pos - c).max() for c in cands]
      assert min(d) <= 1.0, (seed, v, pos, cands)
      flips += int(d[1] < d[0])
      checked += 1
  assert checked >= 10 and flips >= 1


def test_two_views_one_frame_and_eval(shard_dir):
  cfg = _cfg(shard_dir)
  tr, ev = pipeline.build_sources(cfg)
  assert isinstance(tr, frames.FrameRecords) and isinstance(ev, frames.FrameRecords)
  s = pipeline.make_clip(cfg, train=True)
  out = s(tr[5], np.random.default_rng(0))
  assert out["view_2"].shape == out["image"].shape == (32, 32, 3)
  assert not np.array_equal(out["view_2"], out["image"])
  assert not np.allclose(out["landmarks"], out["landmarks_2"])
  rec = tr[5]["record"]
  assert out["frame"] == int(tr[5]["candidates"][0]) and out["label"] == max(rec.label, 0)
  if rec.va is not None:
    np.testing.assert_array_equal(out["va"], rec.va[out["frame"]])
  e = pipeline.make_clip(cfg, train=False)(ev[5])
  np.testing.assert_array_equal(e["image"], e["view_2"])       # eval: two identical views
  np.testing.assert_array_equal(e["landmarks"], e["landmarks_2"])
  # Every eval item once, the padding masked.
  n = len(ev)
  bs = 8
  batches = list(pipeline.eval_batches(ev, cfg, bs))
  assert len(batches) == -(-n // bs)
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == n and (mask[n:] == 0).all()
  got = sorted(zip(np.concatenate([b["index"] for b in batches])[:n].tolist(),
                   np.concatenate([b["frame"] for b in batches])[:n].tolist()))
  want = sorted((int(ev[i]["index"]), int(ev[i]["candidates"][0])) for i in range(n))
  assert got == want
  pad = batches[-1]
  if n % bs:
    assert (pad["label_mask"][n % bs:] == 0).all() and (pad["landmarks_mask"][n % bs:] == 0).all()


def test_spec_sources_shapes(shard_dir):
  cfg = _cfg(shard_dir)
  spec = pipeline.spec_sources(cfg)
  b = pipeline.batch_spec(spec, cfg, 4)
  assert b["image"].shape == (4, 32, 32, 3) and b["view_2"].shape == (4, 32, 32, 3)
  assert b["landmarks"].shape == (4, 68, 2) and b["landmarks_2"].shape == (4, 68, 2)
  real = pipeline.batch_spec(pipeline.build_sources(cfg)[1], cfg, 4)
  for k in ("image", "view_2", "landmarks", "landmarks_2", "mask", "label_mask", "label"):
    assert b[k] == real[k], k


def test_frame_views_needs_68_landmarks(shard_dir):
  recs = pipeline.ShardRecords(shard_dir, "train")
  ex = frames.FrameRecords(recs, 0)[0]
  ex["record"].landmarks = ex["record"].landmarks[:, :5]
  with pytest.raises(UserError, match="frame/landmarks"):
    pipeline.make_clip(_cfg(shard_dir), train=False)(ex)
