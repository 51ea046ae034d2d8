"""Procedural face videos with FACS-style expressions and consistent per-frame labels.

Pure numpy, deterministic from a seed, rendered directly at the requested size with anti-aliased
shapes (coverage from approximate signed distances). This is the embedded data of the demo and of
the learning tests of every model: clip classification (7 DFEW classes), per-frame expression,
valence/arousal and 12 action units.

How a video is made:

* An **identity** (face oval and jaw, skin tone, eye spacing/size, iris colour, brow shape and
  thickness, nose, mouth width and lips, resting mouth curvature, hair colour and style, ears, neck,
  clothes, background colour and gradient) is drawn from its own random stream, so it does not
  depend on the expression: `generate_video(s, expression=k)` shows the same person for every `k`.
* The **expression** is a FACS-like prototype: a set of action-unit weights (`_PROTOTYPES`) over the
  12 labelled AUs of `AUS` plus three drawn-but-unlabelled channels (AU5 upper-lid raiser, AU9 nose
  wrinkler, AU20 lip stretcher) that real Surprise / Fear / Disgust faces need. Optional AUs of a
  prototype appear in a fraction of the clips and weights are jittered per clip, so AU labels are
  not a function of the class. Some clips also "talk" (AU25/26 oscillations independent of the
  class).
* **Dynamics:** a per-clip intensity curve neutral -> onset -> apex -> offset (random timings, apex
  intensity in [0.7, 1], clips may start late in the onset or end before the offset), each AU
  following it with a small random lag. Random blinks (unlabelled) in every clip. Timings, blinks
  and talking are drawn before anything class-specific, so they too are shared across classes.
* **Pose:** in-plane rotation, translation, scale and yaw (horizontal squash of the whole head plus
  a depth-dependent shift of the inner features), each a base value plus smooth drift plus jitter.
  The framing is that of a face crop (forehead to chin ~0.95 of the frame height).
* **Image formation:** face shading, directional illumination gradient, global gain and colour
  cast (slowly varying), random occlusion patches on a span of frames of some clips (`occluded`),
  Gaussian sensor noise. Pose and scene have their own random streams as well.

Label definitions (per frame t; thresholds are module constants):

* `intensity[t]` in [0, 1]: the expression intensity curve (all zeros for Neutral clips).
* `expr[t]` = the clip's expression where `intensity[t] >= EXPR_THRESHOLD` (0.2), else Neutral (2).
* `au_intensity[t, k]` in [0, 1]: activation of AU `AUS[k]` = prototype weight x lagged intensity
  (max'ed with the class-independent talking signal for AU25/AU26); it drives the drawing.
* `au[t, k]` = 1 iff `au_intensity[t, k] >= AU_THRESHOLD` (0.5).
* `va[t]` = `PROTOTYPE_VA[label] * intensity[t]` + a per-clip offset (N(0, 0.05) per axis),
  clipped to [-1, 1].
* `label` = the clip's expression (the DFEW clip label).

Coordinates: pixel (row i, column j) has its centre at (x=j, y=i) (OpenCV / dlib convention).
`landmarks` follow the iBUG-68 ordering (0-16 jaw from the image-left side, 17-21 and 22-26 brows
left to right, 27-30 nose bridge, 31-35 nostrils, 36-41 and 42-47 eyes clockwise from the
image-left corner, 48-59 outer lips, 60-67 inner lips). `face_box` is the tight (x0, y0, x1, y1)
box of the drawn face oval (forehead to chin, no hair or ears).

Class order follows Former-DFER's DFEW labels: 0 Happy, 1 Sad, 2 Neutral, 3 Angry, 4 Surprise,
5 Disgust, 6 Fear. `to_abaw` maps them to the Aff-Wild2 / ABAW 8-class order (Other never occurs).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

EXPRESSIONS = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
VOCAB = "dfew7"                 # the clip labels' class order (= EXPRESSIONS; jaxaffect.data.vocab)
NUM_EXPRESSIONS = len(EXPRESSIONS)
NEUTRAL = 2
ABAW_EXPRESSIONS = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise",
                    "Other")
DFEW_TO_ABAW = np.array([4, 5, 0, 1, 6, 2, 3], np.int32)
AUS = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
NUM_AUS = len(AUS)
EXPR_THRESHOLD = 0.2
AU_THRESHOLD = 0.5
# Prototype (valence, arousal) at full intensity, in EXPRESSIONS order.
PROTOTYPE_VA = np.array([[0.8, 0.5], [-0.7, -0.4], [0.0, 0.0], [-0.6, 0.7], [0.2, 0.8],
                         [-0.7, 0.3], [-0.6, 0.6]], np.float32)

_HIDDEN = ("AU5", "AU9", "AU20")  # drawn, never labelled
_CHANNELS = AUS + _HIDDEN
_CH = {name: i for i, name in enumerate(_CHANNELS)}
# expression -> ((AU, weight, probability of being present), ...)
_PROTOTYPES: dict[int, tuple[tuple[str, float, float], ...]] = {
    0: (("AU6", 0.85, 1.0), ("AU12", 1.0, 1.0), ("AU25", 0.8, 0.6)),
    1: (("AU1", 0.95, 1.0), ("AU4", 0.7, 1.0), ("AU15", 0.95, 1.0)),
    2: (),
    3: (("AU4", 1.0, 1.0), ("AU7", 0.9, 1.0), ("AU23", 0.85, 0.8), ("AU24", 0.9, 0.8)),
    4: (("AU1", 1.0, 1.0), ("AU2", 1.0, 1.0), ("AU5", 0.9, 1.0), ("AU25", 1.0, 1.0),
        ("AU26", 0.9, 0.9)),
    5: (("AU9", 1.0, 1.0), ("AU10", 1.0, 1.0), ("AU4", 0.5, 1.0), ("AU15", 0.75, 0.8),
        ("AU25", 0.75, 1.0), ("AU7", 0.6, 0.2)),
    6: (("AU1", 1.0, 1.0), ("AU2", 0.8, 1.0), ("AU4", 0.7, 1.0), ("AU5", 1.0, 1.0),
        ("AU20", 1.0, 1.0), ("AU25", 0.9, 1.0), ("AU26", 0.55, 0.3)),
}

_F = np.float32


def to_abaw(expr: np.ndarray | int) -> np.ndarray:
  """DFEW class indices (EXPRESSIONS) -> ABAW 8-class indices (ABAW_EXPRESSIONS)."""
  return DFEW_TO_ABAW[np.asarray(expr)]


def video_seed(seed: int, index: int) -> int:
  """Seed of video `index` of the dataset `seed`; depends only on (seed, index)."""
  return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0])


# ----------------------------------------------------------------------------------------------
# Random content: identity, dynamics, pose.


def _palette(rng: np.random.Generator, colours: Sequence[Sequence[float]], jitter: float):
  c = np.asarray(colours[int(rng.integers(len(colours)))], np.float64)
  return np.clip(c + rng.normal(0.0, jitter, 3), 0.0, 1.0)


def _sample_identity(rng: np.random.Generator) -> dict[str, Any]:
  """Face geometry (canonical units: face half-width 1, v pointing down) and colours."""
  t = rng.uniform()
  skin = (1 - t) * np.array([0.98, 0.82, 0.70]) + t * np.array([0.42, 0.27, 0.18])
  skin = np.clip(skin + rng.normal(0, 0.02, 3), 0, 1)
  hair = _palette(rng, [(0.08, 0.06, 0.05), (0.22, 0.13, 0.07), (0.40, 0.26, 0.14),
                        (0.80, 0.66, 0.40), (0.55, 0.24, 0.10), (0.62, 0.60, 0.58)], 0.03)
  iris = _palette(rng, [(0.25, 0.15, 0.08), (0.42, 0.26, 0.12), (0.30, 0.45, 0.66),
                        (0.33, 0.46, 0.30), (0.45, 0.50, 0.55)], 0.03)
  bg0 = rng.uniform(0.1, 0.9, 3)
  bg1 = np.clip(bg0 + rng.normal(0, 0.2, 3), 0, 1)
  ident = dict(
      skin=skin,
      lips=np.clip(skin * np.array([0.75, 0.4, 0.42]) + rng.normal(0, 0.02, 3), 0, 1),
      hair=hair,
      brow=np.minimum(hair * rng.uniform(0.4, 0.7), 0.3),
      iris=iris,
      bg0=bg0, bg1=bg1, bg_angle=rng.uniform(0, 2 * np.pi),
      clothes=rng.uniform(0.05, 0.9, 3),
      face_bt=rng.uniform(1.2, 1.38),  # upper half-height of the oval
      face_bl=rng.uniform(1.3, 1.48),  # lower half-height (to the chin)
      jaw_taper=rng.uniform(0.12, 0.35),
      eye_sep=rng.uniform(0.35, 0.43), eye_v=rng.uniform(-0.2, -0.1),
      eye_w=rng.uniform(0.18, 0.21), eye_h=rng.uniform(0.085, 0.1),
      eye_tilt=rng.uniform(-0.015, 0.03), iris_r=rng.uniform(0.085, 0.1),
      gaze=rng.normal(0, 0.25, 2),
      brow_gap=rng.uniform(0.18, 0.22), brow_th=rng.uniform(0.1, 0.13),
      brow_arch=rng.uniform(0.02, 0.06), brow_in=rng.uniform(0.14, 0.19),
      brow_out=rng.uniform(0.2, 0.26),
      nose_v=rng.uniform(0.25, 0.33), nose_w=rng.uniform(0.1, 0.14),
      mouth_v=rng.uniform(0.62, 0.7), mouth_w=rng.uniform(0.3, 0.36),
      lip_u=rng.uniform(0.05, 0.07), lip_l=rng.uniform(0.06, 0.085),
      rest_curve=rng.uniform(-0.02, 0.02),
      hairline=rng.uniform(-0.9, -0.62), hair_curve=rng.uniform(0.05, 0.3),
      hair_w=rng.uniform(1.08, 1.25), hair_h=rng.uniform(1.1, 1.3),
      hair_len=rng.uniform(-0.2, 1.2),
      va_offset=rng.normal(0, 0.05, 2),
  )
  # Python floats (not numpy float64 scalars) keep the float32 drawing arithmetic in float32.
  ident["gaze"] = [float(x) for x in ident["gaze"]]
  return {k: float(v) if np.ndim(v) == 0 else v for k, v in ident.items()}


def _smoothstep(x):
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3.0 - 2.0 * x)


def _sample_dynamics(rng: np.random.Generator, expression: int, num_frames: int):
  """Intensity curve (T,), channel activations (T, 15), blink closure (T,)."""
  T = num_frames
  t0 = rng.uniform(-0.2, 0.3) * T  # onset start (may be before the clip)
  t1 = t0 + rng.uniform(0.1, 0.25) * T  # apex start
  t2 = t1 + rng.uniform(0.3, 0.55) * T  # apex end
  t3 = t2 + rng.uniform(0.1, 0.3) * T  # offset end
  apex = rng.uniform(0.7, 1.0)
  rest = rng.uniform(0.0, 0.5)  # fraction of the apex left after the offset
  wobble_f, wobble_p = rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)

  def curve(tt):
    up = _smoothstep((tt - t0) / max(t1 - t0, 1e-3))
    down = 1.0 - (1.0 - rest) * _smoothstep((tt - t2) / max(t3 - t2, 1e-3))
    wob = 1.0 + 0.04 * np.sin(2 * np.pi * wobble_f * tt / T + wobble_p)
    return np.clip(apex * up * down * wob, 0.0, 1.0)

  tt = np.arange(T, dtype=np.float64)
  # Class-independent draws first (same for every expression of a seed): blinks, talking.
  blink = np.zeros(T)
  for _ in range(int(rng.poisson(0.04 * T + 0.3))):
    c = rng.uniform(-1, T)
    blink = np.maximum(blink, np.clip(1.0 - np.abs(tt - c) / 1.6, 0, 1))
  talking = rng.uniform() < 0.15
  f, p, amp = rng.uniform(1.5, 4.0), rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 0.8)
  # Per-channel presence, weight jitter and lag, drawn for every channel in a fixed order.
  u_present = rng.uniform(size=len(_CHANNELS))
  jitter = rng.uniform(0.85, 1.1, len(_CHANNELS))
  lags = rng.uniform(-1.5, 1.5, len(_CHANNELS))
  act = np.zeros((T, len(_CHANNELS)))
  for name, weight, prob in _PROTOTYPES[expression]:
    c = _CH[name]
    if u_present[c] < prob:
      act[:, c] = min(1.0, weight * jitter[c]) * curve(tt - lags[c])
  intensity = curve(tt) if expression != NEUTRAL else np.zeros(T)
  if talking:  # class-independent lip movement
    talk = np.clip(np.sin(2 * np.pi * f * tt / T + p), 0, 1) * amp
    act[:, _CH["AU25"]] = np.maximum(act[:, _CH["AU25"]], talk)
    act[:, _CH["AU26"]] = np.maximum(act[:, _CH["AU26"]], 0.5 * talk)
  return intensity, act, np.minimum(blink * 1.25, 1.0)


def _sample_pose(rng: np.random.Generator, num_frames: int, size: int, amount: float):
  """Per-frame (cx, cy, scale S [px per canonical unit], rotation, yaw), each (T,)."""
  T = num_frames
  tt = np.arange(T) / max(T, 1)

  def drift(amp):
    f, p = rng.uniform(0.3, 1.5), rng.uniform(0, 2 * np.pi)
    return amp * np.sin(2 * np.pi * f * tt + p) + rng.normal(0, 0.15 * amp, T)

  a = amount
  cx = size * (0.5 + a * rng.normal(0, 0.025) + a * drift(0.015))
  cy = size * (0.48 + a * rng.normal(0, 0.025) + a * drift(0.015))
  # Face-crop framing (like DFEW's face crops): forehead to chin spans ~0.95 of the frame.
  scale = size * rng.uniform(0.33, 0.36) * (1 + a * rng.uniform(-0.07, 0.07) + a * drift(0.025))
  rot = a * (rng.uniform(-0.14, 0.14) + drift(0.05))
  yaw = a * (rng.uniform(-0.3, 0.3) + drift(0.08))
  return cx, cy, scale, rot, yaw


# ----------------------------------------------------------------------------------------------
# Drawing.


def _cover(d, S):
  """Pixel coverage of the region {d <= 0}; d in canonical units, S pixels per unit."""
  return np.clip(0.5 - d * S, 0.0, 1.0)


def _ellipse_sd(u, v, a, b):
  """Approximate signed distance to the ellipse (u/a)^2 + (v/b)^2 = 1 (first-order)."""
  g = (u / a) ** 2 + (v / b) ** 2
  grad = 2.0 * np.sqrt((u / (a * a)) ** 2 + (v / (b * b)) ** 2) + 1e-6
  return (g - 1.0) / grad


def _round_sd(u, v, a, b):
  """Cheaper signed distance for near-circular ellipses (axis ratio < 1.5): radial scaling."""
  m = np.minimum(a, b)
  m = float(m) if np.ndim(m) == 0 else m  # a numpy float64 scalar would promote to float64
  return (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * m


def _band(v, top, bot, S):
  """Coverage of top <= v <= bot (vertical extents, canonical units)."""
  return np.clip((v - top) * S + 0.5, 0, 1) * np.clip((bot - v) * S + 0.5, 0, 1)


def _stroke(dist, half, S):
  """Coverage of |dist| <= half."""
  return np.clip(0.5 - (np.abs(dist) - half) * S, 0.0, 1.0)


class _Canvas:
  """Channel-planar RGB frames (3, T, H, W) float32, a (T, H, W) shading field, and the per-frame
  canonical -> pixel similarity with yaw. (Planar layout: compositing on (T, h, w, 3) views with a
  broadcast alpha is ~5x slower in numpy.)"""

  def __init__(self, img, pose):
    self.img = img
    self.T, self.H, self.W = img.shape[1:]
    self.shade = np.ones(img.shape[1:], _F)
    cx, cy, S, rot, yaw = (np.asarray(p, np.float64) for p in pose)
    self.cx, self.cy, self.S = cx, cy, S
    self.cos, self.sin = np.cos(rot), np.sin(rot)
    self.sx, self.sy = np.cos(yaw), np.sin(yaw)
    self.xs = np.arange(self.W, dtype=_F)
    self.ys = np.arange(self.H, dtype=_F)

  def to_pixels(self, u, v, depth=0.0):
    """Canonical (u, v) (broadcast against (T, 1)) -> pixel x, y of shape (T, K)."""
    a = self.sx[:, None] * u + self.sy[:, None] * depth
    b = v + 0.0 * a
    x = self.cx[:, None] + self.S[:, None] * (self.cos[:, None] * a - self.sin[:, None] * b)
    y = self.cy[:, None] + self.S[:, None] * (self.sin[:, None] * a + self.cos[:, None] * b)
    return x, y

  def window(self, u0, u1, v0, v1, depth=0.0):
    """Pixel window covering the canonical box [u0, u1] x [v0, v1] (arrays allowed: their
    extremes are used) in every frame, with canonical coordinates on it.

    Returns None if the box is off-screen, else (ys, xs, qx, qy, S): qx, qy are (T, h, w)
    coordinates before the depth shift / yaw squash (see `u`), S is (T, 1, 1) pixels per unit.
    """
    u0, u1, v0, v1 = (float(f(x)) for f, x in ((np.min, u0), (np.max, u1), (np.min, v0),
                                               (np.max, v1)))
    x, y = self.to_pixels(np.array([u0, u1, u1, u0]), np.array([v0, v0, v1, v1]), depth)
    x0, x1 = max(int(np.floor(x.min())) - 1, 0), min(int(np.ceil(x.max())) + 2, self.W)
    y0, y1 = max(int(np.floor(y.min())) - 1, 0), min(int(np.ceil(y.max())) + 2, self.H)
    if x1 <= x0 or y1 <= y0:
      return None
    dx = (self.xs[x0:x1][None, None, :] - self.cx[:, None, None].astype(_F))
    dy = (self.ys[y0:y1][None, :, None] - self.cy[:, None, None].astype(_F))
    inv = (1.0 / self.S)[:, None, None].astype(_F)
    c, s = self.cos[:, None, None].astype(_F), self.sin[:, None, None].astype(_F)
    qx = (c * dx + s * dy) * inv
    qy = (c * dy - s * dx) * inv
    return slice(y0, y1), slice(x0, x1), qx, qy, self.S[:, None, None].astype(_F)

  def u(self, qx, depth):
    """Canonical u of a feature at `depth` (yaw shifts nearer features more)."""
    return (qx - self.sy[:, None, None].astype(_F) * _F(depth)) / self.sx[:, None, None].astype(_F)

  def paint(self, ys, xs, alpha, colour):
    """Alpha-composite a constant `colour` (3,) over the window (alpha (T, h, w))."""
    alpha = np.asarray(alpha, _F)
    for c in range(3):
      win = self.img[c, :, ys, xs]
      d = _F(colour[c]) - win
      d *= alpha
      win += d


def _per_frame(x):
  return np.asarray(x, _F)[:, None, None]


def _face_geometry(ident, act, blink):
  """Per-frame canonical feature geometry (each value (T,)) from AU activations."""
  a = {name: act[:, i] for name, i in _CH.items()}
  g = {}
  # Face oval: the jaw drops with AU26.
  g["bl"] = ident["face_bl"] + 0.16 * a["AU26"]
  # Eyes (AU5 widens, AU6 pushes the lower lid up, AU7 tightens, AU4 lowers the upper lid).
  open_ = 1.0 - blink
  g["eye_up"] = ident["eye_h"] * np.clip(
      1 + 1.2 * a["AU5"] + 0.2 * a["AU2"] - 0.6 * a["AU7"] - 0.3 * a["AU4"] - 0.2 * a["AU6"],
      0.05, None) * open_
  g["eye_low"] = ident["eye_h"] * 0.75 * np.clip(
      1 + 0.5 * a["AU5"] - 0.7 * a["AU6"] - 0.5 * a["AU7"], 0.05, None) * open_
  # Brows: inner / middle / outer heights and the inner end's distance to the midline.
  vb = ident["eye_v"] - ident["brow_gap"]
  g["brow_in_u"] = ident["eye_sep"] - ident["brow_in"] - 0.07 * a["AU4"]
  g["brow_out_u"] = ident["eye_sep"] + ident["brow_out"]
  g["brow_in_v"] = vb + 0.15 * a["AU4"] * (1 - 0.5 * a["AU1"]) - 0.22 * a["AU1"] - 0.04 * a["AU2"]
  g["brow_mid_v"] = (vb - ident["brow_arch"] - 0.06 * a["AU1"] - 0.15 * a["AU2"]
                     + 0.06 * a["AU4"])
  g["brow_out_v"] = vb + 0.01 - 0.16 * a["AU2"] + 0.03 * a["AU4"] + 0.03 * a["AU1"]
  # Nose: nostrils lift with AU9 / AU10.
  g["nostril_v"] = ident["nose_v"] + 0.035 - 0.035 * a["AU9"] - 0.015 * a["AU10"]
  g["nostril_w"] = ident["nose_w"] * (1 + 0.25 * a["AU9"] + 0.1 * a["AU10"])
  # Mouth. Corners: AU12 up, AU15 down; width: AU12/AU20 wider, AU23/24/26 narrower.
  g["mw"] = ident["mouth_w"] * (1 + 0.35 * a["AU12"] + 0.5 * a["AU20"] - 0.3 * a["AU23"]
                                - 0.15 * a["AU24"] - 0.2 * a["AU26"] + 0.05 * a["AU10"])
  g["mv"] = ident["mouth_v"] + 0.05 * a["AU26"] - 0.025 * a["AU10"] + 0.02 * a["AU15"]
  g["corner_dv"] = (ident["rest_curve"] - 0.3 * a["AU12"] + 0.22 * a["AU15"]
                    + 0.03 * a["AU20"] + 0.02 * a["AU10"])
  g["gap_u"] = 0.03 * a["AU25"] + 0.07 * a["AU10"] * (0.5 + 0.5 * a["AU25"])
  g["gap_l"] = 0.05 * a["AU25"] + 0.28 * a["AU26"] + 0.02 * a["AU10"]
  g["open_pow"] = 0.55 - 0.35 * a["AU20"]
  g["lip_u"] = ident["lip_u"] * np.clip(1 - 0.5 * a["AU23"] - 0.6 * a["AU24"] - 0.2 * a["AU10"],
                                        0.15, None)
  g["lip_l"] = ident["lip_l"] * np.clip(1 - 0.45 * a["AU23"] - 0.55 * a["AU24"], 0.15, None)
  T = act.shape[0]
  g = {k: np.broadcast_to(np.asarray(val, np.float64), (T,)).copy() for k, val in g.items()}
  g["a"] = a
  return g


def _brow_curve(t, h0, h1, h2):
  """Brow centre-line height at parameter t in [0, 1] (inner -> outer): the quadratic through
  the inner (t=0), middle (t=0.45) and outer (t=1) heights."""
  tm = 0.45
  l0 = (t - tm) * (t - 1) / (tm * 1.0)
  l1 = t * (t - 1) / (tm * (tm - 1))
  l2 = t * (t - tm) / (1.0 - tm)
  return h0 * l0 + h1 * l1 + h2 * l2


def _mouth_curves(u, g):
  """Lip-line, inner and outer lip heights at canonical u (arrays broadcast with (T, 1, 1))."""
  mw = _per_frame(g["mw"])
  s = np.clip(u / mw, -1.0, 1.0)
  f = np.clip(1.0 - s * s, 0.0, 1.0)
  mv, cdv = _per_frame(g["mv"]), _per_frame(g["corner_dv"])
  line = mv + cdv * (1.0 - f)
  fo = f ** _per_frame(g["open_pow"])
  top_in = line - _per_frame(g["gap_u"]) * fo
  bot_in = line + _per_frame(g["gap_l"]) * fo
  bow = 1.0 - 0.3 * np.exp(-(s / 0.16) ** 2)
  top_out = top_in - _per_frame(g["lip_u"]) * f ** 0.4 * bow
  bot_out = bot_in + _per_frame(g["lip_l"]) * f ** 0.5
  return s, line, top_in, bot_in, top_out, bot_out


_EYE_DEPTH, _MOUTH_DEPTH, _NOSE_DEPTH = 0.15, 0.15, 0.3


def _render(canvas: _Canvas, ident, g):
  """Draw one video's frames (back to front), every feature in its own pixel window."""
  skin = ident["skin"]
  bt = ident["face_bt"]
  a = g["a"]
  bl_all = g["bl"]
  blm = float(np.max(bl_all))
  on = {k: float(np.max(val)) > 1e-3 for k, val in a.items()}  # skip invisible layers

  # Clothes / shoulders, neck, hair (back), ears.
  w = canvas.window(-2.4, 2.4, blm + 0.45, blm + 2.6)
  if w is not None:
    ys, xs, qx, qy, S = w
    d = _ellipse_sd(canvas.u(qx, 0), qy - (blm + 1.55), 2.2, 1.05)
    canvas.paint(ys, xs, _cover(d, S), ident["clothes"])
  w = canvas.window(-0.55, 0.55, 0.3, blm + 0.85)
  if w is not None:
    ys, xs, qx, qy, S = w
    d = np.maximum(np.abs(canvas.u(qx, 0)) - 0.5, qy - (blm + 0.8))
    canvas.paint(ys, xs, _cover(d, S), skin * 0.8)
  hw, hh, hlen = ident["hair_w"], ident["hair_h"], ident["hair_len"]
  hair_top = -0.25 - hh * bt
  w = canvas.window(-hw - 0.03, hw + 0.03, hair_top - 0.03, max(hlen, 0.0) + 0.05)
  if w is not None:
    ys, xs, qx, qy, S = w
    u = canvas.u(qx, 0)
    d = _round_sd(u, qy + 0.25, hw, hh * bt)
    if hlen > 0:  # long hair: a slab behind the head down to hlen
      d = np.minimum(d, np.maximum(np.maximum(np.abs(u) - hw * 0.98, qy - hlen), -0.25 - qy))
    canvas.paint(ys, xs, _cover(d, S), ident["hair"])
  for side in (-1.0, 1.0):
    w = canvas.window(side * 0.97 - 0.14, side * 0.97 + 0.14, -0.28, 0.22)
    if w is not None:
      ys, xs, qx, qy, S = w
      d = _ellipse_sd(canvas.u(qx, 0) - side * 0.97, qy + 0.03, 0.12, 0.22)
      canvas.paint(ys, xs, _cover(d, S), skin * 0.88)

  # Face oval (jaw drops with AU26), its shading goes into the shade field (applied at the end).
  w = canvas.window(-1.01, 1.01, -bt - 0.01, blm + 0.01)
  if w is not None:
    ys, xs, qx, qy, S = w
    u, v = canvas.u(qx, 0), qy
    lower = v > 0
    bl = _per_frame(bl_all)
    uu = np.where(lower, u * (1.0 + _F(ident["jaw_taper"]) * v / bl), u)
    face = _cover(_round_sd(uu, v, _F(1.0), np.where(lower, bl, _F(bt))), S)
    canvas.paint(ys, xs, face, skin)
    r2 = np.minimum(uu * uu + (v / np.where(lower, bl, _F(bt))) ** 2, 1.0)
    canvas.shade[:, ys, xs] *= 1.0 - 0.16 * r2 * face
  # Fringe: hair over the forehead above the hairline (its own, smaller window).
  w = canvas.window(-1.01, 1.01, -bt - 0.01, ident["hairline"] + ident["hair_curve"] + 0.02)
  if w is not None:
    ys, xs, qx, qy, S = w
    u, v = canvas.u(qx, 0), qy
    hl = ident["hairline"] + ident["hair_curve"] * u * u
    fringe = _cover(v - hl, S) * _cover(_round_sd(u, v + 0.25, hw, hh * bt), S)
    canvas.paint(ys, xs, fringe, ident["hair"])

  ev, ew, sep = ident["eye_v"], ident["eye_w"], ident["eye_sep"]
  vb = ev - ident["brow_gap"]
  dark = np.array([0.08, 0.06, 0.05])
  a1, a2, a4, a6, a9, a10, a12 = (_per_frame(a[k]) for k in
                                  ("AU1", "AU2", "AU4", "AU6", "AU9", "AU10", "AU12"))
  # Forehead wrinkles (AU1/AU2), glabellar furrows (AU4).
  if on["AU1"] or on["AU2"]:
    w = canvas.window(-0.45, 0.45, vb - 0.48, vb - 0.12, _EYE_DEPTH)
    if w is not None:
      ys, xs, qx, qy, S = w
      u, v = canvas.u(qx, _EYE_DEPTH), qy
      below_hair = _cover(ident["hairline"] + ident["hair_curve"] * u * u + 0.04 - v, S)
      wr = np.maximum(a1, a2)
      for k, dv in enumerate((0.2, 0.29)):
        yline = vb - dv - 0.08 * wr + 0.06 * u * u
        alpha = 0.55 * wr * _stroke(v - yline, 0.01, S) * _cover(np.abs(u) - 0.42 + 0.08 * k, S)
        canvas.paint(ys, xs, alpha * below_hair, skin * 0.55)
  if on["AU4"]:
    w = canvas.window(-0.12, 0.12, vb - 0.04, vb + 0.14, _EYE_DEPTH)
    if w is not None:
      ys, xs, qx, qy, S = w
      u, v = canvas.u(qx, _EYE_DEPTH), qy
      for side in (-1.0, 1.0):
        fu = side * (0.05 + 0.15 * (v - vb))
        alpha = 0.65 * a4 * _stroke(u - fu, 0.011, S) * _band(v, vb - 0.02, vb + 0.12, S)
        canvas.paint(ys, xs, alpha, skin * 0.5)

  # Eyes.
  up, low = _per_frame(g["eye_up"]), _per_frame(g["eye_low"])
  up_max = float(np.max(g["eye_up"]))
  for side in (-1.0, 1.0):
    ue = side * sep
    w = canvas.window(ue - ew - 0.04, ue + ew + 0.04, ev - 1.3 * up_max - 0.1, ev + 0.12,
                      _EYE_DEPTH)
    if w is None:
      continue
    ys, xs, qx, qy, S = w
    u, v = canvas.u(qx, _EYE_DEPTH), qy
    s = (u - ue) / ew
    f = np.clip(1.0 - s * s, 0.0, 1.0) ** 0.8
    vc = ev - ident["eye_tilt"] * side * s
    top, bot = vc - up * f, vc + low * f
    inside_x = _cover((np.abs(s) - 1.0) * ew, S)
    white = _band(v, top, bot, S) * inside_x
    canvas.paint(ys, xs, white, (0.95, 0.94, 0.91))
    ic_u = u - ue - ident["gaze"][0] * 0.3 * ew
    ic_v = v - ev - ident["gaze"][1] * 0.01
    dist = np.sqrt(ic_u * ic_u + ic_v * ic_v)
    ir = ident["iris_r"]
    canvas.paint(ys, xs, white * _cover(dist - ir, S), ident["iris"])
    canvas.paint(ys, xs, white * _cover(dist - 0.45 * ir, S), dark)
    hl_d = np.sqrt((ic_u + 0.35 * ir) ** 2 + (ic_v + 0.35 * ir) ** 2)
    canvas.paint(ys, xs, 0.85 * white * _cover(hl_d - 0.22 * ir, S), (1.0, 1.0, 1.0))
    # Lash line on the upper lid, faint lower lid, lid crease.
    lash = _stroke(v - (top - 0.012), 0.015, S) * _cover((np.abs(s) - 1.06) * ew, S)
    canvas.paint(ys, xs, lash, dark)
    canvas.paint(ys, xs, 0.3 * _stroke(v - bot, 0.008, S) * inside_x, skin * 0.5)
    crease = _stroke(v - (top - 0.05 - 0.3 * up * f), 0.008, S)
    canvas.paint(ys, xs, 0.3 * crease * _cover((np.abs(s) - 0.9) * ew, S), skin * 0.55)

  # Brows: a tapered stroke along a quadratic through inner / middle / outer heights.
  hs = [g[k] for k in ("brow_in_v", "brow_mid_v", "brow_out_v")]
  hmin = min(float(np.min(h)) for h in hs) - 0.03
  hmax = max(float(np.max(h)) for h in hs)
  for side in (-1.0, 1.0):
    u_lo = side * g["brow_in_u"] if side > 0 else side * g["brow_out_u"]
    u_hi = side * g["brow_out_u"] if side > 0 else side * g["brow_in_u"]
    th_max = ident["brow_th"]
    w = canvas.window(u_lo - 0.02, u_hi + 0.02, hmin - th_max, hmax + th_max, _EYE_DEPTH)
    if w is None:
      continue
    ys, xs, qx, qy, S = w
    u, v = canvas.u(qx, _EYE_DEPTH), qy
    u_in, u_out = side * _per_frame(g["brow_in_u"]), side * _per_frame(g["brow_out_u"])
    t = (u - u_in) / (u_out - u_in)
    tc = np.clip(t, 0.0, 1.0)
    hv = _brow_curve(tc, *(_per_frame(h) for h in hs))
    th = th_max * (1.0 - 0.45 * tc) * 0.5
    ends = _cover(-np.minimum(t, 1 - t) * np.abs(u_out - u_in), S)
    canvas.paint(ys, xs, _stroke(v - hv, th, S) * ends, ident["brow"])

  # Cheeks raised (AU6): a soft flush that moves up.
  if on["AU6"]:
    for side in (-1.0, 1.0):
      w = canvas.window(side * 0.5 - 0.25, side * 0.5 + 0.25, 0.0, 0.36, _MOUTH_DEPTH)
      if w is not None:
        ys, xs, qx, qy, S = w
        r2 = ((canvas.u(qx, _MOUTH_DEPTH) - side * 0.5) / 0.24) ** 2 + (
            (qy - (0.2 - 0.08 * a6)) / 0.15) ** 2
        canvas.paint(ys, xs, 0.3 * a6 * np.clip(1.0 - r2, 0, 1),
                     np.clip(skin * np.array([1.05, 0.85, 0.85]), 0, 1))

  # Nose: bridge shadow, tip shading, nostrils and wings, AU9 wrinkles.
  nv, nw = ident["nose_v"], ident["nose_w"]
  nsv, nsw = _per_frame(g["nostril_v"]), _per_frame(g["nostril_w"])
  nsw_max = float(np.max(g["nostril_w"]))
  w = canvas.window(-max(1.3 * nw, 1.15 * nsw_max) - 0.02, max(1.3 * nw, 1.15 * nsw_max) + 0.02,
                    nv - 0.36, nv + 0.1, _NOSE_DEPTH)
  if w is not None:
    ys, xs, qx, qy, S = w
    un, v = canvas.u(qx, _NOSE_DEPTH), qy
    canvas.paint(ys, xs, 0.15 * _stroke(un - 0.06, 0.02, S) * _band(v, nv - 0.35, nv - 0.02, S),
                 skin * 0.6)
    tip = np.clip(1.0 - (un / (nw * 1.3)) ** 2 - ((v - nv) / 0.08) ** 2, 0, 1)
    canvas.paint(ys, xs, 0.22 * tip, skin * 0.7)
    for side in (-1.0, 1.0):
      d = _ellipse_sd(un - side * 0.5 * nsw, v - nsv, 0.38 * nsw, 0.022)
      canvas.paint(ys, xs, 0.85 * _cover(d, S), skin * 0.3)
      wing_u = un - side * 0.85 * nsw
      wing = _ellipse_sd(wing_u, v - nsv + 0.02, 0.25 * nsw, 0.06)
      canvas.paint(ys, xs, 0.35 * _stroke(wing, 0.007, S) * (side * wing_u > 0), skin * 0.5)
    if on["AU9"]:
      for k in range(3):
        yl = nv - 0.32 + 0.05 * k
        alpha = 0.6 * a9 * _stroke(v - yl - 0.05 * un * un, 0.009, S) * _cover(
            np.abs(un) - 0.1, S)
        canvas.paint(ys, xs, alpha, skin * 0.5)

  # Nasolabial folds, deepened by AU6/AU9/AU10/AU12.
  mv, mw = _per_frame(g["mv"]), _per_frame(g["mw"])
  mw_max = float(np.max(g["mw"]))
  v_top = nv - 0.02
  v_bot_max = float(np.max(g["mv"])) + 0.06
  deep = 0.12 + 0.5 * np.maximum(np.maximum(a12, a10), np.maximum(a9, 0.6 * a6))
  for side in (-1.0, 1.0):
    u_a, u_b = side * (nw + 0.05), side * (mw_max + 0.08)
    w = canvas.window(min(u_a, u_b), max(u_a, u_b), v_top, v_bot_max, _MOUTH_DEPTH)
    if w is None:
      continue
    ys, xs, qx, qy, S = w
    um, v = canvas.u(qx, _MOUTH_DEPTH), qy
    v_bot = mv + 0.06
    r = np.clip((v - v_top) / (v_bot - v_top), 0, 1)
    fu = side * (nw + 0.07 + (mw + 0.06 - nw - 0.07) * r ** 0.7)
    alpha = deep * _stroke(um - fu, 0.009, S) * _band(v, v_top, v_bot, S)
    canvas.paint(ys, xs, alpha, skin * 0.55)

  # Mouth: lips, dark interior, teeth, lip line.
  cdv = g["corner_dv"]
  v0 = float(np.min(g["mv"] + np.minimum(cdv, 0) - g["gap_u"] - g["lip_u"])) - 0.03
  v1 = float(np.max(g["mv"] + np.maximum(cdv, 0) + g["gap_l"] + g["lip_l"])) + 0.03
  w = canvas.window(-mw_max - 0.02, mw_max + 0.02, v0, v1, _MOUTH_DEPTH)
  if w is not None:
    ys, xs, qx, qy, S = w
    um, v = canvas.u(qx, _MOUTH_DEPTH), qy
    s, line, top_in, bot_in, top_out, bot_out = _mouth_curves(um, g)
    inside_x = _cover(np.abs(um) - mw, S)
    canvas.paint(ys, xs, _band(v, top_out, bot_out, S) * inside_x, ident["lips"])
    if on["AU25"] or on["AU26"] or on["AU10"]:
      interior = _band(v, top_in, bot_in, S) * _cover(np.abs(um) - mw * 0.97, S)
      canvas.paint(ys, xs, interior, (0.22, 0.05, 0.06))
      canvas.paint(ys, xs, interior * _cover(v - (top_in + 0.045), S), (0.93, 0.91, 0.86))
      lower_teeth = interior * _cover((bot_in - 0.025) - v, S) * _cover(np.abs(s) - 0.6, S)
      canvas.paint(ys, xs, 0.8 * lower_teeth, (0.9, 0.88, 0.83))
    else:
      interior = 0.0
    canvas.paint(ys, xs, 0.55 * _stroke(v - line, 0.007, S) * inside_x * (1.0 - interior),
                 ident["lips"] * 0.45)


