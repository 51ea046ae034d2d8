"""Clip augmentations against torchvision (transforms and functional, PIL and uint8 tensors)."""
import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import stats

from jaxaffect.data import augment as A
from jaxaffect.data import synthetic


def _clip(num_frames=6, size=112, seed=0, noise_frames=2):
  """Face frames (smooth regions and edges) plus uniform-noise frames (worst case for rounding)."""
  faces = synthetic.generate_video(seed, num_frames=num_frames - noise_frames, size=size)["frames"]
  noise = np.random.default_rng(seed).integers(0, 256, (noise_frames, size, size, 3), np.uint8)
  return np.concatenate([faces, noise])


def _tensor(video):
  return torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2)


def _numpy(t):
  return t.permute(0, 2, 3, 1).numpy()


def _tv_pil_resized_crop(video, box, size):
  return np.stack([np.asarray(TF.resized_crop(Image.fromarray(f), *box, size,
                                              interpolation=TF.InterpolationMode.BILINEAR))
                   for f in video])


# ----------------------------------------------------------------------------- resized crop
BOXES = [((10, 20, 60, 80), [112, 112]),   # enlarged in both axes
         ((0, 0, 112, 112), [112, 112]),   # identity
         ((5, 7, 33, 41), [112, 112]),
         ((3, 1, 100, 90), [56, 64]),      # shrunk (antialias)
         ((30, 0, 40, 112), [80, 80]),     # enlarged in y, shrunk in x
         ((50, 60, 62, 52), [112, 96])]


@pytest.mark.parametrize("box,size", BOXES)
def test_resized_crop_pil_backend_is_torchvision_pil(box, size):
  video = _clip()
  got = A.resized_crop(video, box, size, backend="pil")
  np.testing.assert_array_equal(got, _tv_pil_resized_crop(video, box, size))


@pytest.mark.parametrize("box,size", BOXES)
def test_resized_crop_auto_backend_within_one_grey_level(box, size):
  """cv2 bilinear (enlarging crops) vs torchvision's PIL path: |diff| <= 1 everywhere, and at
  least 70 % of the values identical; crops that shrink an axis go through PIL (identical)."""
  video = _clip()
  got = A.resized_crop(video, box, size).astype(int)
  want = _tv_pil_resized_crop(video, box, size).astype(int)
  d = np.abs(got - want)
  assert d.max() <= 1 and (d == 0).mean() >= 0.70, (d.max(), (d == 0).mean())
  if box[2] > size[0] or box[3] > size[1]:
    assert d.max() == 0
  # And vs torchvision's tensor path (antialias=True), which is itself <= 1 from PIL.
  tv = _numpy(TF.resized_crop(_tensor(video), *box, size, antialias=True)).astype(int)
  d = np.abs(got - tv)
  assert d.max() <= 2 and (d <= 1).mean() >= 0.999


def test_resized_crop_errors():
  with pytest.raises(ValueError, match="not inside"):
    A.resized_crop(_clip(), (100, 0, 20, 20), 112)
  with pytest.raises(ValueError, match="uint8"):
    A.resized_crop(_clip().astype(np.float32), (0, 0, 20, 20), 112)


# ------------------------------------------------------------------------- RandomResizedCrop
def _ks(a, b):
  return stats.ks_2samp(a, b).statistic


@pytest.mark.parametrize("h,w,scale,ratio", [
    (112, 112, (0.08, 1.0), (3 / 4, 4 / 3)),
    (120, 200, (0.08, 1.0), (3 / 4, 4 / 3)),
    (112, 112, (0.8, 1.0), (1.1, 1.6)),     # a third of the draws fall back (clamped to ratio)
])
def test_random_resized_crop_params_distribution_matches_torchvision(h, w, scale, ratio):
  n = 20000
  torch.manual_seed(0)
  img = torch.empty(3, h, w)
  tv = np.array([T.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])
  rng = np.random.default_rng(0)
  ours = np.array([A.random_resized_crop_params(h, w, rng, scale, ratio) for _ in range(n)])
  assert ours.dtype.kind == "i"
  # Boxes inside the frame.
  assert np.all(ours[:, 2] >= 1) and np.all(ours[:, 0] + ours[:, 2] <= h)
  assert np.all(ours[:, 3] >= 1) and np.all(ours[:, 1] + ours[:, 3] <= w)
  # Two-sample KS statistic on each coordinate, on area and aspect: critical value at
  # alpha = 1e-3 for n = m = 20000 is 1.95 * sqrt(2 / n) = 0.0195.
  area = lambda b: b[:, 2] * b[:, 3]  # noqa: E731
  aspect = lambda b: b[:, 3] / b[:, 2]  # noqa: E731
  for name, fa, fb in [("top", ours[:, 0], tv[:, 0]), ("left", ours[:, 1], tv[:, 1]),
                       ("h", ours[:, 2], tv[:, 2]), ("w", ours[:, 3], tv[:, 3]),
                       ("area", area(ours), area(tv)), ("aspect", aspect(ours), aspect(tv))]:
    assert _ks(fa, fb) < 0.0195, (name, _ks(fa, fb))
  # Fallback frequency (the deterministic centred box an impossible area produces) agrees too.
  fallback = A.random_resized_crop_params(h, w, rng, (5.0, 6.0), ratio)
  rate_ours, rate_tv = (np.mean(np.all(b == fallback, 1)) for b in (ours, tv))
  assert abs(rate_ours - rate_tv) < 0.02, (rate_ours, rate_tv)
  if scale[0] == 0.8:
    assert 0.25 < rate_ours < 0.4


