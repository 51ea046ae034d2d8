"""RECOLA (AVEC 2015/2016, AVEC 2018 GES): gold-standard valence/arousal ARFF files + videos.

Labels: `ratings_gold_standard/{arousal,valence}/{train,dev,test}_{1..9}.arff` under `--src`. ARFF
(`@relation GOLDSTANDARD`; attributes `Instance_name string`, `frameTime numeric`, `GoldStandard
numeric`; `@data`; rows like `dev_1,0.04,-0.0229`; `%` comments). The step is 40 ms (7,501 rows =
0..300 s). Each recording becomes `series["va"]`: times = frameTime (s), values (K, 2) = (valence,
arousal), rate_hz from the median step (25). A recording with only one dimension's file gets -5
(the VA sentinel) in the other column. Labels are kept on their own time base; the reader
resamples them to the video frames.

Videos: `--video-dir` (default `--src/recordings_video`) `<name>.mp4` (or another video extension),
decoded with `video.decode_video`. Split from the name: train -> "train", dev -> "val", test ->
"test". Videos with no label file (withheld test labels) give items without series.

Bad input (policy in `_util`; a file concerns one recording -> Skip of that recording naming file,
line and field): a missing `@relation` / `@data`, attributes other than the three above, a row
without 3 values, a non-numeric value, an Instance_name unlike the file name, non-increasing
frameTime, valence and arousal files whose time grids differ (length or any time); a labelled
recording without video -> Skip.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Callable, Iterator

import numpy as np

from data_prep.sources import _continuous, _util
from data_prep.sources.base import PrepError, Series, Skip, VideoItem

DIMENSIONS = ("valence", "arousal")
ATTRIBUTES = (("instance_name", "string"), ("frametime", "numeric"), ("goldstandard", "numeric"))
SENTINEL = -5.0
RATE_HZ = 25.0
_NAME = re.compile(r"(train|dev|test)_\d+")
_SPLITS = {"train": "train", "dev": "val", "test": "test"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--video-dir", default=None,
                      help="folder of <recording>.mp4 (default: --src/recordings_video)")


def split_of(name: str) -> str | None:
  m = _NAME.fullmatch(name)
  return _SPLITS[m.group(1)] if m else None


def read_arff(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(times (K,) float64, gold standard (K,) float32) of a RECOLA gold-standard ARFF file."""
  name = os.path.splitext(os.path.basename(path))[0]
  attrs: list[tuple[str, str, int]] = []
  relation = data_line = None
  times, values, lines = [], [], []
  with open(path, encoding="utf-8-sig") as f:
    for lineno, raw in enumerate(f, start=1):
      text = raw.strip()
      if not text or text.startswith("%"):
        continue
      if data_line is None:
        low = text.lower()
        if low.startswith("@relation"):
          relation = text.split(None, 1)[1] if len(text.split(None, 1)) > 1 else ""
        elif low.startswith("@attribute"):
          parts = text.split()
          if len(parts) != 3:
            raise PrepError(path, f"expected '@attribute <name> <type>', found {text!r}",
                            line=lineno, field="@attribute", item=name)
          attrs.append((parts[1], parts[2], lineno))
        elif low.startswith("@data"):
          if relation is None:
            raise PrepError(path, "no @relation line before @data", line=lineno,
                            field="@relation", item=name)
          found = tuple((a.lower(), t.lower()) for a, t, _ in attrs)
          if found != ATTRIBUTES:
            k = next((k for k in range(max(len(found), len(ATTRIBUTES)))
                      if k >= len(found) or k >= len(ATTRIBUTES) or found[k] != ATTRIBUTES[k]), 0)
            exp = "Instance_name string, frameTime numeric, GoldStandard numeric"
            raise PrepError(path, f"attributes: expected {exp}, found "
                            f"{', '.join(f'{a} {t}' for a, t, _ in attrs) or 'none'}",
                            line=attrs[k][2] if k < len(attrs) else lineno,
                            field=("Instance_name", "frameTime", "GoldStandard")[min(k, 2)],
                            item=name)
          data_line = lineno
        else:
          raise PrepError(path, f"unexpected line before @data: {text!r}", line=lineno, item=name)
        continue
      cols = [c.strip().strip("'\"") for c in text.split(",")]
      if len(cols) != 3:
        raise PrepError(path, f"expected 3 values (Instance_name,frameTime,GoldStandard), found "
                        f"{len(cols)}", line=lineno,
                        field=("frameTime", "GoldStandard", "GoldStandard")[min(len(cols), 2)]
                        if len(cols) < 3 else "GoldStandard", item=name)
      if cols[0] != name:
        raise PrepError(path, f"Instance_name {cols[0]!r} differs from the file name {name!r}",
                        line=lineno, field="Instance_name", item=name)
      times.append(_util.parse_float(path, cols[1], line=lineno, field="frameTime", item=name))
      values.append(_util.parse_float(path, cols[2], line=lineno, field="GoldStandard", item=name))
      lines.append(lineno)
  if data_line is None:
    raise PrepError(path, "no @data section (not an ARFF gold-standard file)", field="@data",
                    item=name)
  if not times:
    raise PrepError(path, "no data rows after @data", line=data_line, field="@data", item=name)
  _continuous.check_times(path, times, lines, "frameTime", item=name)
  return np.asarray(times, np.float64), np.asarray(values, np.float32)


