"""RAF-DB (basic emotions): images as one-frame videos.

Layout under `--src` (the RAF-DB folder holding `basic/`, or `basic/` itself):
`basic/EmoLabel/list_patition_label.txt` (the official spelling; `list_partition_label.txt` is
accepted too), lines `<image name> <label>` (`train_00001.jpg 5`; the name may contain spaces:
the label is the last field), label 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness,
6 Anger, 7 Neutral, stored 0-based (label - 1) in vocab `rafdb7`; split "train" / "test" from the
`train_` / `test_` prefix of the name. Images: `basic/Image/aligned/<stem>_aligned<ext>` (100x100,
aligned by the dataset) or `basic/Image/original/<name>`; `--images auto` (default) takes the
aligned ones when that folder exists, else the originals.

Each line -> a 1-frame `VideoItem`: video_id = the name's stem (`train_00001`), clip_label and
`expr` (1,) = label - 1, frame index 0, t_sec 0; aligned images are dataset-provided crops
(`precomputed=True`: `--detector auto` resizes them to `--size` as they are), originals are not
(`auto` runs BlazeFace). RAF-DB's own boxes and landmarks (`basic/Annotation/`) are not read, so
`--detector precomputed` is refused, and so is `none` with the originals. Items come in file order.

Bad input (policy in `_util`): a line without a name and a label raises (the file is not the
list); a label outside 1..7, a name without the `train_` / `test_` prefix, a name listed twice or
an image that does not exist -> Skip naming file, line and field; a broken JPEG -> its frame is
UNREADABLE with the file named.
"""
from __future__ import annotations

import argparse
import os
from typing import Iterator

import numpy as np

from data_prep.sources import _fer, _util
from data_prep.sources.base import PrepError, Skip, VideoItem

VOCAB = "rafdb7"
LIST_NAMES = ("list_patition_label.txt", "list_partition_label.txt")
IMAGES = ("auto", "aligned", "original")
_SPLITS = (("train_", "train"), ("test_", "test"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--images", default="auto", choices=IMAGES,
                      help="aligned (basic/Image/aligned, 100x100 crops) or original images "
                           "(basic/Image/original); auto: aligned when present")


def _basic(src: str) -> str:
  if os.path.isdir(os.path.join(src, "basic")):
    return os.path.join(src, "basic")
  if os.path.isdir(os.path.join(src, "EmoLabel")):
    return src
  raise PrepError(src, "no basic/EmoLabel folder found (expected the RAF-DB layout)")


def _image_path(basic: str, images: str, name: str) -> str:
  if images == "aligned":
    stem, ext = os.path.splitext(name)
    return os.path.join(basic, "Image", "aligned", f"{stem}_aligned{ext}")
  return os.path.join(basic, "Image", "original", name)


def items(src: str, args: argparse.Namespace) -> Iterator[VideoItem | Skip]:
  """RAF-DB basic images in list order (module docstring)."""
  basic = _basic(src)
  images = str(_util.opt(args, "images", "auto"))
  if images == "auto":
    images = ("aligned" if os.path.isdir(os.path.join(basic, "Image", "aligned"))
              else "original")
  _fer.check_detector(args, src, geometry=False, precomputed=images == "aligned",
                      what=f"RAF-DB ({images} images)")
  lists = [os.path.join(basic, "EmoLabel", n) for n in LIST_NAMES]
  path = next((p for p in lists if os.path.isfile(p)), None)
  if path is None:
    raise PrepError(lists[0], "label list not found")
  seen: dict[str, int] = {}
  with _util.open_text(path, encoding="utf-8-sig") as f:
    for line, text in enumerate(f, start=1):
      text = text.strip()
      if not text:
        continue
      parts = text.rsplit(maxsplit=1)
      if len(parts) != 2:
        raise PrepError(path, f"expected '<image name> <label 1-7>', found {text!r}", line=line,
                        field="label")
      yield _line_item(path, line, parts[0], parts[1], basic, images, seen)


def _line_item(path, line, name, label_text, basic, images, seen) -> VideoItem | Skip:
  vid = os.path.splitext(name)[0]
  try:
    label = _util.parse_int(path, label_text, line=line, field="label", allowed=range(1, 8),
                            item=vid) - 1
  except PrepError as e:
    return Skip(e)
  split = next((s for prefix, s in _SPLITS if name.startswith(prefix)), None)
  if split is None:
    return Skip(PrepError(path, f"image name {name!r} does not start with train_ or test_ (the "
                          f"split is unknown)", line=line, field="name", item=vid))
  if vid in seen:
    return Skip(PrepError(path, f"image {name!r} is listed twice (first at line {seen[vid]})",
                          line=line, field="name", item=vid))
  seen[vid] = line
  image_path = _image_path(basic, images, name)
  if not os.path.isfile(image_path):
    return Skip(PrepError(path, f"image {image_path} not found", line=line, field="name",
                          item=vid))
  return VideoItem(
      dataset="rafdb", video_id=vid, split=split,
      frames=_util.image_frames([(0, image_path)], fps=1.0, first=0,
                                precomputed=images == "aligned"),
      num_frames=1, fps=0.0, source_path=image_path, clip_label=label, vocab=VOCAB,
      expr=np.asarray([label], np.int32), expr_vocab=VOCAB,
      meta=dict(list_file=path, line=line, file=os.path.relpath(image_path, basic),
                images=images))
