"""FER+: the FER2013 images with the 10-tagger votes of `fer2013new.csv` (Barsoum et al. 2016).

Layout: `--src` is the FER+ folder holding `fer2013new.csv` (or that file itself); the images come
from `fer2013.csv` (`--fer-csv`, default `fer2013.csv` or `fer2013/fer2013.csv` under `--src`;
its format, frames and detectors are in `_fer`'s docstring). `fer2013new.csv` has the header
`Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF` and
one row per row of fer2013.csv, in the same order (FER+ README): the two files are joined row by
row, and the row's `Usage` must be the same in both (else the files do not belong together: raise).
A row with an empty `Image name` is one FER+ dropped -> Skip. video_id = `Image name` without its
extension (`fer0000000`), split from `Usage` (train / val / test), vocab `ferplus8` (the eight
emotion columns in file order), `meta["votes"]` = the 10 counts as written.

Labels (`--label`, alias `--ferplus-label`):
* `majority` (default), FER+'s own rule (microsoft/FERPlus `src/ferplus.py`, `_process_data` in
  mode 'majority' + `load_folders`): counts of 1 are set to 0 in all ten columns (outlier
  removal: one tagger is noise); of the remaining votes S, the most voted column wins only if it has
  STRICTLY more than S/2 (so there are no ties to break); if it is `unknown` or `NF`, or nobody has
  more than half (S = 0 included), the image is dropped (-> Skip naming the line and the reason).
  clip_label and `expr` (1,) = the winner.
* `soft`: `soft_label` (8,) float32 = the eight emotion counts (as written, no outlier removal)
  divided by their sum; clip_label / `expr` = the majority label above where it exists, else -1
  (no clip label; the distribution is the target). An image is kept when its emotion columns
  have a vote and its most voted column of the ten is an emotion (ties with `unknown` / `NF` keep
  it: FER+'s loader keeps an image when `argmax` of its target, which takes the first maximum, is
  an emotion); otherwise -> Skip. FER+'s 'crossentropy' targets (outlier removal, top-3 emotions
  covering 75 % of the votes) are not built here; `meta["votes"]` holds what they need.

Bad input (policy in `_util`): a wrong header or column count in either file, different row
counts or a `Usage` that differs between the files raises; in a row, a vote that is not an integer
>= 0, an unknown `Usage`, bad pixels (`_fer`) or an image name listed twice -> Skip naming file,
line and field.
"""
from __future__ import annotations

import argparse
import itertools
import os
from typing import Iterator

import numpy as np

from data_prep.sources import _fer, _util
from data_prep.sources.base import PrepError, Skip, VideoItem
from jaxaffect.data import vocab as vocab_lib

HEADER = ("Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust",
          "fear", "contempt", "unknown", "NF")
VOCAB = "ferplus8"
NUM_EMOTIONS = 8
LABEL_MODES = ("majority", "soft")
FERPLUS_NAMES = ("fer2013new.csv",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--label", "--ferplus-label", dest="label", default="majority",
                      choices=LABEL_MODES,
                      help="majority: FER+'s rule (single votes removed, > half of the rest); "
                           "soft: the 8 vote fractions as soft_label")
  parser.add_argument("--fer-csv", default=None,
                      help="fer2013.csv with the pixels (default: under --src)")


def majority(votes: np.ndarray) -> tuple[int, str]:
  """(class 0..7, "") by FER+'s majority rule (module docstring), or (-1, why not)."""
  kept = np.where(votes <= 1, 0, votes)
  total, top = int(kept.sum()), int(kept.max())
  if not 2 * top > total:
    return -1, (f"no majority: after removing single votes, the most voted column has {top} of "
                f"{total} votes (FER+ majority needs more than half)")
  winner = int(np.argmax(kept))
  if winner >= NUM_EMOTIONS:
    return -1, f"the majority ({top} of {total} votes) is {HEADER[2 + winner]!r}, not an emotion"
  return winner, ""


def soft(votes: np.ndarray) -> tuple[np.ndarray | None, str]:
  """(8 vote fractions, "") or (None, why the image is not kept) (module docstring)."""
  emo = votes[:NUM_EMOTIONS].astype(np.float64)
  if emo.sum() <= 0:
    return None, "no vote for any of the 8 emotions"
  top = int(np.argmax(votes))
  if top >= NUM_EMOTIONS:
    return None, (f"the most voted column is {HEADER[2 + top]!r} ({int(votes[top])} votes), more "
                  f"than any emotion")
  return (emo / emo.sum()).astype(np.float32), ""


