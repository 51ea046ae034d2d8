"""Former-DFER sampler against an independent re-statement of the official loader's behaviour."""
import numpy as np
import pytest

from jaxaffect.data import samplers


def _official_indices(n, num_segments, duration, train, randint):
  """Re-statement of `VideoDataset._get_{train,test}_indices` + `get` (Former-DFER, official).

  `randint(high, size)` is the random source (the official code calls `numpy.random.randint`).
  The expansion loop is written the way the loader walks frames: start at the offset, advance only
  while the index is below the last frame.
  """
  if train:
    avg = (n - duration + 1) // num_segments
    if avg > 0:
      offsets = [u * avg + int(r) for u, r in zip(range(num_segments), randint(avg, num_segments))]
    elif n > num_segments:
      offsets = sorted(int(r) for r in randint(n - duration + 1, num_segments))
    else:
      offsets = [0] * num_segments
  else:
    if n > num_segments + duration - 1:
      tick = (n - duration + 1) / float(num_segments)
      offsets = [int(tick / 2.0 + tick * x) for x in range(num_segments)]
    else:
      offsets = [0] * num_segments
  out = []
  for off in offsets:
    p = int(off)
    for _ in range(duration):
      out.append(p)
      if p < n - 1:
        p += 1
  return np.array(out)


CASES = [(s, d) for s in (1, 2, 3, 8) for d in (1, 2, 3, 5)]


@pytest.mark.parametrize("num_segments,duration", CASES)
def test_train_matches_official_with_legacy_global_rng(num_segments, duration):
  """Bit-identical to the official code: same seed, `numpy.random.randint` vs a RandomState."""
  for n in range(1, 90):
    if n > num_segments and n - duration + 1 <= 0:
      continue  # the official randint fails here too; covered by test_unsampleable_raises
    for seed in range(4):
      np.random.seed(1000 * n + seed)
      want = _official_indices(n, num_segments, duration, True,
                               lambda high, size: np.random.randint(high, size=size))
      got = samplers.former_dfer_indices(n, num_segments=num_segments, duration=duration,
                                         train=True, rng=np.random.RandomState(1000 * n + seed))
      np.testing.assert_array_equal(got, want, err_msg=f"n={n} seed={seed}")


@pytest.mark.parametrize("num_segments,duration", CASES)
def test_train_matches_official_with_injected_generator(num_segments, duration):
  """Generator path: the reference draws from an identically seeded Generator."""
  for n in range(1, 90):
    if n > num_segments and n - duration + 1 <= 0:
      continue
    for seed in range(3):
      ref_rng = np.random.default_rng([n, seed])
      want = _official_indices(n, num_segments, duration, True,
                               lambda high, size: ref_rng.integers(high, size=size))
      got = samplers.former_dfer_indices(n, num_segments=num_segments, duration=duration,
                                         train=True, rng=np.random.default_rng([n, seed]))
      np.testing.assert_array_equal(got, want, err_msg=f"n={n} seed={seed}")


@pytest.mark.parametrize("num_segments,duration", CASES)
def test_test_mode_matches_official(num_segments, duration):
  for n in range(1, 300):
    want = _official_indices(n, num_segments, duration, False, None)
    got = samplers.former_dfer_indices(n, num_segments=num_segments, duration=duration,
                                       train=False)
    np.testing.assert_array_equal(got, want, err_msg=f"n={n}")


def test_test_mode_known_values():
  # DFEW clip 02522 has 66 frames: tick = 65/8 = 8.125, offsets int(4.0625 + 8.125 u).
  got = samplers.former_dfer_indices(66, train=False)
  np.testing.assert_array_equal(
      got, [4, 5, 12, 13, 20, 21, 28, 29, 36, 37, 44, 45, 52, 53, 60, 61])
  # n <= U + V - 1 = 9: zero padding (frame 0, then 1) at test time ...
  np.testing.assert_array_equal(samplers.former_dfer_indices(9, train=False), [0, 1] * 8)
  np.testing.assert_array_equal(samplers.former_dfer_indices(1, train=False), [0] * 16)
  # ... but a 9-frame video in training has avg = 1 and offsets 0..7 (official asymmetry).
  got = samplers.former_dfer_indices(9, train=True, rng=np.random.default_rng(0))
  np.testing.assert_array_equal(got, np.repeat(np.arange(8), 2) + np.tile([0, 1], 8))
  # Test mode ignores the rng.
  np.testing.assert_array_equal(
      samplers.former_dfer_indices(66, train=False, rng=np.random.default_rng(5)),
      samplers.former_dfer_indices(66, train=False))


def test_train_random_offsets_cover_each_segment():
  """Each segment's offset is uniform over its `avg` slots (checks the randint range)."""
  n, s, d = 66, 8, 2
  avg = (n - d + 1) // s  # 8
  rng = np.random.default_rng(0)
  offs = np.stack([samplers.former_dfer_offsets(n, num_segments=s, duration=d, train=True,
                                                rng=rng) for _ in range(2000)])
  rel = offs - np.arange(s) * avg
  assert rel.min() == 0 and rel.max() == avg - 1
  counts = np.stack([np.bincount(rel[:, u], minlength=avg) for u in range(s)])
  assert counts.min() > 2000 / avg * 0.7


@pytest.mark.parametrize("train", [True, False])
def test_properties(train):
  rng = np.random.default_rng(123)
  for n in range(1, 200):
    for s, d in ((8, 2), (4, 4), (16, 1)):
      idx = samplers.former_dfer_indices(n, num_segments=s, duration=d, train=train, rng=rng)
      assert idx.shape == (s * d,) and idx.dtype == np.int64
      assert idx.min() >= 0 and idx.max() <= n - 1
      blocks = idx.reshape(s, d)
      # Segment starts are non-decreasing (the flat sequence need not be: segments may overlap,
      # and short videos repeat frames 0..d-1 in every segment).
      assert np.all(np.diff(blocks[:, 0]) >= 0), (n, s, d, idx)
      # Consecutive frames inside a segment, clipped at the last frame.
      np.testing.assert_array_equal(blocks, np.minimum(blocks[:, :1] + np.arange(d), n - 1))
      if n >= s * d + d:  # long videos: segments start at distinct frames
        assert np.all(np.diff(blocks[:, 0]) > 0)


def test_unsampleable_raises():
  # avg <= 0, n > U, n - V + 1 <= 0: the official randint raises, so do we.
  with pytest.raises(ValueError, match="cannot hold"):
    samplers.former_dfer_indices(5, num_segments=2, duration=7, train=True,
                                 rng=np.random.default_rng(0))
  with pytest.raises(ValueError, match="needs an rng"):
    samplers.former_dfer_indices(20, train=True)
  with pytest.raises(ValueError, match="num_frames"):
    samplers.former_dfer_indices(0, train=False)
  with pytest.raises(TypeError):
    samplers.former_dfer_indices(20, train=True, rng=3)
  with pytest.raises(ValueError, match="offsets must lie"):
    samplers.expand_offsets(np.array([0, 10]), 10, 2)
