"""Aff-Wild2 (ABAW): per-frame VA / EXPR / AU annotation files + cropped-aligned images or videos.

Annotations (`--src`, or its `annotations/` subfolder): the official VA / EXPR / AU folders of any
ABAW edition (`VA_Set` / `VA_Estimation_Challenge`, `EXPR_Set` / `EXPR_Classification_Challenge` /
`EXPR_Recognition_Challenge`, `AU_Set` / `AU_Detection_Challenge`), each with `Train_Set/` and
`Validation_Set/` of `<video>.txt` (split "train" / "val"); two folders for the same task is
ambiguous and raises. The files (header line, then line i+1 = frame i; VA -5 / EXPR -1 / AU -1
sentinels; 8- or 7-class EXPR, 12- or 8-unit AU headers) are parsed by `jaxaffect.data.affwild2`,
the parser the feature reader uses too; its `AnnotationError`s become `PrepError`s here.

Items: the files of one video in one split are merged into one `VideoItem` (video_id = the file
stem, e.g. `10-60-1280x720_right`; track "left"/"right" from the suffix). It has T = the most label
lines over its tasks frames, numbered 1..T; a task with fewer lines is padded with its sentinel
(VA -5, EXPR -1, AU -1); a task with no file for the video is None. `meta["label_lines"]` keeps each
task's line count. A video in Train_Set of one task and Validation_Set of another (the ABAW
partitions are per challenge) gives one item per split.

Frames (`--images auto|cropped_aligned|cropped|videos`; auto takes the first present):
- `cropped_aligned/<video>/<i:05d>.jpg` (organisers' aligned crops, `precomputed=True`) or
  `cropped/` (face crops, not aligned: `precomputed=False`); folder from `--images-dir` (default
  `--src/<name>`).
  The folder has gaps where no face was found: such frames are yielded with `image=None`,
  `status=MISSING`. Images numbered beyond T are counted in `meta["images_beyond_labels"]`.
- `videos`: `--video-dir` (default `--src/videos`, searched recursively) `<video>.{mp4,avi}`, with
  `_left`/`_right` stripped from the name; decoded frame k (0-based) is frame k+1. Frames the video
  lacks are MISSING; after a decode failure the rest are UNREADABLE (`video.decode_video`).

`--test-list *_test_set_release.txt` (repeatable; one video name per line): split "test" items with
no labels; frames = the image folder's jpgs numbered by file name, gaps up to the last one filled
with MISSING frames (or every decoded frame of the video).

fps: `--fps-csv` (header `video,fps`) if it lists the video, else the video file's average rate if
the file is found, else 30 with `meta["fps_assumed"] = True`. t_sec = (i - 1) / fps for images, the
decoded pts for videos.

Bad input (policy in `_util`; an annotation file concerns one video, so every error in it -> Skip of
that video's item in that split, naming file, line and field): a wrong header, a wrong column
count, an unknown value (EXPR 9, AU 2, VA 3.0), a file with no label line, no image folder (or no
video) for a labelled video.
"""
from __future__ import annotations

import argparse
import os
from typing import Iterator

from data_prep.sources import _util, video
from data_prep.sources.base import MISSING, UNREADABLE, Frame, PrepError, Skip, VideoItem
from jaxaffect.data import affwild2 as aw

DEFAULT_FPS = 30.0
IMAGE_LAYOUTS = ("cropped_aligned", "cropped")
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
track_of = aw.track_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--images", default="auto", choices=("auto",) + IMAGE_LAYOUTS + ("videos",),
                      help="frame source (auto: cropped_aligned, cropped, then videos)")
  parser.add_argument("--images-dir", default=None,
                      help="folder of <video>/<i:05d>.jpg (default: --src/<--images>)")
  parser.add_argument("--video-dir", default=None, help="raw videos (default: --src/videos)")
  parser.add_argument("--fps-csv", default=None, help="CSV `video,fps` (optional)")
  parser.add_argument("--test-list", action="append", default=None, metavar="PATH",
                      help="*_test_set_release.txt: test videos (no labels); repeatable")


