"""Clip samplers: which frame indices of a video become one model input.

Former-DFER dynamic sampling (Zhao & Liu, ACM MM 2021, "Former-DFER", Sec. 4.1 and the official
`dataloader/dataset_DFEW.py`, identical in `dataset_AFEW.py` / `dataset_FERV39K.py`): a video of
`n` frames is cut into `num_segments` (U=8) segments; one offset per segment is chosen (random in
training, centred at test time) and `duration` (V=2) consecutive frames are taken from each offset,
giving U*V = 16 frames. This module re-implements that behaviour (no code copied), including the
official fall-backs for very short videos:

* train, `avg = (n - V + 1) // U > 0`: `offset_u = u*avg + randint(avg)`;
* train, `avg <= 0` and `n > U`: `offsets = sort(randint(n - V + 1, size=U))`;
* train, otherwise: all offsets 0;
* test, `n > U + V - 1`: `tick = (n - V + 1) / U`, `offset_u = int(tick/2 + tick*u)`;
* test, otherwise (n <= 9 for U=8, V=2): all offsets 0.

Expansion: frame `offset + i` for `i < V`, except that the official loader only advances while the
current index is `< n - 1`, i.e. the index is clipped to the last frame.

Note the asymmetry the official code has: with U=8, V=2 a 9-frame video gives offsets 0..7 in
training but all-zero offsets at test time. It is kept on purpose.

The other samplers (second half of the module): EST snippets (`est_indices`), ABAW sliding
windows over whole videos (`sliding_windows`, `window_indices`, `window_labels`,
`merge_window_predictions`; defined in `jaxaffect.data.windows`, re-exported here), single frames
(`frame_index`), long sequences (`long_sequence`) and continuous labels resampled to frame times
(`resample_series`). All are pure numpy and deterministic given the random source the reader
passes per record.
"""
from __future__ import annotations

import random as _pyrandom  # the EST official loader draws from Python's `random`

import numpy as np

# Re-exported: the window functions were defined here (data readers, models and tests use them).
from jaxaffect.data.windows import (WINDOW_TAILS, merge_window_predictions,  # noqa: F401
                                   sliding_windows, window_indices, window_labels)
from jaxaffect.errors import UserError

RandomSource = np.random.Generator | np.random.RandomState


def _randint(rng: RandomSource, high: int, size: int) -> np.ndarray:
  """`randint(high, size)` in [0, high): `RandomState.randint` or `Generator.integers`.

  With a `RandomState` the draws are bit-identical to the official loader's `numpy.random.randint`
  (the global `RandomState`) for the same seed.
  """
  if isinstance(rng, np.random.RandomState):
    return np.asarray(rng.randint(high, size=size), np.int64)
  if isinstance(rng, np.random.Generator):
    return np.asarray(rng.integers(high, size=size), np.int64)
  raise TypeError(f"rng must be a numpy Generator or RandomState, got {type(rng).__name__}.")


def former_dfer_offsets(
    num_frames: int,
    *,
    num_segments: int = 8,
    duration: int = 2,
    train: bool,
    rng: RandomSource | None = None,
) -> np.ndarray:
  """Segment start offsets `(num_segments,)` int64 of Former-DFER's sampler (module docstring).

  Args:
    num_frames: number of frames `n` of the video (>= 1).
    num_segments: U, number of segments (8 in the paper).
    duration: V, consecutive frames per segment (2 in the paper).
    train: random offsets (training) or centred deterministic offsets (test).
    rng: source of the training randomness; required when `train` is True, ignored otherwise.

  Raises:
    ValueError: bad sizes, or train=True without an rng, or a video the official loader cannot
      sample either (`avg <= 0`, `n > U` but `n - V + 1 <= 0`, where `randint` fails).
  """
  n = int(num_frames)
  if n < 1:
    raise UserError(f"former_dfer_offsets: num_frames must be >= 1, got {num_frames}.")
  if num_segments < 1 or duration < 1:
    raise UserError(
        f"former_dfer_offsets: num_segments and duration must be >= 1, got "
        f"num_segments={num_segments}, duration={duration}.")
  if train:
    if rng is None:
      raise UserError("former_dfer_offsets: train=True needs an rng (np.random.Generator or "
                      "np.random.RandomState) so that sampling is reproducible.")
    avg = (n - duration + 1) // num_segments
    if avg > 0:
      return np.arange(num_segments, dtype=np.int64) * avg + _randint(rng, avg, num_segments)
    if n > num_segments:
      high = n - duration + 1
      if high <= 0:
        raise UserError(
            f"former_dfer_offsets: a {n}-frame video cannot hold duration={duration} consecutive "
            f"frames (the official loader's randint({high}) fails here too).")
      return np.sort(_randint(rng, high, num_segments))
    return np.zeros((num_segments,), np.int64)
  if n > num_segments + duration - 1:
    tick = (n - duration + 1) / float(num_segments)
    return np.array([int(tick / 2.0 + tick * u) for u in range(num_segments)], np.int64)
  return np.zeros((num_segments,), np.int64)


