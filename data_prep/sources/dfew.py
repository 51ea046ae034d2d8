"""DFEW (Jiang et al., ACM MM 2020): aligned face-frame folders + 5-fold label CSVs.

Official layout (`--src` = the DFEW root):
- `EmoLabel_DataSplit/{train,test}(single-labeled)/set_{1..5}.csv` (the README spells the folders
  `single_labeled`; both are accepted), header `video_name,label`, `video_name` an int (zero-padded
  to 5 digits: `2522` -> clip `02522`), `label` 1 Happy .. 7 Fear -> vocab `dfew7` index label-1.
- Frames `Clip/clip_224x224/<05d>/` (aligned faces, no temporal interpolation; default) or
  `Clip/clip_224x224_16f/<05d>/` (16 interpolated frames), `--layout`. Frames are sorted by the
  trailing integer of their name (the README's `x_y.jpg`; loaders also see `y.jpg`) and keep it as
  `Frame.index`; they are dataset-provided aligned crops (`Frame.precomputed=True`).

Each labelled clip is yielded ONCE, split "all", with `folds=("1:train", "2:test", ...)` listing
every fold it appears in (so each frame is stored once). `fps` is unknown for the face folders:
0.0 and t_sec NaN unless `--fps` is given (then t_sec = (index - first index) / fps).
`--include-unlabelled` also yields the clip folders no CSV lists (label -1, no folds).

Former-DFER lists (`--list-file annotation/DFEW_set_{k}_{train,test}.txt`, repeatable): lines
`<frame dir> <num_frames> <label0-6>`; `--list-root` rewrites the absolute prefix (see
`_util.read_list_file`). The fold comes from `set_<k>_<train|test>` in the list file name; the clip
id is the frame dir's name. The declared frame count must equal the folder's image count.

Not read: `Annotation/annotation.xlsx` (per-clip vote counts -> soft labels) needs an xlsx reader
(openpyxl is not installed), so `VideoItem.soft_label` stays None.

Bad input (policy in `_util`): a header other than `video_name,label` or a row without 2 columns
raises; a label outside 1..7 or a clip listed with two different labels (in two folds) -> Skip of
that clip naming file(s), line(s) and field `label`; a clip folder missing (466 clips of the real
dataset have no face folder), empty, or with a frame count unlike its list line -> Skip; a broken
JPEG -> an UNREADABLE frame naming the file.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Iterator

from data_prep.sources import _util
from data_prep.sources.base import PrepError, Skip, VideoItem

LAYOUTS = ("clip_224x224", "clip_224x224_16f")
_SPLIT_DIRS = {"train": ("train(single-labeled)", "train(single_labeled)"),
               "test": ("test(single-labeled)", "test(single_labeled)")}
_LIST_FOLD = re.compile(r"set_(\d+)_(train|test)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--layout", default="clip_224x224", choices=LAYOUTS,
                      help="face-frame folder under Clip/")
  parser.add_argument("--fps", type=_util.float_arg(0.0), default=0.0,
                      help="frame rate of the face folders (unknown by default: t_sec NaN)")
  parser.add_argument("--include-unlabelled", action="store_true",
                      help="also yield clip folders no label CSV lists (label -1)")
  _util.add_list_arguments(parser)


def _label_csvs(src: str) -> list[tuple[int, str, str]]:
  """(fold, "train"/"test", csv path) of the official split files, sorted."""
  base = os.path.join(src, "EmoLabel_DataSplit")
  if not os.path.isdir(base):
    raise PrepError(base, "DFEW label folder not found (expected EmoLabel_DataSplit/"
                    "{train,test}(single-labeled)/set_{1..5}.csv under --src)")
  out = []
  for part, names in _SPLIT_DIRS.items():
    dirs = [os.path.join(base, n) for n in names if os.path.isdir(os.path.join(base, n))]
    if len(dirs) > 1:
      raise PrepError(base, f"both {names[0]!r} and {names[1]!r} exist: keep one")
    for d in dirs:
      for name in os.listdir(d):
        m = re.fullmatch(r"set_(\d+)\.csv", name)
        if m:
          out.append((int(m.group(1)), part, os.path.join(d, name)))
  if not out:
    raise PrepError(base, "no set_<k>.csv found in {train,test}(single-labeled)/")
  return sorted(out)


def _read_csv(path: str) -> Iterator[tuple[int, str, str]]:
  """(line, clip id, label text) of an official split CSV."""
  rows = _util.read_rows(path)
  first = next(rows, None)
  if first is None:
    raise PrepError(path, "empty file (expected header 'video_name,label')", line=1)
  _util.check_header(path, first[1], ("video_name", "label"), line=first[0])
  for lineno, row in rows:
    if len(row) != 2:
      raise PrepError(path, f"expected 2 columns (video_name,label), found {len(row)}", line=lineno,
                      field="label" if len(row) < 2 else "video_name")
    name = row[0]
    if not name.isdigit():
      raise PrepError(path, f"expected an integer video_name, found {name!r}", line=lineno,
                      field="video_name")
    yield lineno, f"{int(name):05d}", row[1]


def _official(src: str, args) -> Iterator[VideoItem | Skip]:
  # clip -> [(fold, part, path, line, label or PrepError)]
  clips: dict[str, list] = {}
  for fold, part, path in _label_csvs(src):
    for lineno, clip, text in _read_csv(path):
      try:
        value = _util.parse_int(path, text, line=lineno, field="label", allowed=range(1, 8),
                                item=clip) - 1
      except PrepError as e:
        value = e
      clips.setdefault(clip, []).append((fold, part, path, lineno, value))
  layout = _util.opt(args, "layout", "clip_224x224")
  frames_root = os.path.join(src, "Clip", layout)
  if not os.path.isdir(frames_root):
    raise PrepError(frames_root, f"DFEW frame folder not found (--layout {layout})")
  fps = float(_util.opt(args, "fps", 0.0))
  if _util.opt(args, "include_unlabelled", False):
    for name in os.listdir(frames_root):
      if name.isdigit() and f"{int(name):05d}" not in clips:
        clips[f"{int(name):05d}"] = []
  for clip in sorted(clips):
    entries = clips[clip]
    bad = [v for *_, v in entries if isinstance(v, PrepError)]
    if bad:
      yield Skip(bad[0])
      continue
    labels = {v for *_, v in entries}
    if len(labels) > 1:
      where = "; ".join(f"{p}:{ln} label {v + 1}" for _, _, p, ln, v in entries)
      yield Skip(PrepError(entries[0][2], f"clip {clip} has different labels in different "
                           f"folds ({where})", line=entries[0][3], field="label", item=clip))
      continue
    folder = os.path.join(frames_root, clip)
    files = _util.frame_folder(folder, item=clip)
    if isinstance(files, PrepError):
      yield Skip(files)
      continue
    memberships = sorted({(fold, part) for fold, part, *_ in entries})
    both = sorted({f for f, _ in memberships if (f, "train") in memberships
                   and (f, "test") in memberships})
    if both:
      yield Skip(PrepError(entries[0][2], f"clip {clip} is in both train and test of fold "
                           f"{both[0]}", line=entries[0][3], field="video_name", item=clip))
      continue
    label = labels.pop() if labels else -1
    folds = tuple(f"{fold}:{part}" for fold, part in memberships)
    yield VideoItem(dataset="dfew", video_id=clip, split="all",
                    frames=_util.image_frames(files, fps=fps, precomputed=True),
                    num_frames=len(files), fps=fps, source_path=folder, clip_label=label,
                    vocab="dfew7" if label >= 0 else "", folds=folds,
                    meta=dict(layout=layout, labelled=bool(entries)))


def _from_lists(src: str, args) -> Iterator[VideoItem | Skip]:
  clips: dict[str, list] = {}
  for list_path in sorted(_util.opt(args, "list_file")):
    m = _LIST_FOLD.search(os.path.basename(list_path))
    fold = f"{int(m.group(1))}:{m.group(2)}" if m else None
    for e in _util.read_list_file(list_path, src=src, list_root=_util.opt(args, "list_root"),
                                  list_prefix=_util.opt(args, "list_prefix"), num_classes=7):
      clip = e.error.item if isinstance(e, Skip) else os.path.basename(e.frame_dir)
      clips.setdefault(clip, []).append((fold, e))
  fps = float(_util.opt(args, "fps", 0.0))
  for clip in sorted(clips):
    entries = clips[clip]
    skips = [e for _, e in entries if isinstance(e, Skip)]
    if skips:
      yield skips[0]
      continue
    first = entries[0][1]
    if len({e.label for _, e in entries}) > 1 or len({e.frame_dir for _, e in entries}) > 1:
      where = "; ".join(f"{e.list_path}:{e.line} {e.frame_dir} label {e.label}" for _, e in entries)
      yield Skip(PrepError(first.list_path, f"clip {clip} is listed with different labels or "
                           f"folders ({where})", line=first.line, field="label", item=clip))
      continue
    files = _util.list_entry_frames(first, item=clip)
    if isinstance(files, PrepError):
      yield Skip(files)
      continue
    folds = tuple(sorted({f for f, _ in entries if f is not None}))
    yield VideoItem(dataset="dfew", video_id=clip, split="all",
                    frames=_util.image_frames(files, fps=fps, precomputed=True),
                    num_frames=len(files), fps=fps, source_path=first.frame_dir,
                    clip_label=first.label, vocab="dfew7", folds=folds,
                    meta=dict(list_files=sorted({e.list_path for _, e in entries})))


def items(src: str, args: argparse.Namespace) -> Iterator[VideoItem | Skip]:
  """DFEW clips in clip-id order (module docstring)."""
  if _util.opt(args, "list_file"):
    yield from _from_lists(src, args)
  else:
    yield from _official(src, args)
