"""EST snippets, ABAW windows, single frames, long sequences and label resampling, each against an
independent re-statement of the official code's behaviour or scipy/numpy."""
import fractions
import random

import numpy as np
import pytest
from scipy.interpolate import interp1d

from jaxaffect.data import samplers


# ------------------------------------------------------------------------------------------ EST
def _official_est(frame_names, is_train, randint, *, first_clips_number=30, search=75,
                  choose_num=5, each_clips=15, clips=7, next_jump=10, test_first=15):
  """Re-statement of DreamMr/EST `RandomShuffleDataset.__getitem__` + `get_image` + `sample`.

  `frame_names` plays `sorted(os.listdir(video))`; `randint(a, b)` is Python's inclusive
  `random.randint`. Returns the chosen frame names per snippet, in the official order (`list(set)`).
  Raises AssertionError where the official `assert len(frames) > loc` fails.
  """
  first_loc = randint(0, first_clips_number - 1) if is_train else test_first
  sub_frames = frame_names[first_loc:first_loc + search]
  out = []
  cur_loc = 0
  for _ in range(clips):
    frames_tmp = sub_frames[cur_loc:cur_loc + each_clips]
    if is_train:
      s = set()
      while len(s) < choose_num:
        s.add(randint(0, each_clips - 1))
      indexs = list(s)
    else:
      indexs = [x for x in range(0, each_clips, each_clips // choose_num)]
    picked = []
    for loc in indexs:
      assert len(frames_tmp) > loc
      picked.append(frames_tmp[loc])
    out.append(picked)
    cur_loc += next_jump
  return out


def _names(n):
  return [f"{k:03d}.jpg" for k in range(n)]


def _as_names(idx):
  return [[f"{int(k):03d}.jpg" for k in row] for row in idx]


def test_est_train_bit_identical_to_official_with_python_random():
  """Same seed: global `random` (official) vs our `random.Random`; frames AND the next draw."""
  for seed in range(60):
    random.seed(seed)
    want = _official_est(_names(105), True, random.randint)
    want_perm = random.randint(0, 9)
    rng = random.Random(seed)
    got = samplers.est_indices(105, train=True, rng=rng)
    assert _as_names(got) == want, seed       # also checks the in-snippet order of `list(set)`
    assert samplers.est_permutation_index(rng) == want_perm


@pytest.mark.parametrize("n", [60, 75, 80, 95, 103, 104, 105, 140, 300])
def test_est_raw_frames_match_official_including_short_videos(n):
  """unify_to=None: the stored frames as the official loader lists them; our ValueError exactly
  where the official assertion fails (short videos), identical frames otherwise."""
  raised = 0
  for seed in range(40):
    random.seed(1000 * n + seed)
    try:
      want = _official_est(_names(n), True, random.randint)
    except AssertionError:
      want = None
    rng = random.Random(1000 * n + seed)
    if want is None:
      raised += 1
      with pytest.raises(ValueError, match="assert len"):
        samplers.est_indices(n, train=True, rng=rng, unify_to=None)
    else:
      assert _as_names(samplers.est_indices(n, train=True, rng=rng, unify_to=None)) == want
  assert (raised > 0) == (n < 104)   # start 29 + 74 = 103 is the last frame ever needed
  # Test mode: start 15, last needed frame 15 + 60 + 12 = 87.
  if n >= 88:
    assert _as_names(samplers.est_indices(n, train=False, unify_to=None)) == _official_est(
        _names(n), False, None)
  else:
    with pytest.raises(AssertionError):
      _official_est(_names(n), False, None)
    with pytest.raises(ValueError, match="holds only"):
      samplers.est_indices(n, train=False, unify_to=None)


def test_est_generator_and_randomstate_follow_the_official_draw_sequence():
  for seed in range(20):
    g = np.random.default_rng(seed)
    want = _official_est(_names(105), True, lambda a, b: int(g.integers(a, b + 1)))
    assert _as_names(samplers.est_indices(105, train=True, rng=np.random.default_rng(seed))) == want
    rs = np.random.RandomState(seed)
    want = _official_est(_names(105), True, lambda a, b: int(rs.randint(a, b + 1)))
    got = samplers.est_indices(105, train=True, rng=np.random.RandomState(seed))
    assert _as_names(got) == want


def test_est_test_mode_known_values():
  got = samplers.est_indices(105, train=False)
  want = np.array([[15 + 10 * i + k for k in (0, 3, 6, 9, 12)] for i in range(7)])
  np.testing.assert_array_equal(got, want)
  assert got[0].tolist() == [15, 18, 21, 24, 27] and got[-1].tolist() == [75, 78, 81, 84, 87]
  assert got.shape == (7, 5) and got.dtype == np.int64
  # Non-default test start, raw frames.
  got = samplers.est_indices(200, train=False, test_start=0, unify_to=None)
  np.testing.assert_array_equal(got[:, 0], np.arange(0, 70, 10))


class _RecordingRandom(random.Random):
  """A `random.Random` that logs its `randint` draws (the first one is EST's start)."""

  def __init__(self, seed):
    super().__init__(seed)
    self.log = []

  def randint(self, a, b):
    v = super().randint(a, b)
    self.log.append(v)
    return v


def test_est_train_distribution():
  """Start uniform on [0, 29] inclusive; each snippet holds 5 distinct sorted positions of
  [0, 14], each position chosen with probability 5/15 (uniform subsets)."""
  starts, hits, n = [], np.zeros(15), 0
  for seed in range(2000):
    r = _RecordingRandom(seed)
    idx = samplers.est_indices(105, train=True, rng=r)
    start = r.log[0]
    locs = idx - start - np.arange(7)[:, None] * 10
    assert locs.min() >= 0 and locs.max() <= 14 and np.all(np.diff(locs, axis=1) > 0)
    np.add.at(hits, locs.ravel(), 1)
    n += locs.size
    starts.append(start)
  counts = np.bincount(starts, minlength=30)
  assert len(counts) == 30 and counts.min() > 2000 / 30 * 0.6
  p = hits / (n / 5)  # per snippet, P(position k is chosen) = 5/15
  assert np.all(np.abs(p - 1 / 3) < 0.025), p


def test_est_timeline_unification():
  for n in (1, 11, 52, 104, 105, 106, 210, 847):
    t = samplers.est_timeline(n, 105)
    want = [int(fractions.Fraction(2 * j + 1, 2) * n / 105) for j in range(105)]
    assert t.tolist() == want, n
    assert np.all(np.diff(t) >= 0) and t.min() >= 0 and t.max() <= n - 1
    if n <= 105:
      assert set(t.tolist()) == set(range(n))  # every stored frame shows up
  np.testing.assert_array_equal(samplers.est_timeline(105), np.arange(105))
  np.testing.assert_array_equal(samplers.est_timeline(30, None), np.arange(30))
  # A short video, unified: indices valid, derived from the timeline.
  idx = samplers.est_indices(20, train=True, rng=random.Random(0))
  assert idx.min() >= 0 and idx.max() <= 19


def test_est_errors():
  with pytest.raises(ValueError, match="needs an rng"):
    samplers.est_indices(105, train=True)
  with pytest.raises(ValueError, match="distinct"):
    samplers.est_indices(105, train=True, rng=random.Random(0), frames_per_snippet=16)
  with pytest.raises(ValueError, match="give 6 frames"):
    samplers.est_indices(200, train=False, snippet_len=16, overlap=6)
  with pytest.raises(TypeError):
    samplers.est_indices(105, train=True, rng=3)
  with pytest.raises(ValueError, match="num_frames"):
    samplers.est_indices(0, train=False)


# -------------------------------------------------------------------------------- ABAW windows
def _official_split_sample(length, window, stride):
  """upczww/abaw6 `preprocess/split_*.py` `split_sample`, re-stated (training windows)."""
  splits = []
  i = 0
  while i < length // stride:
    begin, end = stride * i, stride * i + window
    if end > length:
      break          # the official code reassigns begin/end here and breaks without appending
    splits.append((begin, end))
    i += 1
  return splits


def _official_test_windows(length, window):
  """upczww/abaw6 `VA/test.py`: stride = window, last window truncated at the video's end."""
  out = []
  for i in range(length // window + 1):
    begin = window * i
    if begin >= length:
      break
    out.append((begin, min(begin + window, length)))
  return out


WS = [(300, 200), (100, 50), (400, 200), (30, 15), (300, 300), (5, 7)]


@pytest.mark.parametrize("window,stride", WS)
def test_drop_tail_equals_abaw_training_split(window, stride):
  for n in range(1, 1400, 3):
    assert samplers.sliding_windows(n, window, stride, tail="drop") == _official_split_sample(
        n, window, stride), n


@pytest.mark.parametrize("window", [300, 100, 64])
def test_pad_tail_with_stride_window_equals_abaw_inference(window):
  for n in range(1, 1400, 3):
    assert samplers.sliding_windows(n, window, window, tail="pad") == _official_test_windows(
        n, window), n


@pytest.mark.parametrize("window,stride", [w for w in WS if w[1] <= w[0]])
@pytest.mark.parametrize("tail", ["pad", "end"])
def test_covering_tails_cover_every_frame(window, stride, tail):
  for n in range(1, 1400, 7):
    wins = samplers.sliding_windows(n, window, stride, tail=tail)
    cover = np.zeros(n, int)
    for a, b in wins:
      assert 0 <= a < b <= n
      cover[a:b] += 1
    assert cover.min() >= 1, (n, wins)
    assert wins[-1][1] == n and wins[0][0] == 0
    lengths = [b - a for a, b in wins]
    if tail == "end":
      assert all(l == min(window, n) for l in lengths)
      assert len(set(wins)) == len(wins)
    else:
      assert all(l == window for l in lengths[:-1]) and 1 <= lengths[-1] <= window
      assert all(a % stride == 0 for a, _ in wins)
      if len(wins) > 1:  # no superfluous window: the one before the last does not reach the end
        assert wins[-2][1] < n


def test_window_known_values():
  assert samplers.sliding_windows(1000, 300, 200) == [(0, 300), (200, 500), (400, 700),
                                                      (600, 900), (800, 1000)]
  assert samplers.sliding_windows(950, 300, 200) == [(0, 300), (200, 500), (400, 700),
                                                     (600, 900), (800, 950)]
  assert samplers.sliding_windows(950, 300, 200, tail="end") == [
      (0, 300), (200, 500), (400, 700), (600, 900), (650, 950)]
  assert samplers.sliding_windows(950, 300, 200, tail="drop") == [
      (0, 300), (200, 500), (400, 700), (600, 900)]
  assert samplers.sliding_windows(120, 300, 200) == [(0, 120)]
  assert samplers.sliding_windows(120, 300, 200, tail="end") == [(0, 120)]
  assert samplers.sliding_windows(120, 300, 200, tail="drop") == []
  with pytest.raises(ValueError, match="uncovered"):
    samplers.sliding_windows(100, 5, 7)
  with pytest.raises(ValueError, match="tail"):
    samplers.sliding_windows(100, 5, 2, tail="wrap")


def test_window_labels_against_loop():
  rng = np.random.default_rng(0)
  n, w = 23, 10
  va = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
  va[[3, 4, 17]] = -5.0
  mask = va[:, 0] >= -1
  wins = samplers.sliding_windows(n, w, 6)
  out, valid = samplers.window_labels(va, wins, w, mask=mask, pad_value=-5.0)
  assert out.shape == (len(wins), w, 2) and valid.shape == (len(wins), w)
  for k, (a, b) in enumerate(wins):
    for j in range(w):
      f = a + j
      if f < b:
        np.testing.assert_array_equal(out[k, j], va[f])
        assert valid[k, j] == (va[f, 0] >= -1)
      else:
        assert not valid[k, j] and np.all(out[k, j] == -5.0)
  # Integer labels (EXPR), no mask: padding only.
  expr = rng.integers(0, 8, n)
  out, valid = samplers.window_labels(expr, wins, w, pad_value=-1)
  assert out.dtype == expr.dtype and valid.sum() == sum(b - a for a, b in wins)
  assert np.all(out[~valid] == -1)
  idx, ok = samplers.window_indices(wins, w)
  np.testing.assert_array_equal(ok, valid)
  assert idx[-1, -1] == n - 1  # padding repeats the last frame of the window


def test_merge_window_predictions_against_loop():
  rng = np.random.default_rng(1)
  n, w, s = 37, 12, 5
  wins = samplers.sliding_windows(n, w, s)
  preds = rng.normal(size=(len(wins), w, 3)).astype(np.float32)
  got = samplers.merge_window_predictions(n, wins, preds)
  for f in range(n):
    rows = [preds[k, f - a] for k, (a, b) in enumerate(wins) if a <= f < b]
    np.testing.assert_allclose(got[f], np.mean(rows, 0), rtol=1e-6, atol=1e-6)
  # Windows cut from one signal merge back to it; a list of exact-length arrays works too.
  sig = rng.normal(size=(n,)).astype(np.float32)
  lst = [sig[a:b] for a, b in wins]
  np.testing.assert_allclose(samplers.merge_window_predictions(n, wins, lst), sig, rtol=1e-6)
  drop = samplers.sliding_windows(40, w, s, tail="drop")   # frames 37..39 are in no window
  assert drop[-1] == (25, 37)
  with pytest.raises(ValueError, match="3 frames are covered by no window .first .37, 38, 39"):
    samplers.merge_window_predictions(40, drop, np.zeros((len(drop), w)))


# ------------------------------------------------------------------------------- single frames
def test_frame_index():
  rng = np.random.default_rng(0)
  mask = np.zeros(20, bool)
  mask[[2, 5, 6, 19]] = True
  draws = np.concatenate([samplers.frame_index(20, rng, train=True, valid_mask=mask)
                          for _ in range(4000)])
  assert set(draws.tolist()) == {2, 5, 6, 19}
  assert np.bincount(draws, minlength=20)[[2, 5, 6, 19]].min() > 4000 / 4 * 0.85
  draws = np.concatenate([samplers.frame_index(7, rng, train=True) for _ in range(1400)])
  assert np.bincount(draws, minlength=7).min() > 1400 / 7 * 0.75
  assert samplers.frame_index(9, train=False).tolist() == [4]
  assert samplers.frame_index(10, train=False).tolist() == [4]   # tie 4.5: the earlier frame
  assert samplers.frame_index(20, train=False, valid_mask=mask).tolist() == [6]
  assert samplers.frame_index(20, train=False, valid_mask=mask, test="all").tolist() == [2, 5, 6,
                                                                                         19]
  with pytest.raises(ValueError, match="no valid frame"):
    samplers.frame_index(5, rng, train=True, valid_mask=np.zeros(5, bool))


# ----------------------------------------------------------------------------- long sequences
def test_long_sequence_train():
  rng = np.random.default_rng(0)
  n, L, s = 1000, 400, 2
  extent = (L - 1) * s + 1
  starts = []
  for _ in range(3000):
    idx, valid = samplers.long_sequence(n, L, train=True, rng=rng, stride=s)
    assert idx.shape == (1, L) and valid.all()
    np.testing.assert_array_equal(np.diff(idx[0]), s)
    starts.append(idx[0, 0])
  starts = np.array(starts)
  assert starts.min() == 0 and starts.max() == n - extent        # every fitting start reachable
  assert abs(starts.mean() - (n - extent) / 2) < 5
  idx, valid = samplers.long_sequence(500, 768, train=True, rng=rng)  # TDLS: shorter than 768
  np.testing.assert_array_equal(idx[0, :500], np.arange(500))
  assert valid[0].sum() == 500 and not valid[0, 500:].any() and np.all(idx[0, 500:] == 499)


def test_long_sequence_test_chunks_visit_every_frame_once():
  for n, L, s in [(10, 4, 2), (1, 5, 1), (768, 768, 1), (2000, 400, 1), (1001, 400, 3), (2, 8, 5)]:
    idx, valid = samplers.long_sequence(n, L, train=False, stride=s)
    assert idx.shape == valid.shape and idx.shape[1] == L
    seen = np.sort(idx[valid])
    np.testing.assert_array_equal(seen, np.arange(n))
    for row, ok in zip(idx, valid):
      np.testing.assert_array_equal(np.diff(row[ok]), s)
      assert ok[0] and np.all(np.diff(ok.astype(int)) <= 0)      # padding only at the end
  idx, valid = samplers.long_sequence(10, 4, train=False, stride=2)
  np.testing.assert_array_equal(idx, [[0, 2, 4, 6], [8, 8, 8, 8], [1, 3, 5, 7], [9, 9, 9, 9]])
  np.testing.assert_array_equal(valid.sum(1), [4, 1, 4, 1])


# ------------------------------------------------------------------------- label resampling
@pytest.mark.parametrize("method", ["linear", "previous", "nearest"])
def test_resample_matches_scipy_interp1d(method):
  rng = np.random.default_rng(0)
  times = np.cumsum(rng.uniform(0.05, 0.3, 60))
  times = np.round(times * 8) / 8 + np.arange(60) * 1e-3   # some exact midpoints (ties)
  values = rng.normal(size=(60, 2))
  frames = np.concatenate([np.linspace(times[0] - 1, times[-1] + 1, 500),
                           (times[1:] + times[:-1]) / 2, times])
  ref = interp1d(times, values, kind=method, axis=0, bounds_error=False, fill_value=np.nan)(frames)
  got, mask = samplers.resample_series(times, values, frames, method=method, time_tol=0.0)
  np.testing.assert_array_equal(mask, ~np.isnan(ref[:, 0]))
  np.testing.assert_allclose(got[mask], ref[mask], rtol=1e-6, atol=1e-6)
  assert np.all(got[~mask] == 0)
  if method == "linear":  # and np.interp, column by column
    for d in range(2):
      np.testing.assert_allclose(got[mask, d], np.interp(frames[mask], times, values[:, d]),
                                 rtol=1e-6, atol=1e-6)


def test_resample_recola_40ms_to_25fps_is_identity():
  k = np.arange(7501)
  times = np.array([float(f"{x * 0.04:.2f}") for x in k])   # ARFF frameTime column, 0..300 s
  values = (k % 97).astype(np.float32)
  summed = np.concatenate([[0.0], np.cumsum(np.full(7499, 0.04))])  # t += 0.04 drifts below
  for frame_times in (k[:7500] / 25.0, k[:7500] * 0.04, summed):
    for method in ("linear", "previous", "nearest"):
      got, mask = samplers.resample_series(times, values, frame_times, method=method)
      assert mask.all() and got.shape == (7500, 1)
      np.testing.assert_allclose(got[:, 0], values[:7500], atol=1e-3)
  # Without the time tolerance, zero-order hold picks the previous label for drifted times.
  assert np.sum(summed < times[:7500]) > 1000
  got, _ = samplers.resample_series(times, values, summed, method="previous", time_tol=0.0)
  assert np.sum(got[:, 0] != values[:7500]) == np.sum(summed < times[:7500])


def test_resample_sewa_100ms_to_30fps():
  K = 50
  times = np.arange(K) / 10.0
  values = np.stack([np.sin(np.arange(K)), np.arange(K) * 0.5], 1)
  k = np.arange(160)
  frames = k / 30.0
  prev, m = samplers.resample_series(times, values, frames, method="previous")
  inside = frames <= times[-1] + 1e-9
  np.testing.assert_array_equal(m, inside)                       # 4.9 s = frame 147
  assert m.sum() == 148
  np.testing.assert_allclose(prev[m], values[k[m] // 3], rtol=1e-6)
  near, _ = samplers.resample_series(times, values, frames, method="nearest")
  np.testing.assert_allclose(near[m], values[np.round(k[m] / 3).astype(int)], rtol=1e-6)
  lin, _ = samplers.resample_series(times, values, frames, method="linear")
  lo = k[m] // 3
  frac = (k[m] % 3) / 3.0
  hi = np.minimum(lo + 1, K - 1)
  np.testing.assert_allclose(lin[m], values[lo] * (1 - frac[:, None]) + values[hi] * frac[:, None],
                             rtol=1e-5, atol=1e-6)


def test_resample_max_gap_and_valid():
  times = np.arange(40) * 0.1
  values = np.arange(40, dtype=float)
  keep = np.ones(40, bool)
  keep[10:20] = False                                     # a 1.1 s hole between 0.9 s and 2.0 s
  frames = np.arange(0, 4.0, 1 / 30)
  got, mask = samplers.resample_series(times, values, frames, valid=keep, max_gap=0.2)
  kept = times[keep]
  dist = np.min(np.abs(frames[:, None] - kept[None]), 1)
  np.testing.assert_array_equal(mask, (dist <= 0.2 + 1e-6) & (frames <= kept[-1] + 1e-6))
  assert not mask[(frames > 1.15) & (frames < 1.75)].any()
  ref = np.interp(frames, kept, values[keep])
  np.testing.assert_allclose(got[mask, 0], ref[mask], rtol=1e-6)
  empty, m0 = samplers.resample_series(times, values, frames, valid=np.zeros(40, bool))
  assert not m0.any() and np.all(empty == 0)


def test_resample_errors():
  with pytest.raises(ValueError, match="strictly increasing; annotation 2"):
    samplers.resample_series([0.0, 0.1, 0.1], [1, 2, 3], [0.05])
  with pytest.raises(ValueError, match="method"):
    samplers.resample_series([0.0, 0.1], [1, 2], [0.05], method="cubic")
  with pytest.raises(ValueError, match="K=2"):
    samplers.resample_series([0.0, 0.1], [1, 2, 3], [0.05])
