"""A generic layout: one folder of frame images per video, plus optional label CSVs.

- `--src/<video_id>/*.jpg|png`: frames sorted by the trailing integer of their name, which is the
  frame index (see `_util.list_frame_files`); `--precomputed` marks them as aligned face crops.
  t_sec = (index - first index) / `--fps` (NaN if fps is not given).
- `--labels CSV` (optional), header `video_id,label[,split]`: `label` an index or a class name of
  `--vocab` (empty = no label), `split` overrides `--split` (default "all"). Folders the CSV does
  not list are yielded without label; listed videos with no folder -> Skip.
- Per-frame labels (optional): `<--frame-labels, default --src>/<video_id>.csv` with header `frame`
  followed by any of `valence,arousal` (both), `expr` (ints of `--expr-vocab`, default `--vocab`,
  -1 invalid), `AU<n>` columns (0/1, -1 invalid). Each row labels the frame with that index; frames
  without a row get the sentinels (VA -5, EXPR -1, AU -1).
- Face geometry (optional): `--openface DIR` with `<DIR>/<video_id>.csv`, OpenFace 2 output run on
  the video's folder (`FeatureExtraction -fdir`): its `frame` k (1-based) is the folder's k-th
  image; its 68 landmarks (scheme "ibug68", NaN where OpenFace failed or has no row) become the
  item's boxes/landmarks, which `--detector auto` (or `precomputed`) aligns. Videos without a CSV
  there get none.

Bad input (policy in `_util`): a labels CSV with a wrong header or column count, or a label
without `--vocab`, raises; an unknown class there -> Skip of that video; a per-frame CSV (it
concerns one video) with a wrong header, column count, unknown value, duplicate frame or a frame
that has no image -> Skip of the video naming file, line and field; an empty folder -> Skip; a
broken image -> an UNREADABLE frame. An OpenFace CSV with missing columns or non-numbers -> Skip.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Iterator

import numpy as np

from data_prep.sources import _openface, _util
from data_prep.sources.base import PrepError, Skip, VideoItem
from jaxaffect.data import vocab as vocab_lib

_AU = re.compile(r"AU\d+")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--labels", default=None, help="CSV `video_id,label[,split]`")
  parser.add_argument("--vocab", default="", help="vocabulary of the clip labels (vocab.VOCABS)")
  parser.add_argument("--expr-vocab", default=None, help="vocabulary of per-frame expr (--vocab)")
  parser.add_argument("--frame-labels", default=None,
                      help="folder of per-frame <video_id>.csv (default: --src)")
  parser.add_argument("--split", default="all", help="split of videos the CSV does not assign")
  parser.add_argument("--fps", type=_util.float_arg(0.0), default=0.0,
                      help="frame rate (0: unknown)")
  parser.add_argument("--precomputed", action="store_true",
                      help="the images are already aligned face crops")
  parser.add_argument("--openface", default=None,
                      help="folder of per-video OpenFace 2 CSVs <video_id>.csv (face geometry)")
  parser.add_argument("--dataset-name", default="folder", help="VideoItem.dataset")


def _class(path: str, text: str, vocab: str, *, line: int, field: str, item: str) -> int:
  if not vocab:
    raise PrepError(path, "labels need --vocab", line=line, field=field, item=item)
  n = len(vocab_lib.names(vocab))
  if text.lstrip("-").isdigit():
    return _util.parse_int(path, text, line=line, field=field, allowed=range(n), item=item)
  try:
    return vocab_lib.index(vocab, text)
  except KeyError as e:
    raise PrepError(path, str(e.args[0]), line=line, field=field, item=item) from None


def read_clip_labels(path: str, vocab: str) -> dict[str, tuple[int | PrepError, str | None, int]]:
  """{video_id: (label or PrepError, split or None, line)}."""
  rows = _util.read_rows(path)
  first = next(rows, None)
  if first is None:
    raise PrepError(path, "empty file (expected header 'video_id,label[,split]')", line=1)
  header = first[1]
  expected = ["video_id", "label", "split"][:max(2, min(len(header), 3))]
  _util.check_header(path, header, expected, line=first[0])
  out: dict[str, tuple[int | PrepError, str | None, int]] = {}
  for lineno, row in rows:
    if len(row) != len(header):
      raise PrepError(path, f"expected {len(header)} columns ({','.join(header)}), found "
                      f"{len(row)}", line=lineno,
                      field=header[len(row)] if len(row) < len(header) else header[-1])
    vid = row[0]
    if vid in out:
      raise PrepError(path, f"video_id {vid!r} listed twice (first at line {out[vid][2]})",
                      line=lineno, field="video_id")
    if row[1] and not vocab:        # the whole file is unusable: not one Skip per video
      raise PrepError(path, f"a label needs --vocab (one of {sorted(vocab_lib.VOCABS)})",
                      line=lineno, field="label")
    try:
      label = (_class(path, row[1], vocab, line=lineno, field="label", item=vid) if row[1]
               else -1)
    except PrepError as e:
      label = e
    out[vid] = (label, row[2] if len(row) > 2 and row[2] else None, lineno)
  return out


def read_frame_labels(path: str, indices: list[int], expr_vocab: str, *, item: str) -> dict:
  """Per-frame arrays aligned to `indices` (the frames' indices) from one `<video_id>.csv`."""
  rows = _util.read_rows(path)
  first = next(rows, None)
  if first is None:
    raise PrepError(path, "empty file (expected a header starting with 'frame')", line=1, item=item)
  header = first[1]
  if not header or header[0] != "frame":
    found = header[0] if header else ""
    raise PrepError(path, f"header column 1: expected 'frame', found {found!r}",
                    line=first[0], field="frame", item=item)
  cols = header[1:]
  for c in cols:
    if c not in ("valence", "arousal", "expr") and not _AU.fullmatch(c):
      raise PrepError(path, f"unknown column {c!r} (expected valence, arousal, expr, AU<n>)",
                      line=first[0], field=c, item=item)
  if len(set(cols)) != len(cols):
    raise PrepError(path, "a column appears twice", line=first[0], field=cols[0], item=item)
  if ("valence" in cols) != ("arousal" in cols):
    raise PrepError(path, "valence and arousal must come together", line=first[0],
                    field="arousal" if "valence" in cols else "valence", item=item)
  if "expr" in cols and not expr_vocab:
    raise PrepError(path, "an expr column needs --expr-vocab or --vocab", line=first[0],
                    field="expr", item=item)
  aus = tuple(c for c in cols if _AU.fullmatch(c))
  pos = {i: k for k, i in enumerate(indices)}
  T = len(indices)
  va = np.full((T, 2), -5.0, np.float32) if "valence" in cols else None
  expr = np.full((T,), -1, np.int32) if "expr" in cols else None
  au = np.full((T, len(aus)), -1, np.int32) if aus else None
  seen: dict[int, int] = {}
  n_expr = len(vocab_lib.names(expr_vocab)) if expr_vocab else 0
  for lineno, row in rows:
    if len(row) != len(header):
      raise PrepError(path, f"expected {len(header)} columns, found {len(row)}", line=lineno,
                      field=header[len(row)] if len(row) < len(header) else header[-1], item=item)
    try:
      frame = int(row[0])
    except ValueError:
      raise PrepError(path, f"expected an integer frame index, found {row[0]!r}", line=lineno,
                      field="frame", item=item) from None
    if frame not in pos:
      raise PrepError(path, f"frame {frame} has no image in the video's folder ({T} images, "
                      f"indices {indices[0]}..{indices[-1]})", line=lineno, field="frame",
                      item=item)
    if frame in seen:
      raise PrepError(path, f"frame {frame} labelled twice (first at line {seen[frame]})",
                      line=lineno, field="frame", item=item)
    seen[frame] = lineno
    k = pos[frame]
    for c, text in zip(cols, row[1:]):
      if c in ("valence", "arousal"):
        v = _util.parse_float(path, text, line=lineno, field=c, item=item)
        if not (-1.0 <= v <= 1.0 or v == -5.0):
          raise PrepError(path, f"unknown label value {text} (expected [-1, 1] or -5)",
                          line=lineno, field=c, item=item)
        va[k, 0 if c == "valence" else 1] = v
      elif c == "expr":
        expr[k] = _util.parse_int(path, text, line=lineno, field=c, allowed=range(-1, n_expr),
                                  item=item)
      else:
        au[k, aus.index(c)] = _util.parse_int(path, text, line=lineno, field=c,
                                             allowed=(-1, 0, 1), item=item)
  return dict(va=va, expr=expr, expr_vocab=expr_vocab if expr is not None else "", au=au,
              au_names=aus)


def items(src: str, args: argparse.Namespace) -> Iterator[VideoItem | Skip]:
  """One item per frame folder, in video_id order (module docstring)."""
  if not os.path.isdir(src):
    raise PrepError(src, "not a directory of frame folders")
  vocab = _util.opt(args, "vocab", "")
  expr_vocab = _util.opt(args, "expr_vocab", vocab)
  labels_path = _util.opt(args, "labels")
  if vocab:
    _util.check_vocab(vocab, labels_path or src)
  if expr_vocab and expr_vocab != vocab:
    _util.check_vocab(expr_vocab, src, "--expr-vocab")
  labels = read_clip_labels(labels_path, vocab) if labels_path else {}
  frame_dir = _util.opt(args, "frame_labels", src)
  fps = float(_util.opt(args, "fps", 0.0))
  precomputed = bool(_util.opt(args, "precomputed", False))
  default_split = _util.opt(args, "split", "all")
  openface_dir = _util.opt(args, "openface")
  folders = {n for n in os.listdir(src) if os.path.isdir(os.path.join(src, n))}
  for vid in sorted(folders | set(labels)):
    label, split, lineno = labels.get(vid, (-1, None, None))
    if isinstance(label, PrepError):
      yield Skip(label)
      continue
    folder = os.path.join(src, vid)
    if vid not in folders:
      yield Skip(PrepError(labels_path, f"no frame folder {folder} for this video", line=lineno,
                           field="video_id", item=vid))
      continue
    files = _util.frame_folder(folder, item=vid)
    if isinstance(files, PrepError):
      yield Skip(files)
      continue
    per_frame: dict = {}
    csv_path = os.path.join(frame_dir, vid + ".csv")
    if os.path.isfile(csv_path):
      try:
        per_frame = read_frame_labels(csv_path, [i for i, _ in files], expr_vocab, item=vid)
      except PrepError as e:
        yield Skip(e)
        continue
    meta = dict(frame_labels=csv_path) if per_frame else {}
    geometry: dict = {}
    of_path = os.path.join(openface_dir, vid + ".csv") if openface_dir else ""
    if of_path and os.path.isfile(of_path):
      try:
        track = _openface.read_openface_csv(of_path)
      except PrepError as e:
        e.item = e.item or vid
        yield Skip(e)
        continue
      boxes, landmarks = track.for_frames(range(1, len(files) + 1))
      geometry = dict(boxes=boxes, landmarks=landmarks, landmark_scheme="ibug68")
      meta["openface"] = of_path
    yield VideoItem(dataset=_util.opt(args, "dataset_name", "folder"), video_id=vid,
                    split=split or default_split,
                    frames=_util.image_frames(files, fps=fps, precomputed=precomputed),
                    num_frames=len(files), fps=fps, source_path=folder, clip_label=label,
                    vocab=vocab if label >= 0 else "", meta=meta, **per_frame, **geometry)
