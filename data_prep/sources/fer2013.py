"""FER2013: `fer2013.csv` (48x48 grey face crops as pixel strings) as one-frame items.

`--src` is `fer2013.csv` itself or a folder holding `fer2013.csv` or `fer2013/fer2013.csv`. The
file format, the splits (Usage Training / PublicTest / PrivateTest -> train / val / test), the
frames (grey -> 3 channels, a dataset-provided crop: `--detector auto` resizes it to `--size`)
and the detectors allowed are in `_fer`'s docstring.

Each data row k -> a 1-frame `VideoItem`: video_id `fer{k:07d}` (FER+'s image name without
`.png`), clip_label and `expr` (1,) = `emotion` 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad,
5 Surprise, 6 Neutral (vocab `fer7`, stored as it is), `meta` = csv, line, row, Usage and the
pixels' sha1. Items come in file order.

Bad input (policy in `_util`): a header without `emotion`, `pixels`, `Usage` or a row with another
column count raises (the file is not fer2013.csv); in a row, an `emotion` outside 0..6, a `pixels`
string that is not 2304 integers 0..255 or an unknown `Usage` -> Skip of that image naming file,
line and field.
"""
from __future__ import annotations

import argparse
from typing import Iterator

import numpy as np

from data_prep.sources import _fer, _util
from data_prep.sources.base import PrepError, Skip, VideoItem

VOCAB = "fer7"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  del parser                  # no flags of its own: --src is the CSV (or its folder)


def items(src: str, args: argparse.Namespace) -> Iterator[VideoItem | Skip]:
  """FER2013 images in file order (module docstring)."""
  _fer.check_detector(args, src, geometry=False, precomputed=True, what="FER2013 (face crops)")
  path = _fer.find_file(src, _fer.FER_NAMES, "")
  for row in _fer.read_fer_rows(path):
    vid = _fer.fer_id(row.index)
    try:
      label = _util.parse_int(path, row.emotion, line=row.line, field="emotion",
                              allowed=range(7), item=vid)
      grey = _fer.parse_pixels(path, row, vid)
      split = _fer.split_of(path, row.usage, line=row.line, item=vid)
    except PrepError as e:
      yield Skip(e)
      continue
    yield VideoItem(
        dataset="fer2013", video_id=vid, split=split, frames=_fer.grey_frames(grey), num_frames=1,
        fps=0.0, source_path=f"{path}:{row.line}", clip_label=label, vocab=VOCAB,
        expr=np.asarray([label], np.int32), expr_vocab=VOCAB,
        meta=_fer.pixel_meta(path, row, grey))
