"""Feature-stream readers (jaxaffect/data/features.py): ABAW-style npy folders with gaps, per-video
arrays, Aff-Wild2 txt labels (-1 / -5), audio at its own rate interpolated to the frames, the
nearest-face fill, windows (every eval frame once), merging, pipeline dispatch and error messages.

Feature shards (`python -m data_prep features`) are read in tests/data_prep/test_features_job.py.
"""
from __future__ import annotations

import os

import ml_collections
import numpy as np
import pytest

from jaxaffect.data import affwild2
from jaxaffect.data import features as F
from jaxaffect.data import parts, pipeline

AU12 = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
EXPR8 = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"


# ------------------------------------------------------------------------------------ fill_nearest
def test_fill_nearest_hand_example():
  feat = np.arange(8, dtype=np.float32)[:, None] * np.array([[1.0, 10.0]], np.float32)
  valid = np.array([0, 0, 1, 0, 0, 1, 0, 0], bool)
  out = F.fill_nearest(feat, valid)
  # 0,1 -> 2 (only after); 3 -> 2 (nearer); 4 -> 5; 6, 7 -> 5 (only before)
  np.testing.assert_array_equal(out[:, 0], [2, 2, 2, 2, 5, 5, 5, 5])
  np.testing.assert_array_equal(out[:, 1], 10 * out[:, 0])
  tie = F.fill_nearest(np.arange(3, dtype=np.float32)[:, None], np.array([1, 0, 1], bool))
  np.testing.assert_array_equal(tie[:, 0], [0, 0, 2])            # a tie takes the earlier frame
  none = F.fill_nearest(feat, np.zeros(8, bool))
  np.testing.assert_array_equal(none, feat)
  with pytest.raises(ValueError, match="valid has shape"):
    F.fill_nearest(feat, np.ones(7, bool))


