"""Clip augmentations on uint8 `(T, H, W, 3)` RGB videos: one set of random parameters per clip.

Every random transform is split into `*_params(..., rng)` (draws from a `np.random.Generator`, which
grain passes per record) and a deterministic apply function, and the same parameters are applied to
every frame of the clip (the "Group" transforms of TSN / Former-DFER, and what EST, ABAW and TDLS do
with torchvision transforms on stacked frames). Semantics follow torchvision 0.29:

* `random_resized_crop_params`: `RandomResizedCrop.get_params` (area uniform in `scale`, aspect
  ratio log-uniform in `ratio`, 10 attempts, then a centre crop clamped to `ratio`). Former-DFER's
  own TSN variant (`GroupRandomSizedCrop`) is `jaxaffect.data.pipeline.sample_resized_crop_box`.
* `resized_crop`: `torchvision.transforms.functional.resized_crop` on PIL images (bilinear, which
  antialiases when shrinking). `backend="pil"` is bit-identical to it; `backend="auto"` (default)
  uses `cv2.resize(INTER_LINEAR)` when the crop is enlarged in both axes (the common case: crops of
  the stored face) — at most 1 grey level away from PIL, on about 20 % of the pixels — and PIL
  otherwise (cv2's bilinear does not antialias).
* `color_jitter`: `ColorJitter` on uint8 tensors (random order of the four ops, factors uniform in
  their ranges; `adjust_brightness/contrast/saturation` are bit-identical to the tensor functional,
  `adjust_hue` within 1 grey level). Contrast uses each frame's own mean grey level, as torchvision
  does when it is applied to the frames of a clip.
* `random_zoom`: zoom factor z uniform in [1.1, 1.5]: a crop of (H/z, W/z) around the centre (the
  crop centre may move uniformly within `jitter` × the free margin; 0 = centred) resized back to
  (H, W), i.e. the "zoom in" augmentation of the ABAW/TDLS papers done as crop-and-resize.
* `hflip`, `flip_landmarks`: horizontal flip of frames and of iBUG-68 landmarks (mirror permutation
  `IBUG68_MIRROR`). Clip labels and per-frame EXPR / AU / VA labels are unaffected by a flip (the
  ABAW AUs are not side-specific).
* `transform_points`: landmarks moved exactly as `augment_clip` moved the image (its returned
  `AugmentParams` carry the crop box, the flip and the output size).

Boxes are torchvision's `(top, left, height, width)` in pixels. Landmarks are `(..., 2)` (x, y)
with pixel (row i, column j) centred at (x=j, y=i) (OpenCV / dlib, as `jaxaffect.data.synthetic`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from jaxaffect.errors import UserError

Box = tuple[int, int, int, int]  # (top, left, height, width)


def _check_video(video: np.ndarray, where: str) -> np.ndarray:
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
    raise UserError(f"{where}: expected a uint8 (T, H, W, 3) RGB video, got "
                    f"{video.dtype}{video.shape}.")
  return video


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  h, w = (int(s) for s in size)
  return h, w


# ------------------------------------------------------------------------------------- crops
def random_resized_crop_params(height: int, width: int, rng: np.random.Generator,
                               scale: tuple[float, float] = (0.08, 1.0),
                               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
  """`(top, left, h, w)` with `torchvision.transforms.RandomResizedCrop.get_params` semantics.

  Up to 10 attempts: area `uniform(*scale) * H * W`, aspect `exp(uniform(log r0, log r1))`,
  `w = round(sqrt(area * aspect))`, `h = round(sqrt(area / aspect))` (Python rounding); the first
  that fits is placed uniformly. Fallback: the whole frame, narrowed to the nearest ratio bound if
  the frame's own aspect lies outside `ratio`, centred.
  """
  if scale[0] > scale[1] or ratio[0] > ratio[1]:
    raise UserError(f"random_resized_crop_params: scale and ratio must be (min, max), got "
                    f"scale={scale}, ratio={ratio}.")
  area = height * width
  log_r = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * float(rng.uniform(scale[0], scale[1]))
    aspect = math.exp(float(rng.uniform(log_r[0], log_r[1])))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = float(width) / float(height)
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(video: np.ndarray, box: Box, size: int | Sequence[int], *,
                 backend: str = "auto") -> np.ndarray:
  """The same crop `box` of every frame, resized bilinearly to `size` (int or (h, w)).

  `backend="pil"`: exactly `torchvision.transforms.functional.resized_crop(pil_image, *box, size)`
  (PIL bilinear, antialiased when shrinking). `backend="auto"`: cv2 bilinear when the crop is
  enlarged (or kept) in both axes (<= 1 grey level from PIL), PIL otherwise. The box must lie
  inside the frame.
  """
  video = _check_video(video, "resized_crop")
  top, left, h, w = (int(b) for b in box)
  T, H, W, _ = video.shape
  if h < 1 or w < 1 or top < 0 or left < 0 or top + h > H or left + w > W:
    raise UserError(f"resized_crop: box (top={top}, left={left}, h={h}, w={w}) is not inside "
                    f"the {H}x{W} frames.")
  oh, ow = _size_hw(size)
  if backend not in ("auto", "pil"):
    raise UserError(f"resized_crop: backend must be 'auto' or 'pil', got {backend!r}.")
  crop = video[:, top:top + h, left:left + w]
  if (h, w) == (oh, ow):
    return np.ascontiguousarray(crop)
  out = np.empty((T, oh, ow, 3), np.uint8)
  if backend == "auto" and oh >= h and ow >= w:
    for i in range(T):
      out[i] = cv2.resize(crop[i], (ow, oh), interpolation=cv2.INTER_LINEAR)
    return out
  for i in range(T):
    im = Image.fromarray(np.ascontiguousarray(crop[i]))
    out[i] = np.asarray(im.resize((ow, oh), Image.BILINEAR))
  return out


def crop_landmarks(landmarks: np.ndarray, box: Box, size: int | Sequence[int]) -> np.ndarray:
  """Landmarks `(..., 2)` (x, y) after `resized_crop(video, box, size)`.

  With pixel centres at integer coordinates, input x maps to `(x + 0.5 - left) * ow / w - 0.5`
  (likewise y), the mapping bilinear resizing with half-pixel centres uses.
  """
  top, left, h, w = box
  oh, ow = _size_hw(size)
  lm = np.asarray(landmarks, np.float32)
  out = np.empty_like(lm)
  out[..., 0] = (lm[..., 0] + 0.5 - left) * (ow / w) - 0.5
  out[..., 1] = (lm[..., 1] + 0.5 - top) * (oh / h) - 0.5
  return out


def random_zoom_params(height: int, width: int, rng: np.random.Generator,
                       zoom: tuple[float, float] = (1.1, 1.5), jitter: float = 0.0) -> Box:
  """Box of a zoom-in by z ~ U(zoom): `(round(H/z), round(W/z))` around the centre.

  The offset is torchvision's centre crop, `round((H - h) / 2)`, moved by a uniform shift of at most
  `jitter` × the free margin on each side (`jitter=0`: centred; 1: anywhere in the frame).
  """
  if not 1.0 <= zoom[0] <= zoom[1]:
    raise UserError(f"random_zoom_params: zoom must be (min, max) with 1 <= min <= max, "
                    f"got {zoom}.")
  if not 0.0 <= jitter <= 1.0:
    raise UserError(f"random_zoom_params: jitter must be in [0, 1], got {jitter}.")
  z = float(rng.uniform(zoom[0], zoom[1]))
  h = max(1, min(height, int(round(height / z))))
  w = max(1, min(width, int(round(width / z))))
  top, left = int(round((height - h) / 2.0)), int(round((width - w) / 2.0))
  if jitter > 0:
    top += int(round(float(rng.uniform(-1.0, 1.0)) * jitter * (height - h) / 2.0))
    left += int(round(float(rng.uniform(-1.0, 1.0)) * jitter * (width - w) / 2.0))
    top, left = min(max(top, 0), height - h), min(max(left, 0), width - w)
  return top, left, h, w


def random_zoom(video: np.ndarray, rng: np.random.Generator,
                zoom: tuple[float, float] = (1.1, 1.5), jitter: float = 0.0) -> np.ndarray:
  """Zoom every frame by the same z ~ U(zoom) (`random_zoom_params`), back to the input size."""
  video = _check_video(video, "random_zoom")
  box = random_zoom_params(video.shape[1], video.shape[2], rng, zoom, jitter)
  return resized_crop(video, box, video.shape[1:3])


# -------------------------------------------------------------------------------------- flips
def hflip(video: np.ndarray) -> np.ndarray:
  """Mirror every frame left-right (a contiguous copy). Labels are unaffected."""
  return np.ascontiguousarray(_check_video(video, "hflip")[:, :, ::-1])


def _ibug68_mirror() -> np.ndarray:
  # iBUG 300-W 68-point layout (Sagonas et al. 2013; 0-based as dlib): jaw 0-16, brows 17-21 /
  # 22-26 (subject's right / left), nose bridge 27-30, nostrils 31-35, eyes 36-41 / 42-47 (36 and
  # 45 the outer corners), outer lips 48-59, inner lips 60-67. Points on the midline (8, 27-30,
  # 33, 51, 57, 62, 66) map to themselves.
  perm = np.arange(68)
  pairs = [(j, 16 - j) for j in range(8)]                       # jaw 0..16, 8 is the chin
  pairs += [(17 + j, 26 - j) for j in range(5)]                 # brows 17..21 <-> 26..22
  pairs += [(31, 35), (32, 34)]                                 # nostrils, 33 the tip
  pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
  pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]   # outer lips, 51 and 57 central
  pairs += [(60, 64), (61, 63), (65, 67)]                       # inner lips, 62 and 66 central
  for a, b in pairs:
    perm[a], perm[b] = b, a
  return perm


IBUG68_MIRROR = _ibug68_mirror()
"""Point k of a flipped face is point `IBUG68_MIRROR[k]` of the original (an involution)."""


def flip_landmarks(landmarks: np.ndarray, width: int, *, scheme: str = "ibug68") -> np.ndarray:
  """Landmarks `(..., 68, 2)` (x, y) of the horizontally flipped frames of width `width`.

  x -> width - 1 - x (pixel centres at integers), then the points are renumbered with the iBUG
  mirror permutation so that point 36 is again the image-left eye corner, and so on.
  """
  if scheme != "ibug68":
    raise UserError(f"flip_landmarks: only scheme 'ibug68' is known, got {scheme!r}.")
  lm = np.asarray(landmarks, np.float32)
  if lm.ndim < 2 or lm.shape[-2:] != (68, 2):
    raise UserError(f"flip_landmarks: expected (..., 68, 2) landmarks, got {lm.shape}.")
  out = lm[..., IBUG68_MIRROR, :].copy()
  out[..., 0] = (width - 1) - out[..., 0]
  return out


# ------------------------------------------------------------------------------- colour jitter
_GREY = (np.float32(0.2989), np.float32(0.587), np.float32(0.114))  # torchvision rgb_to_grayscale


def _grey(video: np.ndarray) -> np.ndarray:
  """torchvision's uint8 `rgb_to_grayscale`: float32 `0.2989 r + 0.587 g + 0.114 b`, truncated."""
  r, g, b = cv2.split(video.reshape(-1, video.shape[-2], 3))  # contiguous planes
  grey = np.multiply(r, _GREY[0], dtype=np.float32)
  grey += np.multiply(g, _GREY[1], dtype=np.float32)
  grey += np.multiply(b, _GREY[2], dtype=np.float32)
  return grey.astype(np.uint8).reshape(video.shape[:-1])


