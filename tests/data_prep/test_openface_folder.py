"""`folder --openface DIR`: per-video OpenFace 2 CSVs as the items' precomputed face geometry,
aligned by `--detector auto` like any dataset geometry."""
from __future__ import annotations

import os

import cv2
import numpy as np

from data_prep import cli as prep_cli, shards
from data_prep.faces import FaceStage, FaceRecipe
from data_prep.sources import folder
from data_prep.sources.base import Skip, VideoItem
from jaxaffect.data import schema, synthetic
from tests.data_prep.test_faces import _openface_csv
from tests.data_prep.test_sources import parse


def _folder(tmp_path, n=5):
  """frames/a (OpenFace CSV: frame 3 failed, frame 5 has no row), frames/b (no CSV), and
  frames/c (a CSV without landmark columns)."""
  src, of = tmp_path / "frames", tmp_path / "openface"
  of.mkdir()
  v = synthetic.generate_video(3, num_frames=n, size=128, occlusion_prob=0.0)
  for vid in ("a", "b", "c"):
    (src / vid).mkdir(parents=True)
    for t in range(n):            # frame names from 10: OpenFace numbers the images from 1
      cv2.imwrite(str(src / vid / f"img_{10 + t:03d}.png"), v["frames"][t][..., ::-1])
  rows = [dict(frame=t + 1, t=t / 25, conf=0.95, success=1, lm=v["landmarks"][t])
          for t in range(n - 1)]
  rows[2].update(success=0, conf=0.0, lm=np.zeros((68, 2)))
  (of / "a.csv").write_text(_openface_csv(rows, multi=False))
  (of / "c.csv").write_text("frame, timestamp, confidence, success\n1, 0.0, 0.9, 1\n")
  return src, of, v


def test_folder_openface_geometry(tmp_path):
  src, of, v = _folder(tmp_path)
  out = list(folder.items(str(src), parse(folder, ["--openface", str(of)])))
  items = {x.video_id: x for x in out if isinstance(x, VideoItem)}
  (skip,) = [x.error for x in out if isinstance(x, Skip)]
  assert sorted(items) == ["a", "b"] and skip.item == "c" and skip.line == 1
  a, b = items["a"], items["b"]
  assert a.landmark_scheme == "ibug68" and a.meta["openface"] == str(of / "a.csv")
  assert a.landmarks.shape == (5, 68, 2) and a.boxes.shape == (5, 4)
  np.testing.assert_allclose(a.landmarks[[0, 1, 3]], v["landmarks"][[0, 1, 3]], atol=1e-3)
  assert np.isnan(a.landmarks[[2, 4]]).all() and np.isnan(a.boxes[[2, 4]]).all()
  assert b.landmarks is None and b.boxes is None and b.landmark_scheme == "" and b.meta == {}
  # without --openface: no geometry
  plain = {x.video_id: x for x in folder.items(str(src), parse(folder, []))
           if isinstance(x, VideoItem)}
  assert plain["a"].landmarks is None and "c" in plain


def test_folder_openface_through_the_writer(tmp_path):
  src, of, v = _folder(tmp_path)
  for vid in ("b", "c"):
    for f in os.listdir(src / vid):
      os.remove(src / vid / f)
    os.rmdir(src / vid)
  out = tmp_path / "out"
  args = prep_cli.build_parser().parse_args(["folder", "--src", str(src), "--out", str(out),
                                             "--openface", str(of), "--quiet"])
  m = shards.run(args.source, args)
  assert m["totals"]["videos"] == 1 and m["job"]["args"]["openface"] == str(of)
  (r,) = m["records"]
  with open(out / r["file"], "rb") as f:
    rec = schema.decode(schema.read_record_at(f, r["offset"]))
  assert rec.recipe["detector"] == "precomputed" and rec.landmark_scheme == "ibug68"
  np.testing.assert_array_equal(rec.face_found, [1, 1, 0, 1, 0])
  stage = FaceStage(FaceRecipe(detector="precomputed"))
  for t in (0, 1, 3):
    m_t = stage.align_matrix(v["landmarks"][t])
    np.testing.assert_allclose(rec.matrix[t], m_t, atol=2e-3)
    np.testing.assert_allclose(rec.landmarks[t], (v["landmarks"][t] @ m_t[:, :2].T) + m_t[:, 2],
                               atol=2e-2)
  np.testing.assert_allclose(rec.matrix[2], rec.matrix[1], atol=1e-6)  # the last good alignment