def _landmarks(canvas: _Canvas, ident, g) -> np.ndarray:
  """iBUG-68 points in pixels (T, 68, 2), from the same geometry the renderer draws."""
  T = canvas.T
  pts_u, pts_v, depth = [], [], []

  def add(u, v, d):
    pts_u.append(np.broadcast_to(np.asarray(u, np.float64), (T,)))
    pts_v.append(np.broadcast_to(np.asarray(v, np.float64), (T,)))
    depth.append(d)

  bt, bl, taper = ident["face_bt"], g["bl"], ident["jaw_taper"]
  for ang in np.linspace(-0.2, np.pi + 0.2, 17):  # 0..16 jaw, image-left -> chin -> image-right
    sn = np.sin(ang)
    if sn < 0:
      add(-np.cos(ang) * np.ones(T), bt * sn * np.ones(T), 0.0)
    else:
      v = bl * sn
      add(-np.cos(ang) / (1.0 + taper * v / bl), v, 0.0)
  for side, ts in ((-1.0, (1.0, 0.75, 0.5, 0.25, 0.0)), (1.0, (0.0, 0.25, 0.5, 0.75, 1.0))):
    for t in ts:  # 17..21 image-left brow outer->inner; 22..26 image-right brow inner->outer
      u = side * (g["brow_in_u"] + t * (g["brow_out_u"] - g["brow_in_u"]))
      add(u, _brow_curve(t, g["brow_in_v"], g["brow_mid_v"], g["brow_out_v"]), _EYE_DEPTH)
  nv, nw = ident["nose_v"], ident["nose_w"]
  for k in range(4):  # 27..30 bridge
    add(0.0, ident["eye_v"] + (nv - 0.03 - ident["eye_v"]) * k / 3,
        _EYE_DEPTH + (_NOSE_DEPTH - _EYE_DEPTH) * k / 3)
  for k in range(5):  # 31..35 nose bottom
    x = (k - 2) / 2.0
    add(x * g["nostril_w"] * 0.9, g["nostril_v"] + 0.02 * (1 - abs(x)), _NOSE_DEPTH)
  ev, ew = ident["eye_v"], ident["eye_w"]
  up, low = g["eye_up"], g["eye_low"]
  for side in (-1.0, 1.0):  # 36..41, 42..47: corner, top, top, corner, bottom, bottom
    for s, lid in ((-1, 0), (-1 / 3, -1), (1 / 3, -1), (1, 0), (1 / 3, 1), (-1 / 3, 1)):
      f = (1 - s * s) ** 0.8
      vc = ev - ident["eye_tilt"] * side * s
      v = vc - up * f if lid < 0 else vc + low * f if lid > 0 else vc * np.ones(T)
      add(side * ident["eye_sep"] + s * ew, v, _EYE_DEPTH)
  mw = g["mw"][:, None, None]

  def mouth_at(s, which):
    cur = _mouth_curves(s * mw, g)
    return cur[which][:, 0, 0]

  for s in (-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1):  # 48..54 outer upper lip
    add(s * g["mw"], mouth_at(s, 4), _MOUTH_DEPTH)
  for s in (2 / 3, 1 / 3, 0, -1 / 3, -2 / 3):  # 55..59 outer lower lip, right -> left
    add(s * g["mw"], mouth_at(s, 5), _MOUTH_DEPTH)
  add(-0.92 * g["mw"], mouth_at(-0.92, 1), _MOUTH_DEPTH)  # 60
  for s in (-0.5, 0.0, 0.5):  # 61..63
    add(s * g["mw"], mouth_at(s, 2), _MOUTH_DEPTH)
  add(0.92 * g["mw"], mouth_at(0.92, 1), _MOUTH_DEPTH)  # 64
  for s in (0.5, 0.0, -0.5):  # 65..67
    add(s * g["mw"], mouth_at(s, 3), _MOUTH_DEPTH)
  u = np.stack(pts_u, 1)
  v = np.stack(pts_v, 1)
  x, y = canvas.to_pixels(u, v, np.asarray(depth)[None, :])
  return np.stack([x, y], -1).astype(np.float32)


