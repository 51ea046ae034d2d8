"""AffectNet (classic release): manually annotated images as one-frame videos.

Layout under `--src`: `Manually_Annotated_file_lists/{training,validation}.csv` (split "train" /
"val") and `Manually_Annotated_Images/<subdir>/<file>.jpg` (`--images-dir` overrides the latter).
CSV header `subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,
valence,arousal`; `facial_landmarks` is 68 points as one `x;y;x;y;...` string; `expression` 0
Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt, 8 None, 9 Uncertain,
10 Non-Face (vocab `affectnet11`); valence/arousal in [-1, 1], -2 for non-face / uncertain.

Each row -> a 1-frame `VideoItem`: video_id = `subDirectory_filePath` without extension, clip_label
and `expr` (1,) = expression (vocab affectnet11), `va` (1, 2) = (valence, arousal) with -2 stored
as the VA sentinel -5, `boxes` (1, 4) = (face_x, face_y, face_x + face_width, face_y +
face_height), `landmarks` (1, 68, 2) scheme "ibug68" (NaN if the field is empty), frame index 0,
t_sec 0, `precomputed=False` (the face stage crops with the given geometry). Items come in file
order (training.csv, then validation.csv: sorting 420k rows would hold them all in memory).
`--classes 7|8|all` keeps expressions 0-6, 0-7 or all; the others -> Skip with the reason.

Bad input (policy in `_util`): a header other than the one above or a row without 9 columns raises
(the file is not an AffectNet list); a bad value in a row (expression outside 0..10, valence /
arousal outside [-1, 1] and not -2, landmarks not 136 numbers, non-numeric box) -> Skip of that
image naming file, line and field; a listed image that does not exist -> Skip; a broken JPEG -> its
frame is UNREADABLE with the file named.
"""
from __future__ import annotations

import argparse
import csv
import os
from typing import Iterator

import numpy as np

from data_prep.sources import _util
from data_prep.sources.base import PrepError, Skip, VideoItem
from jaxaffect.data import vocab as vocab_lib

HEADER = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
          "facial_landmarks", "expression", "valence", "arousal")
VOCAB = "affectnet11"
VA_INVALID = -2.0      # AffectNet's marker
VA_SENTINEL = -5.0     # ours (base.py)
NUM_LANDMARKS = 68
CLASSES = {"7": 7, "8": 8, "all": 11}
_FILES = (("training.csv", "train"), ("validation.csv", "val"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--classes", default="all", choices=tuple(CLASSES),
                      help="keep expressions 0-6, 0-7 or all 11")
  parser.add_argument("--images-dir", default=None,
                      help="image root (default: --src/Manually_Annotated_Images)")


def _row_item(path: str, lineno: int, row: list[str], split: str, images_dir: str,
              keep: int) -> VideoItem | Skip:
  rel = row[0]
  vid = os.path.splitext(rel)[0]
  try:
    x, y, w, h = (_util.parse_float(path, row[k], line=lineno, field=HEADER[k], item=vid)
                  for k in range(1, 5))
    expr = _util.parse_int(path, row[6], line=lineno, field="expression", allowed=range(11),
                           item=vid)
    va = []
    for k in (7, 8):
      v = _util.parse_float(path, row[k], line=lineno, field=HEADER[k], item=vid)
      if v == VA_INVALID:
        v = VA_SENTINEL
      elif not -1.0 <= v <= 1.0:
        raise PrepError(path, f"unknown label value {row[k]} (expected [-1, 1] or -2)",
                        line=lineno, field=HEADER[k], item=vid)
      va.append(v)
    lm_text = row[5].strip()
    if lm_text:
      parts = [p for p in lm_text.split(";") if p.strip()]
      if len(parts) != 2 * NUM_LANDMARKS:
        raise PrepError(path, f"expected {2 * NUM_LANDMARKS} ';'-separated numbers (68 points), "
                        f"found {len(parts)}", line=lineno, field="facial_landmarks", item=vid)
      lm = np.asarray([_util.parse_float(path, p, line=lineno, field="facial_landmarks", item=vid)
                       for p in parts], np.float32).reshape(NUM_LANDMARKS, 2)
    else:
      lm = np.full((NUM_LANDMARKS, 2), np.nan, np.float32)
  except PrepError as e:
    return Skip(e)
  if expr >= keep:
    return Skip(PrepError(path, f"expression {expr} ({vocab_lib.names(VOCAB)[expr]}) is not in "
                          f"the kept classes 0..{keep - 1} (--classes)", line=lineno,
                          field="expression", item=vid))
  image_path = os.path.join(images_dir, rel)
  if not os.path.isfile(image_path):
    return Skip(PrepError(path, f"image {image_path} not found", line=lineno,
                          field="subDirectory_filePath", item=vid))
  return VideoItem(
      dataset="affectnet", video_id=vid, split=split,
      frames=_util.image_frames([(0, image_path)], fps=1.0, first=0), num_frames=1, fps=0.0,
      source_path=image_path, clip_label=expr, vocab=VOCAB,
      va=np.asarray([va], np.float32), expr=np.asarray([expr], np.int32), expr_vocab=VOCAB,
      boxes=np.asarray([[x, y, x + w, y + h]], np.float32), landmarks=lm[None],
      landmark_scheme="ibug68", meta=dict(list_file=path, line=lineno, file=rel))


def items(src: str, args: argparse.Namespace) -> Iterator[VideoItem | Skip]:
  """AffectNet images in file order (module docstring)."""
  lists = os.path.join(src, "Manually_Annotated_file_lists")
  images_dir = _util.opt(args, "images_dir", os.path.join(src, "Manually_Annotated_Images"))
  keep = CLASSES[str(_util.opt(args, "classes", "all"))]
  present = [(os.path.join(lists, f), s) for f, s in _FILES
             if os.path.isfile(os.path.join(lists, f))]
  if not present:
    raise PrepError(lists, "no training.csv / validation.csv found")
  for path, split in present:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.reader(f)
      header = next(reader, None)
      if header is None:
        raise PrepError(path, f"empty file (expected header {','.join(HEADER)!r})", line=1)
      _util.check_header(path, header, HEADER)
      for row in reader:
        lineno = reader.line_num
        if not row or all(not c.strip() for c in row):
          continue
        if len(row) != len(HEADER):
          raise PrepError(path, f"expected {len(HEADER)} columns, found {len(row)}", line=lineno,
                          field=HEADER[len(row)] if len(row) < len(HEADER) else HEADER[-1])
        yield _row_item(path, lineno, [c.strip() for c in row], split, images_dir, keep)
