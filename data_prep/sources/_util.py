"""Helpers shared by the dataset sources: frame folders, image decoding, label-file parsing.

Error policy of every source (documented once here, cited by each module):
- A problem confined to items the source can name (one video's label file, one row of a shared
  CSV, one clip folder) -> `Skip(PrepError(...))` for each of those items; the shard writer logs it
  in the manifest (fatal with `--strict`). Nothing else is dropped.
- A problem that makes a shared file unusable as a whole (wrong header, wrong column count, a
  layout that cannot be found) -> `raise PrepError(...)`: the items it concerns cannot be named.
- A frame that cannot be decoded -> still yielded, `image=None`, `status=UNREADABLE`, `error`
  naming the file (and the frame); a frame the dataset lacks -> `status=MISSING`.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import re
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from data_prep.sources.base import MISSING, OK, UNREADABLE, Frame, PrepError, Skip

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
_TRAILING_INT = re.compile(r"(\d+)$")


def int_arg(lo: int, hi: int | None = None) -> Callable[[str], int]:
  """argparse `type=` for an integer in [lo, hi]: anything else is an argument error (status 2)."""
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < lo or (hi is not None and value > hi):
      raise argparse.ArgumentTypeError(f"must be {_range_text(lo, hi)}, got {value}")
    return value
  parse.__name__ = "integer"
  return parse


def float_arg(lo: float, hi: float | None = None) -> Callable[[str], float]:
  """argparse `type=` for a finite number in [lo, hi]."""
  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < lo or (hi is not None and value > hi):
      raise argparse.ArgumentTypeError(f"must be {_range_text(lo, hi)}, got {text}")
    return value
  parse.__name__ = "number"
  return parse


def _range_text(lo, hi) -> str:
  return f">= {lo}" if hi is None else f"in {lo}..{hi}"


def opt(args: Any, name: str, default: Any = None) -> Any:
  """`args.<name>` or `default` (a plain Namespace with few fields works)."""
  value = getattr(args, name, default)
  return default if value is None else value


def trailing_int(name: str) -> int | None:
  """Integer at the end of a file stem (`12.jpg` -> 12, `00001_12.jpg` -> 12), else None."""
  m = _TRAILING_INT.search(os.path.splitext(name)[0])
  return int(m.group(1)) if m else None


def list_frame_files(folder: str) -> list[tuple[int, str]]:
  """Image files of a frame folder as (frame index, path), in frame order.

  Sorted by the trailing integer of the stem (DFEW names frames `x_y.jpg`, others `y.jpg`,
  `0000y.jpg`: never assume a pattern); the index is that integer. If some file has no trailing
  integer, or two share one, the folder is sorted by name and indexed 1.. by position.
  """
  names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS)
           and os.path.isfile(os.path.join(folder, n))]
  nums = [trailing_int(n) for n in names]
  if names and None not in nums and len(set(nums)) == len(nums):
    order = sorted(zip(nums, names))
    return [(int(i), os.path.join(folder, n)) for i, n in order]
  return [(k + 1, os.path.join(folder, n)) for k, n in enumerate(sorted(names))]


def read_image(path: str) -> tuple[np.ndarray | None, int, str]:
  """(RGB uint8 image, OK, "") or (None, UNREADABLE or MISSING, error naming the file)."""
  if not os.path.exists(path):
    return None, MISSING, f"{path}: file not found"
  try:
    with Image.open(path) as im:
      im.load()  # truncated JPEGs raise here (PIL's LOAD_TRUNCATED_IMAGES is off by default)
      rgb = im.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8), OK, ""
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    return None, UNREADABLE, f"{path}: cannot decode image: {e}"


def frame_time(index: int, first: int, fps: float) -> float:
  """Seconds of frame `index` (frames numbered from `first` at `fps`); NaN if fps is unknown."""
  return (index - first) / fps if fps > 0 else math.nan


def image_frames(files: Sequence[tuple[int, str]], *, fps: float = 0.0, first: int | None = None,
                 precomputed: bool = False) -> Callable[[], Iterator[Frame]]:
  """Lazy frames of image files [(index, path)]; t_sec = (index - first) / fps, NaN without fps."""
  files = list(files)
  if first is None:
    first = files[0][0] if files else 0

  def gen() -> Iterator[Frame]:
    for index, path in files:
      image, status, error = read_image(path)
      yield Frame(index=index, t_sec=frame_time(index, first, fps), image=image, status=status,
                  error=error, precomputed=precomputed)
  return gen


def frame_folder(folder: str, *, item: str) -> list[tuple[int, str]] | PrepError:
  """Frame files of `folder`, or the PrepError saying it is missing or empty."""
  if not os.path.isdir(folder):
    return PrepError(folder, "frame folder not found", item=item)
  files = list_frame_files(folder)
  if not files:
    return PrepError(folder, f"frame folder is empty (no {'/'.join(IMAGE_EXTS)} files)", item=item)
  return files


# ------------------------------------------------------------------------------------------------
# Delimited label files.


def open_text(path: str, **kw):
  """`open(path)` for reading a label or list file; a file that cannot be opened (missing, a
  folder, no permission) is a PrepError naming it."""
  try:
    return open(path, **kw)
  except OSError as e:
    raise PrepError(path, f"cannot open: {e.strerror or e}") from None


def check_vocab(vocab: str, path: str, option: str = "--vocab") -> None:
  """PrepError unless `vocab` names a label vocabulary (`jaxaffect.data.vocab.VOCABS`)."""
  from jaxaffect.data import vocab as vocab_lib
  if vocab not in vocab_lib.VOCABS:
    raise PrepError(path, f"{option} {vocab!r} is not a label vocabulary (one of "
                    f"{sorted(vocab_lib.VOCABS)})", field="vocab")


def read_rows(path: str, *, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
  """(1-based line number, stripped fields) of each non-blank line of a delimited text file."""
  with open_text(path, newline="", encoding="utf-8-sig") as f:
    for lineno, row in enumerate(csv.reader(f, delimiter=delimiter), start=1):
      if not row or all(not c.strip() for c in row):
        continue
      yield lineno, [c.strip() for c in row]


def check_header(path: str, found: Sequence[str], expected: Sequence[str], line: int = 1) -> None:
  """Raise PrepError naming the first differing column if `found` != `expected`."""
  found, expected = [c.strip() for c in found], list(expected)
  if found == expected:
    return
  for k in range(max(len(found), len(expected))):
    f = found[k] if k < len(found) else "<none>"
    e = expected[k] if k < len(expected) else "<none>"
    if f != e:
      raise PrepError(path, f"header column {k + 1}: expected {e!r}, found {f!r} (expected header "
                      f"{','.join(expected)!r}, found {','.join(found)!r})", line=line, field=e)


def parse_int(path: str, text: str, *, line: int, field: str, allowed: Sequence[int] | range,
              item: str | None = None) -> int:
  """Integer `text` that must be in `allowed`, else PrepError(path, line, field)."""
  try:
    value = int(text)
  except ValueError:
    raise PrepError(path, f"expected an integer, found {text!r}", line=line, field=field,
                    item=item) from None
  if value not in allowed:
    shown = (f"{allowed.start}..{allowed.stop - 1}" if isinstance(allowed, range)
             else ", ".join(map(str, allowed)))
    raise PrepError(path, f"unknown label value {value} (expected one of {shown})", line=line,
                    field=field, item=item)
  return value


def parse_float(path: str, text: str, *, line: int, field: str, item: str | None = None) -> float:
  try:
    value = float(text)
  except ValueError:
    raise PrepError(path, f"expected a number, found {text!r}", line=line, field=field,
                    item=item) from None
  if not math.isfinite(value):
    raise PrepError(path, f"expected a finite number, found {text!r}", line=line, field=field,
                    item=item)
  return value


# ------------------------------------------------------------------------------------------------
# Former-DFER list files (`annotation/DFEW_set_1_train.txt`, `AFEW_train.txt`, ...).


@dataclasses.dataclass
class ListEntry:
  list_path: str        # the list file
  line: int             # 1-based line number
  frame_dir: str        # the (rewritten) frame directory
  num_frames: int       # frames the line declares
  label: int            # 0-based class (Former-DFER: DFEW order, 0 Happy .. 6 Fear)


def read_list_file(path: str, *, src: str, list_root: str | None, list_prefix: str | None,
                   num_classes: int) -> list[ListEntry | Skip]:
  """Parse a Former-DFER list: lines `<frame dir> <num_frames> <label>`, space-separated.

  Paths: with `list_root`, the prefix `list_prefix` is replaced by `list_root`, as Former-DFER's
  `annotation/script.py` rewrites `/home/user/datasets/...`. The default prefix is the longest
  directory above the entries under which they are found in `list_root` (`default_prefix`): the
  entries' common parent for flat lists (`.../DFEW_Face/00001`), the folder above the split for
  nested ones (`.../AFEW_Face/train/Happiness/011603980` with `--list-root .../AFEW_Face`).
  Without `list_root`, absolute paths are used as written and relative ones are joined to `src`.

  A line without exactly three fields (the path may contain spaces: split from the right) or with a
  non-integer frame count raises (the file is not a list file); a label outside 0..num_classes-1
  yields a Skip for that clip.
  """
  raw: list[tuple[int, str, int, str]] = []
  with open_text(path, encoding="utf-8") as f:
    for lineno, text in enumerate(f, start=1):
      text = text.strip()
      if not text:
        continue
      parts = text.rsplit(maxsplit=2)
      if len(parts) != 3:
        raise PrepError(path, f"expected '<frame dir> <num_frames> <label>', found {text!r}",
                        line=lineno, field="num_frames")
      fdir, nf, label = parts
      try:
        n = int(nf)
      except ValueError:
        raise PrepError(path, f"expected an integer frame count, found {nf!r}", line=lineno,
                        field="num_frames") from None
      raw.append((lineno, fdir, n, label))
  if list_root is not None and raw:
    if list_prefix is None:
      list_prefix = default_prefix(path, [(r[0], r[1]) for r in raw], list_root)
    prefix = list_prefix.rstrip("/")
  out: list[ListEntry | Skip] = []
  for lineno, fdir, n, label in raw:
    fdir = fdir.rstrip("/")
    if list_root is not None:
      if fdir != prefix and not fdir.startswith(prefix + "/"):
        raise PrepError(path, f"path {fdir!r} does not start with the list prefix {prefix!r}",
                        line=lineno, field="frame_dir")
      fdir = os.path.join(list_root, fdir[len(prefix):].lstrip("/"))
    elif not os.path.isabs(fdir):
      fdir = os.path.join(src, fdir)
    try:
      lab = parse_int(path, label, line=lineno, field="label", allowed=range(num_classes),
                      item=os.path.basename(fdir))
    except PrepError as e:
      out.append(Skip(e))
      continue
    out.append(ListEntry(path, lineno, fdir, n, lab))
  return out


def default_prefix(path: str, entries: list[tuple[int, str]], list_root: str) -> str:
  """The prefix of a list file's frame dirs that `list_root` replaces, when not given.

  Candidates: the common parent directory of the entries, then each directory above it. The
  longest one under which the most entries exist in `list_root` wins, so a list of
  `<root>/train/<Emotion>/<clip>` lines works with `--list-root` = the folder holding `train/`
  (the split folder is kept) as well as with the split folder itself; if no entry exists under
  any candidate, the common parent (the clips are then skipped, naming the folder looked for)."""
  dirs = [d.rstrip("/") for _, d in entries]
  try:
    common = os.path.commonpath([os.path.dirname(d) for d in dirs])
  except ValueError:            # absolute and relative paths mixed
    raise PrepError(path, "the frame dirs mix absolute and relative paths: pass --list-prefix",
                    line=entries[0][0], field="frame_dir") from None
  candidates = [common]
  while os.path.dirname(candidates[-1]) not in ("", candidates[-1]):
    candidates.append(os.path.dirname(candidates[-1]))
  best, best_count = common, 0
  for prefix in candidates:
    count = sum(os.path.isdir(os.path.join(list_root, d[len(prefix):].lstrip("/"))) for d in dirs)
    if count > best_count:
      best, best_count = prefix, count
    if count == len(dirs):
      break
  return best


def list_entry_frames(entry: ListEntry, *, item: str) -> list[tuple[int, str]] | PrepError:
  """Frame files of a list entry, or the PrepError (folder missing/empty, count mismatch)."""
  files = frame_folder(entry.frame_dir, item=item)
  if isinstance(files, PrepError):
    return PrepError(entry.list_path, f"{files.reason}: {entry.frame_dir}", line=entry.line,
                     field="frame_dir", item=item)
  if len(files) != entry.num_frames:
    return PrepError(entry.list_path, f"the line declares {entry.num_frames} frames, the folder "
                     f"{entry.frame_dir} has {len(files)}", line=entry.line, field="num_frames",
                     item=item)
  return files


def add_list_arguments(parser) -> None:
  parser.add_argument("--list-file", action="append", default=None, metavar="PATH",
                      help="Former-DFER list file(s) `<frame dir> <num_frames> <label0-6>` "
                           "(repeatable); replaces the official layout.")
  parser.add_argument("--list-root", default=None,
                      help="directory replacing the list files' absolute prefix")
  parser.add_argument("--list-prefix", default=None,
                      help="prefix to replace (default: the common parent of the listed folders)")
