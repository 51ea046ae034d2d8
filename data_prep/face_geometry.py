"""Face geometry for data_prep: the alignment templates and point tables, the landmark maths
(5 alignment points, the 7 TDLS key points, FaceMesh 468 -> iBUG-68), the similarity transform and
the crop warp, and the mean landmark template of a split (`TemplateAccumulator`).

Alignment: a least-squares similarity transform (Umeyama 1991) from five points (eye centres =
mean of the two eye corners, nose tip, mouth corners; `FIVE_POINTS_IBUG68`) to the ArcFace
5-point template (insightface `arcface_dst`, 112x112), scaled to the crop size and shrunk towards
the crop centre by the margin (`data_prep.face_recipe.FaceRecipe.template_px`). `warp_crop` is
`cv2.warpAffine` with the recipe's kernel, with an integer pixel-area pre-reduction (`antialias`)
when the crop shrinks the face by more than 2x.

Coordinates: pixel (row i, column j) has its centre at (x=j, y=i) (OpenCV / dlib convention).
"""
from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np


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

  def add_result(self, result) -> None:
    """Adds a `data_prep.faces.FaceResult`."""
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