def _face_box(canvas: _Canvas, ident, g) -> np.ndarray:
  ang = np.linspace(0, 2 * np.pi, 48, endpoint=False)
  sn, cs = np.sin(ang)[None], np.cos(ang)[None]
  bl = g["bl"][:, None]
  v = np.where(sn < 0, ident["face_bt"] * sn, bl * sn)
  u = cs / (1.0 + ident["jaw_taper"] * np.maximum(v, 0) / bl)
  x, y = canvas.to_pixels(u, v, 0.0)
  return np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], -1).astype(np.float32)


def generate_video(
    seed: int,
    *,
    expression: int | None = None,
    num_frames: int = 32,
    size: int = 112,
    pose_amount: float = 1.0,
    occlusion_prob: float = 0.2,
    noise: bool = True,
) -> dict[str, Any]:
  """One procedural face video and its per-frame labels (module docstring).

  Args:
    seed: everything is a function of the seed (identity, pose, scene and dynamics come from
      independent child streams, so the identity is the same for every `expression`).
    expression: class index in EXPRESSIONS; None draws it uniformly from the seed.
    num_frames: T.
    size: height = width in pixels (rendered directly at this size).
    pose_amount: scale of the head-pose variation (0 = frontal, centred, static).
    occlusion_prob: probability that a span of frames has an occluding patch.
    noise: add Gaussian sensor noise.

  Returns:
    dict with `frames` uint8 (T, size, size, 3) RGB, `label` int, `expr` int32 (T,), `au` int32
    (T, 12) in AUS order, `au_intensity` float32 (T, 12) (the activations `au` thresholds),
    `va` float32 (T, 2), `intensity` float32 (T,), `face_box` float32 (T, 4)
    (x0, y0, x1, y1), `landmarks` float32 (T, 68, 2) (x, y), `occluded` bool (T,), `seed` int.
  """
  if num_frames < 1 or size < 8:
    raise ValueError(f"generate_video: need num_frames >= 1 and size >= 8, got "
                     f"num_frames={num_frames}, size={size}.")
  ss = np.random.SeedSequence(int(seed))
  r_expr, r_id, r_pose, r_dyn, r_scene = (np.random.default_rng(s) for s in ss.spawn(5))
  if expression is None:
    expression = int(r_expr.integers(NUM_EXPRESSIONS))
  if not 0 <= int(expression) < NUM_EXPRESSIONS:
    raise ValueError(f"generate_video: expression must be in [0, {NUM_EXPRESSIONS}), "
                     f"got {expression}.")
  expression = int(expression)
  T = int(num_frames)
  ident = _sample_identity(r_id)
  pose = _sample_pose(r_pose, T, size, pose_amount)
  intensity, act, blink = _sample_dynamics(r_dyn, expression, T)
  g = _face_geometry(ident, act, blink)

  # Background: a static linear gradient between two colours.
  ca, sa = np.cos(ident["bg_angle"]), np.sin(ident["bg_angle"])
  coord = np.arange(size, dtype=_F) / size - 0.5
  ramp = np.clip(0.5 + ca * coord[None, :] + sa * coord[:, None], 0, 1)
  img = np.empty((3, T, size, size), _F)
  for c in range(3):
    img[c] = ident["bg0"][c] * (1 - ramp) + ident["bg1"][c] * ramp
  canvas = _Canvas(img, pose)
  _render(canvas, ident, g)

  # Occluder (a patch of flat or striped colour, rectangular or elliptical) on a span of frames.
  # All draws happen whatever `occlusion_prob` is, so it changes nothing else of the video.
  occluded = np.zeros(T, bool)
  occ_u = r_scene.uniform()
  span = max(1, int(round(T * r_scene.uniform(0.15, 0.5))))
  start = int(r_scene.integers(0, T - span + 1))
  cx, cy = r_scene.uniform(0.25, 0.75, 2) * size
  hw, hh = r_scene.uniform(0.1, 0.2, 2) * size
  col = r_scene.uniform(0.05, 0.95, 3)
  stripes = r_scene.uniform() < 0.5
  ellipse = r_scene.uniform() < 0.5
  if occ_u < occlusion_prob:
    occluded[start:start + span] = True
    x0, x1 = int(max(cx - hw, 0)), int(min(cx + hw, size))
    y0, y1 = int(max(cy - hh, 0)), int(min(cy + hh, size))
    mod = np.ones((1, x1 - x0), _F)
    if stripes:
      mod = mod * (0.75 + 0.25 * np.sign(np.sin(np.arange(x1 - x0) * 0.6)))[None, :]
    if ellipse:
      yy = (np.arange(y0, y1) - cy)[:, None] / hh
      xx = (np.arange(x0, x1) - cx)[None, :] / hw
      m = np.clip((1.0 - np.sqrt(xx * xx + yy * yy)) * min(hw, hh), 0, 1).astype(_F)
    else:
      m = np.ones((y1 - y0, x1 - x0), _F)
    for c in range(3):
      win = img[c, start:start + span, y0:y1, x0:x1]
      win += m * (col[c] * mod - win)

  # Illumination: gain x directional gradient x face shading x colour cast; then sensor noise.
  gain = r_scene.uniform(0.75, 1.25) * (1 + 0.04 * np.sin(
      2 * np.pi * r_scene.uniform(0.2, 1.0) * np.arange(T) / T + r_scene.uniform(0, 6.3)))
  la = r_scene.uniform(0, 2 * np.pi)
  strength = r_scene.uniform(0.0, 0.7)
  light = 1.0 + strength * (np.cos(la) * coord[None, :] + np.sin(la) * coord[:, None])
  cast = r_scene.uniform(0.88, 1.12, 3)
  field = canvas.shade
  field *= light[None].astype(_F)
  field *= gain[:, None, None].astype(_F)
  sigma = r_scene.uniform(0.004, 0.025)
  if noise:
    offset = r_scene.standard_normal((T, size, size), dtype=_F)
    offset *= _F(sigma * 255.0)
    offset += 0.5  # rounding
  else:
    offset = _F(0.5)
  frames = np.empty((T, size, size, 3), np.uint8)
  for c in range(3):
    plane = img[c]
    plane *= field
    plane *= _F(cast[c] * 255.0)
    plane += offset
    np.clip(plane, 0, 255, out=plane)
    frames[..., c] = plane

  expr = np.where(intensity >= EXPR_THRESHOLD, expression, NEUTRAL).astype(np.int32)
  au_intensity = act[:, :NUM_AUS].astype(np.float32)
  au = (au_intensity >= AU_THRESHOLD).astype(np.int32)
  va = np.clip(PROTOTYPE_VA[expression][None, :] * intensity[:, None] + ident["va_offset"],
               -1, 1).astype(np.float32)
  return dict(
      frames=frames, label=expression, expr=expr, au=au, au_intensity=au_intensity, va=va,
      intensity=intensity.astype(np.float32), face_box=_face_box(canvas, ident, g),
      landmarks=_landmarks(canvas, ident, g), occluded=occluded, seed=int(seed))


