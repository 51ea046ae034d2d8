"""Drawing of the synthetic face videos: coverage primitives, one function per face part (painted
back to front by `_render`), the background, occluders and image formation (illumination, colour
cast, sensor noise, quantisation).

Shapes are anti-aliased through coverage from approximate signed distances in canonical units
(`synthetic_face`); every feature is drawn in its own pixel window of the `_Canvas`.
"""
from __future__ import annotations

import numpy as np

from jaxaffect.data.synthetic_face import (_EYE_DEPTH, _F, _MOUTH_DEPTH, _NOSE_DEPTH, _Canvas,
                                           _brow_curve, _mouth_curves, _per_frame)

# ----------------------------------------------------------------------------------------------
# Coverage primitives.


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


# ----------------------------------------------------------------------------------------------
# Face parts, back to front.


def _render(canvas: _Canvas, ident, g):
  """Draw one video's frames (back to front), every feature in its own pixel window."""
  on = {k: float(np.max(val)) > 1e-3 for k, val in g["a"].items()}  # skip invisible layers
  _draw_body(canvas, ident, g)
  _draw_face(canvas, ident, g)
  _draw_forehead(canvas, ident, g, on)
  _draw_eyes(canvas, ident, g)
  _draw_brows(canvas, ident, g)
  if on["AU6"]:
    _draw_cheeks(canvas, ident, g)
  _draw_nose(canvas, ident, g, on)
  _draw_nasolabial_folds(canvas, ident, g)
  _draw_mouth(canvas, ident, g, on)


def _draw_body(canvas: _Canvas, ident, g):
  """Clothes / shoulders, neck, hair (back), ears."""
  skin, bt = ident["skin"], ident["face_bt"]
  blm = float(np.max(g["bl"]))
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


def _draw_face(canvas: _Canvas, ident, g):
  """Face oval and the fringe of hair over the forehead."""
  skin, bt = ident["skin"], ident["face_bt"]
  bl_all = g["bl"]
  blm = float(np.max(bl_all))
  hw, hh = ident["hair_w"], ident["hair_h"]
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


def _draw_forehead(canvas: _Canvas, ident, g, on):
  """Forehead wrinkles (AU1/AU2), glabellar furrows (AU4)."""
  skin, a = ident["skin"], g["a"]
  vb = ident["eye_v"] - ident["brow_gap"]
  a1, a2, a4 = (_per_frame(a[k]) for k in ("AU1", "AU2", "AU4"))
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


def _draw_eyes(canvas: _Canvas, ident, g):
  """Eyes: white, iris, pupil, highlight, lash line, lower lid, lid crease."""
  skin = ident["skin"]
  ev, ew, sep = ident["eye_v"], ident["eye_w"], ident["eye_sep"]
  dark = np.array([0.08, 0.06, 0.05])
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


def _draw_brows(canvas: _Canvas, ident, g):
  """Brows: a tapered stroke along a quadratic through inner / middle / outer heights."""
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


def _draw_cheeks(canvas: _Canvas, ident, g):
  """Cheeks raised (AU6): a soft flush that moves up."""
  skin, a6 = ident["skin"], _per_frame(g["a"]["AU6"])
  for side in (-1.0, 1.0):
    w = canvas.window(side * 0.5 - 0.25, side * 0.5 + 0.25, 0.0, 0.36, _MOUTH_DEPTH)
    if w is not None:
      ys, xs, qx, qy, S = w
      r2 = ((canvas.u(qx, _MOUTH_DEPTH) - side * 0.5) / 0.24) ** 2 + (
          (qy - (0.2 - 0.08 * a6)) / 0.15) ** 2
      canvas.paint(ys, xs, 0.3 * a6 * np.clip(1.0 - r2, 0, 1),
                   np.clip(skin * np.array([1.05, 0.85, 0.85]), 0, 1))


def _draw_nose(canvas: _Canvas, ident, g, on):
  """Nose: bridge shadow, tip shading, nostrils and wings, AU9 wrinkles."""
  skin, a9 = ident["skin"], _per_frame(g["a"]["AU9"])
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


def _draw_nasolabial_folds(canvas: _Canvas, ident, g):
  """Nasolabial folds, deepened by AU6/AU9/AU10/AU12."""
  skin, a = ident["skin"], g["a"]
  nv, nw = ident["nose_v"], ident["nose_w"]
  a6, a9, a10, a12 = (_per_frame(a[k]) for k in ("AU6", "AU9", "AU10", "AU12"))
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


def _draw_mouth(canvas: _Canvas, ident, g, on):
  """Mouth: lips, dark interior, teeth, lip line."""
  mw = _per_frame(g["mw"])
  mw_max = float(np.max(g["mw"]))
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


# ----------------------------------------------------------------------------------------------
# Scene: background, occluders, image formation.


def _background(ident, num_frames: int, size: int) -> np.ndarray:
  """Channel-planar (3, T, size, size) float32 frames holding a static linear gradient between
  two colours."""
  ca, sa = np.cos(ident["bg_angle"]), np.sin(ident["bg_angle"])
  coord = np.arange(size, dtype=_F) / size - 0.5
  ramp = np.clip(0.5 + ca * coord[None, :] + sa * coord[:, None], 0, 1)
  img = np.empty((3, num_frames, size, size), _F)
  for c in range(3):
    img[c] = ident["bg0"][c] * (1 - ramp) + ident["bg1"][c] * ramp
  return img


def _draw_occluder(img: np.ndarray, rng: np.random.Generator,
                   occlusion_prob: float) -> np.ndarray:
  """Occluder (a patch of flat or striped colour, rectangular or elliptical) on a span of frames;
  returns the (T,) bool mask of occluded frames. All draws happen whatever `occlusion_prob` is, so
  it changes nothing else of the video."""
  T, size = img.shape[1], img.shape[3]
  occluded = np.zeros(T, bool)
  occ_u = rng.uniform()
  span = max(1, int(round(T * rng.uniform(0.15, 0.5))))
  start = int(rng.integers(0, T - span + 1))
  cx, cy = rng.uniform(0.25, 0.75, 2) * size
  hw, hh = rng.uniform(0.1, 0.2, 2) * size
  col = rng.uniform(0.05, 0.95, 3)
  stripes = rng.uniform() < 0.5
  ellipse = rng.uniform() < 0.5
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
  return occluded


def _expose(img: np.ndarray, field: np.ndarray, rng: np.random.Generator,
            noise: bool) -> np.ndarray:
  """Illumination: gain x directional gradient x face shading `field` (T, H, W) x colour cast;
  then sensor noise and rounding to uint8 (T, H, W, 3) frames. Works in place on `img` and
  `field`."""
  T, size = img.shape[1], img.shape[3]
  coord = np.arange(size, dtype=_F) / size - 0.5
  gain = rng.uniform(0.75, 1.25) * (1 + 0.04 * np.sin(
      2 * np.pi * rng.uniform(0.2, 1.0) * np.arange(T) / T + rng.uniform(0, 6.3)))
  la = rng.uniform(0, 2 * np.pi)
  strength = rng.uniform(0.0, 0.7)
  light = 1.0 + strength * (np.cos(la) * coord[None, :] + np.sin(la) * coord[:, None])
  cast = rng.uniform(0.88, 1.12, 3)
  field *= light[None].astype(_F)
  field *= gain[:, None, None].astype(_F)
  sigma = rng.uniform(0.004, 0.025)
  if noise:
    offset = rng.standard_normal((T, size, size), dtype=_F)
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
  return frames
