"""AFEW (EmotiW): per-emotion folders of clips, as videos, face-frame folders or Former-DFER lists.

Layouts (`--layout auto` picks the one present under `--src`; both present -> error):
- `videos`, the official release: `Train_AFEW/<Emotion>/<clip>.avi`, `Val_AFEW/<Emotion>/<clip>.avi`
  (splits "train", "val"), decoded with `video.decode_video` (streaming PyAV; fps from the stream).
- `faces`, Former-DFER's face frames: `AFEW_Face/{train,validation}/<Emotion>/<clip>/*.jpg` (or
  `--src` = the `AFEW_Face` folder); frames sorted by trailing integer, `precomputed=True`.
- `--list-file annotation/AFEW_{train,validation}.txt` (repeatable): lines `<frame dir> <num_frames>
  <label0-6>` (see `_util.read_list_file` for `--list-root`); split from the file name
  (train / validation -> "val" / test, else "all").

Emotion folders: the official names Angry Disgust Fear Happy Neutral Sad Surprise, and Former-DFER's
Anger / Happiness / Sadness, map to vocab `afew7` (0 Happy, 1 Sad, 2 Neutral, 3 Angry, 4 Surprise,
5 Disgust, 6 Fear: Former-DFER's order, the DFEW one). `video_id` = the clip name; items come in
(split, video_id) order. Test labels were never released, so there is no test layout.

Bad input (policy in `_util`): an unknown emotion folder -> one Skip naming the folder (field
`emotion`); a clip id twice in one split, an empty or missing frame folder, a list line whose
frame count differs from the folder, or a label outside 0..6 -> Skip; a video that cannot be opened
-> Skip; one that fails part-way -> its last frame is UNREADABLE (`video.decode_video`); a broken
JPEG -> an UNREADABLE frame naming the file.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Iterator

from data_prep.sources import _util, video
from data_prep.sources.base import PrepError, Skip, VideoItem
from jaxaffect.data import vocab as vocab_lib

VOCAB = "afew7"
_VIDEO_SPLITS = (("Train_AFEW", "train"), ("Val_AFEW", "val"))
_FACE_SPLITS = (("train", "train"), ("validation", "val"))
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "all": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--layout", default="auto", choices=("auto", "videos", "faces"),
                      help="official .avi folders or AFEW_Face frame folders")
  parser.add_argument("--fps", type=_util.float_arg(0.0), default=0.0,
                      help="frame rate of face-frame folders (unknown by default: t_sec NaN)")
  _util.add_list_arguments(parser)


def _emotion_dirs(split_dir: str) -> Iterator[tuple[str, int | PrepError]]:
  for name in sorted(os.listdir(split_dir)):
    path = os.path.join(split_dir, name)
    if not os.path.isdir(path):
      continue
    try:
      yield path, vocab_lib.index(VOCAB, name)
    except KeyError:
      yield path, PrepError(path, f"unknown emotion folder {name!r} (expected one of "
                            f"{', '.join(vocab_lib.names(VOCAB))} or Anger/Happiness/Sadness)",
                            field="emotion")


def _faces_root(src: str) -> str | None:
  for root in (os.path.join(src, "AFEW_Face"), src):
    if any(os.path.isdir(os.path.join(root, d)) for d, _ in _FACE_SPLITS):
      return root
  return None


def _layout(src: str, requested: str) -> str:
  has_videos = any(os.path.isdir(os.path.join(src, d)) for d, _ in _VIDEO_SPLITS)
  has_faces = _faces_root(src) is not None
  if requested == "auto":
    if has_videos and has_faces:
      raise PrepError(src, "both Train_AFEW/Val_AFEW and AFEW_Face folders found: pass --layout")
    if not (has_videos or has_faces):
      raise PrepError(src, "no AFEW layout found (expected Train_AFEW/, Val_AFEW/ or "
                      "AFEW_Face/{train,validation}/, or pass --list-file)")
    return "videos" if has_videos else "faces"
  if requested == "videos" and not has_videos:
    raise PrepError(src, "--layout videos: no Train_AFEW/ or Val_AFEW/ folder under --src")
  if requested == "faces" and not has_faces:
    raise PrepError(src, "--layout faces: no AFEW_Face/{train,validation}/ folder under --src")
  return requested


def _collect(src: str, layout: str) -> list[tuple[str, str, str, int | PrepError]]:
  """(split, clip id, path, label or PrepError) of the folder layouts."""
  out = []
  if layout == "videos":
    roots = [(os.path.join(src, d), s) for d, s in _VIDEO_SPLITS]
  else:
    root = _faces_root(src) or src
    roots = [(os.path.join(root, d), s) for d, s in _FACE_SPLITS]
  for split_dir, split in roots:
    if not os.path.isdir(split_dir):
      continue
    for emo_dir, label in _emotion_dirs(split_dir):
      if isinstance(label, PrepError):
        out.append((split, "", emo_dir, label))
        continue
      for name in sorted(os.listdir(emo_dir)):
        path = os.path.join(emo_dir, name)
        if layout == "videos" and os.path.isfile(path) and name.lower().endswith(_util.VIDEO_EXTS):
          out.append((split, os.path.splitext(name)[0], path, label))
        elif layout == "faces" and os.path.isdir(path):
          out.append((split, name, path, label))
  return out


def _split_of_list(path: str) -> str:
  name = os.path.basename(path).lower()
  for pattern, split in (("validation", "val"), ("val", "val"), ("train", "train"),
                         ("test", "test")):
    if re.search(pattern, name):
      return split
  return "all"


def items(src: str, args: argparse.Namespace) -> Iterator[VideoItem | Skip]:
  """AFEW clips in (split, clip id) order (module docstring)."""
  fps = float(_util.opt(args, "fps", 0.0))
  if _util.opt(args, "list_file"):
    entries = []
    for list_path in sorted(_util.opt(args, "list_file")):
      split = _split_of_list(list_path)
      for e in _util.read_list_file(list_path, src=src, list_root=_util.opt(args, "list_root"),
                                    list_prefix=_util.opt(args, "list_prefix"), num_classes=7):
        clip = e.error.item if isinstance(e, Skip) else os.path.basename(e.frame_dir)
        entries.append((split, clip, e))
    seen: dict[tuple[str, str], str] = {}
    for split, clip, e in sorted(entries, key=lambda x: (_SPLIT_ORDER[x[0]], x[1])):
      if isinstance(e, Skip):
        yield e
        continue
      if (split, clip) in seen:
        yield Skip(PrepError(e.list_path, f"clip {clip} listed twice in split {split} (also "
                             f"{seen[split, clip]})", line=e.line, field="frame_dir", item=clip))
        continue
      seen[split, clip] = f"{e.list_path}:{e.line}"
      files = _util.list_entry_frames(e, item=clip)
      if isinstance(files, PrepError):
        yield Skip(files)
        continue
      yield VideoItem(dataset="afew", video_id=clip, split=split,
                      frames=_util.image_frames(files, fps=fps, precomputed=True),
                      num_frames=len(files), fps=fps, source_path=e.frame_dir, clip_label=e.label,
                      vocab=VOCAB, meta=dict(list_file=e.list_path, list_line=e.line))
    return

  layout = _layout(src, _util.opt(args, "layout", "auto"))
  seen_paths: dict[tuple[str, str], str] = {}
  for split, clip, path, label in sorted(_collect(src, layout),
                                         key=lambda x: (_SPLIT_ORDER[x[0]], x[1], x[2])):
    if isinstance(label, PrepError):
      yield Skip(label)
      continue
    if (split, clip) in seen_paths:
      yield Skip(PrepError(path, f"clip id {clip} appears twice in split {split} (also "
                           f"{seen_paths[split, clip]})", field="clip", item=clip))
      continue
    seen_paths[split, clip] = path
    if layout == "videos":
      yield video.video_item(path, dataset="afew", video_id=clip, split=split, clip_label=label,
                             vocab=VOCAB)
      continue
    files = _util.frame_folder(path, item=clip)
    if isinstance(files, PrepError):
      yield Skip(files)
      continue
    yield VideoItem(dataset="afew", video_id=clip, split=split,
                    frames=_util.image_frames(files, fps=fps, precomputed=True),
                    num_frames=len(files), fps=fps, source_path=path, clip_label=label,
                    vocab=VOCAB)