_STACKED = ("frames", "label", "expr", "au", "au_intensity", "va", "intensity", "face_box",
            "landmarks", "occluded", "seed")


def iter_videos(num_videos: int, seed: int, *, start: int = 0, balanced: bool = True,
                **video_kwargs) -> Iterator[dict[str, Any]]:
  """Videos `start .. start+num_videos-1` of the dataset `seed`, one at a time.

  Video i is `generate_video(video_seed(seed, i), expression=i % 7 if balanced else None, ...)`,
  so it depends only on (seed, i): shards generated separately are identical to one big run.
  """
  for i in range(start, start + num_videos):
    expression = i % NUM_EXPRESSIONS if balanced else None
    yield generate_video(video_seed(seed, i), expression=expression, **video_kwargs)


def generate_dataset(num_videos: int, seed: int, *, num_frames: int = 32, size: int = 112,
                     balanced: bool = True, start: int = 0, **video_kwargs) -> dict[str, Any]:
  """`num_videos` videos stacked along a leading axis (see `iter_videos` for determinism).

  Returns the keys of `generate_video` stacked (`frames` (N, T, H, W, 3) uint8, `label` (N,), ...)
  plus `index` (N,) (the dataset indices) and `names` (the list EXPRESSIONS). With `balanced` the
  labels cycle 0..6, so every class has num_videos // 7 or one more videos.

  Memory: frames take N*T*size*size*3 bytes (700 x 32 x 112^2 x 3 = 843 MB); use `iter_videos`
  to stream instead.
  """
  videos = list(iter_videos(num_videos, seed, start=start, balanced=balanced,
                            num_frames=num_frames, size=size, **video_kwargs))
  out: dict[str, Any] = {k: np.stack([np.asarray(v[k]) for v in videos]) for k in _STACKED}
  out["label"] = out["label"].astype(np.int32)
  out["index"] = np.arange(start, start + num_videos, dtype=np.int64)
  out["names"] = list(EXPRESSIONS)
  return out


