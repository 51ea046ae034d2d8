"""Dataset sources: each official layout written byte-exactly by the test, parsed value by value.

References: the label values the test itself writes (in the official text formats), cv2's JPEG and
video decoders (an independent libjpeg / FFmpeg build) for pixels and timestamps, and
`jaxaffect.data.synthetic.generate_video` for the synthetic source.
"""
from __future__ import annotations

import argparse
import math
import os

import cv2
import numpy as np
import pytest

from data_prep.sources import SOURCES, _util
from data_prep.sources import affectnet, afew, affwild2, dfew, folder, recola, sewa, synthetic
from data_prep.sources import video
from data_prep.sources.base import MISSING, OK, UNREADABLE, PrepError, Skip, VideoItem
from jaxaffect.data import synthetic as synth_lib
from jaxaffect.data import vocab as vocab_lib
from tests.data_prep import fixtures_sources as fx


def parse(source, argv: list[str]) -> argparse.Namespace:
  """The source's own flags parsed like the CLI would (plus `strict`)."""
  p = argparse.ArgumentParser()
  source.add_arguments(p)
  args = p.parse_args(argv)
  args.strict = False
  return args


def run(source, src, argv=()) -> list[VideoItem | Skip]:
  return list(source.items(str(src), parse(source, list(argv))))


def by_id(out) -> dict[str, VideoItem]:
  return {x.video_id: x for x in out if isinstance(x, VideoItem)}


def skips(out) -> list[PrepError]:
  return [x.error for x in out if isinstance(x, Skip)]


def cv2_rgb(path: str) -> np.ndarray:
  return cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1]


def cv2_video(path: str) -> tuple[list[np.ndarray], list[float]]:
  cap = cv2.VideoCapture(path)
  frames, times = [], []
  while True:
    ok, im = cap.read()
    if not ok:
      break
    times.append(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
    frames.append(im[..., ::-1])
  cap.release()
  return frames, times


def check_frames_match_files(frames, paths):
  """Decoded pixels equal cv2's decode of the same files."""
  assert len(frames) == len(paths)
  for f, p in zip(frames, paths):
    assert f.status == OK and f.error == ""
    np.testing.assert_array_equal(f.image, cv2_rgb(p))


# ------------------------------------------------------------------------------------------------
# Registry.


def test_registry_every_source_has_items_and_flags():
  assert sorted(SOURCES) == sorted(["dfew", "afew", "affwild2", "recola", "sewa", "affectnet",
                                    "rafdb", "fer2013", "ferplus", "folder", "video", "synthetic"])
  for name, mod in SOURCES.items():
    p = argparse.ArgumentParser()
    mod.add_arguments(p)
    flags = [o for a in p._actions for o in a.option_strings if o not in ("-h", "--help")]
    assert all(f.startswith("--") and "src" != f[2:] for f in flags), (name, flags)
    assert callable(mod.items)


# ------------------------------------------------------------------------------------------------
# Shared helpers.


def test_frame_files_sorted_by_trailing_integer(tmp_path):
  for name in ("00001_10.jpg", "00001_2.jpg", "00001_1.jpg", "notes.txt"):
    fx.write_text(str(tmp_path / name), "")
  assert _util.list_frame_files(str(tmp_path)) == [
      (1, str(tmp_path / "00001_1.jpg")), (2, str(tmp_path / "00001_2.jpg")),
      (10, str(tmp_path / "00001_10.jpg"))]
  fx.write_text(str(tmp_path / "cover.jpg"), "")  # no trailing integer: name order, 1-based
  assert [os.path.basename(p) for _, p in _util.list_frame_files(str(tmp_path))] == [
      "00001_1.jpg", "00001_10.jpg", "00001_2.jpg", "cover.jpg"]
  assert [i for i, _ in _util.list_frame_files(str(tmp_path))] == [1, 2, 3, 4]


def test_broken_and_garbage_jpeg_are_unreadable_with_file_named(tmp_path):
  broken = fx.write_broken_jpeg(str(tmp_path / "b.jpg"))
  garbage = fx.write_text(str(tmp_path / "g.jpg"), "not a jpeg")
  for p in (broken, garbage):
    img, status, err = _util.read_image(p)
    assert img is None and status == UNREADABLE and err.startswith(p + ": cannot decode image")
  img, status, err = _util.read_image(str(tmp_path / "absent.jpg"))
  assert img is None and status == MISSING and "absent.jpg" in err


# ------------------------------------------------------------------------------------------------
# video


def test_decode_video_matches_cv2_pixels_and_timestamps(tmp_path):
  for ext, fps in (("mp4", 25), ("avi", 30), ("mkv", 25)):
    path = fx.write_video(str(tmp_path / f"v.{ext}"), fx.video_frames(1, 7), fps=fps)
    frames = list(video.decode_video(path))
    ref, ref_t = cv2_video(path)
    assert [f.index for f in frames] == list(range(7))
    assert len(ref) == 7
    for k, f in enumerate(frames):
      assert f.status == OK and not f.precomputed
      np.testing.assert_array_equal(f.image, ref[k])
      assert f.t_sec == pytest.approx(ref_t[k], abs=1e-6)
      assert f.t_sec == pytest.approx(k / fps, abs=1e-9)
      assert fx.nearest_frame(f.image, 1, 7) == k
    info = video.probe(path)
    assert info["fps"] == fps and (info["width"], info["height"]) == (32, 32)
    assert info["container_frames"] == (0 if ext == "mkv" else 7)


def test_decode_video_truncated_file_ends_with_one_unreadable_frame(tmp_path):
  rng = np.random.default_rng(0)
  noise = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(8)]
  path = fx.write_video(str(tmp_path / "cut.mp4"), noise)
  ref, _ = cv2_video(path)  # the intact file
  fx.truncate(path, 0.6)
  gen = video.decode_video(path)
  first = next(gen)  # streaming: the first frame arrives before the damaged part is reached
  frames = [first] + list(gen)
  assert 1 < len(frames) < 8
  good, last = frames[:-1], frames[-1]
  for k, f in enumerate(good):
    assert f.status == OK and f.index == k
    np.testing.assert_array_equal(f.image, ref[k])
  n = len(good)
  assert last.status == UNREADABLE and last.image is None and last.index == n
  assert last.error.startswith(f"{path}: decode failed at frame {n}: ")
  assert last.t_sec == pytest.approx(n / 25)