def expand_offsets(offsets: np.ndarray, num_frames: int, duration: int) -> np.ndarray:
  """`duration` consecutive indices per offset, clipped at the last frame, flattened `(U*V,)`."""
  offsets = np.asarray(offsets, np.int64)
  if offsets.size and (offsets.min() < 0 or offsets.max() > num_frames - 1):
    raise UserError(f"expand_offsets: offsets must lie in [0, {num_frames - 1}] for a "
                    f"{num_frames}-frame video, got {offsets.tolist()}.")
  idx = offsets[:, None] + np.arange(duration, dtype=np.int64)[None, :]
  return np.minimum(idx, num_frames - 1).reshape(-1)


def former_dfer_indices(
    num_frames: int,
    *,
    num_segments: int = 8,
    duration: int = 2,
    train: bool,
    rng: RandomSource | None = None,
) -> np.ndarray:
  """Frame indices `(num_segments*duration,)` int64 of Former-DFER's dynamic sampling.

  Equals the official loader's frame order: for each segment offset, `duration` consecutive frames.
  See `former_dfer_offsets` for the arguments.
  """
  offsets = former_dfer_offsets(num_frames, num_segments=num_segments, duration=duration,
                                train=train, rng=rng)
  return expand_offsets(offsets, num_frames, duration)


# ============================================================================================
# EST snippets, ABAW sliding windows, single frames, long sequences, continuous-label resampling.
# ============================================================================================
EstRandomSource = np.random.Generator | np.random.RandomState | _pyrandom.Random


def _randint_inclusive(rng: EstRandomSource, low: int, high: int) -> int:
  """One integer uniform in [low, high] (both ends included, like `random.randint`).

  With a `random.Random` the draw is bit-identical to the official EST loader's `random.randint`
  (the module-level functions are methods of one hidden `random.Random`) for the same seed.
  """
  if isinstance(rng, _pyrandom.Random):
    return int(rng.randint(low, high))
  if isinstance(rng, np.random.RandomState):
    return int(rng.randint(low, high + 1))
  if isinstance(rng, np.random.Generator):
    return int(rng.integers(low, high + 1))
  raise TypeError(f"rng must be a numpy Generator, RandomState or random.Random, "
                  f"got {type(rng).__name__}.")


def est_timeline(num_frames: int, unify_to: int | None = 105) -> np.ndarray:
  """Stored-frame index of each position of EST's fixed-length timeline `(unify_to,)` int64.

  The EST README requires every video to be "unified to 105 frames" beforehand without saying
  how. Ours: position `j` shows stored frame `floor((j + 1/2) * n / unify_to)` (uniform nearest
  resampling: frames repeat when n < 105 and are skipped when n > 105; identity when n == 105).
  `unify_to=None` uses the stored frames as they are (`arange(n)`).
  """
  n = int(num_frames)
  if n < 1:
    raise UserError(f"est_timeline: num_frames must be >= 1, got {num_frames}.")
  if unify_to is None:
    return np.arange(n, dtype=np.int64)
  if unify_to < 1:
    raise UserError(f"est_timeline: unify_to must be >= 1 or None, got {unify_to}.")
  j = np.arange(unify_to, dtype=np.int64)
  return (2 * j + 1) * n // (2 * unify_to)


