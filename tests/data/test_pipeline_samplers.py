"""Samplers over shard records: frames and per-frame labels travel together, padding is masked,
continuous labels are resampled to the frames at read time, vocabularies convert explicitly."""
import numpy as np
import pytest

from data_prep import cli as prep_cli
from data_prep import shards
from jaxaffect.data import parts, pipeline, samplers, schema, vocab
from tests.data.test_schema import make_record


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("syn")
  args = prep_cli.build_parser().parse_args(
      ["synthetic", "--src", "-", "--out", str(out), "--num-videos", "4", "--num-frames", "10",
       "--render-size", "48", "--size", "48", "--quiet", "--occlusion", "0"])
  shards.run("synthetic", args)
  return str(out)


def test_window_sampler_labels_follow_the_frames(shard_dir):
  src = pipeline.ShardRecords(shard_dir, "train")
  ex = src[2]
  rec = ex["record"]
  # Labels that differ frame by frame (the synthetic ones can be constant over 10 frames), so a
  # misaligned gather would show.
  rng = np.random.default_rng(1)
  rec.va = rng.uniform(-1, 1, (10, 2)).astype(np.float32)
  rec.expr = rng.integers(-1, 7, 10)
  rec.au = rng.integers(-1, 2, (10, 12))
  s = pipeline.FrameSampler("window", 48, train=True, window=6, stride=3, expr_vocab="abaw8")
  out = s(ex, np.random.default_rng(5))
  wins = samplers.sliding_windows(10, 6, 3, tail="pad")
  k = int(np.random.default_rng(5).integers(len(wins)))          # the draw the sampler made
  idx, valid = samplers.window_indices([wins[k]], 6)
  np.testing.assert_array_equal(out["va"], rec.va[idx[0]])
  np.testing.assert_array_equal(out["expr"], vocab.convert(rec.expr, "dfew7", "abaw8")[idx[0]])
  np.testing.assert_array_equal(out["au"], np.maximum(rec.au[idx[0]], 0))
  v = valid[0]                                   # padding positions are never labelled
  np.testing.assert_array_equal(out["au_mask"], (rec.au[idx[0]] >= 0) & v[:, None])
  np.testing.assert_array_equal(out["expr_mask"], (rec.expr[idx[0]] >= 0) & v)
  np.testing.assert_array_equal(out["valid"], valid[0])
  # A window longer than the video: padding positions are invalid and unlabelled.
  ev = pipeline.FrameSampler("window", 48, train=False, window=16, stride=16)(ex)
  assert ev["video"].shape == (16, 48, 48, 3)
  np.testing.assert_array_equal(ev["valid"], np.arange(16) < 10)
  assert ev["va_mask"][10:].sum() == 0 and ev["au_mask"][10:].sum() == 0 and ev["face"][10:].sum() == 0
  np.testing.assert_array_equal(ev["video"][:10], schema.decode_frames(rec.jpegs))


def test_est_and_frame_samplers(shard_dir):
  src = pipeline.ShardRecords(shard_dir, "train")
  ex = src[1]
  rec = ex["record"]
  est = pipeline.FrameSampler("est", 48, train=False)(ex)
  want = schema.decode_frames(rec.jpegs, samplers.est_indices(10, train=False).ravel())
  np.testing.assert_array_equal(est["video"], want)
  assert est["video"].shape == (35, 48, 48, 3) and est["label"] == rec.label
  rec.va = np.random.default_rng(2).uniform(-1, 1, (10, 2)).astype(np.float32)
  fr = pipeline.FrameSampler("frame", 48, train=False)(ex)
  i = int(samplers.frame_index(10, train=False)[0])
  np.testing.assert_array_equal(fr["image"], schema.decode_frames(rec.jpegs, [i])[0])
  np.testing.assert_array_equal(fr["va"], rec.va[i])
  # Training augmentation: same crop + flip for all frames (identical frames stay identical).
  rec2 = schema.decode(schema.encode(rec))
  rec2.jpegs = [rec.jpegs[0]] * len(rec.jpegs)
  aug = pipeline.FrameSampler("window", 32, train=True, window=5, stride=5, crop="resized_crop",
                              color_jitter=0.4)({"record": rec2, "label": 0},
                                                np.random.default_rng(0))
  assert aug["video"].shape == (5, 32, 32, 3)
  assert all(np.array_equal(aug["video"][0], f) for f in aug["video"][1:])


def test_series_labels_are_resampled_at_read_time():
  r, _ = make_record(t=6)
  r.va = None
  r.t_sec = (np.arange(6) / 30.0).astype(np.float32)          # 30 fps frames, 25 Hz labels
  times = np.arange(9) * 0.04
  vals = np.stack([np.sin(times), np.cos(times)], 1)
  r.series = {"va": {"times": times, "values": vals, "columns": ("valence", "arousal"),
                     "rate_hz": 25.0}}
  rec = schema.decode(schema.encode(r))
  lab = pipeline.frame_labels(rec, np.arange(6))
  want_v = np.interp(r.t_sec, times.astype(np.float32), vals[:, 0].astype(np.float32))
  np.testing.assert_allclose(lab["va"][:, 0], want_v, atol=1e-6)
  assert lab["va_mask"].all()
  rec.t_sec[:] = np.nan
  with pytest.raises(ValueError, match="frame/t_sec"):
    pipeline.frame_labels(rec, np.arange(6))