def test_video_items_labels_ids_and_unopenable_file(tmp_path):
  root = tmp_path / "vids"
  fx.write_video(str(root / "b" / "clip.mp4"), fx.video_frames(0, 3))
  fx.write_video(str(root / "a.mov"), fx.video_frames(1, 4), fps=30)
  fx.write_text(str(root / "c.webm"), "garbage, not a video")
  fx.write_text(str(root / "readme.txt"), "ignored")
  labels = fx.write_text(str(tmp_path / "labels.csv"), "video,label\nb/clip,Sad\na.mov,4\n")
  out = run(video, root, ["--labels", labels, "--vocab", "dfew7", "--split", "test"])
  ids = [x.video_id if isinstance(x, VideoItem) else "skip" for x in out]
  assert ids == ["a", "b/clip", "skip"]
  a, b = out[0], out[1]
  assert (a.clip_label, b.clip_label, a.vocab, a.split) == (4, 1, "dfew7", "test")
  assert a.fps == 30 and a.num_frames == 4 and a.meta["container_frames"] == 4
  assert [fx.nearest_frame(f.image, 1, 4) for f in a.frames()] == [0, 1, 2, 3]
  err = out[2].error
  assert err.path == str(root / "c.webm") and "cannot open video" in str(err) and err.item == "c"
  # a single file as --src; no labels
  (one,) = run(video, root / "a.mov")
  assert one.video_id == "a" and one.clip_label == -1 and one.vocab == ""


def test_video_label_csv_errors(tmp_path):
  fx.write_video(str(tmp_path / "v" / "x.mp4"), fx.video_frames(0, 3))
  bad_header = fx.write_text(str(tmp_path / "h.csv"), "name,label\nx,1\n")
  with pytest.raises(PrepError, match=r"h\.csv:1 field 'video'") as e:
    run(video, tmp_path / "v", ["--labels", bad_header, "--vocab", "dfew7"])
  assert "expected 'video', found 'name'" in str(e.value)
  unknown = fx.write_text(str(tmp_path / "u.csv"), "video,label\nx,Bored\n")
  with pytest.raises(PrepError, match=r"u\.csv:2 field 'label'.*'Bored'"):
    run(video, tmp_path / "v", ["--labels", unknown, "--vocab", "dfew7"])
  out_of_range = fx.write_text(str(tmp_path / "r.csv"), "video,label\nx,7\n")
  with pytest.raises(PrepError, match=r"r\.csv:2 field 'label': unknown label value 7"):
    run(video, tmp_path / "v", ["--labels", out_of_range, "--vocab", "dfew7"])
  absent = fx.write_text(str(tmp_path / "a.csv"), "video,label\nx,1\ny,2\n")
  with pytest.raises(PrepError, match=r"a\.csv:3 field 'video': 1 labelled videos not found"):
    run(video, tmp_path / "v", ["--labels", absent, "--vocab", "dfew7"])


# ------------------------------------------------------------------------------------------------
# dfew


def _dfew_root(tmp_path, *, frames=None):
  """Folds 1-2: clips 1, 2, 3 (folders), 4 (no folder: 466 such clips in the real DFEW), 5
  (folder, in no CSV). Train CSVs under `train(single-labeled)`, test under the README spelling."""
  root = tmp_path / "DFEW"
  split = root / "EmoLabel_DataSplit"
  fx.write_text(str(split / "train(single-labeled)" / "set_1.csv"),
                "video_name,label\n1,1\n2,7\n4,3\n")
  fx.write_text(str(split / "test(single_labeled)" / "set_1.csv"), "video_name,label\n3,5\n")
  fx.write_text(str(split / "train(single-labeled)" / "set_2.csv"),
                "video_name,label\n3,5\n4,3\n")
  fx.write_text(str(split / "test(single_labeled)" / "set_2.csv"), "video_name,label\n1,1\n2,7\n")
  frames = frames or {1: [1, 2, 10], 2: [1, 2, 3, 4], 3: [1, 2, 3], 5: [1, 2]}
  paths = {}
  for layout in ("clip_224x224", "clip_224x224_16f"):
    for clip, nums in frames.items():
      nums = nums if layout == "clip_224x224" else list(range(1, 4))
      for k, n in enumerate(nums):
        p = fx.write_jpeg(str(root / "Clip" / layout / f"{clip:05d}" / f"{clip:05d}_{n}.jpg"),
                          fx.image(clip, k))
        paths.setdefault((layout, clip), []).append(p)
  return root, paths


def test_dfew_official_layout(tmp_path):
  root, paths = _dfew_root(tmp_path)
  out = run(dfew, root)
  assert [x.video_id if isinstance(x, VideoItem) else x.error.item for x in out] == [
      "00001", "00002", "00003", "00004"]
  items = by_id(out)
  assert {k: (v.clip_label, v.folds) for k, v in items.items()} == {
      "00001": (0, ("1:train", "2:test")), "00002": (6, ("1:train", "2:test")),
      "00003": (4, ("1:test", "2:train"))}
  (skip,) = skips(out)
  assert skip.item == "00004" and "frame folder not found" in skip.reason
  a = items["00001"]
  assert (a.dataset, a.split, a.vocab, a.num_frames, a.fps) == ("dfew", "all", "dfew7", 3, 0.0)
  frames = list(a.frames())
  assert [f.index for f in frames] == [1, 2, 10]  # trailing integer, not name order (1, 10, 2)
  assert all(f.precomputed and math.isnan(f.t_sec) for f in frames)
  check_frames_match_files(frames, paths["clip_224x224", 1])
  assert [fx.nearest_frame(f.image, 1, 3) for f in frames] == [0, 1, 2]
  # --fps gives times; --layout 16f reads the other folder; unlabelled clips on request
  out = run(dfew, root, ["--layout", "clip_224x224_16f", "--fps", "25", "--include-unlabelled"])
  items = by_id(out)
  assert sorted(items) == ["00001", "00002", "00003", "00005"]
  assert items["00005"].clip_label == -1 and items["00005"].folds == ()
  frames = list(items["00002"].frames())
  assert [f.t_sec for f in frames] == pytest.approx([0.0, 0.04, 0.08])
  check_frames_match_files(frames, paths["clip_224x224_16f", 2])