@pytest.mark.parametrize("h,w,ratio", [(100, 100, (3 / 4, 4 / 3)), (100, 300, (3 / 4, 4 / 3)),
                                       (300, 100, (3 / 4, 4 / 3)), (90, 100, (1.5, 2.0))])
def test_random_resized_crop_fallback_equals_torchvision(h, w, ratio):
  """An area that never fits forces the fallback, which is deterministic."""
  ours = A.random_resized_crop_params(h, w, np.random.default_rng(0), (2.0, 3.0), ratio)
  want = T.RandomResizedCrop.get_params(torch.empty(3, h, w), [2.0, 3.0], list(ratio))
  assert ours == tuple(want)


# ------------------------------------------------------------------------------------- zoom
def test_random_zoom_equals_center_crop_and_resize():
  video = _clip(size=100)
  for z, side in [(1.25, 80), (1.1, 91), (1.5, 67)]:
    box = A.random_zoom_params(100, 100, np.random.default_rng(0), (z, z))
    assert box[2:] == (side, side)
    got = A.random_zoom(video, np.random.default_rng(0), (z, z))
    want = np.stack([np.asarray(TF.resize(TF.center_crop(Image.fromarray(f), [side, side]),
                                          [100, 100])) for f in video])
    d = np.abs(got.astype(int) - want)
    assert got.shape == video.shape and d.max() <= 1 and (d == 0).mean() > 0.7


def test_random_zoom_distribution_and_jitter():
  rng = np.random.default_rng(1)
  boxes = np.array([A.random_zoom_params(120, 120, rng) for _ in range(4000)])
  sides = boxes[:, 2]
  assert sides.min() == round(120 / 1.5) and sides.max() == round(120 / 1.1)
  # z uniform in [1.1, 1.5] -> P(side <= s) = P(z >= 120 / s): KS against that law.
  z = 120 / sides
  assert stats.kstest(z, stats.uniform(1.1, 0.4).cdf).statistic < 0.03
  assert np.all(boxes[:, 0] == np.round((120 - sides) / 2)) and np.all(boxes[:, 2] == boxes[:, 3])
  jit = np.array([A.random_zoom_params(120, 120, rng, jitter=1.0) for _ in range(4000)])
  assert np.all(jit[:, 0] >= 0) and np.all(jit[:, 0] + jit[:, 2] <= 120)
  assert jit[:, 0].std() > 3 and abs(np.mean(jit[:, 0] + jit[:, 2] / 2 - 60)) < 0.5


# ------------------------------------------------------------------------------------ flips
# 300W / iBUG-68 symmetric pairs, 1-based, as facial-landmark code lists them ("matched parts").
MATCHED_PARTS_300W = (
    [1, 17], [2, 16], [3, 15], [4, 14], [5, 13], [6, 12], [7, 11], [8, 10],
    [18, 27], [19, 26], [20, 25], [21, 24], [22, 23],
    [32, 36], [33, 35],
    [37, 46], [38, 45], [39, 44], [40, 43], [41, 48], [42, 47],
    [49, 55], [50, 54], [51, 53], [62, 64], [61, 65], [68, 66], [59, 57], [60, 56])


def test_ibug_mirror_permutation():
  want = list(range(68))
  for a, b in MATCHED_PARTS_300W:
    want[a - 1], want[b - 1] = b - 1, a - 1
  assert A.IBUG68_MIRROR.tolist() == want
  np.testing.assert_array_equal(A.IBUG68_MIRROR[A.IBUG68_MIRROR], np.arange(68))