def _prep_error(e: aw.AnnotationError) -> PrepError:
  return PrepError(e.path, e.reason, line=e.line, field=e.field, item=e.item)


def annotation_folders(src: str) -> dict[str, str]:
  """{task: folder} found under `src` or `src/annotations` (ambiguity raises PrepError)."""
  try:
    return aw.annotation_folders(src, option="--src")
  except aw.AnnotationError as e:
    raise _prep_error(e) from None


def parse_label_file(path: str, task: str, *, item: str | None = None) -> aw.Labels:
  """`jaxaffect.data.affwild2.parse_label_file` raising PrepError(path, line=, field=, item=)."""
  try:
    return aw.parse_label_file(path, task, item=item)
  except aw.AnnotationError as e:
    raise _prep_error(e) from None


def _read_fps_csv(path: str) -> dict[str, float]:
  try:
    return aw.read_fps_csv(path)
  except aw.AnnotationError as e:
    raise _prep_error(e) from None
  except OSError as e:
    raise PrepError(path, f"cannot open: {e.strerror or e}", field="fps_csv") from None


def _read_test_list(path: str) -> list[str]:
  names = []
  with _util.open_text(path, encoding="utf-8-sig") as f:
    for line in f:
      name = line.strip()
      if not name:
        continue
      stem, ext = os.path.splitext(name)
      names.append(stem if ext.lower() in _util.VIDEO_EXTS else name)
  return names


def _index_videos(video_dir: str | None) -> dict[str, str]:
  if not video_dir or not os.path.isdir(video_dir):
    return {}
  out: dict[str, str] = {}
  for vid, path in video.find_videos(video_dir):
    out.setdefault(os.path.basename(vid), path)
  return out


class _Context:
  """Per-run lookups: image layout and folder, videos, fps table."""

  def __init__(self, src: str, args):
    self.video_dir = _util.opt(args, "video_dir", os.path.join(src, "videos"))
    self.videos = _index_videos(self.video_dir)
    images = _util.opt(args, "images", "auto")
    images_dir = _util.opt(args, "images_dir")
    if images == "auto":
      if images_dir:
        images = "cropped_aligned"
      else:
        present = [n for n in IMAGE_LAYOUTS if os.path.isdir(os.path.join(src, n))]
        images = present[0] if present else "videos"
    if images == "videos" and not self.videos:
      raise PrepError(self.video_dir, "no frames found: no cropped_aligned/ or cropped/ under "
                      "--src and no videos in the video folder (use --images-dir / --video-dir)")
    self.images = images
    self.images_dir = images_dir or os.path.join(src, images)
    fps_csv = _util.opt(args, "fps_csv")
    self.fps_table = _read_fps_csv(fps_csv) if fps_csv else {}

  def fps(self, video_id: str) -> tuple[float, dict]:
    base, _ = track_of(video_id)
    fps = aw.lookup(self.fps_table, video_id)
    if fps is not None:
      return fps, dict(fps_source="fps_csv")
    path = self.videos.get(base) or self.videos.get(video_id)
    if path:
      try:
        fps = video.probe(path)["fps"]
      except PrepError:
        fps = 0.0
      if fps > 0:
        return fps, dict(fps_source=path)
    return DEFAULT_FPS, dict(fps_assumed=True)


def _image_frames(files: dict[int, str], count: int, fps: float, precomputed: bool):
  """Frames 1..count from {index: jpg}; absent indices -> MISSING."""

  def gen() -> Iterator[Frame]:
    for i in range(1, count + 1):
      t = (i - 1) / fps
      path = files.get(i)
      if path is None:
        yield Frame(index=i, t_sec=t, image=None, status=MISSING,
                    error=f"no image for frame {i} (no face in the dataset's crops)")
        continue
      image, status, error = _util.read_image(path)
      yield Frame(index=i, t_sec=t, image=image, status=status, error=error,
                  precomputed=precomputed)
  return gen


