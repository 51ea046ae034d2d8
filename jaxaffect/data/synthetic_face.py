"""Face geometry of the synthetic videos: the canvas (pixel buffers and the per-frame
canonical -> pixel transform), per-frame feature geometry from AU activations, and the iBUG-68
landmarks and face box computed from that same geometry.

Canonical units: face half-width 1, v pointing down, u to the image right; a feature at `depth`
shifts with yaw (see `_Canvas.u`). Used by `synthetic_render` (drawing) and `synthetic` (labels).
"""
from __future__ import annotations

import numpy as np

_F = np.float32
_EYE_DEPTH, _MOUTH_DEPTH, _NOSE_DEPTH = 0.15, 0.15, 0.3


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


def _face_geometry(ident, a, blink):
  """Per-frame canonical feature geometry (each value (T,)) from AU activations
  `a` (channel name -> (T,)) and the blink closure (T,)."""
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
  T = len(blink)
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