def test_flip_landmarks_on_a_symmetric_face_and_on_pixels():
  # A frontal synthetic face is mirror-symmetric: after flipping, point k lands on point k up to
  # one constant x shift (its axis is x = size / 2), i.e. the permutation pairs the right points.
  d = synthetic.generate_video(4, num_frames=3, size=112, pose_amount=0.0)
  lm = d["landmarks"]
  fl = A.flip_landmarks(lm, 112)
  dx = fl[..., 0] - lm[..., 0]
  assert np.abs(dx - dx.mean()).max() < 1e-3 and np.abs(fl[..., 1] - lm[..., 1]).max() < 1e-4
  # Without the permutation the shift would not be constant.
  raw = (111 - lm[..., 0]) - lm[..., 0]
  assert np.abs(raw - raw.mean()).max() > 10
  # Coordinates follow the pixels: a marked pixel at (x, y) is at flip_landmarks' x after hflip.
  video = np.zeros((1, 20, 31, 3), np.uint8)
  pts = np.zeros((68, 2), np.float32)
  pts[:, 0] = np.arange(68) % 31
  pts[:, 1] = np.arange(68) % 20
  video[0, 3, 7] = 255
  pts[A.IBUG68_MIRROR[36]] = (7, 3)  # the point that becomes #36 after the flip
  flipped = A.hflip(video)
  x, y = A.flip_landmarks(pts, 31)[36]
  assert flipped[0, int(y), int(x), 0] == 255 and np.count_nonzero(flipped) == 3
  np.testing.assert_array_equal(A.hflip(video), _numpy(TF.hflip(_tensor(video))))
  with pytest.raises(ValueError, match="68, 2"):
    A.flip_landmarks(np.zeros((5, 2)), 10)


def test_crop_landmarks_follow_the_image():
  """A Gaussian blob centred at a landmark stays centred at the transformed landmark."""
  yy, xx = np.mgrid[0:120, 0:120].astype(np.float64)
  cx, cy = 47.3, 61.8
  blob = 255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 4.0 ** 2))
  video = np.repeat(np.round(blob).astype(np.uint8)[None, ..., None], 3, -1)
  for box, size in [((20, 10, 80, 90), (112, 112)), ((0, 0, 120, 120), (60, 60)),
                    ((30, 25, 60, 50), (224, 200))]:
    out = A.resized_crop(video, box, size)[0, ..., 0].astype(np.float64)
    oy, ox = np.mgrid[0:out.shape[0], 0:out.shape[1]]
    got = np.array([(out * ox).sum() / out.sum(), (out * oy).sum() / out.sum()])
    want = A.crop_landmarks(np.array([[cx, cy]]), box, size)[0]
    np.testing.assert_allclose(got, want, atol=0.03)  # the no-half-pixel map is 0.12-1.5 px off


# ---------------------------------------------------------------------------- colour jitter
@pytest.mark.parametrize("factor", [0.0, 0.3, 0.77, 1.0, 1.4, 2.5])
def test_brightness_contrast_saturation_bit_identical_to_torchvision(factor):
  video = _clip()
  tv = _tensor(video)
  for ours, theirs in [(A.adjust_brightness, TF.adjust_brightness),
                       (A.adjust_contrast, TF.adjust_contrast),
                       (A.adjust_saturation, TF.adjust_saturation)]:
    np.testing.assert_array_equal(ours(video, factor), _numpy(theirs(tv, factor)),
                                  err_msg=ours.__name__)


@pytest.mark.parametrize("factor", [-0.5, -0.23, -0.1, 0.0, 0.03, 0.1, 0.25, 0.5])
def test_hue_within_one_grey_level_of_torchvision(factor):
  video = _clip()
  got = A.adjust_hue(video, factor).astype(int)
  want = _numpy(TF.adjust_hue(_tensor(video), factor)).astype(int)
  d = np.abs(got - want)
  assert d.max() <= 1 and (d == 0).mean() > 0.999, (d.max(), (d == 0).mean())


def test_contrast_uses_each_frames_own_mean():
  dark = np.full((1, 8, 8, 3), 40, np.uint8)
  bright = np.full((1, 8, 8, 3), 200, np.uint8)
  out = A.adjust_contrast(np.concatenate([dark, bright]), 0.5)
  # A uniform frame equals its own mean grey (0.9999 x value, truncated): nearly unchanged.
  assert abs(int(out[0, 0, 0, 0]) - 40) <= 1 and abs(int(out[1, 0, 0, 0]) - 200) <= 1