def _video_frames(path: str, count: int | None, fps: float):
  """Frames 1..count of a decoded video (all decoded frames if count is None)."""

  def gen() -> Iterator[Frame]:
    i, failed = 0, ""
    decoded = video.decode_video(path, start_index=1)
    try:
      for frame in decoded:
        if count is not None and i >= count:
          return
        i = frame.index
        if frame.status == UNREADABLE:
          failed = frame.error
        yield frame
    finally:
      decoded.close()
    if count is None:
      return
    for j in range(i + 1, count + 1):
      yield Frame(index=j, t_sec=(j - 1) / fps, image=None,
                  status=UNREADABLE if failed else MISSING,
                  error=failed or f"{path}: the video ends at frame {i}, the labels have {count} "
                  "lines")
  return gen


def _frames_for(ctx: _Context, video_id: str, count: int | None, fps: float,
                meta: dict) -> tuple[object, int] | PrepError:
  """(frames callable, number of frames) of one video, or why there are none."""
  if ctx.images in IMAGE_LAYOUTS:
    folder = os.path.join(ctx.images_dir, video_id)
    files = _util.frame_folder(folder, item=video_id)
    if isinstance(files, PrepError):
      return files
    by_index = dict(files)
    if count is None:
      count = max(by_index)
    else:
      beyond = sum(1 for i in by_index if i > count)
      if beyond:
        meta["images_beyond_labels"] = beyond
    meta["images_found"] = sum(1 for i in by_index if 1 <= i <= count)
    return _image_frames(by_index, count, fps, ctx.images == "cropped_aligned"), count
  base, _ = track_of(video_id)
  path = ctx.videos.get(base) or ctx.videos.get(video_id)
  if path is None:
    return PrepError(os.path.join(ctx.video_dir, base + ".mp4"), "video not found (tried "
                     f"{base}.{{mp4,avi,...}} under {ctx.video_dir})", item=video_id)
  meta["video"] = path
  return _video_frames(path, count, fps), count


def items(src: str, args: argparse.Namespace) -> Iterator[VideoItem | Skip]:
  """Aff-Wild2 videos in (split, video id) order (module docstring)."""
  folders = annotation_folders(src)
  test_lists = _util.opt(args, "test_list") or []
  if not folders and not test_lists:
    raise PrepError(src, "no Aff-Wild2 annotation folder found (expected one of "
                    f"{sum(aw.TASK_FOLDERS.values(), ())} under --src or --src/annotations)")
  files = aw.annotation_files(folders)
  for path in test_lists:
    for name in _read_test_list(path):
      files.setdefault(("test", name), {})
  ctx = _Context(src, args)
  for split, video_id in sorted(files, key=lambda k: (_SPLIT_ORDER[k[0]], k[1])):
    task_files = files[split, video_id]
    try:
      labels = {task: parse_label_file(p, task, item=video_id) for task, p in task_files.items()}
    except PrepError as e:
      e.item = e.item or video_id
      yield Skip(e)
      continue
    count = aw.num_frames(labels)
    fps, meta = ctx.fps(video_id)
    meta["label_files"] = dict(sorted(task_files.items()))
    meta["label_lines"] = {t: len(lab.values) for t, lab in sorted(labels.items())}
    got = _frames_for(ctx, video_id, count, fps, meta)
    if isinstance(got, PrepError):
      yield Skip(got)
      continue
    frames, n = got
    _, track = track_of(video_id)
    yield VideoItem(
        dataset="affwild2", video_id=video_id, split=split, frames=frames,
        num_frames=n if (count is not None or ctx.images in IMAGE_LAYOUTS) else None,
        fps=fps, source_path=meta.get("video", os.path.join(ctx.images_dir, video_id)),
        track=track, va=aw.padded(labels, "va", n), expr=aw.padded(labels, "expr", n),
        expr_vocab=labels["expr"].vocab if "expr" in labels else "",
        au=aw.padded(labels, "au", n), au_names=labels["au"].names if "au" in labels else (),
        meta=meta)