def test_dfew_bad_inputs(tmp_path):
  root, _ = _dfew_root(tmp_path)
  base = root / "EmoLabel_DataSplit"
  # clip 2 labelled 7 in fold 1 and 6 in fold 2; clip 3 labelled 9; clip 1 has a broken JPEG
  conflict = fx.write_text(str(base / "test(single_labeled)" / "set_2.csv"),
                           "video_name,label\n1,1\n2,6\n")
  bad = fx.write_text(str(base / "train(single-labeled)" / "set_2.csv"),
                      "video_name,label\n3,9\n4,3\n")
  broken = fx.write_broken_jpeg(str(root / "Clip" / "clip_224x224" / "00001" / "00001_2.jpg"))
  os.makedirs(root / "Clip" / "clip_224x224" / "00004")  # now present but empty
  out = run(dfew, root)
  errs = {e.item: e for e in skips(out)}
  assert sorted(errs) == ["00002", "00003", "00004"]
  assert errs["00002"].field == "label" and "different labels" in errs["00002"].reason
  assert f"{conflict}:3 label 6" in errs["00002"].reason
  assert str(errs["00003"]).startswith(f"{bad}:2 field 'label': unknown label value 9")
  assert "empty" in errs["00004"].reason
  frames = list(by_id(out)["00001"].frames())
  assert [f.status for f in frames] == [OK, UNREADABLE, OK]
  assert frames[1].error.startswith(broken + ": cannot decode image")
  # a wrong header makes the whole file unusable: raised, with file, line and field
  fx.write_text(str(base / "train(single-labeled)" / "set_1.csv"), "video,label\n1,1\n")
  with pytest.raises(PrepError, match=r"set_1\.csv:1 field 'video_name'.*found 'video'"):
    run(dfew, root)
  fx.write_text(str(base / "train(single-labeled)" / "set_1.csv"), "video_name,label\n1,1,3\n")
  with pytest.raises(PrepError, match=r"set_1\.csv:2 field 'video_name': expected 2 columns"):
    run(dfew, root)


def test_dfew_former_dfer_list_files(tmp_path):
  root, paths = _dfew_root(tmp_path)
  faces = root / "Clip" / "clip_224x224"
  ann = tmp_path / "annotation"
  old = "/home/user/datasets/DFEW_Face"
  fx.write_text(str(ann / "DFEW_set_1_train.txt"), f"{old}/00001 3 0\n{old}/00002 4 6\n")
  fx.write_text(str(ann / "DFEW_set_1_test.txt"), f"{old}/00003 3 4\n")
  fx.write_text(str(ann / "DFEW_set_2_test.txt"), f"{old}/00001 3 0\n{old}/00002 4 6\n")
  lists = sorted(str(p) for p in ann.iterdir())  # set_1_test, set_1_train, set_2_test
  argv = sum((["--list-file", p] for p in lists), []) + ["--list-root", str(faces)]
  items = by_id(run(dfew, root, argv))
  assert {k: (v.clip_label, v.folds, v.num_frames) for k, v in items.items()} == {
      "00001": (0, ("1:train", "2:test"), 3), "00002": (6, ("1:train", "2:test"), 4),
      "00003": (4, ("1:test",), 3)}
  assert items["00002"].source_path == str(faces / "00002")
  check_frames_match_files(list(items["00002"].frames()), paths["clip_224x224", 2])
  # frame-count mismatch -> Skip naming the list line; label 7 -> Skip; bad line -> raise
  fx.write_text(lists[0], f"{old}/00001 3 0\n{old}/00002 5 6\n")
  fx.write_text(lists[1], f"{old}/00003 3 7\n")
  errs = {e.item: e for e in skips(run(dfew, root, argv))}
  assert str(errs["00002"]).startswith(f"{lists[0]}:2 field 'num_frames': the line declares 5")
  assert str(errs["00003"]).startswith(f"{lists[1]}:1 field 'label': unknown label value 7")
  fx.write_text(lists[1], f"{old}/00003 three 4\n")
  with pytest.raises(PrepError, match=r"DFEW_set_1_train\.txt:1 field 'num_frames'"):
    run(dfew, root, argv)


# ------------------------------------------------------------------------------------------------
# afew


def test_afew_official_video_folders(tmp_path):
  root = tmp_path / "AFEW"
  fx.write_video(str(root / "Train_AFEW" / "Angry" / "000046280.avi"), fx.video_frames(0, 4))
  fx.write_video(str(root / "Train_AFEW" / "Happy" / "000112520.avi"), fx.video_frames(1, 3))
  fx.write_video(str(root / "Val_AFEW" / "Sad" / "000023000.avi"), fx.video_frames(2, 5))
  fx.write_video(str(root / "Val_AFEW" / "Bored" / "000099999.avi"), fx.video_frames(3, 3))
  out = run(afew, root)
  got = [(x.split, x.video_id, x.clip_label, x.vocab) for x in out if isinstance(x, VideoItem)]
  assert got == [("train", "000046280", 3, "afew7"), ("train", "000112520", 0, "afew7"),
                 ("val", "000023000", 1, "afew7")]
  (err,) = skips(out)
  assert err.field == "emotion" and err.path == str(root / "Val_AFEW" / "Bored")
  v = by_id(out)["000023000"]
  frames = list(v.frames())
  ref, ref_t = cv2_video(v.source_path)
  assert len(frames) == 5 and v.fps == 25
  for f, r, t in zip(frames, ref, ref_t):
    np.testing.assert_array_equal(f.image, r)
    assert f.t_sec == pytest.approx(t, abs=1e-6)