def _blend_lut(ratio: float, other: np.ndarray) -> np.ndarray:
  """uint8 table `trunc(clip(f32(ratio) * x + f32(1 - ratio) * other, 0, 255))` over x in 0..255.

  `other` broadcasts against the 256 levels (a scalar, or (..., 1) per frame): torchvision's
  `_blend` in float32 arithmetic, bit for bit.
  """
  x = np.arange(256, dtype=np.float32)
  v = np.float32(ratio) * x + np.float32(1.0 - ratio) * np.asarray(other, np.float32)
  return np.clip(v, 0, 255).astype(np.uint8)


def adjust_brightness(video: np.ndarray, factor: float) -> np.ndarray:
  """`torchvision.transforms.functional.adjust_brightness` on uint8 frames (bit-identical)."""
  video = _check_video(video, "adjust_brightness")
  if factor < 0:
    raise UserError(f"adjust_brightness: factor must be >= 0, got {factor}.")
  lut = _blend_lut(factor, 0.0)
  return cv2.LUT(video.reshape(-1, video.shape[2], 3), lut).reshape(video.shape)


def adjust_contrast(video: np.ndarray, factor: float) -> np.ndarray:
  """`adjust_contrast` on uint8 frames (bit-identical): blend with each frame's mean grey level."""
  video = _check_video(video, "adjust_contrast")
  if factor < 0:
    raise UserError(f"adjust_contrast: factor must be >= 0, got {factor}.")
  grey = _grey(video)
  means = grey.reshape(len(video), -1).sum(1, dtype=np.int64) / float(grey[0].size)
  luts = _blend_lut(factor, means.astype(np.float32)[:, None])
  out = np.empty_like(video)
  for i in range(len(video)):
    out[i] = cv2.LUT(video[i], luts[i])
  return out


