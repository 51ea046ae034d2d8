"""ABAW sliding windows over whole videos: where the windows are, which frames and labels each
holds, and how window predictions merge back into per-frame predictions.

`sliding_windows` (w=300, s=200 and the EXPR variants, three ways of handling the end of a video),
`window_indices` and `window_labels` (padded to the window length with a valid mask),
`merge_window_predictions` (per-frame average over the covering windows). Pure numpy; re-exported
by `jaxaffect.data.samplers`.
"""
from __future__ import annotations

import numpy as np

from jaxaffect.errors import UserError

WINDOW_TAILS = ("pad", "end", "drop")


def sliding_windows(num_frames: int, window: int = 300, stride: int = 200, *,
                    tail: str = "pad") -> list[tuple[int, int]]:
  """`[(start, stop), ...]` windows over a whole video (stop exclusive, stop <= num_frames).

  ABAW defaults w=300, s=200 (VA, AU, EXPR); the EXPR variants use 100/50 and 400/200
  (upczww/abaw6, `preprocess/split_*.py`). `tail` decides what happens at the end:

  * "pad" (default, covers every frame): starts 0, s, 2s, ... up to the first start whose window
    reaches the end; the last window is shorter than `window` and is padded by `window_indices` /
    `window_labels` (valid mask False). With stride == window these are the ABAW6 inference loop's
    windows (`test.py`: non-overlapping, the last one truncated at the end of the video instead of
    padded); a model that masks the padding (`ABAWTCN` with `frame_mask = valid`) gives its real
    frames the truncated window's outputs.
  * "end" (covers every frame with full windows): starts 0, s, 2s, ... while the window ends before
    the video does, then one last window aligned to the end `[n - w, n)`; a video shorter than the
    window gets one padded window `[0, n)`. (This is what `split_sample` in the ABAW5/6 code sets up
    in its `if end > length` branch, which then `break`s without appending it.)
  * "drop": exactly the ABAW5/6 training split `split_sample`: for i in range(n // s), keep the
    window `[i*s, i*s + w)` if it fits; tail frames after the last full window are not covered and
    videos shorter than w give no window at all.
  """
  n, w, s = int(num_frames), int(window), int(stride)
  if n < 1 or w < 1 or s < 1:
    raise UserError(f"sliding_windows: need num_frames, window, stride >= 1, got "
                    f"num_frames={num_frames}, window={window}, stride={stride}.")
  if tail == "drop":
    return [(s * i, s * i + w) for i in range(n // s) if s * i + w <= n]
  if tail not in WINDOW_TAILS:
    raise UserError(f"sliding_windows: tail must be one of {WINDOW_TAILS}, got {tail!r}.")
  if s > w:
    raise UserError(f"sliding_windows: stride={s} > window={w} leaves frames uncovered; "
                    f"tail={tail!r} must cover every frame (use tail='drop').")
  if tail == "pad":
    last = -(-max(n - w, 0) // s)  # first i with i*s + w >= n
    return [(s * i, min(s * i + w, n)) for i in range(last + 1)]
  if n <= w:
    return [(0, n)]
  out = [(s * i, s * i + w) for i in range((n - w + s - 1) // s)]  # windows ending before n
  out.append((n - w, n))
  return out


def window_indices(windows: list[tuple[int, int]], window: int) -> tuple[np.ndarray, np.ndarray]:
  """Frame indices `(W, window)` int64 and valid mask `(W, window)` bool for `windows`.

  Padding positions (after the stop of a short window) repeat the window's last frame and are
  marked invalid, so that a reader can gather them and a loss can mask them.
  """
  if not windows:
    return np.zeros((0, window), np.int64), np.zeros((0, window), bool)
  se = np.asarray(windows, np.int64).reshape(-1, 2)
  if np.any(se[:, 1] <= se[:, 0]) or np.any(se[:, 1] - se[:, 0] > window) or se.min() < 0:
    raise UserError(f"window_indices: every window needs 0 <= start < stop <= start + {window}, "
                    f"got {se.tolist()}.")
  pos = se[:, :1] + np.arange(window, dtype=np.int64)[None]
  valid = pos < se[:, 1:]
  return np.minimum(pos, se[:, 1:] - 1), valid


def window_labels(values: np.ndarray, windows: list[tuple[int, int]], window: int, *,
                  mask: np.ndarray | None = None,
                  pad_value: float | int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Per-frame labels `(T, ...)` cut into windows: `(W, window, ...)` and valid `(W, window)`.

  `mask` (T,) marks annotated frames (e.g. VA != -5, EXPR != -1, all 12 AUs >= 0); valid =
  inside the video and annotated. Padding positions hold `pad_value`.
  """
  values = np.asarray(values)
  idx, valid = window_indices(windows, window)
  if idx.size and idx.max() >= len(values):
    raise UserError(f"window_labels: windows reach frame {int(idx.max())} but values has "
                    f"{len(values)} frames.")
  out = values[idx]
  out[~valid] = pad_value
  if mask is not None:
    mask = np.asarray(mask, bool)
    if mask.shape != (len(values),):
      raise UserError(f"window_labels: mask must have shape ({len(values)},), got {mask.shape}.")
    valid = valid & mask[idx]
  return out, valid


def merge_window_predictions(num_frames: int, windows: list[tuple[int, int]],
                             preds) -> np.ndarray:
  """Per-frame average `(T, ...)` float32 of window predictions over the windows covering a frame.

  `preds` is `(W, window, ...)` (padded positions ignored) or a list of arrays with at least
  `stop - start` rows each. Raises if a frame is covered by no window (use tail 'pad' or 'end').
  """
  n = int(num_frames)
  if len(preds) != len(windows):
    raise UserError(f"merge_window_predictions: {len(windows)} windows but {len(preds)} "
                    f"predictions.")
  if not windows:
    raise UserError("merge_window_predictions: no windows.")
  first = np.asarray(preds[0])
  total = np.zeros((n,) + first.shape[1:], np.float64)
  count = np.zeros((n,), np.int64)
  for k, ((start, stop), p) in enumerate(zip(windows, preds)):
    p = np.asarray(p)
    if not 0 <= start < stop <= n or len(p) < stop - start:
      raise UserError(f"merge_window_predictions: window {k} = ({start}, {stop}) with "
                      f"{len(p)} predictions does not fit a {n}-frame video.")
    total[start:stop] += p[:stop - start]
    count[start:stop] += 1
  if np.any(count == 0):
    missing = np.flatnonzero(count == 0)
    raise UserError(f"merge_window_predictions: {len(missing)} frames are covered by no window "
                    f"(first {missing[:5].tolist()}).")
  return (total / count.reshape((n,) + (1,) * (total.ndim - 1))).astype(np.float32)