def test_afew_face_folders_and_lists(tmp_path):
  faces = tmp_path / "AFEW_Face"
  written = {}
  for split, emo, clip, n, vid in (("train", "Happiness", "011603980", 3, 0),
                                   ("train", "Anger", "004510640", 4, 1),
                                   ("validation", "Surprise", "000142", 3, 2)):
    written[clip] = [fx.write_jpeg(str(faces / split / emo / clip / f"{i}.jpg"), fx.image(vid, i))
                     for i in range(1, n + 1)]
  os.makedirs(faces / "validation" / "Fear" / "000999")  # empty clip folder
  with pytest.raises(PrepError, match="--layout videos: no Train_AFEW/"):
    run(afew, tmp_path, ["--layout", "videos"])
  out = run(afew, tmp_path)
  items = by_id(out)
  assert [(x.split, x.video_id, x.clip_label) for x in out if isinstance(x, VideoItem)] == [
      ("train", "004510640", 3), ("train", "011603980", 0), ("val", "000142", 4)]
  (err,) = skips(out)
  assert err.item == "000999" and "empty" in err.reason
  frames = list(items["004510640"].frames())
  assert all(f.precomputed for f in frames) and [f.index for f in frames] == [1, 2, 3, 4]
  check_frames_match_files(frames, written["004510640"])
  # Former-DFER lists: split from the file name, absolute prefix rewritten
  old = "/home/user/datasets/AFEW_Face"
  tr = fx.write_text(str(tmp_path / "AFEW_train.txt"),
                     f"{old}/train/Happiness/011603980 3 0\n{old}/train/Anger/004510640 4 3\n")
  va = fx.write_text(str(tmp_path / "AFEW_validation.txt"),
                     f"{old}/validation/Surprise/000142 2 4\n")
  argv = ["--list-file", tr, "--list-file", va, "--list-root", str(faces), "--list-prefix", old]
  out = run(afew, tmp_path, argv)
  assert [(x.split, x.video_id, x.clip_label, x.num_frames) for x in out
          if isinstance(x, VideoItem)] == [("train", "004510640", 3, 4),
                                           ("train", "011603980", 0, 3)]
  (err,) = skips(out)
  assert str(err).startswith(f"{va}:1 field 'num_frames': the line declares 2 frames, the folder "
                             f"{faces}/validation/Surprise/000142 has 3")


# ------------------------------------------------------------------------------------------------
# affwild2

VA_A = [(0.5, -0.25), (-5, -5), (0.125, 1.0), (-1.0, 0.0), (0.375, 0.75)]
EXPR_A = [0, 7, -1, 3]
AU_B = [[1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, -1], [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1]]


def _aw_file(root, folder, split, video_id, header, rows):
  body = "".join(",".join(str(v) for v in (r if isinstance(r, (list, tuple)) else [r])) + "\n"
                 for r in rows)
  return fx.write_text(str(root / folder / split / f"{video_id}.txt"), header + "\n" + body)


def _affwild_root(tmp_path):
  root = tmp_path / "ABAW"
  ann = root / "annotations"
  files = dict(
      va=_aw_file(ann, "VA_Estimation_Challenge", "Train_Set", "vidA", "valence,arousal", VA_A),
      expr=_aw_file(ann, "EXPR_Classification_Challenge", "Train_Set", "vidA",
                    ",".join(vocab_lib.names("abaw8")), EXPR_A),
      au=_aw_file(ann, "AU_Detection_Challenge", "Validation_Set", "1-30-1280x720_left",
                  ",".join(vocab_lib.AU12), AU_B))
  jpgs = {}
  for i in (1, 2, 4, 5, 6):  # frame 3 has no crop (no face); 6 is beyond the label lines
    jpgs[i] = fx.write_jpeg(str(root / "cropped_aligned" / "vidA" / f"{i:05d}.jpg"),
                            fx.image(0, i))
  for i in (1, 2, 3):
    fx.write_jpeg(str(root / "cropped_aligned" / "1-30-1280x720_left" / f"{i:05d}.jpg"),
                  fx.image(1, i))
  return root, files, jpgs


def test_affwild2_cropped_aligned_merge_and_gaps(tmp_path):
  root, files, jpgs = _affwild_root(tmp_path)
  out = run(affwild2, root)
  assert [(x.split, x.video_id) for x in out] == [("train", "vidA"),
                                                  ("val", "1-30-1280x720_left")]
  a, b = out
  assert a.num_frames == 5 and a.fps == 30 and a.meta["fps_assumed"] is True
  np.testing.assert_array_equal(a.va, np.asarray(VA_A, np.float32))
  np.testing.assert_array_equal(a.expr, [0, 7, -1, 3, -1])  # 4 EXPR lines, padded to 5 with -1
  assert a.expr_vocab == "abaw8" and a.au is None and a.au_names == ()
  assert a.meta["label_lines"] == {"expr": 4, "va": 5} and a.meta["images_beyond_labels"] == 1
  frames = list(a.frames())
  assert [f.index for f in frames] == [1, 2, 3, 4, 5]
  assert [f.t_sec for f in frames] == pytest.approx([0, 1 / 30, 2 / 30, 3 / 30, 4 / 30])
  assert [f.status for f in frames] == [OK, OK, MISSING, OK, OK]
  assert frames[2].image is None and "frame 3" in frames[2].error
  check_frames_match_files([frames[k] for k in (0, 1, 3, 4)], [jpgs[i] for i in (1, 2, 4, 5)])
  assert all(f.precomputed for f in frames if f.status == OK)
  assert b.track == "left" and b.va is None and b.expr is None
  np.testing.assert_array_equal(b.au, np.asarray(AU_B, np.int32))
  assert b.au_names == vocab_lib.AU12 and b.num_frames == 3
  # `cropped/` (not aligned) via --images-dir: same frames, not marked precomputed
  os.rename(root / "cropped_aligned", root / "crops")
  out = run(affwild2, root, ["--images", "cropped", "--images-dir", str(root / "crops")])
  frames = list(out[0].frames())
  assert [f.status for f in frames] == [OK, OK, MISSING, OK, OK]
  assert not any(f.precomputed for f in frames)