def adjust_saturation(video: np.ndarray, factor: float) -> np.ndarray:
  """`adjust_saturation` on uint8 frames (bit-identical): blend with the pixel's grey level."""
  video = _check_video(video, "adjust_saturation")
  if factor < 0:
    raise UserError(f"adjust_saturation: factor must be >= 0, got {factor}.")
  grey = _grey(video).astype(np.float32)
  grey *= np.float32(1.0 - factor)
  v = video.astype(np.float32)
  v *= np.float32(factor)
  v += grey[..., None]
  np.clip(v, 0, 255, out=v)
  return v.astype(np.uint8)


def adjust_hue(video: np.ndarray, factor: float) -> np.ndarray:
  """`adjust_hue` on uint8 frames (within 1 grey level): rotate the HSV hue by `factor` turns.

  RGB / 255 -> HSV (cv2, float32), h += 360 * factor (mod 360), -> RGB, then torchvision's
  float-to-uint8 conversion `trunc(x * 255.999)`.
  """
  video = _check_video(video, "adjust_hue")
  if not -0.5 <= factor <= 0.5:
    raise UserError(f"adjust_hue: factor must be in [-0.5, 0.5], got {factor}.")
  T, H, W, _ = video.shape
  out = np.empty_like(video)
  shift = np.float32(360.0 * factor)
  for i in range(T):  # frame by frame: the float32 buffers stay in cache
    f = video[i].astype(np.float32)
    f /= np.float32(255.0)
    hsv = cv2.cvtColor(f, cv2.COLOR_RGB2HSV)
    h = hsv[..., 0]
    h += shift
    np.mod(h, np.float32(360.0), out=h)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    rgb *= np.float32(255.999)
    np.clip(rgb, 0, 255, out=rgb)
    out[i] = rgb
  return out


