"""The ABAW6 MAE pretraining image sources (issue 13 item 5): RAF-DB basic, FER2013, FER+.

Fixtures are written on the fly in each official layout (tiny flat-grey / flat-colour images, so a
crop read back can be matched to its source after JPEG); the shards are read back with
`ShardRecords` (counts, labels, splits, vocabularies, soft labels, the recipe).
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np
import pytest

from data_prep import cli as prep_cli
from data_prep import shards
from data_prep.sources import fer2013, ferplus, rafdb
from data_prep.sources.base import UNREADABLE, PrepError, Skip, VideoItem
from jaxaffect.data import schema
from jaxaffect.data import vocab as vocab_lib
from jaxaffect.data.records import ShardRecords
from tests.data_prep import fixtures_sources as fx


def _items(mod, src, argv=()):
  p = argparse.ArgumentParser()
  p.add_argument("--detector", default="auto")
  mod.add_arguments(p)
  return list(mod.items(str(src), p.parse_args(list(argv))))


def _ok(out):
  return [x for x in out if isinstance(x, VideoItem)]


def _skips(out):
  return [x.error for x in out if isinstance(x, Skip)]


def _prep(source, src, out, *extra):
  args = prep_cli.build_parser().parse_args(
      [source, "--src", str(src), "--out", str(out), "--quiet", "--size", "32", *map(str, extra)])
  return shards.run(args.source, args)


def _read(out, split, label_vocab=""):
  recs = ShardRecords(str(out), split, label_vocab=label_vocab)
  return {ex["record"].video_id: ex for ex in (recs[i] for i in range(len(recs)))}


def _shard_mtimes(out):
  return {os.path.basename(p): os.stat(p).st_mtime_ns
          for p in glob.glob(str(out / "*.tfrecord-*")) if not p.endswith(".json")}


# ------------------------------------------------------------------------------------------------
# Vocabularies: the maps written out by hand (RAF-DB 1..7 stored 0-based, FER 0..6, FER+ 8).


def test_new_vocabularies_map_by_name_to_the_other_orders():
  assert vocab_lib.names("rafdb7") == ("Surprise", "Fear", "Disgust", "Happiness", "Sadness",
                                       "Anger", "Neutral")
  assert vocab_lib.names("fer7") == ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise",
                                     "Neutral")
  # dfew7 = Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear
  np.testing.assert_array_equal(vocab_lib.mapping("rafdb7", "dfew7"), [4, 6, 5, 0, 1, 3, 2])
  # abaw8 = Neutral, Anger, Disgust, Fear, Happiness, Sadness, Surprise, Other
  np.testing.assert_array_equal(vocab_lib.mapping("rafdb7", "abaw8"), [6, 3, 2, 4, 5, 1, 0])
  np.testing.assert_array_equal(vocab_lib.mapping("fer7", "abaw7"), [1, 2, 3, 4, 5, 6, 0])
  np.testing.assert_array_equal(vocab_lib.mapping("fer7", "rafdb7"), [5, 2, 1, 3, 4, 0, 6])
  # affectnet11 = Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt, ...
  np.testing.assert_array_equal(vocab_lib.mapping("ferplus8", "affectnet11"),
                                [0, 1, 3, 2, 6, 5, 4, 7])
  np.testing.assert_array_equal(vocab_lib.mapping("ferplus8", "dfew7"),
                                [2, 0, 4, 1, 3, 5, 6, -1])
  with pytest.raises(ValueError, match="Contempt"):
    vocab_lib.convert([7], "ferplus8", "abaw7")
  np.testing.assert_array_equal(vocab_lib.convert([7, -1, 0], "ferplus8", "abaw7",
                                                  allow_missing=True), [-1, -1, 0])


# ------------------------------------------------------------------------------------------------
# RAF-DB


def _raf_colour(k: int) -> tuple[int, int, int]:
  return (30 + 35 * (k % 6), 200 - 30 * (k % 6), 60 + 25 * (k % 7))


def _rafdb_root(tmp_path, *, aligned=True, original=True):
  """Six listed images (one with spaces in its name, one .JPG) + the bad lines of the tests."""
  root = tmp_path / "RAF-DB"
  basic = root / "basic"
  names = [("train_00001.jpg", 5), ("train_00002.jpg", 1), ("test_0001.jpg", 7),
           ("test_0002.jpg", 4), ("train_odd name (1).jpg", 6), ("test_0003.JPG", 2)]
  for k, (name, _) in enumerate(names):
    stem, ext = os.path.splitext(name)
    if aligned:
      fx.write_jpeg(str(basic / "Image" / "aligned" / f"{stem}_aligned{ext}"),
                    np.full((100, 100, 3), _raf_colour(k), np.uint8))
    if original:
      fx.write_jpeg(str(basic / "Image" / "original" / name),
                    np.full((60, 80, 3), _raf_colour(k), np.uint8))
  lines = "".join(f"{n} {lab}\n" for n, lab in names)
  fx.write_text(str(basic / "EmoLabel" / "list_patition_label.txt"), lines)
  return root, names


def test_rafdb_list_to_items_aligned_and_original(tmp_path):
  root, names = _rafdb_root(tmp_path)
  out = _items(rafdb, root)
  assert [(x.split, x.video_id, x.clip_label) for x in out] == [
      ("train", "train_00001", 4), ("train", "train_00002", 0), ("test", "test_0001", 6),
      ("test", "test_0002", 3), ("train", "train_odd name (1)", 5), ("test", "test_0003", 1)]
  for k, item in enumerate(out):
    assert item.vocab == item.expr_vocab == "rafdb7" and item.num_frames == 1
    np.testing.assert_array_equal(item.expr, [item.clip_label])
    assert item.source_path.endswith("_aligned" + os.path.splitext(names[k][0])[1])
    (frame,) = item.frames()
    assert (frame.index, frame.t_sec, frame.precomputed) == (0, 0.0, True)
    assert frame.image.shape == (100, 100, 3)
    assert np.abs(frame.image.astype(int) - _raf_colour(k)).max() <= 3
  assert vocab_lib.names("rafdb7")[out[0].clip_label] == "Sadness"     # label 5
  orig = _items(rafdb, root, ["--images", "original"])
  assert [x.video_id for x in orig] == [x.video_id for x in out]
  (frame,) = orig[4].frames()
  assert frame.precomputed is False and frame.image.shape == (60, 80, 3)
  assert orig[4].source_path.endswith(os.path.join("original", "train_odd name (1).jpg"))
  # auto = aligned when that folder exists, else the originals; --src may be basic/ itself
  root2, _ = _rafdb_root(tmp_path / "o", aligned=False)
  assert all(x.meta["images"] == "original" for x in _items(rafdb, root2 / "basic"))


def test_rafdb_bad_inputs(tmp_path):
  root, _ = _rafdb_root(tmp_path)
  lst = root / "basic" / "EmoLabel" / "list_patition_label.txt"
  fx.write_broken_jpeg(str(root / "basic" / "Image" / "aligned" / "train_00009_aligned.jpg"))
  fx.write_text(str(lst), "train_00001.jpg 5\ntrain_00002.jpg 8\nval_0001.jpg 1\n\n"
                "train_00001.jpg 5\ntest_0009.jpg 2\ntrain_00003.jpg x\ntrain_00009.jpg 3\n")
  out = _items(rafdb, root)
  assert [x.video_id for x in _ok(out)] == ["train_00001", "train_00009"]
  (frame,) = _ok(out)[1].frames()
  assert frame.status == UNREADABLE and "train_00009_aligned.jpg" in frame.error
  errs = _skips(out)
  assert [(e.line, e.field, e.item) for e in errs] == [
      (2, "label", "train_00002"), (3, "name", "val_0001"), (5, "name", "train_00001"),
      (6, "name", "test_0009"), (7, "label", "train_00003")]
  assert all(e.path == str(lst) for e in errs)
  assert "unknown label value 8" in errs[0].reason and "train_ or test_" in errs[1].reason
  assert "listed twice (first at line 1)" in errs[2].reason
  assert "test_0009_aligned.jpg not found" in errs[3].reason
  fx.write_text(str(lst), "train_00001.jpg 5\ntrain_00002.jpg\n")
  with pytest.raises(PrepError, match=r"list_patition_label\.txt:2 field 'label': expected"):
    _items(rafdb, root)
  with pytest.raises(PrepError, match="precomputed needs boxes or landmarks"):
    _items(rafdb, root, ["--detector", "precomputed"])
  with pytest.raises(PrepError, match="none resizes dataset-provided crops"):
    _items(rafdb, root, ["--detector", "none", "--images", "original"])
  with pytest.raises(PrepError, match="no basic/EmoLabel"):
    _items(rafdb, tmp_path / "nowhere")


def test_rafdb_shards_read_back_with_labels_splits_and_vocab(tmp_path):
  root, names = _rafdb_root(tmp_path)
  m = _prep("rafdb", root, tmp_path / "o", "--shards", "2")
  assert {s: sp["videos"] for s, sp in m["splits"].items()} == {"train": 3, "test": 3}
  assert m["splits"]["train"]["label_hist"] == {"0": 1, "4": 1, "5": 1}
  train = _read(tmp_path / "o", "train")
  rec = train["train_odd name (1)"]["record"]
  assert (rec.label, rec.vocab, rec.dataset, rec.split) == (5, "rafdb7", "rafdb", "train")
  assert rec.recipe["detector"] == "none" and rec.recipe["size"] == 32    # aligned crops resized
  img = schema.decode_frames(rec.jpegs)[0]
  assert img.shape == (32, 32, 3) and np.abs(img.astype(int) - _raf_colour(4)).max() <= 4
  test = _read(tmp_path / "o", "test", label_vocab="dfew7")   # explicit conversion on read
  dfew = vocab_lib.names("dfew7")
  assert {k: dfew[int(ex["label"])] for k, ex in test.items()} == {
      "test_0001": "Neutral", "test_0002": "Happy", "test_0003": "Fear"}


# ------------------------------------------------------------------------------------------------
# FER2013


def _grey(k: int) -> np.ndarray:
  return np.full((48, 48), 20 + 37 * (k % 6), np.uint8)


def _pixels(img) -> str:
  return " ".join(str(int(v)) for v in np.asarray(img).reshape(-1))


def _fer_csv(path, rows, header="emotion,pixels,Usage") -> str:
  text = header + "\n" + "".join(f"{e},{p if isinstance(p, str) else _pixels(p)},{u}\n"
                                 for e, p, u in rows)
  return fx.write_text(str(path), text)


FER_ROWS = [(0, _grey(0), "Training"), (3, _grey(1), "Training"), (6, _grey(2), "PublicTest"),
            (5, _grey(3), "PrivateTest"), (4, _grey(4), "Training")]


def test_fer2013_rows_to_items_and_shards(tmp_path):
  path = _fer_csv(tmp_path / "fer2013" / "fer2013.csv", FER_ROWS)
  out = _items(fer2013, tmp_path)                 # the folder above fer2013/ works
  assert [(x.video_id, x.split, x.clip_label) for x in out] == [
      ("fer0000000", "train", 0), ("fer0000001", "train", 3), ("fer0000002", "val", 6),
      ("fer0000003", "test", 5), ("fer0000004", "train", 4)]
  for k, item in enumerate(out):
    assert item.vocab == item.expr_vocab == "fer7" and item.source_path == f"{path}:{k + 2}"
    (frame,) = item.frames()
    assert frame.precomputed and frame.image.shape == (48, 48, 3)
    np.testing.assert_array_equal(frame.image, np.repeat(_grey(k)[:, :, None], 3, 2))
  m = _prep("fer2013", path, tmp_path / "o")
  assert {s: sp["videos"] for s, sp in m["splits"].items()} == {"train": 3, "val": 1, "test": 1}
  train = _read(tmp_path / "o", "train", label_vocab="abaw7")
  assert {k: vocab_lib.names("abaw7")[int(ex["label"])] for k, ex in train.items()} == {
      "fer0000000": "Anger", "fer0000001": "Happiness", "fer0000004": "Sadness"}
  rec = train["fer0000004"]["record"]
  assert rec.vocab == "fer7" and rec.recipe["detector"] == "none" and rec.meta["line"] == 6
  img = schema.decode_frames(rec.jpegs)[0]
  assert img.shape == (32, 32, 3) and np.abs(img.astype(int) - int(_grey(4)[0, 0])).max() <= 3


def test_fer2013_bad_rows_and_files(tmp_path):
  bad = [(0, _grey(0), "Training"), (7, _grey(1), "Training"),
         (1, _pixels(_grey(2))[:-3], "Training"),                 # 2303 values
         (1, _pixels(_grey(2)).replace("94", "x9", 1), "PublicTest"),
         (1, _pixels(_grey(2)).replace("94", "256", 1), "PublicTest"),
         (2, _grey(3), "Validation")]
  path = _fer_csv(tmp_path / "fer2013.csv", bad)
  out = _items(fer2013, path)
  assert [x.video_id for x in _ok(out)] == ["fer0000000"]
  assert [(e.line, e.field, e.item) for e in _skips(out)] == [
      (3, "emotion", "fer0000001"), (4, "pixels", "fer0000002"), (5, "pixels", "fer0000003"),
      (6, "pixels", "fer0000004"), (7, "Usage", "fer0000005")]
  r = [e.reason for e in _skips(out)]
  assert "expected 2304 space-separated integers (a 48x48 image), found 2303" in r[1]
  assert "value 1 is 'x9'" in r[2] and "value 1 is 256" in r[3] and "'Validation'" in r[4]
  assert str(_skips(out)[1]).startswith(f"{path}:4 field 'pixels'")
  _fer_csv(path, FER_ROWS, header="emotion,pixel,Usage")
  with pytest.raises(PrepError, match=r"fer2013\.csv:1 field 'pixels': header has no column"):
    _items(fer2013, path)
  fx.write_text(str(path), "emotion,pixels,Usage\n0,1 2 3\n")
  with pytest.raises(PrepError, match=r"fer2013\.csv:2 field 'Usage': expected 3 columns"):
    _items(fer2013, path)
  # Kaggle's icml_face_data.csv order (and spaces) is read by column name
  _fer_csv(path, [(e, p, u) for e, p, u in FER_ROWS], header="emotion, pixels, Usage")
  assert len(_ok(_items(fer2013, path))) == 5
  with pytest.raises(PrepError, match="precomputed needs boxes"):
    _items(fer2013, path, ["--detector", "precomputed"])


# ------------------------------------------------------------------------------------------------
# FER+ : hand-computed labels (votes: neutral happiness surprise sadness anger disgust fear
# contempt unknown NF)

PLUS_HEADER = ("Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,"
               "unknown,NF\n")
PLUS_ROWS = [  # (image name, votes, majority (None: dropped), soft kept?)
    ("fer0000000.png", [4, 0, 0, 1, 3, 2, 0, 0, 0, 0], None, True),   # 4,3,2 after removal: 4/9
    ("fer0000001.png", [6, 0, 1, 1, 0, 0, 0, 0, 2, 0], 0, True),      # 6 of 8 -> neutral
    ("fer0000002.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0], 1, True),
    ("", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0], None, False),                # FER+ dropped the image
    ("fer0000004.png", [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], None, True),   # all single votes: S = 0
    ("fer0000005.png", [1, 0, 0, 0, 0, 0, 0, 0, 2, 7], None, False),  # NF majority (7 of 9)
    ("fer0000006.png", [5, 5, 0, 0, 0, 0, 0, 0, 0, 0], None, True),   # exactly half: no majority
    ("fer0000007.png", [2, 0, 0, 0, 0, 0, 0, 0, 0, 1], 0, True),      # the single NF vote removed
    ("fer0000008.png", [0, 0, 3, 0, 0, 0, 4, 0, 0, 0], 6, True),      # fear 4 of 7
    ("fer0000009.png", [0, 0, 0, 0, 0, 0, 0, 3, 2, 0], 7, True),      # contempt 3 of 5
]
PLUS_USAGE = ["Training"] * 5 + ["PublicTest"] * 3 + ["PrivateTest"] * 2


def _ferplus_root(tmp_path, rows=PLUS_ROWS, usage=PLUS_USAGE):
  root = tmp_path / "FERPlus"
  fer_rows = [(k % 7, _grey(k), u) for k, u in enumerate(usage)]
  _fer_csv(root / "fer2013.csv", fer_rows)
  fx.write_text(str(root / "fer2013new.csv"), PLUS_HEADER + "".join(
      f"{u},{n},{','.join(map(str, v))}\n" for (n, v, _, _), u in zip(rows, usage)))
  return root


def test_ferplus_majority_labels_follow_the_ferplus_rule(tmp_path):
  root = _ferplus_root(tmp_path)
  out = _items(ferplus, root)
  want = {n[:-4]: lab for n, _, lab, _ in PLUS_ROWS if lab is not None}
  assert {x.video_id: x.clip_label for x in _ok(out)} == want
  assert {x.video_id: x.split for x in _ok(out)} == {
      "fer0000001": "train", "fer0000002": "train", "fer0000007": "val", "fer0000008": "test",
      "fer0000009": "test"}
  item = _ok(out)[0]
  assert item.vocab == "ferplus8" and item.soft_label is None
  assert item.meta["votes"] == [6, 0, 1, 1, 0, 0, 0, 0, 2, 0]
  np.testing.assert_array_equal(next(item.frames()).image[..., 0], _grey(1))
  errs = {e.line: e for e in _skips(out)}
  assert sorted(errs) == [2, 5, 6, 7, 8]
  assert "4 of 9 votes" in errs[2].reason and errs[5].field == "Image name"
  assert "'NF', not an emotion" in errs[7].reason and "5 of 10" in errs[8].reason
  assert "0 of 0" in errs[6].reason
  assert ferplus.majority(np.asarray([0, 0, 0, 0, 0, 0, 0, 0, 6, 4])) == (
      -1, "the majority (6 of 10 votes) is 'unknown', not an emotion")


def test_ferplus_soft_labels_in_the_shards(tmp_path):
  root = _ferplus_root(tmp_path)
  m = _prep("ferplus", root, tmp_path / "o", "--ferplus-label", "soft")
  kept = [n[:-4] for n, _, _, s in PLUS_ROWS if s]
  assert sorted(r["id"] for r in m["records"]) == sorted(kept)
  recs = {**_read(tmp_path / "o", "train"), **_read(tmp_path / "o", "val"),
          **_read(tmp_path / "o", "test")}
  for name, votes, lab, keep in PLUS_ROWS:
    if not keep:
      continue
    ex = recs[name[:-4]]
    rec = ex["record"]
    emo = np.asarray(votes[:8], np.float64)
    np.testing.assert_allclose(rec.soft_label, emo / emo.sum(), rtol=0, atol=1e-6)
    assert rec.label == (-1 if lab is None else lab) and rec.vocab == "ferplus8"
    assert float(ex["labelled"]) == (lab is not None)
  np.testing.assert_allclose(recs["fer0000000"]["record"].soft_label,
                             [0.4, 0, 0, 0.1, 0.3, 0.2, 0, 0], atol=1e-6)
  np.testing.assert_allclose(recs["fer0000004"]["record"].soft_label, np.full(8, 0.125))
  assert recs["fer0000009"]["record"].meta["label_name"] == "Contempt"
  (nf,) = [s for s in m["skipped"] if s.get("item") == "fer0000005"]
  assert "'NF' (7 votes), more than any emotion" in nf["reason"]


def test_ferplus_bad_rows_and_mismatched_files(tmp_path):
  root = _ferplus_root(tmp_path)
  plus = root / "fer2013new.csv"
  lines = plus.read_text().splitlines(keepends=True)
  lines[3] = lines[3].replace(",10,", ",ten,")                           # fer0000002
  fx.write_text(str(plus), "".join(lines))
  (e,) = [s for s in _skips(_items(ferplus, root)) if s.item == "fer0000002"]
  assert (e.line, e.field, e.path) == (4, "happiness", str(plus)) and "'ten'" in e.reason
  fx.write_text(str(plus), "".join(lines[:-1]))                         # one row short
  with pytest.raises(PrepError, match=r"9 data rows, but .*fer2013\.csv has 10"):
    _items(ferplus, root)
  fx.write_text(str(plus), "".join(lines).replace("PublicTest,fer0000005", "Training,fer0000005"))
  with pytest.raises(PrepError, match=r"fer2013new\.csv:7 field 'Usage': Usage 'Training' but "
                     r"row 6 of .* says 'PublicTest'"):
    _items(ferplus, root)
  fx.write_text(str(plus), PLUS_HEADER.replace("NF", "nf"))
  with pytest.raises(PrepError, match=r"fer2013new\.csv:1 field 'NF'"):
    _items(ferplus, root)
  with pytest.raises(PrepError, match="pass --fer-csv"):
    _items(ferplus, _ferplus_only(tmp_path))
  with pytest.raises(PrepError, match=r"none\.csv: no fer2013\.csv"):
    _items(ferplus, root, ["--fer-csv", str(tmp_path / "none.csv")])


def _ferplus_only(tmp_path):
  d = tmp_path / "plus_only"
  fx.write_text(str(d / "fer2013new.csv"), PLUS_HEADER)
  return d


# ------------------------------------------------------------------------------------------------
# The writer: rerun, resume, changed rows, other settings, --strict; one-line CLI errors


def test_ferplus_rerun_resume_and_changed_row(tmp_path):
  root = _ferplus_root(tmp_path)
  out = tmp_path / "o"
  m1 = _prep("ferplus", root, out, "--shards", "2")
  t1 = _shard_mtimes(out)
  assert len(t1) == 5                                       # train 2, val 1 (one item), test 2
  assert _prep("ferplus", root, out, "--shards", "2")["records"] == m1["records"]
  assert _shard_mtimes(out) == t1                           # nothing redone
  victim = "ferplus-test.tfrecord-00001-of-00002"           # a killed run: one shard missing
  os.remove(out / victim)
  m2 = _prep("ferplus", root, out, "--shards", "2")
  assert m2["records"] == m1["records"] and m2["splits"] == m1["splits"]
  assert {k for k, v in _shard_mtimes(out).items() if t1.get(k) != v} == {victim}
  # new pixels for one image (fer0000008, test shard 0) redo that shard only
  fer = root / "fer2013.csv"
  lines = fer.read_text().splitlines(keepends=True)
  lines[9] = lines[9].replace(_pixels(_grey(8)), _pixels(_grey(9)))
  fx.write_text(str(fer), "".join(lines))
  t2 = _shard_mtimes(out)
  _prep("ferplus", root, out, "--shards", "2")
  assert {k for k, v in _shard_mtimes(out).items() if t2[k] != v} == {
      "ferplus-test.tfrecord-00000-of-00002"}
  rec = _read(out, "test")["fer0000008"]["record"]
  assert abs(int(schema.decode_frames(rec.jpegs)[0][0, 0, 0]) - int(_grey(9)[0, 0])) <= 3
  with pytest.raises(shards.PrepFailed, match=r"other settings \(differs in \['label'\]\)"):
    _prep("ferplus", root, out, "--shards", "2", "--label", "soft")


def test_strict_stops_at_a_corrupt_row_and_writes_nothing(tmp_path, capsys):
  path = _fer_csv(tmp_path / "fer2013.csv", FER_ROWS[:2] + [(1, "1 2 3", "Training")])
  out = tmp_path / "o"
  rc = prep_cli.main(["fer2013", "--src", str(path), "--out", str(out), "--quiet", "--strict"])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
  assert f"{path}:4 field 'pixels'" in err and "--strict" in err
  assert not out.exists()
  assert prep_cli.main(["fer2013", "--src", str(path), "--out", str(out), "--quiet"]) == 0
  m = json.loads((out / "manifest.json").read_text())
  assert m["totals"]["videos"] == 2 and [s["line"] for s in m["skipped"]] == [4]


@pytest.mark.parametrize("source,extra", [("rafdb", []), ("fer2013", []), ("ferplus", []),
                                          ("fer2013", ["--detector", "precomputed"])])
def test_cli_errors_are_one_line(tmp_path, capsys, source, extra):
  src = tmp_path / "MISSING"
  if extra:
    src = _fer_csv(tmp_path / "fer2013.csv", FER_ROWS)
  rc = prep_cli.main([source, "--src", str(src), "--out", str(tmp_path / "o"), "--quiet", *extra])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("data_prep: "), err
  assert str(src) in err
  assert not (tmp_path / "o").exists()
