"""Tiny media and label files in the official formats, written by the tests (nothing committed).

Frame images are flat colours that encode (video, frame) so that order can be checked after JPEG
compression: `colour(v, i)` is far (>= 20 levels per channel step) from every other one used.
"""
from __future__ import annotations

import os

import av
import numpy as np
from PIL import Image


def colour(video: int, frame: int) -> tuple[int, int, int]:
  """A distinct RGB colour per (video, frame); frames 0..11, videos 0..5."""
  return (20 + 18 * (frame % 12), 40 + 30 * (video % 6), 200 - 12 * (frame % 12))


def image(video: int, frame: int, size: int = 16) -> np.ndarray:
  return np.broadcast_to(np.asarray(colour(video, frame), np.uint8), (size, size, 3)).copy()


def write_jpeg(path: str, rgb: np.ndarray) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(rgb).save(path, format="JPEG", quality=95)
  return path


def write_png(path: str, rgb: np.ndarray) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(rgb).save(path, format="PNG")
  return path


def write_broken_jpeg(path: str, size: int = 16) -> str:
  """A JPEG cut in its entropy-coded data (PIL refuses it: 'image file is truncated')."""
  write_jpeg(path, np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:len(data) * 2 // 3])
  return path


def write_text(path: str, text: str) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="") as f:
    f.write(text)
  return path


def write_video(path: str, frames: list[np.ndarray], fps: int = 25, *, faststart: bool = True,
                codec: str | None = None) -> str:
  """Encode RGB frames with PyAV (libx264 in mp4/mkv, mpeg4 in avi), every frame a keyframe."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  ext = os.path.splitext(path)[1].lower()
  codec = codec or ("mpeg4" if ext == ".avi" else "libx264")
  options = {"movflags": "faststart"} if faststart and ext in (".mp4", ".mov") else {}
  with av.open(path, "w", options=options) as c:
    s = c.add_stream(codec, rate=fps)
    s.height, s.width = frames[0].shape[:2]
    s.pix_fmt = "yuv420p"
    s.options = {"g": "1", "preset": "ultrafast"} if codec == "libx264" else {"g": "1"}
    if codec == "mpeg4":
      s.bit_rate = 4_000_000
    for fr in frames:
      for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return path


def video_frames(video: int, n: int, size: int = 32) -> list[np.ndarray]:
  return [image(video, i, size) for i in range(n)]


def nearest_frame(img: np.ndarray, video: int, n: int) -> int:
  """Which frame colour of `video` the (decoded, lossy) image is closest to."""
  mean = img.reshape(-1, 3).astype(np.float64).mean(0)
  d = [np.abs(mean - np.asarray(colour(video, i))).max() for i in range(n)]
  return int(np.argmin(d))


def truncate(path: str, fraction: float) -> str:
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:int(len(data) * fraction)])
  return path
