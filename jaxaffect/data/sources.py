"""Video sources held outside shards: arrays in memory (`InMemoryVideos`: synthetic data, the
spec stand-in) and Former-DFER's annotation lists over folders of frames (`ListFileVideos`)."""
from __future__ import annotations

import glob
import os
import re
from typing import Any

import grain
import numpy as np

from jaxaffect.errors import MissingFile, UserError


# ----------------------------------------------------------------------------------------- sources
class InMemoryVideos(grain.sources.RandomAccessDataSource):
  """Videos held as arrays: `frames (N,T,H,W,3) uint8`, `label (N,)`."""

  def __init__(self, frames: np.ndarray, labels: np.ndarray, name: str = "memory"):
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
      raise UserError(f"{name}: frames must be uint8 (N,T,H,W,3), got {frames.dtype}{frames.shape}")
    if len(frames) != len(labels):
      raise UserError(f"{name}: {len(frames)} videos but {len(labels)} labels")
    self.frames, self.labels, self.name = frames, np.asarray(labels, np.int32), name

  def __len__(self) -> int:
    return len(self.frames)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {"frames": self.frames[i], "label": self.labels[i], "index": np.int32(i)}

  def __repr__(self) -> str:
    return f"InMemoryVideos({self.name}, n={len(self)})"


_TRAILING_INT = re.compile(r"(\d+)(?=\D*$)")


def _frame_sort_key(path: str):
  m = _TRAILING_INT.search(os.path.basename(path))
  return (int(m.group(1)) if m else -1, os.path.basename(path))


class ListFileVideos(grain.sources.RandomAccessDataSource):
  """Former-DFER list files: one `<frame dir> <num_frames> <label>` line per video.

  Frames are the `*.jpg`/`*.png` files of the directory, sorted by their trailing integer (DFEW's
  `1.jpg … 105.jpg` would sort wrongly as strings). `root` replaces the absolute prefix of the
  paths in the list (the official `annotation/script.py` rewrites it by hand): a listed
  `/their/disk/AFEW_Face/train/Happiness/011603980` is looked up as the longest tail of it that
  exists under `root` (`root/train/Happiness/011603980` for root = your `AFEW_Face`, or
  `root/011603980` for a flat folder), so nested split folders are kept. A listed video found
  under no tail is an error naming the list line.
  """

  def __init__(self, list_path: str, *, root: str | None = None, image_size: int = 112,
               num_classes: int = 7):
    self.list_path, self.image_size = list_path, image_size
    self.items: list[tuple[str, int]] = []
    with open(list_path) as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        parts = line.split()
        if len(parts) != 3:
          raise UserError(f"{list_path}:{lineno}: expected '<frame dir> <num_frames> <label>', "
                          f"got {len(parts)} fields: {line.strip()!r}")
        path, _, label = parts
        try:
          label = int(label)
        except ValueError:
          raise UserError(f"{list_path}:{lineno}: field 'label' is not an integer: {label!r}")
        if not 0 <= label < num_classes:
          raise UserError(f"{list_path}:{lineno}: field 'label'={label} outside [0, {num_classes})")
        if root:
          path = self.under_root(root, path, f"{list_path}:{lineno}")
        self.items.append((path, label))
    if not self.items:
      raise UserError(f"{list_path}: no videos listed")

  @staticmethod
  def under_root(root: str, listed: str, where: str) -> str:
    """The longest tail of the listed path that is a directory under `root`."""
    parts = [p for p in listed.replace("\\", "/").split("/") if p]
    for k in range(len(parts)):
      cand = os.path.join(root, *parts[k:])
      if os.path.isdir(cand):
        return cand
    raise UserError(f"{where}: field 'frame dir' {listed!r}: no tail of it is a folder under "
                    f"data.source.root={root!r} (tried {os.path.join(root, *parts[-2:])!r}, ...)")

  def __len__(self) -> int:
    return len(self.items)

  def frame_paths(self, i: int) -> list[str]:
    d = self.items[i][0]
    files = [p for p in glob.glob(os.path.join(d, "*")) if p.lower().endswith((".jpg", ".jpeg", ".png"))]
    if not files:
      raise MissingFile(f"{self.list_path}: video {i} ({d}): no frames (*.jpg/*.png) found")
    return sorted(files, key=_frame_sort_key)

  def __getitem__(self, i: int) -> dict[str, Any]:
    # Frames are decoded lazily by the sampler (only the sampled ones), see `VideoClip`.
    return {"frame_paths": self.frame_paths(i), "label": np.int32(self.items[i][1]),
            "index": np.int32(i)}