@dataclasses.dataclass(frozen=True)
class ColorJitterParams:
  """One clip's colour jitter: the op order (a permutation of 0 brightness, 1 contrast,
  2 saturation, 3 hue) and each factor, None when that op is off."""
  order: tuple[int, ...]
  brightness: float | None
  contrast: float | None
  saturation: float | None
  hue: float | None


def _jitter_range(value, name: str, center: float, bound: tuple[float, float],
                  clip_first_on_zero: bool) -> tuple[float, float] | None:
  """torchvision `ColorJitter._check_input`: number v -> [center - v, center + v] (clipped at 0),
  or an explicit (min, max); None when the op is a no-op."""
  if isinstance(value, (int, float, np.integer, np.floating)):
    if value < 0:
      raise UserError(f"color_jitter_params: {name}={value} must be non-negative.")
    lo, hi = center - float(value), center + float(value)
    if clip_first_on_zero:
      lo = max(lo, 0.0)
  else:
    lo, hi = (float(v) for v in value)
  if not bound[0] <= lo <= hi <= bound[1]:
    raise UserError(f"color_jitter_params: {name} range ({lo}, {hi}) must lie in {bound}.")
  if lo == hi == center:
    return None
  return lo, hi


def color_jitter_params(rng: np.random.Generator, brightness=0.0, contrast=0.0, saturation=0.0,
                        hue=0.0) -> ColorJitterParams:
  """torchvision `ColorJitter.get_params`: a random order of the four ops, then each enabled
  factor uniform in its range (brightness/contrast/saturation `[max(0, 1-v), 1+v]`, hue `[-v, v]`,
  or explicit (min, max) pairs)."""
  rb = _jitter_range(brightness, "brightness", 1.0, (0.0, float("inf")), True)
  rc = _jitter_range(contrast, "contrast", 1.0, (0.0, float("inf")), True)
  rs = _jitter_range(saturation, "saturation", 1.0, (0.0, float("inf")), True)
  rh = _jitter_range(hue, "hue", 0.0, (-0.5, 0.5), False)
  order = tuple(int(i) for i in rng.permutation(4))
  draw = lambda r: None if r is None else float(rng.uniform(r[0], r[1]))  # noqa: E731
  return ColorJitterParams(order, draw(rb), draw(rc), draw(rs), draw(rh))


