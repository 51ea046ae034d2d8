"""OpenFace 2 CSVs (FeatureExtraction / FaceLandmarkVidMulti output) as a face track: 68 iBUG
landmarks and their extent per frame, for sources that take OpenFace output as precomputed
geometry (`folder --openface DIR`)."""
from __future__ import annotations

import csv
import dataclasses
from typing import Iterable

import numpy as np

from data_prep.sources.base import PrepError


def _nan(*shape) -> np.ndarray:
  return np.full(shape, np.nan, np.float32)


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