def test_expr_vocabulary_mismatch_is_an_error():
  r, _ = make_record(t=4)
  r.expr = np.array([0, 7, -1, 2])                        # abaw8: Neutral, Other, -, Disgust
  rec = schema.decode(schema.encode(r))
  np.testing.assert_array_equal(pipeline.frame_labels(rec, np.arange(4))["expr"], [0, 7, -1, 2])
  with pytest.raises(ValueError, match=r"\['Other'\] of 'abaw8' have no counterpart in 'dfew7'"):
    pipeline.frame_labels(rec, np.arange(4), expr_vocab="dfew7")


def test_eval_padding_rows_carry_no_labels(shard_dir):
  import ml_collections
  cfg = parts.from_flat(dict(sampler="window", image_size=48, window=12, stride=12,
                             hflip=False, expr_vocab="", crop=""))
  src = pipeline.ShardRecords(shard_dir, "train")
  (b,) = list(pipeline.eval_batches(src, cfg, 8))          # 4 videos + 4 padding rows
  np.testing.assert_array_equal(b["mask"], [1, 1, 1, 1, 0, 0, 0, 0])
  for k in ("valid", "face", "va_mask", "expr_mask", "au_mask"):
    assert b[k][4:].sum() == 0 and b[k][:4].sum() > 0, k


def test_unlabelled_records_are_masked_and_unknown_vocab_refused(tmp_path):
  r, _ = make_record(t=4)
  r.label = -1
  ex = pipeline.record_to_example(schema.decode(schema.encode(r)), 0, "dfew7")
  out = pipeline.VideoClip(2, 1, 24, train=False)(ex)
  # a real example (mask 1) without clip label (label_mask 0): out of clip losses and metrics
  assert out["mask"] == 1 and out["label_mask"] == 0 and out["label"] == 0
  r.label, r.vocab = 3, ""
  with pytest.raises(ValueError, match="'video/vocab' is empty"):
    pipeline.record_to_example(schema.decode(schema.encode(r)), 0, "dfew7")


def test_synthetic_in_memory_source_converts_labels_like_shards():
  """Issue 10, bug 5: `est:smoke` without `shards=` (in-memory synthetic videos) converts the
  generator's dfew7 classes to `label_vocab=dfew7_alpha`, as the shard reader does: each label
  names, in `config.data.class_names`, the expression the video shows."""
  from configs import est as est_cfg
  from jaxaffect.data import synthetic
  c = est_cfg.get_config("smoke")
  assert c.data.source.name == "synthetic" and c.data.label_vocab == "dfew7_alpha"
  c.unlock()
  c.data.source.num_train, c.data.source.num_eval, c.data.source.video_frames, c.data.image_size = 14, 7, 4, 16
  tr, ev = pipeline.build_sources(c.data)
  common = dict(num_frames=4, size=16, pose_amount=c.data.source.pose,
                occlusion_prob=c.data.source.occlusion)
  gen = synthetic.generate_dataset(14, seed=c.data.source.seed, **common)["label"]
  shown = [synthetic.EXPRESSIONS[int(g)] for g in gen]
  assert len(set(shown)) > 3
  assert [c.data.class_names[int(tr[i]["label"])] for i in range(14)] == shown
  assert [vocab.names("dfew7_alpha")[int(tr[i]["label"])] for i in range(14)] == shown
  c.data.label_vocab = "abaw7"                  # an impossible map would be refused, not guessed
  assert pipeline.build_sources(c.data)[0][0]["label"] >= 0
  c.data.label_vocab = "basic6_alpha"           # no Neutral in the target: refused at start-up
  with pytest.raises(ValueError, match="label_vocab='basic6_alpha'"):
    pipeline.build_sources(c.data)


def test_impossible_vocabulary_map_is_refused_at_start_up(shard_dir):
  """Issue 10: a label map that cannot hold the data is found when the sources are built (from
  the manifest), not when the first offending record is read mid-run."""
  import ml_collections
  m = schema.read_manifest(shard_dir)
  labels = {r["label"] for r in m["records"]}
  assert 2 in labels or any(r["expr_hist"][2] for r in m["records"])   # Neutral (dfew7) present
  base = dict(source="shards", shards=shard_dir, train_select="train", eval_select="train")
  if 2 in labels:
    cfg = parts.from_flat(dict(base, label_vocab="basic6_alpha"))
    with pytest.raises(ValueError, match=r"label_vocab='basic6_alpha'.*\['Neutral'\]"):
      pipeline.build_sources(cfg)
  cfg = parts.from_flat(dict(base, expr_vocab="basic6_alpha"))
  with pytest.raises(ValueError, match=r"expr_vocab='basic6_alpha'.*'frame/expr'"):
    pipeline.build_sources(cfg)
  for ok in (dict(base, label_vocab="dfew7_alpha", expr_vocab="abaw8"), dict(base)):
    tr, _ = pipeline.build_sources(parts.from_flat(ok))
    assert len(tr) == 4
