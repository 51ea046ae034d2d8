"""The face recipe: how crops are made (detector, size, margin, template, kernel, JPEG quality),
validated, and recorded in every shard with the software and model files used (`to_json`).
The detectors are described in `data_prep.faces`."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from typing import Any

import cv2
import numpy as np

from data_prep import blazeface
from data_prep.face_geometry import _INTERPOLATION, TEMPLATE_SIZE, TEMPLATES

DETECTORS = ("blazeface", "haar", "precomputed", "none")
HAAR_FILE = "haarcascade_frontalface_alt2.xml"

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

