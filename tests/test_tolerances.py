"""tests/tolerances.py: the derived tolerances accept rounding noise and refuse real errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import tolerances as tol


def test_eps():
  assert tol.eps(np.float32) == 2.0 ** -23 and tol.eps(np.float64) == 2.0 ** -52
  assert tol.eps(jnp.bfloat16) == 2.0 ** -7
  np.testing.assert_array_equal(tol.rounding_atol([1.0, 4.0], ulps=2, dtype=np.float32),
                                [2.0 ** -22, 2.0 ** -20])


def _seq_sum(terms, reverse=False):
  """Sequential (cumsum) sums along the last axis: the same IEEE additions on every machine."""
  return (terms[..., ::-1] if reverse else terms).cumsum(-1)[..., -1]


def test_ulps_accepts_reordered_sums_and_refuses_a_wrong_value():
  rng = np.random.default_rng(0)
  terms = rng.normal(size=(50, 1000)).astype(np.float32)
  forward, backward = _seq_sum(terms), _seq_sum(terms, reverse=True)
  assert (forward != backward).any()                               # rounding noise is there
  magnitude = np.abs(terms).sum(1)
  tol.assert_close_ulps(backward, forward, magnitude=magnitude, ulps=16)
  # a missing term (an off-by-one window) or a slightly wrong value is refused
  with pytest.raises(AssertionError, match=r"derived tolerance; worst at"):
    tol.assert_close_ulps(backward - terms[:, 0], forward, magnitude=magnitude, ulps=16)
  wrong = forward.copy()
  wrong[7] += 1e-4 * magnitude[7]                                    # ~50x the tolerance
  with pytest.raises(AssertionError, match=r"1 of 50 elements .*ulps of the magnitude"):
    tol.assert_close_ulps(wrong, forward, magnitude=magnitude, ulps=16)
  with pytest.raises(AssertionError):                               # NaN is never close
    tol.assert_close_ulps(np.full(50, np.nan), forward, magnitude=magnitude, ulps=16)
  with pytest.raises(AssertionError, match="shape"):
    tol.assert_close_ulps(forward[:3], forward)


def test_float64_zero_up_to_rounding_is_scaled_by_its_terms():
  rng = np.random.default_rng(1)
  g = rng.normal(size=(2, 128)) * 1e4
  terms = np.concatenate([g, -g], 1)
  terms = terms[:, rng.permutation(terms.shape[1])]            # cancel exactly in theory
  scale = np.abs(terms).sum(1)
  a, b = _seq_sum(terms), _seq_sum(terms, reverse=True)
  # noise above a fixed atol of 1e-13 (terms of size 1e4), within k·eps64 of the terms
  assert np.abs(a).max() > 1e-13
  tol.assert_close_float64(a, np.zeros(2), scale=scale, k=64)
  tol.assert_close_float64(b, a, scale=scale, k=64)
  # a term that does not cancel (a bias gradient that should vanish but does not) is refused
  with pytest.raises(AssertionError, match="derived tolerance"):
    tol.assert_close_float64(a + 1e-9 * scale, np.zeros(2), scale=scale, k=64)
  with pytest.raises(AssertionError):                   # rtol part: 1e-6 relative is too much
    tol.assert_close_float64(g * (1 + 1e-6), g, scale=0.0, k=64, rtol=1e-9)
  tol.assert_close_float64(g * (1 + 1e-10), g, scale=0.0, k=64, rtol=1e-9)


def test_abs_magnitude_bounds_a_relu_network():
  rng = np.random.default_rng(2)
  p = {"w1": rng.normal(size=(8, 16)).astype(np.float32),
       "b1": rng.normal(size=16).astype(np.float32),
       "w2": rng.normal(size=(16, 3)).astype(np.float32)}
  x = rng.normal(size=(5, 8)).astype(np.float32)
  f = lambda p, x: jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"]
  mag = np.asarray(tol.abs_magnitude(f, p, x))
  want = (np.abs(x) @ np.abs(p["w1"]) + np.abs(p["b1"])) @ np.abs(p["w2"])
  np.testing.assert_allclose(mag, want, rtol=1e-5)
  y = np.asarray(jax.jit(f)(p, x))
  y64 = np.maximum(x.astype(np.float64) @ p["w1"] + p["b1"], 0) @ p["w2"]
  assert (mag >= np.abs(y64)).all()
  tol.assert_close_ulps(y, y64, magnitude=mag, ulps=8, dtype=np.float32)