def test_affwild2_old_edition_videos_fps_and_test_list(tmp_path):
  root = tmp_path / "aw"
  _aw_file(root, "EXPR_Set", "Train_Set", "2-30-640x360_right",
           ",".join(vocab_lib.names("abaw7")), [6, 0, 5, 1, 2, 3])
  _aw_file(root, "AU_Set", "Train_Set", "2-30-640x360_right",
           ",".join(vocab_lib.AU8_ABAW1), [[1, 0, 0, 0, 1, 0, 1, 0]] * 2)
  vpath = fx.write_video(str(root / "videos" / "2-30-640x360.mp4"), fx.video_frames(2, 4), fps=30)
  fx.write_video(str(root / "videos" / "9-10-20x20.avi"), fx.video_frames(3, 3), fps=25)
  tl = fx.write_text(str(tmp_path / "Expression_Classification_Challenge_test_set_release.txt"),
                     "9-10-20x20\n")
  out = run(affwild2, root, ["--test-list", tl])
  assert [(x.split, x.video_id) for x in out] == [("train", "2-30-640x360_right"),
                                                  ("test", "9-10-20x20")]
  a, t = out
  assert a.track == "right" and a.fps == 30 and "fps_assumed" not in a.meta
  assert a.expr_vocab == "abaw7" and a.au_names == vocab_lib.AU8_ABAW1
  np.testing.assert_array_equal(a.au[2:], -1)  # 2 AU lines padded to the 6 EXPR lines
  frames = list(a.frames())
  ref, ref_t = cv2_video(vpath)
  assert [f.index for f in frames] == [1, 2, 3, 4, 5, 6]
  assert [f.status for f in frames] == [OK] * 4 + [MISSING] * 2
  for f, r, t_ref in zip(frames, ref, ref_t):
    np.testing.assert_array_equal(f.image, r)
    assert f.t_sec == pytest.approx(t_ref, abs=1e-6)
  assert "ends at frame 4" in frames[4].error
  assert t.va is None and t.expr is None and t.au is None and t.fps == 25
  assert [f.index for f in t.frames()] == [1, 2, 3]
  # --fps-csv wins over the video's rate
  fps_csv = fx.write_text(str(tmp_path / "fps.csv"), "video,fps\n2-30-640x360,29.97\n")
  (a,) = run(affwild2, root, ["--fps-csv", fps_csv])
  assert a.fps == 29.97 and a.meta["fps_source"] == "fps_csv"


def test_affwild2_test_list_images_fill_gaps(tmp_path):
  root, _, _ = _affwild_root(tmp_path)
  for i in (1, 2, 4):
    fx.write_jpeg(str(root / "cropped_aligned" / "vidT" / f"{i:05d}.jpg"), fx.image(2, i))
  tl = fx.write_text(str(tmp_path / "x_test_set_release.txt"), "vidT\n")
  items = by_id(run(affwild2, root, ["--test-list", tl]))
  t = items["vidT"]
  assert t.split == "test" and t.num_frames == 4 and t.va is None
  assert [(f.index, f.status) for f in t.frames()] == [(1, OK), (2, OK), (3, MISSING), (4, OK)]


@pytest.mark.parametrize("task,content,line,field,what", [
    ("expr", "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n0\n9\n", 3,
     "expression", "unknown label value 9"),
    ("au", ",".join(vocab_lib.AU12) + "\n" + "0,0,0,0,0,0,0,0,0,0,0,0\n"
     "0,2,0,0,0,0,0,0,0,0,0,0\n", 3, "AU2", "unknown label value 2"),
    ("va", "valence,arousal\n0.1,0.2\n-0.3,3.0\n", 3, "arousal", "unknown label value 3.0"),
    ("va", "valence,arousal\n0.1\n", 2, "arousal", "expected 2 comma-separated values, found 1"),
    ("au", ",".join(vocab_lib.AU12[:11]) + "\n1\n", 1, "AU26", "expected 'AU26'"),
    ("va", "arousal,valence\n0.1,0.2\n", 1, "valence", "expected 'valence', found 'arousal'"),
    ("expr", "Neutral,Anger,Disgust,Fear,Happy,Sadness,Surprise,Other\n1\n", 1, "Happiness",
     "expected 'Happiness', found 'Happy'"),
])
def test_affwild2_bad_label_files_skip_the_video(tmp_path, task, content, line, field, what):
  root, _, _ = _affwild_root(tmp_path)
  folder = {"va": "VA_Estimation_Challenge", "expr": "EXPR_Classification_Challenge",
            "au": "AU_Detection_Challenge"}[task]
  path = fx.write_text(str(root / "annotations" / folder / "Train_Set" / "vidA.txt"), content)
  out = run(affwild2, root)
  (err,) = skips(out)
  assert (err.path, err.line, err.field, err.item) == (path, line, field, "vidA")
  assert what in err.reason
  assert [x.video_id for x in out if isinstance(x, VideoItem)] == ["1-30-1280x720_left"]


def test_affwild2_missing_images_and_ambiguous_editions(tmp_path):
  root, _, _ = _affwild_root(tmp_path)
  _aw_file(root / "annotations", "VA_Estimation_Challenge", "Train_Set", "vidZ", "valence,arousal",
           [(0.1, 0.2)])
  errs = skips(run(affwild2, root))
  assert [(e.item, e.path) for e in errs] == [("vidZ", str(root / "cropped_aligned" / "vidZ"))]
  _aw_file(root, "VA_Set", "Train_Set", "vidA", "valence,arousal", [(0.1, 0.2)])
  with pytest.raises(PrepError, match="several VA annotation folders"):
    run(affwild2, root)


# ------------------------------------------------------------------------------------------------
# recola


def _arff(name: str, rows: list[tuple[float, float]], attrs=None) -> str:
  attrs = attrs or ["Instance_name string", "frameTime numeric", "GoldStandard numeric"]
  head = "@relation GOLDSTANDARD\n\n" + "".join(f"@attribute {a}\n" for a in attrs) + "\n@data\n\n"
  return head + "".join(f"{name},{t:.2f},{v}\n" for t, v in rows)