def contact_sheet(videos: Sequence[dict[str, Any]], frame_indices: Sequence[int] | None = None,
                  *, draw_landmarks: bool = False) -> np.ndarray:
  """Grid image (uint8 RGB): one row per video, one column per frame index.

  Without `frame_indices` each row shows the first frame, the onset midpoint and the apex.
  """
  rows = []
  for vid in videos:
    fr = vid["frames"]
    if frame_indices is None:
      inten = vid["intensity"]
      apex = int(np.argmax(inten))
      onset = int(np.argmin(np.abs(inten[:apex + 1] - 0.5 * inten[apex]))) if apex else 0
      idx = [0, onset, apex]
    else:
      idx = list(frame_indices)
    tiles = []
    for t in idx:
      tile = fr[t].copy()
      if draw_landmarks:
        for x, y in np.round(vid["landmarks"][t]).astype(int):
          if 0 <= x < tile.shape[1] and 0 <= y < tile.shape[0]:
            tile[y, x] = (0, 255, 0)
      tiles.append(np.pad(tile, ((1, 1), (1, 1), (0, 0)), constant_values=255))
    rows.append(np.concatenate(tiles, 1))
  return np.concatenate(rows, 0)


def save_preview_png(path: str, videos: Sequence[dict[str, Any]] | None = None,
                     frame_indices: Sequence[int] | None = None, *, seed: int = 0,
                     size: int = 112, draw_landmarks: bool = False) -> np.ndarray:
  """Write a contact sheet PNG; default: the 7 expressions of one identity (first/onset/apex)."""
  import matplotlib.image  # pylint: disable=g-import-not-at-top

  if videos is None:
    videos = [generate_video(seed, expression=k, size=size, occlusion_prob=0.0)
              for k in range(NUM_EXPRESSIONS)]
  sheet = contact_sheet(videos, frame_indices, draw_landmarks=draw_landmarks)
  matplotlib.image.imsave(path, sheet)
  return sheet