def test_color_jitter_ranges_match_torchvision():
  for kw in [dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
             dict(brightness=1.5, contrast=(0.2, 0.9), saturation=0.0, hue=(-0.3, 0.05)),
             dict(brightness=0.0, contrast=0.0, saturation=(1.0, 1.0), hue=0.0)]:
    cj = T.ColorJitter(**kw)
    mine = [A._jitter_range(kw["brightness"], "b", 1.0, (0, float("inf")), True),
            A._jitter_range(kw["contrast"], "c", 1.0, (0, float("inf")), True),
            A._jitter_range(kw["saturation"], "s", 1.0, (0, float("inf")), True),
            A._jitter_range(kw["hue"], "h", 0.0, (-0.5, 0.5), False)]
    assert mine == [cj.brightness, cj.contrast, cj.saturation, cj.hue]
  with pytest.raises(ValueError, match="hue"):
    A.color_jitter_params(np.random.default_rng(0), hue=0.7)


def test_color_jitter_params_distribution():
  rng = np.random.default_rng(0)
  ps = [A.color_jitter_params(rng, 0.4, (0.5, 1.5), 0.0, 0.1) for _ in range(6000)]
  orders = np.array([p.order for p in ps])
  assert all(sorted(o) == [0, 1, 2, 3] for o in orders.tolist())
  perms, counts = np.unique(orders, axis=0, return_counts=True)
  assert len(perms) == 24 and counts.min() > 6000 / 24 * 0.7
  assert all(p.saturation is None for p in ps)
  b = np.array([p.brightness for p in ps])
  h = np.array([p.hue for p in ps])
  assert stats.kstest(b, stats.uniform(0.6, 0.8).cdf).statistic < 0.025
  assert stats.kstest(h, stats.uniform(-0.1, 0.2).cdf).statistic < 0.025


def _tv_chain(video, params, size):
  """torchvision frame by frame with the same parameters: PIL resized_crop, hflip, then the
  ColorJitter.forward loop on uint8 tensors."""
  frames = _tv_pil_resized_crop(video, params.box, size)
  t = _tensor(frames)
  if params.flip:
    t = TF.hflip(t)
  j = params.jitter
  for fn_id in j.order:
    if fn_id == 0 and j.brightness is not None:
      t = TF.adjust_brightness(t, j.brightness)
    elif fn_id == 1 and j.contrast is not None:
      t = TF.adjust_contrast(t, j.contrast)
    elif fn_id == 2 and j.saturation is not None:
      t = TF.adjust_saturation(t, j.saturation)
    elif fn_id == 3 and j.hue is not None:
      t = TF.adjust_hue(t, j.hue)
  return _numpy(t)


def test_augment_clip_same_parameters_for_every_frame():
  rng = np.random.default_rng(3)
  frame = _clip(num_frames=3, noise_frames=0)[:1]
  same = np.repeat(frame, 5, 0)
  for _ in range(10):
    out, _ = A.augment_clip(same, rng, size=112, brightness=0.4, contrast=0.4, saturation=0.4,
                            hue=0.1)
    assert np.all(out == out[:1])
  # Distinct frames: exactly torchvision applied frame by frame with the same parameters
  # (bit-identical without hue; with hue within the hue op's own 1 grey level, which a later
  # brightness/contrast/saturation factor > 1 can stretch to 2).
  video = _clip(num_frames=6)
  flips = set()
  for k in range(12):
    for hue in (0.0, 0.1):
      out, params = A.augment_clip(video, rng, size=(112, 96), brightness=0.4, contrast=0.4,
                                   saturation=0.4, hue=hue, backend="pil")
      flips.add(params.flip)
      want = _tv_chain(video, params, [112, 96])
      if hue == 0.0:
        np.testing.assert_array_equal(out, want)
      else:
        d = np.abs(out.astype(int) - want)
        assert d.max() <= 2 and (d == 0).mean() > 0.999
  assert flips == {False, True}


def test_augment_clip_zoom_and_plain_resize():
  video = _clip(size=112)
  rng = np.random.default_rng(0)
  out, params = A.augment_clip(video, rng, size=112, crop="zoom", flip_prob=0.0)
  assert params.jitter is None and not params.flip and 75 <= params.box[2] <= 102
  np.testing.assert_array_equal(out, A.resized_crop(video, params.box, 112))
  out, params = A.augment_clip(video, rng, size=56, crop=None, flip_prob=0.0)
  np.testing.assert_array_equal(out, np.stack(
      [np.asarray(TF.resize(Image.fromarray(f), [56, 56])) for f in video]))
