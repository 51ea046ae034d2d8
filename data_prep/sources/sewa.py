"""SEWA (AVEC 2017/2018 CES): continuous arousal / valence / liking labels + videos.

Labels: `labels/{Train,Devel,Test}_<CC>_<NN>.csv` under `--src` (or directly in `--src`), e.g.
`Train_DE_01.csv`; `;`-delimited, no header, 5 fields per line: `instance name; timestamp; arousal;
valence; liking`, one line per 100 ms. Each recording becomes `series["va"]` (values (K, 2) =
(valence, arousal): note the file's order is arousal first) and `series["liking"]` ((K, 1)), both
on the file's timestamps (seconds), rate_hz from the median step (10). Labels are kept on their own
time base; the reader resamples them to the video frames.

Videos: `--video-dir` (default `--src/videos`) `<instance>.avi` or `.mp4`, decoded with
`video.decode_video`. Split: Train -> "train", Devel -> "val", Test -> "test" (`Test_HU_*` too).
Videos with no label file (withheld test labels) give items without series.

Bad input (policy in `_util`; a label file concerns one recording -> Skip of that recording naming
file, line and field): a line without 5 fields, a non-numeric value, an instance name unlike the
file name, non-increasing timestamps, an empty file; a labelled recording without video -> Skip.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Callable, Iterator

import numpy as np

from data_prep.sources import _continuous, _util
from data_prep.sources.base import PrepError, Series, Skip, VideoItem

FIELDS = ("instance name", "timestamp", "arousal", "valence", "liking")
RATE_HZ = 10.0
_NAME = re.compile(r"(Train|Devel|Test)_[A-Za-z]{2}_\d+")
_SPLITS = {"Train": "train", "Devel": "val", "Test": "test"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--video-dir", default=None,
                      help="folder of <instance>.{avi,mp4} (default: --src/videos)")


def split_of(name: str) -> str | None:
  m = _NAME.fullmatch(name)
  return _SPLITS[m.group(1)] if m else None


def read_labels(path: str) -> dict[str, Series]:
  """`va` and `liking` series of one SEWA label file."""
  name = os.path.splitext(os.path.basename(path))[0]
  times, va, liking, lines = [], [], [], []
  for lineno, row in _util.read_rows(path, delimiter=";"):
    if len(row) != len(FIELDS):
      raise PrepError(path, f"expected {len(FIELDS)} ';'-separated fields ({'; '.join(FIELDS)}), "
                      f"found {len(row)}", line=lineno,
                      field=FIELDS[len(row)] if len(row) < len(FIELDS) else FIELDS[-1], item=name)
    if row[0] != name:
      raise PrepError(path, f"instance name {row[0]!r} differs from the file name {name!r}",
                      line=lineno, field="instance name", item=name)
    t, a, v, lk = (_util.parse_float(path, row[k], line=lineno, field=FIELDS[k], item=name)
                   for k in range(1, 5))
    times.append(t)
    va.append((v, a))
    liking.append((lk,))
    lines.append(lineno)
  if not times:
    raise PrepError(path, "empty label file", line=1, field="timestamp", item=name)
  _continuous.check_times(path, times, lines, "timestamp", item=name)
  t = np.asarray(times, np.float64)
  rate = _continuous.rate_of(t, RATE_HZ)
  return {"va": Series(times=t, values=np.asarray(va, np.float32), names=("valence", "arousal"),
                       rate_hz=rate),
          "liking": Series(times=t.copy(), values=np.asarray(liking, np.float32),
                           names=("liking",), rate_hz=rate)}


def _loader(path: str) -> Callable[[], dict[str, Series]]:
  return lambda: read_labels(path)


def items(src: str, args: argparse.Namespace) -> Iterator[VideoItem | Skip]:
  """SEWA recordings in (split, name) order (module docstring)."""
  if not os.path.isdir(src):
    raise PrepError(src, "not a directory (the SEWA root: labels/<Train|Devel|Test>_<CC>_<NN>.csv "
                    "and videos/)")
  label_dir = os.path.join(src, "labels")
  if not os.path.isdir(label_dir):
    label_dir = src
  labelled = {}
  for fname in os.listdir(label_dir):
    stem, ext = os.path.splitext(fname)
    if ext.lower() == ".csv" and split_of(stem):
      labelled[stem] = _loader(os.path.join(label_dir, fname))
  video_dir = _util.opt(args, "video_dir", os.path.join(src, "videos"))
  if not labelled and not os.path.isdir(video_dir):
    raise PrepError(label_dir, "no SEWA label file (<Train|Devel|Test>_<CC>_<NN>.csv) and no "
                    f"video folder {video_dir}")
  yield from _continuous.recording_items("sewa", labelled, video_dir, split_of)