# ------------------------------------------------------------------------------------- fixtures
def _write_txt(path, header, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(header + "\n")
    for r in rows:
      f.write(r + "\n")


@pytest.fixture()
def abaw(tmp_path):
  """Two train videos and one val video, ABAW layout: annotations, per-frame npy with gaps,
  per-video arrays, audio arrays at 50 Hz (shared by the _left/_right pair)."""
  rng = np.random.default_rng(0)
  ann = tmp_path / "ann"
  T = {"vidA": 7, "vidB_left": 5, "vidC": 4}
  split = {"vidA": "Train_Set", "vidB_left": "Train_Set", "vidC": "Validation_Set"}
  truth = {}
  for vid, t in T.items():
    va = rng.uniform(-1, 1, (t, 2)).round(3)
    va[1] = -5                                                # not annotated
    expr = rng.integers(0, 8, t)
    expr[2] = -1
    au = rng.integers(0, 2, (t, 12))
    au[3, 4] = -1
    _write_txt(str(ann / "VA_Estimation_Challenge" / split[vid] / f"{vid}.txt"), "valence,arousal",
               [f"{a},{b}" for a, b in va])
    # EXPR annotated for fewer lines on vidA: padded with -1
    ne = t - 2 if vid == "vidA" else t
    _write_txt(str(ann / "EXPR_Classification_Challenge" / split[vid] / f"{vid}.txt"), EXPR8,
               [str(e) for e in expr[:ne]])
    if vid != "vidC":                                         # vidC has no AU file
      _write_txt(str(ann / "AU_Detection_Challenge" / split[vid] / f"{vid}.txt"), AU12,
                 [",".join(map(str, r)) for r in au])
    truth[vid] = dict(t=t, va=va, expr=expr, ne=ne, au=au)
  mae = tmp_path / "feats" / "mae"
  gaps = {"vidA": {1, 4, 5}, "vidB_left": {1}, "vidC": set()}        # 1-based frame numbers
  for vid, t in T.items():
    f = rng.normal(size=(t, 6)).astype(np.float32)
    truth[vid]["mae"] = f
    os.makedirs(mae / vid)
    for i in range(1, t + 1):
      if i not in gaps[vid]:
        np.save(mae / vid / f"{i:05d}.npy", f[i - 1][None])    # (1, D) as ABAW6 saves them
  arc = tmp_path / "feats" / "arcface"
  os.makedirs(arc)
  for vid, t in T.items():
    a = rng.normal(size=(t, 3)).astype(np.float32)
    truth[vid]["arc"] = a
    if vid == "vidC":
      np.savez(arc / f"{vid}.npz", feats=a)
    else:
      np.save(arc / f"{vid}.npy", a)
  wav = tmp_path / "feats" / "wav"
  os.makedirs(wav)
  for vid in ("vidA", "vidB", "vidC"):                       # vidB: shared by vidB_left
    n = 50 * 2                                                # 2 s at 50 Hz
    w = rng.normal(size=(n, 4)).astype(np.float32)
    truth[vid.replace("vidB", "vidB_left")]["wav"] = w
    np.save(wav / f"{vid}.npy", w)
  return dict(root=tmp_path, ann=str(ann), mae=str(mae), arc=str(arc), wav=str(wav), gaps=gaps,
              truth=truth)


def _cfg(abaw, **kw):
  c = dict(
      source="features", sampler="feature_windows", labels=abaw["ann"], fps=30.0, window=4,
      stride=2, eval_stride=0,
      train_select="train", eval_select="val", expr_vocab="", num_au=12, fps_csv="",
      feature_dropout=0.0,
      features=[dict(name="mae", kind="npy", path=abaw["mae"]),
                dict(name="arcface", kind="npy", path=abaw["arc"], key="feats"),
                dict(name="wav", kind="array", path=abaw["wav"], rate_hz=50.0)])
  c.update(kw)
  return parts.from_flat(c)


# ---------------------------------------------------------------------------------------- readers
def test_abaw_npy_arrays_audio_and_affwild2_labels(abaw):
  vids = {v.video_id: v for v in F.iter_videos(_cfg(abaw), "all")}
  assert sorted(vids) == ["vidA", "vidB_left", "vidC"]
  for vid, tr in abaw["truth"].items():
    v = vids[vid]
    t = tr["t"]
    assert v.split == ("val" if vid == "vidC" else "train")
    np.testing.assert_array_equal(v.frame_index, np.arange(1, t + 1))
    np.testing.assert_allclose(v.t_sec, np.arange(t) / 30.0, rtol=0, atol=1e-7)
    face = np.array([i + 1 not in abaw["gaps"][vid] for i in range(t)])
    np.testing.assert_array_equal(v.face, face)
    # per-frame files: present rows exact, gaps from the nearest frame with a face
    good = np.flatnonzero(face)
    near = [i if face[i] else good[np.argmin(np.abs(good - i) * 2 + (good > i))] for i in range(t)]
    np.testing.assert_array_equal(v.streams["mae"], tr["mae"][near])
    # per-video arrays: filled on the same no-face frames (face is joined over streams)
    np.testing.assert_array_equal(v.streams["arcface"], tr["arc"][near])
    # audio at 50 Hz: linear interpolation at the frame times = np.interp per column
    ts = np.arange(t) / 30.0
    exp = np.stack([np.interp(ts.astype(np.float32), np.arange(100) / 50.0, tr["wav"][:, d])
                    for d in range(4)], -1).astype(np.float32)
    np.testing.assert_allclose(v.streams["wav"], exp, rtol=0, atol=1e-6)
    # labels: -5 VA masked (value 0), -1 EXPR masked (incl. the padded lines), AU per unit
    va_ok = np.all(tr["va"] > -5, -1)
    np.testing.assert_array_equal(v.labels["va_mask"], va_ok.astype(np.float32))
    np.testing.assert_allclose(v.labels["va"], np.where(va_ok[:, None], tr["va"], 0), atol=1e-7)
    e = np.full(t, -1)
    e[:tr["ne"]] = tr["expr"][:tr["ne"]]
    np.testing.assert_array_equal(v.labels["expr_mask"], (e >= 0).astype(np.float32))
    np.testing.assert_array_equal(v.labels["expr"], np.maximum(e, 0))
    assert v.labels["expr"].dtype == np.int32
    if vid == "vidC":
      assert not v.labels["au_mask"].any() and v.labels["au"].shape == (t, 12)
    else:
      np.testing.assert_array_equal(v.labels["au_mask"], (tr["au"] >= 0).astype(np.float32))
      np.testing.assert_array_equal(v.labels["au"], np.maximum(tr["au"], 0))
    assert v.label == -1


def test_audio_interpolated_at_video_fps_and_ends_held(abaw):
  """An fps table entry (for the pair's shared name) moves the frame times; frames after the last
  audio sample hold it, as np.interp does."""
  csv = abaw["root"] / "fps.csv"
  csv.write_text("video,fps\nvidB,1.5\n")
  v = {x.video_id: x for x in F.iter_videos(_cfg(abaw, fps_csv=str(csv)), "train")}["vidB_left"]
  ts = np.arange(5) / 1.5                                      # 0 .. 2.67 s; audio ends at 1.98 s
  np.testing.assert_allclose(v.t_sec, ts, atol=1e-6)
  w = abaw["truth"]["vidB_left"]["wav"]
  exp = np.stack([np.interp(ts.astype(np.float32), np.arange(100) / 50.0, w[:, d])
                  for d in range(4)], -1)
  np.testing.assert_allclose(v.streams["wav"], exp, atol=1e-6)
  np.testing.assert_array_equal(v.streams["wav"][-1], w[-1])


def test_unlabelled_streams(abaw):
  cfg = _cfg(abaw, labels="")
  cfg.source.features = [dict(name="mae", kind="npy", path=abaw["mae"])]
  vids = {v.video_id: v for v in F.iter_videos(cfg, "all")}
  assert sorted(vids) == ["vidA", "vidB_left", "vidC"]
  assert vids["vidA"].num_frames == 7 and not vids["vidA"].labels["va_mask"].any()
  # vidB_left's frame 1 is a gap, its last file is 5: T = 5
  assert vids["vidB_left"].num_frames == 5 and not vids["vidB_left"].face[0]
  with pytest.raises(ValueError, match="only 'all'"):
    list(F.iter_videos(cfg, "train"))


def test_affwild2_labels_of_every_edition(tmp_path):
  """The reader's Aff-Wild2 labels under the ABAW1/2 names (VA_Set, 7-class EXPR_Set, 8-unit
  AU_Set) and the ABAW6 EXPR_Recognition_Challenge, read through the shared parser
  (jaxaffect.data.affwild2): sentinels masked, 7 classes converted to 8 on request, a `_right`
  track finds its fps under the shared name; two editions of one task are refused."""
  old = tmp_path / "abaw2"
  _write_txt(str(old / "VA_Set" / "Train_Set" / "v_right.txt"), "valence,arousal",
             ["0.5,-0.25", "-5,-5", "1,-1"])
  _write_txt(str(old / "EXPR_Set" / "Train_Set" / "v_right.txt"), EXPR8.rsplit(",", 1)[0],
             ["6", "-1", "0", "3"])
  au8 = [[1, 0, 0, 0, 1, 0, 1, 0], [-1, 1, 0, 0, 0, 0, 0, 1]]
  _write_txt(str(old / "AU_Set" / "Validation_Set" / "w.txt"),
             "AU1,AU2,AU4,AU6,AU12,AU15,AU20,AU25", [",".join(map(str, r)) for r in au8])
  fps = tmp_path / "fps.csv"
  fps.write_text("video,fps\nv,25\n")
  cfg = ml_collections.ConfigDict(dict(labels=str(old), num_au=8, expr_vocab="abaw8", fps=0.0,
                                       fps_csv=str(fps)))
  tls = {(t.split, t.video_id): t for t in F.affwild2_timelines(str(old), "all", cfg)}
  assert sorted(tls) == [("train", "v_right"), ("val", "w")]
  v, w = tls["train", "v_right"], tls["val", "w"]
  np.testing.assert_array_equal(v.frame_index, [1, 2, 3, 4])        # T = 4 EXPR lines > 3 VA
  np.testing.assert_allclose(v.t_sec, np.arange(4) / 25.0, atol=1e-7)
  np.testing.assert_array_equal(v.labels["va_mask"], [1, 0, 1, 0])   # -5 and the padded line
  np.testing.assert_array_equal(v.labels["va"], [[0.5, -0.25], [0, 0], [1, -1], [0, 0]])
  np.testing.assert_array_equal(v.labels["expr"], [6, 0, 0, 3])      # abaw7 -> abaw8: same index
  np.testing.assert_array_equal(v.labels["expr_mask"], [1, 0, 1, 1])
  assert not v.labels["au_mask"].any() and v.labels["au"].shape == (4, 8)
  np.testing.assert_array_equal(w.labels["au"], np.maximum(au8, 0))
  np.testing.assert_array_equal(w.labels["au_mask"], np.asarray(au8) >= 0)
  assert np.isnan(w.t_sec).all()                                    # not in the fps table
  with pytest.raises(ValueError, match=r"w.txt: 8 action units \(AU1,.*AU25\), config "
                                       r"data.source.num_au=12"):
    F.affwild2_timelines(str(old), "val", dict(cfg, num_au=12))
  # ABAW6's EXPR folder name; 8 classes
  new = tmp_path / "abaw6"
  _write_txt(str(new / "EXPR_Recognition_Challenge" / "Validation_Set" / "x.txt"), EXPR8,
             ["7", "-1"])
  (x,) = F.affwild2_timelines(str(new), "val", dict(cfg, labels=str(new), fps_csv=""))
  np.testing.assert_array_equal(x.labels["expr"], [7, 0])
  np.testing.assert_array_equal(x.labels["expr_mask"], [1, 0])
  _write_txt(str(new / "annotations" / "EXPR_Classification_Challenge" / "Train_Set" / "x.txt"),
             EXPR8, ["1"])
  with pytest.raises(ValueError, match=r"several EXPR annotation folders .* point data.source.labels at "
                                       r"one ABAW edition"):
    F.affwild2_timelines(str(new), "val", cfg)


# ----------------------------------------------------------------------------------------- errors
def test_errors_name_stream_video_file_field(abaw):
  os.remove(os.path.join(abaw["arc"], "vidA.npy"))
  with pytest.raises(ValueError, match=r"stream 'arcface': no features for video 'vidA'"):
    list(F.iter_videos(_cfg(abaw), "train"))
  np.save(os.path.join(abaw["arc"], "vidA.npy"), np.zeros((6, 3), np.float32))
  with pytest.raises(ValueError, match=r"stream 'arcface': .*vidA.npy has 6 rows, video 'vidA' "
                                       r"has 7 frames"):
    list(F.iter_videos(_cfg(abaw), "train"))
  os.remove(os.path.join(abaw["arc"], "vidA.npy"))
  np.savez(os.path.join(abaw["arc"], "vidA.npz"), a=np.zeros((7, 3)), b=np.zeros((7, 3)))
  with pytest.raises(ValueError, match=r"holds arrays \['a', 'b'\]"):
    cfg = _cfg(abaw)
    cfg.source.features[1]["key"] = ""
    list(F.iter_videos(cfg, "train"))
  # frame times unknown: a rate stream cannot be placed
  with pytest.raises(ValueError, match=r"stream 'wav' \(rate_hz=50.0\): video 'vidC' has unknown "
                                       r"frame times"):
    list(F.iter_videos(_cfg(abaw, fps=0.0), "val"))
  cfg = _cfg(abaw)
  cfg.source.features[0]["dim"] = 7
  with pytest.raises(ValueError, match=r"stream 'mae': video 'vidC' has 6-wide features, the "
                                       r"config says dim=7"):
    list(F.iter_videos(cfg, "val"))
  # annotation values: file, line and field
  bad = os.path.join(abaw["ann"], "VA_Estimation_Challenge", "Validation_Set", "vidC.txt")
  _write_txt(bad, "valence,arousal", ["0.1,0.2", "0.3,3.0"])
  with pytest.raises(affwild2.AnnotationError,
                     match=r"vidC.txt:3 field 'arousal': unknown label value 3.0") as e:
    list(F.iter_videos(_cfg(abaw), "val"))
  assert (e.value.path, e.value.line, e.value.field, e.value.item) == (bad, 3, "arousal", "vidC")
  _write_txt(bad, "valence,arousal", ["0.1,0.2", "x,0.1"])
  with pytest.raises(ValueError, match=r"vidC.txt:3 field 'valence': expected a number, found 'x'"):
    list(F.iter_videos(_cfg(abaw), "val"))
  _write_txt(bad, "valence,arousal", ["0.1,0.2", "nan,0.1"])
  with pytest.raises(ValueError, match=r"vidC.txt:3 field 'valence': unknown label value nan"):
    list(F.iter_videos(_cfg(abaw), "val"))
  _write_txt(bad, "arousal,valence", ["0.1,0.2"])
  with pytest.raises(ValueError, match=r"vidC.txt:1 field 'valence': header column 1: expected "
                                       r"'valence', found 'arousal'"):
    list(F.iter_videos(_cfg(abaw), "val"))
  with pytest.raises(ValueError, match=r"features\[0\] \(mae\): kind='csv'"):
    F.stream_specs(ml_collections.ConfigDict(dict(features=[dict(name="mae", kind="csv",
                                                                 path=abaw["mae"])])))
  with pytest.raises(ValueError, match="rate_hz=50.0 needs kind='array'"):
    F.stream_specs(ml_collections.ConfigDict(dict(features=[dict(name="m", kind="npy",
                                                                 path=abaw["mae"], rate_hz=50)])))


def test_stream_missing_a_video_of_the_labels(abaw):
  import shutil
  shutil.rmtree(os.path.join(abaw["mae"], "vidC"))
  with pytest.raises(ValueError, match=r"stream 'mae': no features for video 'vidC'"):
    list(F.iter_videos(_cfg(abaw), "val"))


# ---------------------------------------------------------------------------------------- windows
def _video(t, d=3, seed=0, label=2):
  rng = np.random.default_rng(seed)
  lab = F._empty_labels(t, 12)
  lab["va"] = rng.uniform(-1, 1, (t, 2)).astype(np.float32)
  lab["va_mask"] = np.ones(t, np.float32)
  lab["expr"] = rng.integers(0, 8, t).astype(np.int32)
  lab["expr_mask"] = np.ones(t, np.float32)
  lab["au"] = rng.integers(0, 2, (t, 12)).astype(np.float32)
  lab["au_mask"] = np.ones((t, 12), np.float32)
  face = rng.random(t) > 0.2
  return F.VideoFeatures(f"v{seed}", {"a": rng.normal(size=(t, d)).astype(np.float32),
                                      "b": rng.normal(size=(t, 2)).astype(np.float32)},
                         face, np.arange(t), np.arange(t, dtype=np.float32) / 30, lab, label=label,
                         split="train")


def test_train_windows_300_200_and_items():
  v = _video(650)
  src = F.FeatureWindows([v], 300, 200)
  assert [(s, e) for _, s, e in src.items] == [(0, 300), (200, 500), (400, 650)]
  it = src[2]
  assert it["feat/a"].shape == (300, 3) and it["feat/a"].dtype == np.float32
  assert it["feat/b"].shape == (300, 2)
  np.testing.assert_array_equal(it["feat/a"][:250], v.streams["a"][400:650])
  np.testing.assert_array_equal(it["valid"], np.r_[np.ones(250), np.zeros(50)])
  np.testing.assert_array_equal(it["face"][:250], v.face[400:].astype(np.float32))
  for k in ("va_mask", "expr_mask", "au_mask", "face"):
    assert not it[k][250:].any(), k                                 # nothing labelled on padding
  np.testing.assert_array_equal(it["va"][:250], v.labels["va"][400:])
  np.testing.assert_array_equal(it["expr"][:250], v.labels["expr"][400:])
  assert it["expr"].dtype == np.int32 and it["au"].shape == (300, 12)
  assert it["mask"] == 1 and it["label"] == 2 and it["label"].dtype == np.int32
  assert it["video_index"] == 0 and it["start"] == 400


def test_eval_windows_count_every_frame_once():
  vids = [_video(t, seed=i) for i, t in enumerate((7, 12, 1, 5))]
  src = F.FeatureWindows(vids, 5, 5)
  counts = [np.zeros(v.num_frames) for v in vids]
  for i in range(len(src)):
    it = src[i]
    n = int(it["valid"].sum())
    counts[int(it["video_index"])][it["start"]:it["start"] + n] += it["valid"][:n]
    assert it["valid"][n:].sum() == 0
  for c in counts:
    np.testing.assert_array_equal(c, 1)
  # the trainer's masked sums over eval batches see each labelled frame once
  cfg = parts.data_config("features", "feature_windows")
  total = 0.0
  for b in pipeline.eval_batches(src, cfg, 8):
    total += float((b["va_mask"] * b["valid"]).sum())
  assert total == sum(v.num_frames for v in vids)


def test_video_windows_and_merge_hand_computed():
  v = _video(5)
  batch, wins = F.video_windows(v, 3, 2)
  assert wins == [(0, 3), (2, 5)]
  assert batch["feat/a"].shape == (2, 3, 3)
  np.testing.assert_array_equal(batch["feat/a"][1], v.streams["a"][2:5])
  preds = np.array([[[1.0], [2.0], [3.0]], [[10.0], [20.0], [30.0]]], np.float32)
  merged = F.merge(v, wins, preds)
  np.testing.assert_allclose(merged[:, 0], [1.0, 2.0, (3.0 + 10.0) / 2, 20.0, 30.0])
  batch, wins = F.video_windows(v, 4)                      # stride = window; last padded
  assert wins == [(0, 4), (4, 5)]
  merged = F.merge(5, wins, np.arange(8, dtype=np.float32).reshape(2, 4, 1))
  np.testing.assert_array_equal(merged[:, 0], [0, 1, 2, 3, 4])


def test_pipeline_dispatch_and_feature_dropout(abaw):
  cfg = _cfg(abaw)
  tr, ev = pipeline.build_sources(cfg)
  assert isinstance(tr, F.FeatureWindows) and isinstance(ev, F.FeatureWindows)
  assert ev.stride == ev.window == 4 and tr.stride == 2
  assert len(ev) == 1 and len(tr) == 3 + 2                 # vidA (7): 0,2,4; vidB (5): 0,2
  spec = pipeline.batch_spec(tr, cfg, 8)
  assert spec["feat/mae"].shape == (8, 4, 6) and spec["feat/wav"].shape == (8, 4, 4)
  assert spec["expr"].dtype == np.int32 and spec["mask"].shape == (8,)
  clip = pipeline.make_clip(cfg, train=True)
  assert clip == F.FeatureClip(True, 0.0)
  np.testing.assert_array_equal(clip(tr[0], np.random.default_rng(0))["feat/mae"], tr[0]["feat/mae"])
  drop = F.FeatureClip(True, 0.5)(tr[0], np.random.default_rng(1))["feat/mae"]
  x = tr[0]["feat/mae"]
  kept = drop != 0
  assert 0 < kept.mean() < 1
  np.testing.assert_allclose(drop[kept], 2 * x[kept], rtol=1e-6)
  it = pipeline.train_iterator(tr, cfg, 8, seed=0)
  b = next(it)
  assert b["feat/arcface"].shape == (8, 4, 3) and b["video_index"].shape == (8,)
  # spec_source: shapes without data
  f = cfg.source.features
  f[0]["dim"], f[1]["dim"], f[2]["dim"] = 6, 3, 4
  s = F.spec_source(cfg)
  spec2 = pipeline.batch_spec(s, cfg, 8)
  assert {k: (v.shape, v.dtype) for k, v in spec2.items()} == \
      {k: (v.shape, v.dtype) for k, v in spec.items()}


# ------------------------------------------------------------------------- issue 10: user errors
def test_truncated_npy_names_the_file_and_stream(abaw):
  """A truncated feature `.npy` said only "EOF: reading array header ..."."""
  from jaxaffect.errors import UserError
  p = os.path.join(abaw["mae"], "vidC", "00002.npy")
  data = open(p, "rb").read()
  for cut in (40, len(data) - 8):                # inside the header; inside the data
    with open(p, "wb") as f:
      f.write(data[:cut])
    with pytest.raises(UserError, match=r"stream 'mae': cannot read .*vidC/00002.npy: "):
      list(F.iter_videos(_cfg(abaw), "val"))


def test_only_the_trained_tasks_annotation_files_are_read(abaw):
  """`abaw_tcn:va` stopped on a bad EXPR file it does not use: validate only what a run uses."""
  bad = os.path.join(abaw["ann"], "EXPR_Classification_Challenge", "Validation_Set", "vidC.txt")
  _write_txt(bad, EXPR8, ["0", "nine"])
  with pytest.raises(ValueError, match=r"vidC.txt:3 field 'expression'"):
    list(F.iter_videos(_cfg(abaw), "val"))                  # every task: the bad file is read
  (v,) = F.iter_videos(_cfg(abaw, label_tasks=("va",)), "val")
  assert v.labels["va_mask"].sum() == abaw["truth"]["vidC"]["t"] - 1 and \
      v.labels["expr_mask"].sum() == 0
  with pytest.raises(ValueError, match=r"vidC.txt:3 field 'expression'"):
    list(F.iter_videos(_cfg(abaw, label_tasks=("va", "expr")), "val"))
  from configs import abaw_tcn
  assert tuple(abaw_tcn.get_config("va").data.source.label_tasks) == ("va",)
  assert tuple(abaw_tcn.get_config("smoke").data.source.label_tasks) == ("va", "expr", "au")


@pytest.mark.parametrize("kw,needle", [
    (dict(window=4, stride=5), r"config.data.sampler.stride=5 with config.data.sampler.window=4: expected 1 <= "),
    (dict(window=4, stride=0), r"config.data.sampler.stride=0 with config.data.sampler.window=4"),
    (dict(window=4, stride=2, eval_stride=6), r"config.data.sampler.eval_stride=6"),
    (dict(window=0, stride=1), r"config.data.sampler.window=0"),
])
def test_window_stride_errors_name_the_config_field(abaw, kw, needle):
  """stride > window used to say "use tail='drop'", an option no user can set."""
  from jaxaffect.errors import UserError
  with pytest.raises(UserError, match=needle):
    pipeline.build_sources(_cfg(abaw, **kw))


def test_features_list_is_overridden_whole_from_the_command_line(abaw):
  """`config.data.source.features` (a list) took no command-line value, and a new key in `[0]` raised
  KeyError: a JSON value replaces the whole list."""
  import json
  from jaxaffect import config_loader
  streams = [dict(name="mae", kind="npy", path=abaw["mae"], dim=6)]
  c = config_loader.load(f"abaw_tcn:va,labels={abaw['ann']}",
                         [f"--config.data.source.features={json.dumps(streams)}",
                          "--config.model.streams=[[\"mae\", [6, 4]]]",
                          "--config.data.sampler.window=4", "--config.data.sampler.stride=2"])
  assert c.data.source.features == streams and c.model.streams == (("mae", (6, 4)),)
  tr, ev = pipeline.build_sources(c.data)
  assert len(tr) > 0 and len(ev) > 0 and tr[0]["feat/mae"].shape == (4, 6)