def color_jitter(video: np.ndarray, params: ColorJitterParams) -> np.ndarray:
  """Apply `params` to every frame (the `ColorJitter.forward` loop)."""
  ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
  factors = (params.brightness, params.contrast, params.saturation, params.hue)
  for k in params.order:
    if factors[k] is not None:
      video = ops[k](video, factors[k])
  return video


# ------------------------------------------------------------------------------------ chain
@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """What `augment_clip` did to a clip (to transform landmarks or reproduce it)."""
  box: Box | None
  flip: bool
  jitter: ColorJitterParams | None
  size: tuple[int, int] | None = None    # (h, w) of the output (None: the box's own size)


def transform_points(points: np.ndarray, params: AugmentParams, *,
                     permute: bool = True) -> np.ndarray:
  """Points `(..., N, 2)` (x, y; pixel centres at integers) mapped exactly as `augment_clip` mapped
  the image: the crop + resize of `params.box` to `params.size` (`crop_landmarks`), then the
  h-flip (x -> w - 1 - x). With 68 points and `permute`, a flip also renumbers them with
  `IBUG68_MIRROR` (point 36 stays the image-left eye corner). Colour jitter moves nothing."""
  pts = np.asarray(points, np.float32)
  if pts.ndim < 2 or pts.shape[-1] != 2:
    raise UserError(f"transform_points: expected (..., N, 2) points, got {pts.shape}.")
  size = params.size
  if params.box is not None:
    size = size if size is not None else params.box[2:]
    pts = crop_landmarks(pts, params.box, size)
  if params.flip:
    if size is None:
      raise UserError("transform_points: a flip needs the output size (params.size).")
    if permute and pts.shape[-2] == 68:
      pts = pts[..., IBUG68_MIRROR, :]
    pts = pts.copy()
    pts[..., 0] = (_size_hw(size)[1] - 1) - pts[..., 0]
  return pts


def augment_clip(video: np.ndarray, rng: np.random.Generator, *, size: int | Sequence[int],
                 crop: str | None = "resized_crop",
                 scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 zoom: tuple[float, float] = (1.1, 1.5), flip_prob: float = 0.5,
                 brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
                 backend: str = "auto") -> tuple[np.ndarray, AugmentParams]:
  """Crop (torchvision RandomResizedCrop, zoom, or a plain resize) -> h-flip -> colour jitter.

  Draw order: crop box, flip, jitter; every frame gets the same parameters. `crop=None` resizes
  the whole frame to `size` (test-time transform of Former-DFER). `backend` as in `resized_crop`.
  """
  video = _check_video(video, "augment_clip")
  H, W = video.shape[1:3]
  if crop == "resized_crop":
    box = random_resized_crop_params(H, W, rng, scale, ratio)
  elif crop == "zoom":
    box = random_zoom_params(H, W, rng, zoom)
  elif crop is None:
    box = (0, 0, H, W)
  else:
    raise UserError(f"augment_clip: crop must be 'resized_crop', 'zoom' or None, got {crop!r}.")
  video = resized_crop(video, box, size, backend=backend)
  flip = bool(rng.random() < flip_prob)
  if flip:
    video = hflip(video)
  jitter = None
  if any(np.any(np.asarray(v) != d) for v, d in
         ((brightness, 0.0), (contrast, 0.0), (saturation, 0.0), (hue, 0.0))):
    jitter = color_jitter_params(rng, brightness, contrast, saturation, hue)
    video = color_jitter(video, jitter)
  return video, AugmentParams(box, flip, jitter, _size_hw(size))
