"""The preprocessing job end to end: synthetic videos -> shards + manifest -> grain readers.

Resumability (a killed job rerun equals an uninterrupted run, by manifest checksums), settings
pinned per output directory, bad input logged or fatal with --strict (no partial shard left),
readers that continue with the identical batch after a restore, per-host file splits, and tf.data
reading the prepped shards.
"""
import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data_prep import cli as prep_cli
from data_prep import shards
from data_prep.sources import synthetic as syn_source
from jaxaffect.data import schema
from jaxaffect.data import synthetic as synth_lib
from tests.data_prep import fixtures_sources as fx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYN = ["synthetic", "--src", "-", "--num-frames", "8", "--render-size", "64", "--size", "64",
       "--pose", "0.3"]


def prep(out, *extra):
  args = prep_cli.build_parser().parse_args([*SYN, "--out", str(out), "--quiet", *extra])
  return shards.run(args.source, args)


def prep_cmd(out, *extra):
  return [sys.executable, "-m", "data_prep", *SYN, "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def syn_shards(tmp_path_factory):
  out = tmp_path_factory.mktemp("syn")
  m = prep(out, "--num-videos", "14", "--heldout-videos", "7", "--shards", "3")
  return out, m


def test_manifest_counts_labels_and_records(syn_shards):
  out, m = syn_shards
  assert m["totals"] == {"videos": 21, "frames": 168, "shards": 6, "skipped": 0, "frame_issues": 0}
  assert sorted(m["splits"]) == ["test", "train"]
  tr = m["splits"]["train"]
  assert tr["videos"] == 14 and tr["label_hist"] == {str(k): 2 for k in range(7)}
  assert [s["file"] for s in tr["shards"]] == [f"synthetic-train.tfrecord-0000{i}-of-00003"
                                               for i in range(3)]
  for sp in m["splits"].values():
    for sh in sp["shards"]:
      path = os.path.join(out, sh["file"])
      assert shards._sha256(path) == sh["sha256"] and os.path.getsize(path) == sh["bytes"]
  assert not glob.glob(os.path.join(out, "*.tmp-*"))
  # Every record is where the index says and equals the generator's truth, frame by frame.
  for r in m["records"]:
    with open(os.path.join(out, r["file"]), "rb") as f:
      rec = schema.decode(schema.read_record_at(f, r["offset"]))
    k = int(rec.video_id)
    seed = 0 if rec.split == "train" else syn_source.HELDOUT_SEED_OFFSET
    v = synth_lib.generate_video(synth_lib.video_seed(seed, k), expression=k % 7, num_frames=8,
                                 size=64, pose_amount=0.3, occlusion_prob=0.2)
    assert rec.label == v["label"] == r["label"] and rec.vocab == "dfew7"
    np.testing.assert_array_equal(rec.expr, v["expr"])
    np.testing.assert_array_equal(rec.au, v["au"])
    np.testing.assert_array_equal(rec.va, v["va"].astype(np.float32))
    np.testing.assert_array_equal(rec.frame_index, np.arange(8))
    np.testing.assert_allclose(rec.t_sec, np.arange(8) / 25, atol=1e-6)
    assert rec.face_found.all() and (rec.status == 0).all()
    assert rec.recipe == m["recipe"]["stages"]["precomputed"]      # --detector auto picked it
    assert rec.recipe["size"] == 64
    # Alignment maps the true landmarks through the stored matrix onto the stored crop landmarks.
    pts = np.einsum("tij,tkj->tki", rec.matrix[:, :, :2], v["landmarks"]) + rec.matrix[:, None, :, 2]
    np.testing.assert_allclose(rec.landmarks, pts, atol=1e-3)
  # The template is the mean of the train split's crop landmarks.
  lms = []
  for r in m["records"]:
    if r["split"] == "train":
      with open(os.path.join(out, r["file"]), "rb") as f:
        lms.append(schema.decode(schema.read_record_at(f, r["offset"])).landmarks)
  np.testing.assert_allclose(m["template"]["landmarks"], np.concatenate(lms).mean(0), atol=1e-3)
  assert np.asarray(m["template"]["keypoints7"]).shape == (7, 2)


def test_kill_and_rerun_equals_uninterrupted(syn_shards, tmp_path):
  """SIGKILL after the first shard completes; the rerun redoes only what is missing and the result
  equals an uninterrupted run (the rerun uses 2 workers: the worker count does not change bytes)."""
  _, ref = syn_shards
  out = tmp_path / "killed"
  cmd = prep_cmd(out, "--num-videos", "14", "--heldout-videos", "7", "--shards", "3")
  p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 120
  while time.time() < deadline and not glob.glob(str(out / "*.tfrecord-*-of-*.json")):
    if p.poll() is not None:
      break
    time.sleep(0.005)
  assert p.poll() is None, "the job finished before it could be killed; make it longer"
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert not (out / "manifest.json").exists()
  done_before = sorted(os.path.basename(x) for x in glob.glob(str(out / "*.tfrecord-*-of-?????")))
  assert 1 <= len(done_before) < 6
  r = subprocess.run(cmd + ["--workers", "2"], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr
  m = json.loads((out / "manifest.json").read_text())
  key = lambda mm: [(sh["file"], sh["sha256"]) for sp in mm["splits"].values() for sh in sp["shards"]]
  assert key(m) == key(ref)
  assert [(x["id"], x["split"], x["offset"]) for x in m["records"]] == \
         [(x["id"], x["split"], x["offset"]) for x in ref["records"]]
  assert not glob.glob(str(out / "*.tmp-*"))


def test_rerun_with_other_settings_is_refused(tmp_path):
  prep(tmp_path, "--num-videos", "2")
  with pytest.raises(shards.PrepFailed, match=r"other settings \(differs in \['num_videos'\]\)"):
    prep(tmp_path, "--num-videos", "3")
  m = prep(tmp_path, "--num-videos", "3", "--overwrite")
  assert m["totals"]["videos"] == 3


def _bad_folder(root):
  fx.write_jpeg(os.path.join(root, "a", "1.jpg"), fx.image(0, 1, 32))
  fx.write_broken_jpeg(os.path.join(root, "a", "2.jpg"), 32)
  fx.write_jpeg(os.path.join(root, "a", "3.jpg"), fx.image(0, 3, 32))
  os.makedirs(os.path.join(root, "empty"))
  for i in (1, 2):
    fx.write_jpeg(os.path.join(root, "b", f"{i}.jpg"), fx.image(1, i, 32))
  return ["folder", "--src", str(root), "--precomputed", "--detector", "none", "--size", "112",
          "--quiet"]


def test_bad_input_is_logged_and_kept_out(tmp_path):
  argv = _bad_folder(tmp_path / "src")
  assert prep_cli.main([*argv, "--out", str(tmp_path / "o")]) == 0
  m = json.loads((tmp_path / "o" / "manifest.json").read_text())
  assert m["totals"]["videos"] == 2
  (skip,) = m["skipped"]
  assert skip["path"].endswith("empty") and ("no frames" in skip["reason"] or "empty" in skip["reason"])
  (issue,) = m["frame_issues"]
  assert issue["frame"] == 2 and issue["status"] == "unreadable" and "2.jpg" in issue["reason"]
  lines = (tmp_path / "o" / "skipped.jsonl").read_text().splitlines()
  assert len(lines) == 2
  # The record keeps the frame, marked unreadable (never silently dropped).
  rec_a = [r for r in m["records"] if r["id"] == "a"][0]
  assert rec_a["num_frames"] == 3 and rec_a["status"] == [2, 0, 0, 1]


def test_strict_stops_with_the_location_and_leaves_nothing(tmp_path, capsys):
  argv = _bad_folder(tmp_path / "src")
  out = tmp_path / "o"
  assert prep_cli.main([*argv, "--out", str(out), "--strict"]) == 2
  err = capsys.readouterr().err
  assert "empty" in err and "--strict" in err
  assert not glob.glob(str(out / "*.tfrecord-*")) and not (out / "manifest.json").exists()
  (tmp_path / "src" / "empty").rmdir()
  assert prep_cli.main([*argv, "--out", str(tmp_path / "o2"), "--strict"]) == 2
  err = capsys.readouterr().err
  assert "2.jpg" in err and "frame 2" in err
  assert not glob.glob(str(tmp_path / "o2" / "*.tfrecord-*"))


# ------------------------------------------------------------------------------------ readers
def _data_cfg(out, reader="index", **kw):
  from jaxaffect.data import parts
  return parts.from_flat(dict(dict(
      source="shards", shards=str(out), train_select="train", eval_select="test",
      label_vocab="dfew7", reader=reader, cycle_length=2, shuffle_window=4, num_segments=4,
      duration=1, image_size=48, hflip=True, random_resized_crop=True), **kw))


@pytest.mark.parametrize("reader", ["index", "stream"])
def test_restored_reader_continues_with_the_identical_batch(syn_shards, reader):
  from jaxaffect.data import pipeline
  out, _ = syn_shards
  cfg = _data_cfg(out, reader)
  train, _ = pipeline.build_sources(cfg)
  it = pipeline.train_iterator(train, cfg, 4, seed=3)
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  it2 = pipeline.train_iterator(train, cfg, 4, seed=3)
  it2.set_state(json.loads(json.dumps(state)))     # as it travels through the checkpoint
  got = [next(it2) for _ in range(3)]
  for a, b in zip(want, got):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert want[0]["video"].shape == (4, 4, 48, 48, 3) and want[0]["video"].dtype == np.uint8
  # Different batches do differ (the comparison above can fail).
  assert not np.array_equal(want[0]["video"], want[1]["video"])


def test_index_reader_batches_match_records(syn_shards):
  """Clip labels come from the records; the decoded frames are the records' JPEGs."""
  from jaxaffect.data import pipeline
  out, m = syn_shards
  cfg = _data_cfg(out, random_resized_crop=False, hflip=False, image_size=64)
  train, heldout = pipeline.build_sources(cfg)
  assert len(train) == 14 and len(heldout) == 7
  batches = list(pipeline.eval_batches(heldout, cfg, 4))
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  assert sorted(labels.tolist()) == sorted(r["label"] for r in m["records"] if r["split"] == "test")
  ex = heldout[0]
  rec = ex["record"]
  from jaxaffect.data import samplers
  idx = samplers.former_dfer_indices(rec.num_frames, num_segments=4, duration=1, train=False)
  np.testing.assert_array_equal(batches[0]["video"][0], schema.decode_frames(rec.jpegs, idx))


def test_stream_reader_splits_files_per_host(syn_shards, monkeypatch):
  """Each host reads only its own shard files: records seen by host h come from the files at its
  positions of the per-epoch shuffled file order, and the two hosts' files of an epoch differ."""
  import grain
  from jaxaffect.data import pipeline
  out, m = syn_shards
  cfg = _data_cfg(out, "stream")
  train, _ = pipeline.build_sources(cfg)
  files = pipeline.shard_files(out, "train")
  by_file = {}
  for r in m["records"]:
    if r["split"] == "train":
      by_file.setdefault(os.path.join(out, r["file"]), set()).add(r["id"])
  # The clip function returns the record id, so batches say where they came from.
  monkeypatch.setattr(pipeline, "make_clip", lambda cfg, train: (
      lambda r, rng=None: {"vid": np.int64(int(r["record"].video_id))}))
  order = list(grain.MapDataset.source(files).seed(0).shuffle().repeat(None)[:6])
  assert sorted(order[:3]) == sorted(files) and sorted(order[3:]) == sorted(files)
  seen = {}
  for pi in range(2):
    monkeypatch.setattr(pipeline.jax, "process_index", lambda pi=pi: pi)
    monkeypatch.setattr(pipeline.jax, "process_count", lambda: 2)
    it = pipeline.train_iterator(train, cfg, 4, seed=0)
    mine = order[pi::2]                       # this host's files, in order
    allowed = set().union(*(by_file[f] for f in mine))
    ids = [f"{int(v):06d}" for _ in range(2) for v in next(it)["vid"]]
    assert set(ids) <= allowed, (pi, ids, allowed)
    seen[pi] = set(ids)
  assert order[0] != order[1]                 # the first files of the two hosts differ
  assert seen[0] != seen[1]


def test_label_vocabulary_conversion_is_explicit(syn_shards):
  from jaxaffect.data import pipeline
  out, m = syn_shards
  cfg = _data_cfg(out, label_vocab="dfew7_alpha")
  train, _ = pipeline.build_sources(cfg)
  ex = train[0]
  names_dfew = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
  alpha = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
  assert alpha[int(ex["label"])] == names_dfew[ex["record"].label]
  cfg = _data_cfg(out, label_vocab="abaw7")   # every DFEW class exists in ABAW's 7
  assert pipeline.build_sources(cfg)[0][0]["label"] >= 0
  cfg = _data_cfg(out, label_vocab="no_such_vocab")
  with pytest.raises(KeyError, match="no_such_vocab"):
    pipeline.build_sources(cfg)[0][0]


def test_tf_data_reads_prepped_shards(syn_shards, tmp_path):
  out, m = syn_shards
  files = sorted(glob.glob(str(out / "synthetic-test.tfrecord-*-of-?????")))
  npz = str(tmp_path / "tf.npz")
  subprocess.run([sys.executable, os.path.join(ROOT, "tests", "data", "tf_read_shards.py"), npz,
                  *files], check=True, timeout=300, capture_output=True)
  z = np.load(npz)
  want = [(r["id"], r["label"]) for r in m["records"] if r["split"] == "test"]
  got = [(z[f"id_{i}"].item().decode(), int(z[f"label_{i}"])) for i in range(int(z["count"]))]
  assert got == want


def test_training_from_shards_resumes_without_loss_or_duplication(syn_shards, tmp_path):
  """The trainer on data_prep shards through the pod-scale stream reader: a run stopped at step 3
  and rerun has every step once and the losses of the uninterrupted run (the reader's state
  travels in the checkpoint). The index reader shares the trainer's existing resume path."""
  reader = "stream"
  from jaxaffect.train import loop
  from tests.train.helpers import tiny_config
  from tests.train.test_parallel import _jsonl_losses
  out, _ = syn_shards
  config = tiny_config(**{"data.source": "shards", "data.source.shards": str(out),
                          "data.source.train_select": "train", "data.source.eval_select": "test",
                          "data.source.reader": reader, "data.source.cycle_length": 2,
                          "data.source.shuffle_window": 4, "batch_size": 8, "num_epochs": 6,
                          "data.sampler.num_segments": 4, "data.sampler.duration": 2})
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  loop.train(config, full)
  loop.train(config, cut, stop_after_steps=3)
  loop.train(config, cut)
  a, b = _jsonl_losses(full), _jsonl_losses(cut)
  assert sorted(a) == sorted(b) == list(range(1, 7))        # 14 videos // 8 = 1 step x 6 epochs
  for step in range(4, 7):
    assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-7), step


def test_rerun_after_inputs_changed_redoes_their_shards(tmp_path):
  """Fixing a broken JPEG or adding a video and rerunning the same command updates the shards
  (the sidecars pin each item's inputs), and removes shards of an earlier layout."""
  argv = _bad_folder(tmp_path / "src")
  os.rmdir(tmp_path / "src" / "empty")
  out = tmp_path / "o"
  assert prep_cli.main([*argv, "--out", str(out), "--shards", "2"]) == 0
  m1 = json.loads((out / "manifest.json").read_text())
  assert len(m1["frame_issues"]) == 1
  fx.write_jpeg(str(tmp_path / "src" / "a" / "2.jpg"), fx.image(0, 2, 32))     # fix it
  for i in (1, 2, 3):
    fx.write_jpeg(str(tmp_path / "src" / "c" / f"{i}.jpg"), fx.image(2, i, 32))  # a new video
  assert prep_cli.main([*argv, "--out", str(out), "--shards", "2"]) == 0
  m2 = json.loads((out / "manifest.json").read_text())
  assert m2["frame_issues"] == [] and sorted(r["id"] for r in m2["records"]) == ["a", "b", "c"]
  assert sorted(n for n in os.listdir(out) if ".tfrecord-" in n and not n.endswith(".json")) == [
      "folder-all.tfrecord-00000-of-00002", "folder-all.tfrecord-00001-of-00002"]
  assert prep_cli.main([*argv, "--out", str(out), "--shards", "3", "--overwrite"]) == 0
  assert sorted(n for n in os.listdir(out) if ".tfrecord-" in n and not n.endswith(".json")) == [
      f"folder-all.tfrecord-0000{i}-of-00003" for i in range(3)]


def test_strict_with_parallel_workers_stops_cleanly(tmp_path):
  """A worker's located error crosses the process boundary (no hang) and nothing is left.
  (A subprocess, as the CLI runs: the workers fork before JAX starts.)"""
  argv = _bad_folder(tmp_path / "src")
  os.rmdir(tmp_path / "src" / "empty")
  out = tmp_path / "o"
  r = subprocess.run([sys.executable, "-m", "data_prep", *argv, "--out", str(out), "--strict",
                      "--workers", "2", "--shards", "2"], cwd=ROOT, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 2, r.stderr
  err = r.stderr
  assert "2.jpg" in err and "frame 2" in err
  assert not glob.glob(str(out / "*.tmp-*"))
  assert not (out / "manifest.json").exists()


def test_one_job_per_output_directory(tmp_path):
  import fcntl
  out = tmp_path / "o"
  out.mkdir()
  with open(out / shards.LOCK_FILE, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    with pytest.raises(shards.PrepFailed, match="another job is writing"):
      prep(out, "--num-videos", "1")


def test_segments_split_long_videos(tmp_path):
  m = prep(tmp_path, "--num-videos", "2", "--segment-frames", "3")
  recs = [r for r in m["records"] if r["id"] == "000001"]
  assert [r["num_frames"] for r in recs] == [3, 3, 2] and [r["segment"] for r in recs] == [0, 1, 2]
  frames = []
  for r in recs:
    with open(tmp_path / r["file"], "rb") as f:
      rec = schema.decode(schema.read_record_at(f, r["offset"]))
    assert rec.meta["segment"]["count"] == 3 and rec.meta["segment"]["video_frames"] == 8
    frames.extend(rec.frame_index.tolist())
    np.testing.assert_array_equal(rec.va.shape, (len(rec.jpegs), 2))
  assert frames == list(range(8))


def test_auto_detector_decides_from_the_first_frame_with_an_image():
  from data_prep.sources import base
  img = np.zeros((20, 20, 3), np.uint8)
  frames = [base.Frame(1, 0.0, None, status=base.MISSING),
            base.Frame(2, 0.04, img, precomputed=True), base.Frame(3, 0.08, img, precomputed=True)]
  item = base.VideoItem("affwild2", "v", "train", frames=lambda: iter(frames))
  det, _, it = shards.Stages({"detector": "auto", "size": 112}).pick(item)
  assert det == "none" and [f.index for f in it] == [1, 2, 3]
  raw = [base.Frame(0, 0.0, img)]
  det, _, _ = shards.Stages({"detector": "auto", "size": 112}).pick(
      base.VideoItem("video", "v", "train", frames=lambda: iter(raw)))
  assert det == "blazeface"


def test_affwild2_layout_through_the_writer(tmp_path):
  """Official Aff-Wild2 files -> shards: per-frame labels stay on their frames (1-based), the
  crop gap is a MISSING frame (black crop, counted, not an issue), VA/EXPR/AU masks follow the
  -5/-1 sentinels, and the dataset's aligned crops are resized as they are (`auto` -> `none`)."""
  from tests.data_prep.test_sources import AU_B, EXPR_A, VA_A, _affwild_root
  root, _, _ = _affwild_root(tmp_path)
  out = tmp_path / "o"
  assert prep_cli.main(["affwild2", "--src", str(root), "--out", str(out), "--size", "16",
                        "--quiet", "--segment-frames", "3"]) == 0
  m = json.loads((out / "manifest.json").read_text())
  assert m["frame_issues"] == [] and m["splits"]["train"]["status"] == [4, 0, 1, 0]
  recs = {}
  for r in m["records"]:
    with open(out / r["file"], "rb") as f:
      rec = schema.decode(schema.read_record_at(f, r["offset"]))
    recs.setdefault(rec.video_id, []).append(rec)
  a = recs["vidA"]                                   # 5 frames in segments of 3 + 2
  assert [len(r.jpegs) for r in a] == [3, 2] and all(r.recipe["detector"] == "none" for r in a)
  idx = np.concatenate([r.frame_index for r in a])
  np.testing.assert_array_equal(idx, [1, 2, 3, 4, 5])
  va = np.concatenate([r.va for r in a])
  np.testing.assert_array_equal(va, np.asarray(VA_A, np.float32))
  np.testing.assert_array_equal(np.concatenate([r.va_mask for r in a]), [1, 0, 1, 1, 1])
  np.testing.assert_array_equal(np.concatenate([r.expr for r in a]), EXPR_A + [-1])
  status = np.concatenate([r.status for r in a])
  np.testing.assert_array_equal(status, [0, 0, 2, 0, 0])
  assert schema.decode_frames(a[0].jpegs, [2]).max() == 0          # the gap: a black crop
  (b,) = recs["1-30-1280x720_left"]
  assert b.track == "left" and b.split == "val" and b.au_names[0] == "AU1"
  np.testing.assert_array_equal(b.au, AU_B)
  np.testing.assert_array_equal(b.au_mask, np.asarray(AU_B) >= 0)