def test_recola_series_and_videos(tmp_path):
  root = tmp_path / "RECOLA"
  gs = root / "ratings_gold_standard"
  val_t = [(0.0, -0.0229), (0.04, 0.1), (0.08, 0.25), (0.12, -0.5)]
  aro_t = [(0.0, 0.3), (0.04, 0.2), (0.08, 0.1), (0.12, 0.0)]
  for name in ("train_1", "dev_1"):
    fx.write_text(str(gs / "valence" / f"{name}.arff"), _arff(name, val_t))
    fx.write_text(str(gs / "arousal" / f"{name}.arff"), _arff(name, aro_t))
  fx.write_text(str(gs / "arousal" / "train_2.arff"), _arff("train_2", aro_t))  # arousal only
  for k, name in enumerate(("train_1", "train_2", "dev_1", "test_1")):
    fx.write_video(str(root / "recordings_video" / f"{name}.mp4"), fx.video_frames(k, 3))
  out = run(recola, root)
  assert [(x.split, x.video_id) for x in out] == [("train", "train_1"), ("train", "train_2"),
                                                  ("val", "dev_1"), ("test", "test_1")]
  only_arousal = out.pop(1).series["va"].values
  np.testing.assert_array_equal(only_arousal,
                                np.asarray([[-5, a] for _, a in aro_t], np.float32))
  s = out[1].series["va"]
  assert s.names == ("valence", "arousal") and s.rate_hz == 25.0
  np.testing.assert_array_equal(s.times, [0.0, 0.04, 0.08, 0.12])
  np.testing.assert_array_equal(s.values, np.asarray([[v, a] for (_, v), (_, a) in
                                                      zip(val_t, aro_t)], np.float32))
  assert out[2].series == {} and out[0].va is None
  assert [fx.nearest_frame(f.image, 2, 3) for f in out[1].frames()] == [0, 1, 2]  # dev_1
  assert [f.t_sec for f in out[1].frames()] == pytest.approx([0, 0.04, 0.08])


def test_recola_bad_inputs(tmp_path):
  root = tmp_path / "RECOLA"
  gs = root / "ratings_gold_standard"
  rows = [(0.0, 0.1), (0.04, 0.2), (0.08, 0.3)]
  # train_1: grids differ; train_2: wrong attribute; dev_1: value not a number; dev_2: no video
  fx.write_text(str(gs / "valence" / "train_1.arff"), _arff("train_1", rows))
  aro = fx.write_text(str(gs / "arousal" / "train_1.arff"), _arff("train_1", rows[:2]))
  bad_attr = fx.write_text(str(gs / "valence" / "train_2.arff"), _arff(
      "train_2", rows, ["Instance_name string", "frameTime numeric", "Rating numeric"]))
  nan_row = fx.write_text(str(gs / "arousal" / "dev_1.arff"),
                          _arff("dev_1", rows).replace("0.04,0.2", "0.04,abc"))
  fx.write_text(str(gs / "valence" / "dev_2.arff"), _arff("dev_2", rows))
  for name in ("train_1", "train_2", "dev_1"):
    fx.write_video(str(root / "recordings_video" / f"{name}.mp4"), fx.video_frames(0, 2))
  out = run(recola, root)
  assert all(isinstance(x, Skip) for x in out)
  errs = {e.item: e for e in skips(out)}
  assert errs["train_1"].path == aro and errs["train_1"].field == "frameTime"
  assert "3 rows in valence, 2 in arousal" in errs["train_1"].reason
  assert (errs["train_2"].path, errs["train_2"].line, errs["train_2"].field) == (
      bad_attr, 5, "GoldStandard")
  assert str(errs["dev_1"]).startswith(f"{nan_row}:10 field 'GoldStandard': expected a number")
  assert "no video for recording dev_2" in errs["dev_2"].reason
  # same length, different times
  fx.write_text(str(gs / "arousal" / "train_1.arff"),
                _arff("train_1", [(0.0, 0.1), (0.05, 0.2), (0.08, 0.3)]))
  err = {e.item: e for e in skips(run(recola, root))}["train_1"]
  assert "first difference at row 2: valence 0.04 vs arousal 0.05" in err.reason


# ------------------------------------------------------------------------------------------------
# sewa


def test_sewa_series_and_bad_rows(tmp_path):
  root = tmp_path / "SEWA"
  rows = [(0.0, 0.1, -0.2, 0.3), (0.1, 0.15, -0.25, 0.35), (0.2, 0.2, -0.3, 0.4)]
  text = "".join(f"Train_DE_01; {t:.1f}; {a}; {v}; {lk}\n" for t, a, v, lk in rows)
  fx.write_text(str(root / "labels" / "Train_DE_01.csv"), text)
  fx.write_text(str(root / "labels" / "Devel_DE_02.csv"),
                text.replace("Train_DE_01", "Devel_DE_02"))
  fx.write_video(str(root / "vids" / "Train_DE_01.avi"), fx.video_frames(0, 3))
  fx.write_video(str(root / "vids" / "Devel_DE_02.mp4"), fx.video_frames(1, 2))
  fx.write_video(str(root / "vids" / "Test_DE_03.mp4"), fx.video_frames(2, 2))
  out = run(sewa, root, ["--video-dir", str(root / "vids")])
  assert [(x.split, x.video_id) for x in out] == [("train", "Train_DE_01"), ("val", "Devel_DE_02"),
                                                  ("test", "Test_DE_03")]
  va, lk = out[0].series["va"], out[0].series["liking"]
  np.testing.assert_array_equal(va.times, [0.0, 0.1, 0.2])
  np.testing.assert_array_equal(va.values, np.asarray([[v, a] for _, a, v, _ in rows], np.float32))
  np.testing.assert_array_equal(lk.values, np.asarray([[x[3]] for x in rows], np.float32))
  assert va.rate_hz == 10.0 and va.names == ("valence", "arousal") and lk.names == ("liking",)
  assert out[0].source_path.endswith("Train_DE_01.avi") and out[2].series == {}
  # a row with 4 fields; an instance name from another recording; decreasing time
  bad = fx.write_text(str(root / "labels" / "Train_DE_01.csv"),
                      "Train_DE_01;0.0;0.1;0.2;0.3\nTrain_DE_01;0.1;0.1;0.2\n")
  other = fx.write_text(str(root / "labels" / "Devel_DE_02.csv"), "Devel_DE_09;0.0;0.1;0.2;0.3\n")
  errs = {e.item: e for e in skips(run(sewa, root, ["--video-dir", str(root / "vids")]))}
  assert str(errs["Train_DE_01"]).startswith(f"{bad}:2 field 'liking': expected 5")
  assert str(errs["Devel_DE_02"]).startswith(f"{other}:1 field 'instance name'")
  fx.write_text(bad, "Train_DE_01;0.1;0.1;0.2;0.3\nTrain_DE_01;0.1;0.1;0.2;0.3\n")
  err = {e.item: e for e in skips(run(sewa, root, ["--video-dir", str(root / "vids")]))}
  assert str(err["Train_DE_01"]).startswith(
      f"{bad}:2 field 'timestamp': time 0.1 does not increase")


