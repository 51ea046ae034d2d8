"""What every dataset source hands to the shard writer.

A source turns one official dataset layout into a sequence of `VideoItem`s (one per video, or per
image for image datasets: a one-frame video) and `Skip`s (inputs it could not use, with the reason).
Frames are decoded lazily by `VideoItem.frames()` so a worker holds one video at a time.

Conventions
- Frame indices are the dataset's own, 1-based where the dataset numbers frames from 1 (Aff-Wild2
  `00001.jpg`, DFEW `1.jpg`), otherwise 0-based for decoded videos; `t_sec` is the presentation time.
- A frame that should exist but does not (Aff-Wild2 `cropped_aligned` gaps) or cannot be decoded is
  still yielded, with `image=None` and `status` saying why: nothing is dropped silently.
- Per-frame labels are arrays aligned to the frames that `frames()` yields, with the ABAW sentinels:
  VA -5 (not annotated), EXPR -1, AU -1 (per unit). Continuous labels annotated on their own time base
  (RECOLA 40 ms, SEWA 100 ms) are kept as `Series` and resampled when read, never when written.
- Clip labels are in the dataset's canonical vocabulary (`VideoItem.vocab`, see
  `jaxaffect.data.schema.VOCABS`); a source never relabels silently.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import numpy as np

from jaxaffect.errors import UserError

# Frame status codes (stored per frame in every record as `frame/status`).
OK = 0            # image decoded (face found or not: see `face_found`, decided by the face stage)
NO_FACE = 1       # image decoded, no face detected
MISSING = 2       # the dataset has no image for this frame (e.g. Aff-Wild2 cropped_aligned gap)
UNREADABLE = 3    # the file exists but cannot be decoded (broken JPEG, truncated video)
STATUS_NAMES = {OK: "ok", NO_FACE: "no_face", MISSING: "missing", UNREADABLE: "unreadable"}


class PrepError(UserError):
  """Bad input, located: file, line or frame, and field."""

  def __init__(self, path: str, reason: str, *, line: int | None = None, frame: int | None = None,
               field: str | None = None, item: str | None = None):
    self.path, self.reason, self.line, self.frame, self.field, self.item = (
        path, reason, line, frame, field, item)
    where = path
    if line is not None:
      where += f":{line}"
    if frame is not None:
      where += f" frame {frame}"
    if field is not None:
      where += f" field '{field}'"
    super().__init__(f"{where}: {reason}")

  def to_json(self) -> dict[str, Any]:
    return {k: v for k, v in dict(path=self.path, line=self.line, frame=self.frame, field=self.field,
                                  item=self.item, reason=self.reason).items() if v is not None}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "PrepError":
    d = dict(d)
    return cls(d.pop("path"), d.pop("reason"), **d)

  def __reduce__(self):          # picklable across worker processes (BaseException keeps only args)
    return (PrepError.from_json, (self.to_json(),))


@dataclasses.dataclass
class Skip:
  """An input the source could not turn into an item (logged in the manifest; fatal with --strict)."""
  error: PrepError


@dataclasses.dataclass
class Frame:
  index: int                       # the dataset's frame number
  t_sec: float                     # presentation time in seconds (NaN: the frame rate is unknown)
  image: np.ndarray | None         # (H, W, 3) uint8 RGB, or None (see status)
  status: int = OK                 # OK, MISSING or UNREADABLE (the face stage sets NO_FACE)
  error: str = ""                  # why the image is None (file and reason)
  precomputed: bool = False        # the image is already an aligned face crop (dataset-provided)


@dataclasses.dataclass
class Series:
  """A continuous label on its own time base: values[k] holds at times[k] seconds."""
  times: np.ndarray                # (K,) float64 seconds, increasing
  values: np.ndarray               # (K, D) float32
  names: tuple[str, ...]           # D column names, e.g. ("valence", "arousal")
  rate_hz: float                   # nominal rate (RECOLA 25, SEWA 10)


@dataclasses.dataclass
class VideoItem:
  """One video (or one image as a 1-frame video) with everything the dataset says about it."""
  dataset: str                               # "dfew", "afew", "affwild2", ...
  video_id: str                              # unique within the dataset and split ("00001",
                                             # "1-30-1280x720_left"); may contain '/'
  split: str                                 # the dataset's own partition: "train", "val", "test", or "all"
  frames: Callable[[], Iterator[Frame]]      # lazily decodes the frames, in order
  num_frames: int | None = None              # frames `frames()` will yield if known; for decoded
                                             # videos the container's count, an estimate
                                             # (meta["container_frames"]): the writer counts
  fps: float = 0.0                           # source frame rate (0 if unknown)
  source_path: str = ""                      # the folder / file the frames come from
  clip_label: int = -1                       # clip-level class in `vocab` (-1: none)
  vocab: str = ""                            # name of the label vocabulary (schema.VOCABS)
  folds: tuple[str, ...] = ()                # fold memberships, e.g. ("1:train", "2:test", ...)
  track: str = ""                            # "", "left" or "right" (two-person Aff-Wild2 videos)
  # Per-frame labels aligned to the yielded frames (None = not annotated for this task):
  va: np.ndarray | None = None               # (T, 2) float32 valence, arousal; -5 = not annotated
  expr: np.ndarray | None = None             # (T,) int32 class in `expr_vocab`; -1 = invalid
  expr_vocab: str = ""
  au: np.ndarray | None = None               # (T, A) int32 0/1; -1 = invalid
  au_names: tuple[str, ...] = ()
  series: dict[str, Series] = dataclasses.field(default_factory=dict)
  # Precomputed face geometry in source-image pixels (per yielded frame), when the dataset has it:
  boxes: np.ndarray | None = None            # (T, 4) float32 x0, y0, x1, y1 (NaN where unknown)
  landmarks: np.ndarray | None = None        # (T, K, 2) float32 x, y (NaN where unknown)
  landmark_scheme: str = ""                  # "ibug68", ...
  soft_label: np.ndarray | None = None       # (C,) float32 vote distribution (DFEW annotation.xlsx)
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)   # anything else, JSON-serialisable
  # Expensive parts (rendering, decoding labels) deferred to the worker that writes the item: when
  # set, the writer uses `resolve()` (a full VideoItem with the same key) instead of this one.
  resolve: Callable[[], "VideoItem"] | None = None

  @property
  def key(self) -> str:
    return f"{self.dataset}/{self.split}/{self.video_id}"


Listing = Iterator["VideoItem | Skip"]
