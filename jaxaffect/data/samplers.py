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
"""
from __future__ import annotations

import numpy as np

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
    raise ValueError(f"former_dfer_offsets: num_frames must be >= 1, got {num_frames}.")
  if num_segments < 1 or duration < 1:
    raise ValueError(
        f"former_dfer_offsets: num_segments and duration must be >= 1, got "
        f"num_segments={num_segments}, duration={duration}.")
  if train:
    if rng is None:
      raise ValueError("former_dfer_offsets: train=True needs an rng (np.random.Generator or "
                       "np.random.RandomState) so that sampling is reproducible.")
    avg = (n - duration + 1) // num_segments
    if avg > 0:
      return np.arange(num_segments, dtype=np.int64) * avg + _randint(rng, avg, num_segments)
    if n > num_segments:
      high = n - duration + 1
      if high <= 0:
        raise ValueError(
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
    raise ValueError(f"expand_offsets: offsets must lie in [0, {num_frames - 1}] for a "
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
