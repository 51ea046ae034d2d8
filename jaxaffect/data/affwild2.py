"""Aff-Wild2 (ABAW) per-frame annotation files: the one parser of the official VA / EXPR / AU text
files, shared by the feature reader (`jaxaffect.data.features`, `data.source.labels` = an annotation
folder) and the shard writer (`data_prep.sources.affwild2`, which turns `AnnotationError` into its
`PrepError`).

Layout (`root`, or its `annotations/` subfolder): one folder per task, under any edition's name --
VA: `VA_Set` (ABAW1/2), `VA_Estimation_Challenge` (ABAW3+); EXPR: `EXPR_Set`,
`EXPR_Classification_Challenge`, `EXPR_Recognition_Challenge` (ABAW6); AU: `AU_Set`,
`AU_Detection_Challenge` -- each with `Train_Set/` and `Validation_Set/` of `<video>.txt` (split
"train" / "val"). Two folders for one task (two editions side by side) is ambiguous: an error.

File format: line 1 is the header, line i+1 belongs to frame i (1-based, the crops' `<i:05d>.jpg`):
- VA `valence,arousal`: floats in [-1, 1], -5 = not annotated;
- EXPR `Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other` (vocab `abaw8`, 8 classes) or
  the ABAW1/2 7-class header without Other (`abaw7`): one int per line, -1 = invalid;
- AU `AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26` (12 units) or ABAW1's 8-unit header
  `AU1,AU2,AU4,AU6,AU12,AU15,AU20,AU25`: 0/1 per unit, -1 = invalid.
Trailing blank lines are ignored; any other deviation (header, column count, a value that is not a
number or outside its range, a file without a label line) raises `AnnotationError` naming file,
line and field.

A video's tasks are merged on frames 1..T, T = the most label lines over its tasks; a task with
fewer lines is padded with its sentinel (`padded`). Two-person videos are `<name>_left` /
`<name>_right` (`track_of`); per-video tables (fps) and shared per-video files (audio) are looked up
under the full id, then under `<name>`.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Sequence

import numpy as np

from jaxaffect.data import schema, vocab as vocab_lib
from jaxaffect.errors import UserError

TASKS = ("va", "expr", "au")
TASK_FOLDERS = {
    "va": ("VA_Set", "VA_Estimation_Challenge"),
    "expr": ("EXPR_Set", "EXPR_Classification_Challenge", "EXPR_Recognition_Challenge"),
    "au": ("AU_Set", "AU_Detection_Challenge"),
}
SPLIT_FOLDERS = (("Train_Set", "train"), ("Validation_Set", "val"))
VA_HEADER = ("valence", "arousal")
EXPR_HEADERS = {vocab_lib.names("abaw8"): "abaw8", vocab_lib.names("abaw7"): "abaw7"}
AU_HEADERS = (vocab_lib.AU12, vocab_lib.AU8_ABAW1)
VA_MISSING = schema.VA_MISSING       # -5.0
SENTINELS = {"va": (VA_MISSING, np.float32), "expr": (-1, np.int32), "au": (-1, np.int32)}
TRACKS = ("left", "right")


class AnnotationError(UserError):
  """Bad Aff-Wild2 input, located: `path`, `line` (1-based), `field` (column name), `item` (the
  video it concerns). The message reads `<path>:<line> field '<field>': <reason>`, as
  `data_prep.sources.base.PrepError`."""

  def __init__(self, path: str, reason: str, *, line: int | None = None,
               field: str | None = None, item: str | None = None):
    self.path, self.reason, self.line, self.field, self.item = path, reason, line, field, item
    where = path + (f":{line}" if line is not None else "")
    if field is not None:
      where += f" field '{field}'"
    super().__init__(f"{where}: {reason}")


@dataclasses.dataclass
class Labels:
  """One parsed annotation file."""
  values: np.ndarray            # (n, 2) f32 VA, (n,) i32 EXPR, (n, A) i32 AU; sentinels kept
  names: tuple[str, ...]        # header columns
  vocab: str = ""               # EXPR vocabulary ("abaw8" / "abaw7")


def track_of(video_id: str) -> tuple[str, str]:
  """(`video_id` without `_left` / `_right`, track "left" / "right" / "")."""
  for track in TRACKS:
    if video_id.endswith("_" + track):
      return video_id[:-len(track) - 1], track
  return video_id, ""


def annotation_folders(root: str, *, option: str = "the annotation root") -> dict[str, str]:
  """{task: folder} found under `root` or `root/annotations`; several folders for one task raise
  (`option` names what the user should point at one edition, e.g. "--src", "data.source.labels")."""
  found: dict[str, list[str]] = {}
  for base in (root, os.path.join(root, "annotations")):
    for task, aliases in TASK_FOLDERS.items():
      for alias in aliases:
        path = os.path.join(base, alias)
        if os.path.isdir(path):
          found.setdefault(task, []).append(path)
  for task, paths in found.items():
    if len(paths) > 1:
      raise AnnotationError(paths[0], f"several {task.upper()} annotation folders found "
                            f"({paths}): point {option} at one ABAW edition")
  return {task: paths[0] for task, paths in found.items()}


def annotation_files(folders: dict[str, str], splits: Sequence[str] | None = None
                     ) -> dict[tuple[str, str], dict[str, str]]:
  """{(split, video_id): {task: file}} of the `<video>.txt` files in the split folders
  (`splits`: the splits to list, default both)."""
  out: dict[tuple[str, str], dict[str, str]] = {}
  for task, folder in folders.items():
    for sub, split in SPLIT_FOLDERS:
      d = os.path.join(folder, sub)
      if (splits is not None and split not in splits) or not os.path.isdir(d):
        continue
      for name in sorted(os.listdir(d)):
        if name.endswith(".txt"):
          out.setdefault((split, name[:-4]), {})[task] = os.path.join(d, name)
  return out


def _check_header(path: str, found: Sequence[str], expected: Sequence[str], note: str = "",
                  item: str | None = None, line: int = 1) -> None:
  """AnnotationError naming the first column of `found` that differs from `expected`."""
  found, expected = [c.strip() for c in found], list(expected)
  for k in range(max(len(found), len(expected))):
    f = found[k] if k < len(found) else "<none>"
    e = expected[k] if k < len(expected) else "<none>"
    if f != e:
      raise AnnotationError(path, f"header column {k + 1}: expected {e!r}, found {f!r} (expected "
                            f"header {','.join(expected)!r}{note}, found {','.join(found)!r})",
                            line=line, field=e, item=item)


def _lines(path: str) -> list[tuple[int, str]]:
  with open(path, encoding="utf-8-sig") as f:
    lines = [(k, s.strip()) for k, s in enumerate(f, start=1)]
  while lines and not lines[-1][1]:
    lines.pop()
  return lines


def parse_label_file(path: str, task: str, *, item: str | None = None) -> Labels:
  """One annotation file of `task` ("va", "expr", "au"); `AnnotationError(path, line=, field=,
  item=)` on any deviation from the format (module docstring)."""
  if task not in TASKS:
    raise UserError(f"{path}: unknown Aff-Wild2 task {task!r}, expected one of {TASKS}")
  lines = _lines(path)
  if not lines:
    raise AnnotationError(path, "empty annotation file (expected a header line)", line=1, item=item)
  header = tuple(c.strip() for c in lines[0][1].split(","))
  vocab = ""
  if task == "va":
    _check_header(path, header, VA_HEADER, item=item)
    names = VA_HEADER
  elif task == "expr":
    if header not in EXPR_HEADERS:
      _check_header(path, header, vocab_lib.names("abaw8" if len(header) >= 8 else "abaw7"),
                    " or the ABAW1/2 7-class one without 'Other'", item=item)
    names, vocab = header, EXPR_HEADERS[header]
  else:
    if header not in AU_HEADERS:
      big = len(header) > len(AU_HEADERS[1])
      _check_header(path, header, AU_HEADERS[0] if big else AU_HEADERS[1],
                    " or ABAW1's 8-unit one" if big else " (ABAW1) or the 12-unit one", item=item)
    names = header
  body = lines[1:]
  if not body:
    raise AnnotationError(path, "no label line after the header", line=2, item=item)
  fields = ("expression",) if task == "expr" else names
  ncol = len(fields)
  out = np.empty((len(body), ncol), np.float32 if task == "va" else np.int32)
  allowed = range(-1, len(names)) if task == "expr" else range(-1, 2)
  for r, (lineno, text) in enumerate(body):
    cols = text.split(",")
    if len(cols) != ncol:
      field = fields[len(cols)] if len(cols) < ncol else fields[-1]
      raise AnnotationError(path, f"expected {ncol} comma-separated values, found {len(cols)}: "
                            f"{text!r} (columns {','.join(fields)})", line=lineno, field=field,
                            item=item)
    for c, (s, field) in enumerate(zip(cols, fields)):
      s = s.strip()
      if task == "va":
        try:
          v = float(s)
        except ValueError:
          raise AnnotationError(path, f"expected a number, found {s!r}", line=lineno,
                                field=field, item=item) from None
        if not (-1.0 <= v <= 1.0 or v == VA_MISSING):      # NaN / inf fail both
          raise AnnotationError(path, f"unknown label value {s} (expected [-1, 1] or -5)",
                                line=lineno, field=field, item=item)
      else:
        try:
          v = int(s)
        except ValueError:
          raise AnnotationError(path, f"expected an integer, found {s!r}", line=lineno,
                                field=field, item=item) from None
        if v not in allowed:
          raise AnnotationError(path, f"unknown label value {v} (expected one of "
                                f"{allowed.start}..{allowed.stop - 1})", line=lineno,
                                field=field, item=item)
      out[r, c] = v
  return Labels(out[:, 0] if task == "expr" else out, tuple(names), vocab)


def num_frames(labels: dict[str, Labels]) -> int | None:
  """T of a video: the most label lines over its tasks (None without a task)."""
  return max((len(lab.values) for lab in labels.values()), default=None)


def padded(labels: dict[str, Labels], task: str, n: int) -> np.ndarray | None:
  """The values of `task` on frames 1..n (lines beyond the file: the task's sentinel, VA -5,
  EXPR -1, AU -1); None if the video has no file for `task`."""
  if task not in labels:
    return None
  v = labels[task].values
  if len(v) > n:
    raise UserError(f"padded: {task} has {len(v)} label lines, more than the {n} frames")
  sentinel, dtype = SENTINELS[task]
  out = np.full((n,) + v.shape[1:], sentinel, dtype)
  out[:len(v)] = v
  return out


def read_fps_csv(path: str) -> dict[str, float]:
  """{video: fps} of a CSV with header `video,fps` (blank lines skipped); errors name line and
  field."""
  with open(path, newline="", encoding="utf-8-sig") as f:
    rows = [(k, [c.strip() for c in row]) for k, row in enumerate(csv.reader(f), start=1)
            if row and any(c.strip() for c in row)]
  if not rows:
    raise AnnotationError(path, "empty fps file (expected header 'video,fps')", line=1)
  first_line, header = rows[0]
  _check_header(path, header, ("video", "fps"), line=first_line)
  out = {}
  for lineno, row in rows[1:]:
    if len(row) != 2:
      raise AnnotationError(path, f"expected 2 columns (video,fps), found {len(row)}", line=lineno,
                            field="fps")
    try:
      fps = float(row[1])
    except ValueError:
      raise AnnotationError(path, f"expected a number, found {row[1]!r}", line=lineno,
                            field="fps") from None
    if not (math.isfinite(fps) and fps > 0):
      raise AnnotationError(path, f"fps must be a finite number > 0, found {row[1]}",
                            line=lineno, field="fps")
    out[row[0]] = fps
  return out


def lookup(table: dict, video_id: str, default=None):
  """`table[video_id]`, else `table[<name>]` for a `<name>_left/_right` track, else `default`."""
  base, _ = track_of(video_id)
  for name in (video_id, base):
    if name in table:
      return table[name]
  return default