def _loader(name: str, paths: dict[str, str]) -> Callable[[], dict[str, Series]]:
  def load() -> dict[str, Series]:
    read = {d: read_arff(p) for d, p in paths.items()}
    dims = list(read)
    times = read[dims[0]][0]
    for d in dims[1:]:
      t = read[d][0]
      if len(t) != len(times) or not np.allclose(t, times, rtol=0, atol=1e-6):
        bad = (next(k for k in range(min(len(t), len(times))) if abs(t[k] - times[k]) > 1e-6)
               if len(t) == len(times) else None)
        where = (f"first difference at row {bad + 1}: {dims[0]} {times[bad]} vs {d} {t[bad]}"
                 if bad is not None else f"{len(times)} rows in {dims[0]}, {len(t)} in {d}")
        raise PrepError(paths[d], f"time grid differs from {paths[dims[0]]} ({where})",
                        field="frameTime", item=name)
    values = np.full((len(times), 2), SENTINEL, np.float32)
    for k, d in enumerate(DIMENSIONS):
      if d in read:
        values[:, k] = read[d][1]
    return {"va": Series(times=times, values=values, names=DIMENSIONS,
                         rate_hz=_continuous.rate_of(times, RATE_HZ))}
  return load


def items(src: str, args: argparse.Namespace) -> Iterator[VideoItem | Skip]:
  """RECOLA recordings in (split, name) order (module docstring)."""
  gold = os.path.join(src, "ratings_gold_standard")
  if not os.path.isdir(gold):
    raise PrepError(gold, "RECOLA gold-standard folder not found (expected "
                    "ratings_gold_standard/{arousal,valence}/*.arff under --src)")
  paths: dict[str, dict[str, str]] = {}
  for dim in DIMENSIONS:
    d = os.path.join(gold, dim)
    if not os.path.isdir(d):
      continue
    for fname in os.listdir(d):
      stem, ext = os.path.splitext(fname)
      if ext.lower() == ".arff" and split_of(stem):
        paths.setdefault(stem, {})[dim] = os.path.join(d, fname)
  if not paths:
    raise PrepError(gold, "no <split>_<n>.arff files in valence/ or arousal/")
  labelled = {name: _loader(name, {d: p[d] for d in DIMENSIONS if d in p})
              for name, p in paths.items()}
  video_dir = _util.opt(args, "video_dir", os.path.join(src, "recordings_video"))
  yield from _continuous.recording_items("recola", labelled, video_dir, split_of)