# ------------------------------------------------------------------------------------------------
# affectnet

_AN_HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
              "expression,valence,arousal\n")


def _landmarks(seed: int) -> np.ndarray:
  return np.round(np.random.default_rng(seed).uniform(0, 24, (68, 2)), 2)


def _an_row(rel, box, lm, expr, v, a) -> str:
  lm_text = ";".join(f"{x:.2f}" for x in lm.reshape(-1)) if lm is not None else ""
  return f"{rel},{box[0]},{box[1]},{box[2]},{box[3]},{lm_text},{expr},{v},{a}\n"


def test_affectnet_rows_to_one_frame_items(tmp_path):
  root = tmp_path / "AffectNet"
  imgs = root / "Manually_Annotated_Images"
  paths = [fx.write_jpeg(str(imgs / "689" / f"img{k}.jpg"), fx.image(k, 0, 24)) for k in range(4)]
  rows = [("689/img0.jpg", (2, 3, 18, 17), _landmarks(0), 1, 0.75, -0.5),
          ("689/img1.jpg", (0, 0, 24, 24), _landmarks(1), 7, 0.25, 0.125),
          ("689/img2.jpg", (1, 1, 20, 20), None, 9, -2, -2),
          ("689/img3.jpg", (4, 4, 10, 12), _landmarks(3), 0, -1, 1)]
  fx.write_text(str(root / "Manually_Annotated_file_lists" / "training.csv"),
                _AN_HEADER + "".join(_an_row(*r) for r in rows[:3]))
  fx.write_text(str(root / "Manually_Annotated_file_lists" / "validation.csv"),
                _AN_HEADER + _an_row(*rows[3]))
  out = run(affectnet, root)
  assert [(x.split, x.video_id, x.clip_label) for x in out] == [
      ("train", "689/img0", 1), ("train", "689/img1", 7), ("train", "689/img2", 9),
      ("val", "689/img3", 0)]
  for item, (rel, (x, y, w, h), lm, e, v, a), p in zip(out, rows, paths):
    assert item.vocab == item.expr_vocab == "affectnet11" and item.num_frames == 1
    np.testing.assert_array_equal(item.expr, [e])
    expected_va = [[-5 if v == -2 else v, -5 if a == -2 else a]]
    np.testing.assert_array_equal(item.va, np.asarray(expected_va, np.float32))
    np.testing.assert_array_equal(item.boxes, [[x, y, x + w, y + h]])
    assert item.landmarks.shape == (1, 68, 2) and item.landmark_scheme == "ibug68"
    if lm is None:
      assert np.isnan(item.landmarks).all()
    else:
      np.testing.assert_allclose(item.landmarks[0], lm, rtol=0, atol=1e-5)
    (frame,) = item.frames()
    assert (frame.index, frame.t_sec, frame.precomputed) == (0, 0.0, False)
    np.testing.assert_array_equal(frame.image, cv2_rgb(p))
  out7 = run(affectnet, root, ["--classes", "7"])
  assert [x.video_id for x in out7 if isinstance(x, VideoItem)] == ["689/img0", "689/img3"]
  assert [(e.item, e.line, e.field) for e in skips(out7)] == [("689/img1", 3, "expression"),
                                                              ("689/img2", 4, "expression")]
  assert "expression 7 (Contempt)" in skips(out7)[0].reason
  out8 = run(affectnet, root, ["--classes", "8"])
  assert [x.video_id for x in out8 if isinstance(x, VideoItem)] == ["689/img0", "689/img1",
                                                                    "689/img3"]


def test_affectnet_bad_inputs(tmp_path):
  root = tmp_path / "AffectNet"
  lists = root / "Manually_Annotated_file_lists"
  fx.write_broken_jpeg(str(root / "Manually_Annotated_Images" / "1" / "a.jpg"))
  fx.write_jpeg(str(root / "Manually_Annotated_Images" / "1" / "b.jpg"), fx.image(0, 0))
  train = fx.write_text(str(lists / "training.csv"), _AN_HEADER
                        + _an_row("1/a.jpg", (0, 0, 8, 8), _landmarks(0), 2, 0.1, 0.1)
                        + _an_row("1/b.jpg", (0, 0, 8, 8), _landmarks(0), 11, 0.1, 0.1)
                        + _an_row("1/b.jpg", (0, 0, 8, 8), _landmarks(0)[:67], 2, 0.1, 0.1)
                        + _an_row("1/b.jpg", (0, 0, 8, 8), _landmarks(0), 2, 1.5, 0.1)
                        + _an_row("1/c.jpg", (0, 0, 8, 8), _landmarks(0), 2, 0.1, 0.1))
  out = run(affectnet, root)
  (item,) = [x for x in out if isinstance(x, VideoItem)]
  (frame,) = item.frames()
  assert frame.status == UNREADABLE and frame.error.startswith(item.source_path + ": cannot decode")
  assert [(e.line, e.field) for e in skips(out)] == [
      (3, "expression"), (4, "facial_landmarks"), (5, "valence"), (6, "subDirectory_filePath")]
  assert all(e.path == train for e in skips(out))
  assert "unknown label value 11" in skips(out)[0].reason
  assert "found 134" in skips(out)[1].reason
  fx.write_text(train, _AN_HEADER.replace("expression", "emotion"))
  with pytest.raises(PrepError, match=r"training\.csv:1 field 'expression'.*found 'emotion'"):
    run(affectnet, root)
  fx.write_text(train, _AN_HEADER + "1/b.jpg,0,0,8,8,1;2,2,0.1\n")
  with pytest.raises(PrepError, match=r"training\.csv:2 field 'arousal': expected 9 columns"):
    run(affectnet, root)


