"""Tolerances derived from the computation, for comparing the results of two *different* programs.

Bit-identity is a promise only for the same program (same shapes, same compiled code) on the same
machine: then a resumed run equals an uninterrupted one, shards are byte-identical, and the tests
say so with `assert_array_equal`. Between different programs the floating-point results differ
by rounding, because the order in which terms are summed is not fixed:

* another batch shape or padding (XLA tiles, vectorises and fuses reductions differently; a pooled
  mean over 256 positions is not summed in one order for batch 5 and for one video of 8 frames);
* another CPU (SIMD width AVX2 / AVX-512 / NEON, FMA or not: the partial sums of a dot product or
  convolution differ), another device or sharding (GPU tree reductions, per-device partial sums);
* another implementation (JAX vs PyTorch: different kernels, different algebraic forms).

Such comparisons therefore allow an error proportional to the rounding of the computation:
`ulps · eps(dtype) · magnitude`, where `magnitude` is what the rounding error of a sum scales
with: the sum of the absolute values of the terms that were accumulated (for a chain of linear
maps and ReLUs, the same network run on absolute values: `abs_magnitude`), or the largest term /
a known scale of the data. A value that is zero up to rounding (terms that cancel exactly in
theory, e.g. the gradient of a bias followed by a train-mode BatchNorm) is compared the same way:
its noise is `k · eps · (the size of the terms that cancel)`, not a fixed `atol` such as 1e-13,
which is below the rounding noise on some machines and meaninglessly loose on others.

`ulps` / `k` must stay far below the difference a real bug makes (a frame off by one, a wrong
normalisation, a missing term): the tests that use these functions say how far, measured.
"""
from __future__ import annotations

from typing import Any, Callable

import ml_dtypes
import numpy as np


def eps(dtype: Any = np.float32) -> float:
  """Machine epsilon of `dtype` (the spacing of floats at 1: 2^-23 for float32, 2^-52 for
  float64, 2^-7 for bfloat16)."""
  return float(ml_dtypes.finfo(np.dtype(dtype)).eps)


def rounding_atol(scale: Any, *, ulps: float, dtype: Any = np.float32) -> np.ndarray:
  """`ulps · eps(dtype) · scale`: the rounding noise allowed for values computed from terms whose
  absolute values sum to (or whose largest is) `scale` (a scalar or an array)."""
  return ulps * eps(dtype) * np.asarray(scale, np.float64)


def assert_within(actual, expected, allowed, *, err_msg: str = "", unit=None) -> None:
  """Elementwise `|actual - expected| <= allowed` (an array or scalar; NaN fails); the message
  names the worst element and, given `unit` (eps·magnitude), how many ulps of the magnitude it is
  off by."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, f"{err_msg}: shape {actual.shape} != {expected.shape}"
  allowed = np.broadcast_to(np.asarray(allowed, np.float64), actual.shape)
  diff = np.abs(actual - expected)
  bad = ~(diff <= allowed)
  if not bad.any():
    return
  ratio = np.where(bad, np.nan_to_num(diff / np.maximum(allowed, 1e-300), nan=np.inf), -1.0)
  i = np.unravel_index(np.argmax(ratio), actual.shape)
  msg = (f"{err_msg}: {int(bad.sum())} of {actual.size} elements differ by more than the derived "
         f"tolerance; worst at {tuple(int(j) for j in i)}: actual {actual[i]!r}, expected "
         f"{expected[i]!r}, |diff| {diff[i]:.3g} > allowed {allowed[i]:.3g}")
  if unit is not None:
    msg += f" (= {diff[i] / np.broadcast_to(unit, actual.shape)[i]:.3g} ulps of the magnitude)"
  raise AssertionError(msg)


def assert_close_ulps(actual, expected, *, magnitude=None, ulps: float = 4.0,
                      dtype: Any = None, err_msg: str = "") -> None:
  """Elementwise `|actual - expected| ≤ ulps · eps(dtype) · magnitude`.

  magnitude: the sum of the absolute values of the terms accumulated into each element (an array
    broadcastable to `expected`, e.g. from `abs_magnitude`), or the largest term / a given scale;
    default `|expected|` (a relative tolerance of `ulps` epsilons: only right when no
    cancellation happened).
  dtype: the precision the values were computed in (default: `expected`'s float dtype).
  """
  expected_arr = np.asarray(expected)
  if dtype is None:
    dtype = expected_arr.dtype if np.issubdtype(expected_arr.dtype, np.floating) else np.float64
  mag = np.abs(np.asarray(expected_arr, np.float64)) if magnitude is None else magnitude
  unit = rounding_atol(mag, ulps=1.0, dtype=dtype)
  assert_within(actual, expected_arr, ulps * unit, err_msg=err_msg, unit=unit)


def assert_close_float64(actual, expected, *, scale, k: float, rtol: float = 0.0,
                         err_msg: str = "") -> None:
  """float64 against a float64 reference (another implementation, e.g. PyTorch):
  `|actual - expected| ≤ rtol·|expected| + k · eps64 · scale` elementwise.

  scale: the size of the terms the values are made of (the largest term of the gradient, the sum
    of the absolute values of the terms of a sum, the norm of the inputs); a scalar or an array.
    This is what makes a value that is zero up to rounding comparable: its noise is a multiple of
    eps64 times the terms that cancel, not of the (noise-sized) value itself.
  k: how many epsilons of `scale` the computation's rounding and conditioning can produce
    (say in the test how it was measured and how far below a real error it is).
  """
  expected64 = np.asarray(expected, np.float64)
  allowed = rtol * np.abs(expected64) + rounding_atol(scale, ulps=k, dtype=np.float64)
  assert_within(actual, expected64, allowed, err_msg=err_msg)


def abs_magnitude(fn: Callable[..., Any], *trees: Any) -> Any:
  """`fn` evaluated on the absolute values of every array in `trees` (parameters, inputs).

  For a network made of sums, means, dense layers and convolutions, with ReLU activations, this
  bounds elementwise the sum of the absolute values of all the terms accumulated along the way
  (`|W2·relu(W1·x + b1) + b2| ≤ |W2|·(|W1|·|x| + |b1|) + |b2|`), i.e. the `magnitude` the rounding
  errors of every reduction in `fn` scale with. Not valid for layers that subtract a mean or divide
  by a norm (BatchNorm, LayerNorm, softmax): use the largest term / a known scale there."""
  import jax
  return fn(*jax.tree.map(lambda a: np.abs(np.asarray(a)), trees))
