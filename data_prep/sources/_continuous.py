"""Recordings with continuous labels on their own time base (RECOLA, SEWA) + their videos."""
from __future__ import annotations

import os
import re
from typing import Callable, Iterator

import numpy as np

from data_prep.sources import _util, video
from data_prep.sources.base import PrepError, Series, Skip, VideoItem

_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "all": 3}


def natural_key(name: str) -> tuple:
  """`train_2` before `train_10`."""
  return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def check_times(path: str, times: list[float], lines: list[int], field: str,
                item: str | None = None) -> None:
  """Times must increase strictly (PrepError at the first line where they do not)."""
  for k in range(1, len(times)):
    if not times[k] > times[k - 1]:
      raise PrepError(path, f"time {times[k]} does not increase (previous {times[k - 1]} at line "
                      f"{lines[k - 1]})", line=lines[k], field=field, item=item)


def rate_of(times: np.ndarray, nominal: float) -> float:
  """Rate from the median step (the nominal rate if there are fewer than two rows)."""
  if len(times) < 2:
    return nominal
  return float(round(1.0 / float(np.median(np.diff(times))), 6))


def find_videos(video_dir: str) -> dict[str, str]:
  """{stem: path} of the videos directly in `video_dir` (first extension in VIDEO_EXTS order)."""
  out: dict[str, str] = {}
  if not os.path.isdir(video_dir):
    return out
  for name in sorted(os.listdir(video_dir),
                     key=lambda n: (os.path.splitext(n)[0],
                                    _util.VIDEO_EXTS.index(os.path.splitext(n)[1].lower())
                                    if os.path.splitext(n)[1].lower() in _util.VIDEO_EXTS else 99)):
    stem, ext = os.path.splitext(name)
    if ext.lower() in _util.VIDEO_EXTS:
      out.setdefault(stem, os.path.join(video_dir, name))
  return out


def recording_items(dataset: str, labelled: dict[str, Callable[[], dict[str, Series]]],
                    video_dir: str,
                    split_of: Callable[[str], str | None]) -> Iterator[VideoItem | Skip]:
  """One item per recording: its series (parsed when reached) and its decoded video.

  `labelled` maps recording names to a loader of their series (raising PrepError on bad labels ->
  Skip). Videos without labels (test partitions) give items with no series; labels without a video
  -> Skip. Order: (split, natural name order).
  """
  videos = find_videos(video_dir)
  names = set(labelled) | {n for n in videos if split_of(n) is not None}
  for name in sorted(names, key=lambda n: (_SPLIT_ORDER.get(split_of(n) or "all", 3),
                                           natural_key(n))):
    split = split_of(name) or "all"
    series: dict[str, Series] = {}
    if name in labelled:
      try:
        series = labelled[name]()
      except PrepError as e:
        e.item = e.item or name
        yield Skip(e)
        continue
    if name not in videos:
      yield Skip(PrepError(os.path.join(video_dir, name + ".mp4"), f"no video for recording {name}"
                           f" in {video_dir} (tried {'/'.join(_util.VIDEO_EXTS)})", item=name))
      continue
    yield video.video_item(videos[name], dataset=dataset, video_id=name, split=split,
                           series=series, meta=dict(labelled=name in labelled))