def _votes(path: str, row: list[str], line: int, item: str) -> np.ndarray:
  out = []
  for k, text in enumerate(row[2:]):
    try:
      v = int(text)
    except ValueError:
      v = -1
    if v < 0:
      raise PrepError(path, f"expected a vote count (an integer >= 0), found {text!r}", line=line,
                      field=HEADER[2 + k], item=item)
    out.append(v)
  return np.asarray(out, np.int64)


def _ferplus_rows(path: str) -> Iterator[tuple[int, list[str]]]:
  rows = _util.read_rows(path)
  first = next(rows, None)
  if first is None:
    raise PrepError(path, f"empty file (expected header {','.join(HEADER)!r})", line=1)
  _util.check_header(path, first[1], HEADER, line=first[0])
  for line, row in rows:
    if len(row) != len(HEADER):
      raise PrepError(path, f"expected {len(HEADER)} columns, found {len(row)}", line=line,
                      field=HEADER[len(row)] if len(row) < len(HEADER) else HEADER[-1])
    yield line, row


def items(src: str, args: argparse.Namespace) -> Iterator[VideoItem | Skip]:
  """FER+ images in file order (module docstring)."""
  _fer.check_detector(args, src, geometry=False, precomputed=True, what="FER+ (face crops)")
  mode = str(_util.opt(args, "label", "majority"))
  if mode not in LABEL_MODES:
    raise PrepError(src, f"--label {mode!r}: expected one of {', '.join(LABEL_MODES)}",
                    field="label")
  plus_path = _fer.find_file(src, FERPLUS_NAMES, "")
  fer_opt = _util.opt(args, "fer_csv", None)
  fer_path = (_fer.find_file(fer_opt, _fer.FER_NAMES, "") if fer_opt else _fer.find_file(
      os.path.dirname(plus_path), _fer.FER_NAMES, ", or pass --fer-csv"))
  seen: dict[str, int] = {}
  n_fer = n_plus = 0
  for fer_row, plus in itertools.zip_longest(_fer.read_fer_rows(fer_path),
                                             _ferplus_rows(plus_path)):
    n_fer += fer_row is not None
    n_plus += plus is not None
    if fer_row is None or plus is None:
      continue                                   # counted; the mismatch raises below
    line, row = plus
    if row[0] != fer_row.usage:
      raise PrepError(plus_path, f"Usage {row[0]!r} but row {fer_row.index + 1} of {fer_path} "
                      f"(line {fer_row.line}) says {fer_row.usage!r}: the two files are not in the "
                      f"same row order", line=line, field="Usage")
    yield _item(fer_path, fer_row, plus_path, line, row, mode, seen)
  if n_fer != n_plus:
    raise PrepError(plus_path, f"{n_plus} data rows, but {fer_path} has {n_fer}: FER+ has one row "
                    f"per fer2013.csv row, in the same order", field="Image name")


def _item(fer_path, fer_row, path, line, row, mode, seen) -> VideoItem | Skip:
  name = row[1]
  vid = os.path.splitext(name)[0] if name else _fer.fer_id(fer_row.index)
  if not name:
    return Skip(PrepError(path, "empty 'Image name': FER+ dropped this image", line=line,
                          field="Image name", item=vid))
  if vid in seen:
    return Skip(PrepError(path, f"image {name!r} is listed twice (first at line {seen[vid]})",
                          line=line, field="Image name", item=vid))
  seen[vid] = line
  try:
    split = _fer.split_of(path, row[0], line=line, item=vid)
    votes = _votes(path, row, line, vid)
    grey = _fer.parse_pixels(fer_path, fer_row, vid)
  except PrepError as e:
    return Skip(e)
  label, why = majority(votes)
  dist = None
  if mode == "soft":
    dist, why = soft(votes)
  if why and (mode == "majority" or dist is None):
    return Skip(PrepError(path, why, line=line, field="votes", item=vid))
  meta = dict(_fer.pixel_meta(fer_path, fer_row, grey), ferplus_csv=path, ferplus_line=line,
              votes=votes.tolist(), label_mode=mode)
  if label >= 0:
    meta["label_name"] = vocab_lib.names(VOCAB)[label]
  return VideoItem(
      dataset="ferplus", video_id=vid, split=split, frames=_fer.grey_frames(grey), num_frames=1,
      fps=0.0, source_path=f"{fer_path}:{fer_row.line}", clip_label=label, vocab=VOCAB,
      expr=np.asarray([label], np.int32), expr_vocab=VOCAB, soft_label=dist, meta=meta)
