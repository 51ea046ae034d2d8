"""FER2013's `fer2013.csv`, shared by the `fer2013` and `ferplus` sources, and the detector check
of the image sources whose faces are already crops (also `rafdb`).

`fer2013.csv` (Kaggle "Challenges in Representation Learning"): header `emotion,pixels,Usage`
(the columns are found by name, in any order: Kaggle's `icml_face_data.csv` writes
`emotion, Usage, pixels`); one row per image: `emotion` 0..6 (vocab `fer7`), `pixels` 2304
space-separated integers 0..255 (a 48x48 grey face crop, row-major), `Usage` Training /
PublicTest / PrivateTest -> splits train / val / test. Data row k (0-based, header and blank lines
not counted) is the image FER+ names `fer{k:07d}.png`.

An image becomes a one-frame item: the grey crop repeated into 3 channels, frame index 0, t_sec 0,
`precomputed=True` (a dataset-provided face crop), no boxes or landmarks. So `--detector auto`
resizes it to `--size` as it is ("none"); `blazeface` / `haar` re-detect and align on the 48x48
crop; `precomputed` (needs the item's geometry, which FER has not) is refused before anything is
read. `source_path` is `<csv>:<line>` (where the pixels are), and `meta["pixels_sha1"]` makes a
rerun after one row was fixed redo only that row's shard (the CSV's own size/mtime is not part of
an item's fingerprint).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from data_prep.sources import _util
from data_prep.sources.base import Frame, PrepError

HEADER = ("emotion", "pixels", "Usage")
SIDE = 48
USAGE_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FER_NAMES = ("fer2013.csv", os.path.join("fer2013", "fer2013.csv"))


@dataclasses.dataclass
class FerRow:
  index: int              # 0-based data row (FER+ joins by it)
  line: int               # 1-based line of the file
  emotion: str
  pixels: str
  usage: str


def find_file(src: str, names: Sequence[str], option: str) -> str:
  """`src` itself when it is a file, else the first of `src/<name>` that exists."""
  if os.path.isfile(src):
    return src
  for name in names:
    path = os.path.join(src, name)
    if os.path.isfile(path):
      return path
  raise PrepError(src, f"no {' or '.join(names)} found (give the file or its folder{option})")


def read_fer_rows(path: str) -> Iterator[FerRow]:
  """Rows of `fer2013.csv`; a header without the three columns, or a row with another column
  count, raises (the file is not fer2013.csv)."""
  with _util.open_text(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
      raise PrepError(path, f"empty file (expected header {','.join(HEADER)!r})", line=1)
    header = [c.strip() for c in header]
    for name in HEADER:
      if name not in header:
        raise PrepError(path, f"header has no column {name!r} (expected {','.join(HEADER)!r} in "
                        f"any order, found {','.join(header)!r})", line=1, field=name)
    col = {name: header.index(name) for name in HEADER}
    index = 0
    for row in reader:
      if not row or all(not c.strip() for c in row):
        continue
      if len(row) != len(header):
        raise PrepError(path, f"expected {len(header)} columns, found {len(row)}",
                        line=reader.line_num,
                        field=header[len(row)] if len(row) < len(header) else header[-1])
      yield FerRow(index, reader.line_num, row[col["emotion"]].strip(), row[col["pixels"]],
                   row[col["Usage"]].strip())
      index += 1


def fer_id(index: int) -> str:
  return f"fer{index:07d}"


def parse_pixels(path: str, row: FerRow, item: str) -> np.ndarray:
  """(48, 48) uint8 from the `pixels` string, else PrepError naming line and field."""
  parts = row.pixels.split()
  if len(parts) != SIDE * SIDE:
    raise PrepError(path, f"expected {SIDE * SIDE} space-separated integers (a {SIDE}x{SIDE} "
                    f"image), found {len(parts)}", line=row.line, field="pixels", item=item)
  try:
    values = np.asarray(parts, dtype=np.int64)
  except ValueError:
    k = next((k for k, p in enumerate(parts) if not _is_int(p)), 0)
    raise PrepError(path, f"value {k + 1} is {parts[k]!r}, expected an integer 0..255",
                    line=row.line, field="pixels", item=item) from None
  bad = np.flatnonzero((values < 0) | (values > 255))
  if bad.size:
    raise PrepError(path, f"value {bad[0] + 1} is {values[bad[0]]}, expected an integer 0..255",
                    line=row.line, field="pixels", item=item)
  return values.astype(np.uint8).reshape(SIDE, SIDE)


def _is_int(text: str) -> bool:
  try:
    int(text)
    return True
  except ValueError:
    return False


def split_of(path: str, usage: str, *, line: int, item: str, field: str = "Usage") -> str:
  if usage not in USAGE_SPLITS:
    raise PrepError(path, f"unknown value {usage!r} (expected one of {', '.join(USAGE_SPLITS)})",
                    line=line, field=field, item=item)
  return USAGE_SPLITS[usage]


def grey_frames(grey: np.ndarray) -> Callable[[], Iterator[Frame]]:
  """One precomputed frame: the grey crop as RGB (three equal channels)."""
  def gen() -> Iterator[Frame]:
    yield Frame(index=0, t_sec=0.0, image=np.repeat(grey[:, :, None], 3, axis=2),
                precomputed=True)
  return gen


def pixel_meta(path: str, row: FerRow, grey: np.ndarray) -> dict[str, Any]:
  return dict(csv=path, line=row.line, row=row.index, usage=row.usage,
              pixels_sha1=hashlib.sha1(grey.tobytes()).hexdigest())


def check_detector(args: Any, src: str, *, geometry: bool, precomputed: bool | None,
                   what: str) -> None:
  """Refuses, before anything is read, a `--detector` that every item of this source would fail:
  `precomputed` without item geometry, `none` on images that are not dataset-provided crops."""
  det = str(_util.opt(args, "detector", "auto"))
  if det == "precomputed" and not geometry:
    raise PrepError(src, f"--detector precomputed needs boxes or landmarks, which {what} does not "
                    f"have: use auto, none (resize the crops) or blazeface/haar", field="detector")
  if det == "none" and precomputed is False:
    raise PrepError(src, f"--detector none resizes dataset-provided crops, but {what} are not "
                    f"crops: use auto, blazeface or haar", field="detector")