# ------------------------------------------------------------------------------------------------
# folder


def test_folder_clip_and_frame_labels(tmp_path):
  src = tmp_path / "frames"
  written = {}
  written["vid_b"] = [fx.write_jpeg(str(src / "vid_b" / f"frame_{n:03d}.jpg"), fx.image(0, n))
                      for n in range(4)]
  written["vid_a"] = [fx.write_png(str(src / "vid_a" / f"{n}.png"), fx.image(1, n))
                      for n in (5, 6, 7)]
  labels = fx.write_text(str(tmp_path / "labels.csv"),
                         "video_id,label,split\nvid_a,Angry,val\nvid_b,0,\n")
  fx.write_text(str(src / "vid_b.csv"),
                "frame,valence,arousal,expr,AU1,AU12\n2,0.5,-0.5,3,1,0\n0,-5,-5,-1,-1,1\n")
  out = run(folder, src, ["--labels", labels, "--vocab", "dfew7", "--split", "train", "--fps",
                          "10"])
  assert [(x.video_id, x.split, x.clip_label, x.vocab) for x in out] == [
      ("vid_a", "val", 3, "dfew7"), ("vid_b", "train", 0, "dfew7")]
  a, b = out
  assert a.va is None and a.expr is None and a.au is None
  np.testing.assert_array_equal(b.va, [[-5, -5], [-5, -5], [0.5, -0.5], [-5, -5]])
  np.testing.assert_array_equal(b.expr, [-1, -1, 3, -1])
  np.testing.assert_array_equal(b.au, [[-1, 1], [-1, -1], [1, 0], [-1, -1]])
  assert b.au_names == ("AU1", "AU12") and b.expr_vocab == "dfew7"
  frames = list(a.frames())
  assert [f.index for f in frames] == [5, 6, 7]
  assert [f.t_sec for f in frames] == pytest.approx([0.0, 0.1, 0.2])
  check_frames_match_files(frames, written["vid_a"])
  np.testing.assert_array_equal(frames[2].image, fx.image(1, 7))  # PNG: lossless


def test_folder_bad_inputs(tmp_path):
  src = tmp_path / "frames"
  for vid in ("v1", "v2", "v3"):
    for i in range(3):
      fx.write_jpeg(str(src / vid / f"{i}.jpg"), fx.image(0, i))
  os.makedirs(src / "v4")
  labels = fx.write_text(str(tmp_path / "l.csv"),
                         "video_id,label\nv1,Bored\nv2,1\nv3,2\nv4,1\nv5,1\n")
  fx.write_text(str(src / "v2.csv"), "frame,valence,arousal\n0,0.1,0.2\n7,0.1,0.2\n")
  bad_expr = fx.write_text(str(src / "v3.csv"), "frame,expr\n1,9\n")
  errs = {e.item: e for e in skips(run(folder, src, ["--labels", labels, "--vocab", "dfew7"]))}
  assert sorted(errs) == ["v1", "v2", "v3", "v4", "v5"]
  assert str(errs["v1"]).startswith(f"{labels}:2 field 'label'") and "'Bored'" in str(errs["v1"])
  assert str(errs["v2"]).startswith(f"{src}/v2.csv:3 field 'frame': frame 7 has no image")
  assert str(errs["v3"]).startswith(f"{bad_expr}:2 field 'expr': unknown label value 9")
  assert "empty" in errs["v4"].reason
  assert str(errs["v5"]).startswith(f"{labels}:6 field 'video_id': no frame folder")
  fx.write_text(labels, "video_id,label\nv1\n")
  with pytest.raises(PrepError, match=r"l\.csv:2 field 'label': expected 2 columns"):
    run(folder, src, ["--labels", labels, "--vocab", "dfew7"])


# ------------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_items_equal_the_generator():
  args = parse(synthetic, ["--num-videos", "2", "--seed", "3", "--start", "5", "--num-frames", "4",
                           "--render-size", "32", "--split", "val"])
  light = list(synthetic.items("", args))
  assert [x.clip_label for x in light] == [5, 6] and all(x.va is None for x in light)
  out = [x.resolve() for x in light]
  assert [x.key for x in out] == [x.key for x in light]
  assert [x.video_id for x in out] == ["000005", "000006"]
  for k, item in zip((5, 6), out):
    ref = synth_lib.generate_video(synth_lib.video_seed(3, k), expression=k % 7, num_frames=4,
                                   size=32, pose_amount=0.3, occlusion_prob=0.2)
    assert (item.split, item.fps, item.clip_label, item.vocab) == ("val", 25.0, k % 7, "dfew7")
    assert item.expr_vocab == "dfew7" and item.au_names == synth_lib.AUS
    for name, ref_key in (("expr", "expr"), ("au", "au"), ("va", "va"), ("landmarks", "landmarks"),
                          ("boxes", "face_box")):
      np.testing.assert_array_equal(getattr(item, name), ref[ref_key])
    frames = list(item.frames())
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [f.t_sec for f in frames] == pytest.approx([0, 0.04, 0.08, 0.12])
    assert not any(f.precomputed for f in frames)
    np.testing.assert_array_equal(np.stack([f.image for f in frames]), ref["frames"])
  defaults = parse(synthetic, [])
  assert (defaults.num_videos, defaults.seed, defaults.num_frames, defaults.render_size,
          defaults.pose, defaults.occlusion, defaults.heldout_videos) == (16, 0, 32, 112, 0.3, 0.2, 0)
  held = list(synthetic.items("", parse(synthetic, ["--num-videos", "1", "--heldout-videos", "2",
                                                     "--num-frames", "3", "--render-size", "32"])))
  assert [(x.split, x.video_id) for x in held] == [("train", "000000"), ("test", "000000"),
                                                   ("test", "000001")]
  ref = synth_lib.generate_video(synth_lib.video_seed(synthetic.HELDOUT_SEED_OFFSET, 1),
                                 expression=1, num_frames=3, size=32, pose_amount=0.3,
                                 occlusion_prob=0.2)
  np.testing.assert_array_equal(held[2].resolve().va, ref["va"])