def est_indices(
    num_frames: int,
    *,
    train: bool,
    rng: EstRandomSource | None = None,
    num_snippets: int = 7,
    snippet_len: int = 15,
    overlap: int = 5,
    frames_per_snippet: int = 5,
    span: int = 75,
    max_start: int = 29,
    test_start: int = 15,
    unify_to: int | None = 105,
) -> np.ndarray:
  """Frame indices `(num_snippets, frames_per_snippet)` int64 of EST's snippet sampler.

  Re-implements `RandomShuffleDataset.__getitem__`/`get_image`/`sample` of the official EST code
  (DreamMr/EST, `data/random_shuffle_dataset.py`; no code copied), on the timeline of
  `est_timeline(num_frames, unify_to)` (105 frames, as the README requires):

  * start: `randint(0, max_start)` inclusive (train; `first_clips_number - 1 = 29`), or
    `test_start` (`--test_first`, default 15) at test time;
  * `sub = timeline[start : start + span]` (span 75);
  * snippet i is `sub[i*stride : i*stride + snippet_len]`, stride = snippet_len - overlap = 10;
  * inside a snippet: train draws `randint(0, snippet_len - 1)` until `frames_per_snippet` distinct
    values are collected (a Python `set`); test takes `range(0, snippet_len,
    snippet_len // frames_per_snippet)` = [0, 3, 6, 9, 12]. The official code returns `list(set)`,
    which for 5 of [0, 14] is always ascending in CPython (the set is resized to 32 slots on the 5th
    insertion, so small ints sit at their own slot); we return the positions sorted, which is the
    official order for the paper's setting.
  * Too-short inputs: the official loader asserts `len(snippet) > loc` for every chosen position,
    i.e. `i*stride + loc < min(span, len(timeline) - start)`; we raise ValueError in exactly those
    cases (possible only with `unify_to=None` or `unify_to < start + span`). Nothing wraps,
    clamps or loops.

  The draw order equals the official one (start, then the snippets in order), so with a
  `random.Random(seed)` the result is identical to the official loader after `random.seed(seed)`;
  the SSOP permutation label the loader draws next is `est_permutation_index`.

  Args:
    num_frames: stored frames of the video.
    train: random start and positions (training) or the deterministic test-time ones.
    rng: numpy Generator / RandomState or `random.Random`; required when `train`.
    num_snippets, snippet_len, overlap, frames_per_snippet, span, max_start, test_start: the
      official constants (`--snippets 7`, `each_clips 15`, `next_jump 10`, `--per_snippets 5`,
      `search_clips_number 75`, `first_clips_number 30`, `--test_first 15`).
    unify_to: length of the fixed timeline (`est_timeline`); None = raw stored frames.
  """
  stride = snippet_len - overlap
  if min(num_snippets, snippet_len, frames_per_snippet, span, stride) < 1 or overlap < 0:
    raise UserError(
        f"est_indices: need num_snippets, snippet_len, frames_per_snippet, span >= 1 and "
        f"0 <= overlap < snippet_len, got num_snippets={num_snippets}, snippet_len={snippet_len}, "
        f"overlap={overlap}, frames_per_snippet={frames_per_snippet}, span={span}.")
  if frames_per_snippet > snippet_len:
    raise UserError(f"est_indices: cannot draw {frames_per_snippet} distinct positions from a "
                    f"{snippet_len}-frame snippet (the official sampling loop never ends).")
  timeline = est_timeline(num_frames, unify_to)
  if train:
    if rng is None:
      raise UserError("est_indices: train=True needs an rng (numpy Generator/RandomState or "
                      "random.Random).")
    start = _randint_inclusive(rng, 0, max_start)
    locs = np.empty((num_snippets, frames_per_snippet), np.int64)
    for i in range(num_snippets):
      chosen: set[int] = set()
      while len(chosen) < frames_per_snippet:
        chosen.add(_randint_inclusive(rng, 0, snippet_len - 1))
      locs[i] = sorted(chosen)
  else:
    start = int(test_start)
    if start < 0:
      raise UserError(f"est_indices: test_start must be >= 0, got {test_start}.")
    test_locs = list(range(0, snippet_len, snippet_len // frames_per_snippet))
    if len(test_locs) != frames_per_snippet:
      raise UserError(
          f"est_indices: the official test positions range(0, {snippet_len}, "
          f"{snippet_len}//{frames_per_snippet}) give {len(test_locs)} frames, not "
          f"frames_per_snippet={frames_per_snippet}.")
    locs = np.tile(np.asarray(test_locs, np.int64), (num_snippets, 1))
  pos = np.arange(num_snippets, dtype=np.int64)[:, None] * stride + locs  # position inside `sub`
  sub_len = max(0, min(span, len(timeline) - start))
  bad = np.argwhere(pos >= sub_len)
  if bad.size:
    i, k = (int(v) for v in bad[0])
    raise UserError(
        f"est_indices: snippet {i} position {int(locs[i, k])} needs timeline frame "
        f"{start + int(pos[i, k])}, but the {len(timeline)}-frame timeline "
        f"(num_frames={num_frames}, unify_to={unify_to}) from start {start} holds only "
        f"{sub_len} frames of the span {span} "
        f"(the official loader's `assert len(frames) > loc` fails here too).")
  return timeline[start + pos]


def est_permutation_index(rng: EstRandomSource, num_permutations: int = 10) -> int:
  """SSOP permutation label, `randint(0, num_permutations - 1)` as the official loader draws it
  right after the snippet positions (row of `datasets/permutation_10.npy`)."""
  return _randint_inclusive(rng, 0, num_permutations - 1)


# ------------------------------------------------------------------------------ single frames
def frame_index(num_frames: int, rng: np.random.Generator | None = None, *, train: bool,
                valid_mask: np.ndarray | None = None, test: str = "centre") -> np.ndarray:
  """Frame indices `(k,)` int64 for frame-level models (MAE / Expr fine-tuning, AffectNet).

  Train: one frame uniform over the frames with `valid_mask` True (a face and a label), or over all
  frames. Test: `test="centre"` the valid frame nearest to the middle `(n-1)/2` (the earlier one on
  a tie), `test="all"` every valid frame in order.
  """
  n = int(num_frames)
  if n < 1:
    raise UserError(f"frame_index: num_frames must be >= 1, got {num_frames}.")
  if valid_mask is None:
    cand = np.arange(n, dtype=np.int64)
  else:
    valid_mask = np.asarray(valid_mask, bool)
    if valid_mask.shape != (n,):
      raise UserError(f"frame_index: valid_mask must have shape ({n},), got {valid_mask.shape}.")
    cand = np.flatnonzero(valid_mask).astype(np.int64)
    if not cand.size:
      raise UserError(f"frame_index: no valid frame among {n} (valid_mask is all False).")
  if train:
    if rng is None:
      raise UserError("frame_index: train=True needs an rng.")
    return cand[[int(rng.integers(len(cand)))]]
  if test == "all":
    return cand
  if test != "centre":
    raise UserError(f"frame_index: test must be 'centre' or 'all', got {test!r}.")
  return cand[[int(np.argmin(np.abs(2 * cand - (n - 1))))]]


# ----------------------------------------------------------------------------- long sequences
def long_sequence(num_frames: int, length: int, *, train: bool,
                  rng: np.random.Generator | None = None,
                  stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Index sequences `(C, length)` int64 and valid mask `(C, length)` bool (TDLS 768, MGCT 400).

  Steps are `stride` frames apart. Train (C = 1): a random start uniform over every start whose
  sequence fits, `[0, n - (length-1)*stride - 1]`; a video too short for one sequence starts at 0
  and the steps past its end are padding. Test: chunks that together visit every frame exactly once
  — for each phase p in [0, stride) the frames p, p+stride, ... cut into consecutive chunks of
  `length` steps, the last chunk of each phase padded. Padding repeats the last valid index of its
  row and is marked invalid.
  """
  n, L, s = int(num_frames), int(length), int(stride)
  if n < 1 or L < 1 or s < 1:
    raise UserError(f"long_sequence: need num_frames, length, stride >= 1, got "
                    f"num_frames={num_frames}, length={length}, stride={stride}.")
  steps = np.arange(L, dtype=np.int64) * s
  if train:
    if rng is None:
      raise UserError("long_sequence: train=True needs an rng.")
    extent = (L - 1) * s + 1
    start = int(rng.integers(n - extent + 1)) if n >= extent else 0
    pos = start + steps
    valid = pos < n
    last = pos[valid][-1]
    return np.where(valid, pos, last)[None], valid[None]
  rows, masks = [], []
  for phase in range(min(s, n)):
    frames = np.arange(phase, n, s, dtype=np.int64)
    for c in range(0, len(frames), L):
      chunk = frames[c:c + L]
      valid = np.arange(L) < len(chunk)
      rows.append(np.concatenate([chunk, np.full(L - len(chunk), chunk[-1], np.int64)]))
      masks.append(valid)
  return np.stack(rows), np.stack(masks)


# ------------------------------------------------------------------ continuous-label resampling
RESAMPLE_METHODS = ("linear", "previous", "nearest")


def resample_series(times, values, frame_times, *, method: str = "linear",
                    max_gap: float | None = None, valid: np.ndarray | None = None,
                    time_tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
  """Continuous labels on their own time base resampled to frame times, at read time.

  RECOLA gold standards are on a 40 ms grid (25 Hz), SEWA on 100 ms (10 Hz); video frames are at
  the video's fps. Semantics follow `scipy.interpolate.interp1d(times, values, kind=method,
  axis=0, bounds_error=False)`: "linear" interpolates, "previous" holds the last annotation at or
  before the frame, "nearest" takes the closest annotation (the earlier one on an exact tie).

  Args:
    times: (K,) annotation times in seconds, strictly increasing.
    values: (K,) or (K, D) annotation values.
    frame_times: (T,) frame presentation times in seconds.
    method: "linear", "previous" or "nearest".
    max_gap: if set, frames whose distance to the nearest (kept) annotation exceeds it are masked.
    valid: optional (K,) mask of usable annotations (others are dropped before resampling).
    time_tol: a frame within this many seconds of an annotation time counts as at it (decimal
      times such as RECOLA's "0.28" vs frame times k/25 computed in floating point).

  Returns:
    values (T, D) float32 (0 where masked) and mask (T,) bool: False outside the annotated span
    `[times[0], times[-1]]` and beyond `max_gap`.
  """
  if method not in RESAMPLE_METHODS:
    raise UserError(f"resample_series: method must be one of {RESAMPLE_METHODS}, got {method!r}.")
  t = np.asarray(times, np.float64).reshape(-1)
  v = np.asarray(values, np.float64)
  v = v.reshape(len(v), -1) if v.ndim <= 1 else v
  if v.ndim != 2 or len(v) != len(t):
    raise UserError(f"resample_series: values must be (K,) or (K, D) with K={len(t)} times, got "
                    f"shape {np.shape(values)}.")
  f = np.asarray(frame_times, np.float64).reshape(-1)
  if not (np.all(np.isfinite(t)) and np.all(np.isfinite(f))):
    raise UserError("resample_series: times and frame_times must be finite.")
  if valid is not None:
    valid = np.asarray(valid, bool)
    if valid.shape != t.shape:
      raise UserError(f"resample_series: valid must have shape {t.shape}, got {valid.shape}.")
    t, v = t[valid], v[valid]
  if len(t) > 1 and np.any(np.diff(t) <= 0):
    k = int(np.flatnonzero(np.diff(t) <= 0)[0])
    raise UserError(f"resample_series: times must be strictly increasing; annotation {k + 1} "
                    f"(t={t[k + 1]}) is not after annotation {k} (t={t[k]}).")
  out = np.zeros((len(f), v.shape[1]), np.float32)
  if len(t) == 0:
    return out, np.zeros((len(f),), bool)
  mask = (f >= t[0] - time_tol) & (f <= t[-1] + time_tol)
  fc = np.clip(f, t[0], t[-1])
  if method == "linear":
    res = np.stack([np.interp(fc, t, v[:, d]) for d in range(v.shape[1])], -1)
  elif method == "previous":
    res = v[np.clip(np.searchsorted(t, fc + time_tol, side="right") - 1, 0, len(t) - 1)]
  else:
    res = v[np.searchsorted((t[1:] + t[:-1]) / 2.0, fc, side="left")]
  if max_gap is not None:
    j = np.clip(np.searchsorted(t, f), 1, max(len(t) - 1, 1))
    dist = np.minimum(np.abs(f - t[j - 1]), np.abs(f - t[np.minimum(j, len(t) - 1)]))
    mask &= dist <= max_gap + time_tol
  out[mask] = res[mask]
  return out, mask
