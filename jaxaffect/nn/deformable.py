"""Deformable landmark attention of TDLS (Li, Meng, Hu, Dong; issue 14 item 3, the layer part).

The paper has no public code; every equation is one function below whose docstring cites it, and
every ambiguity is a field with the choice explained. DAT (LeapLabTHU/DAT, tag CVPR2022) is the
closest public code (`../shared/reference/reference_impls.md` §4); where we follow or depart from
it, it is said.

Coordinates. Points are kept in IMAGE-NORMALISED (x, y) in [-1, 1]: -1 is the left/top EDGE of the
image, +1 the right/bottom edge, so u in [0, 1] image units is g0 = 2u - 1. That is exactly torch
`grid_sample`'s coordinate at `align_corners=False` for ANY map size, so one set of reference points
serves stage 3 (14×14) and stage 4 (7×7). At `align_corners=True` (DAT's sampler) a point is
converted to that map's convention (`to_grid`: pixel px = u·W - 0.5, g = 2·px/(W-1) - 1), so the
same image location is sampled under either convention (DAT itself mixes them: its references are
pixel centres /Hk but sampled with align_corners=True, which shifts them by up to half a pixel).

Pieces:
* `keypoints_from_landmarks68(mean68, size=None)`: the 7 key points from iBUG-68 (0-based; each the
  mean of the listed points), the same table as data_prep (`data_prep.face_geometry`
  `KEYPOINTS7_IBUG68`, tested equal): brow_left 19, brow_right 24 (eyebrow centres), under_eye_left
  mean(40, 41), under_eye_right mean(46, 47) (the lower-lid points), nose_tip 30, mouth_left 48,
  mouth_right 54. The face-shard manifest already records them: `manifest["template"]` =
  {"split", "frames", "landmarks" (68, 2), "keypoints7" (7, 2)} in crop pixels (pixel-centre
  coordinates) of a `manifest["recipe"]["size"]` crop; pass `size=` to get [0, 1] image units
  ((p + 0.5) / size).
* `landmark_reference_points(keypoints, *, heat_size=28, sigma, num_points, seed, ...)`: key points
  -> heatmap -> reference points (below).
* `DeformableLandmarkAttention`: Eqs. 1-6, modes "rp", "fl", "tdls", offsets "paper" | "signed".
* `DeformableBlock`: pre-norm residual block with the Swin window block's interface.

Registering the block in Swin (`jaxaffect.nn.swin`): kinds are chosen per stage with
`block_kinds` and extra kinds are given as `block_types=(("deformable", factory),)`; the factory is
called with `BLOCK_KWARGS` (num_heads, resolution, window, shift, mlp_ratio, qkv_bias, dropout,
attn_dropout, ln_eps, drop_path_rng, dtype, param_dtype) plus `name`, so TDLS-specific settings go
into a `functools.partial`:

    factory = functools.partial(DeformableBlock, mode="tdls", offsets="paper", keypoints=key7)
    swin("swin_t", block_kinds=(("window",) * 2, ("window",) * 2, ("window", "deformable") * 3,
                                ("window", "deformable")),
         block_types=(("deformable", factory),))

(not `block_kw`: that goes to the window blocks too). Stage 3 (14×14) then draws 196 reference
points, stage 4 (7×7) 49 (`num_points=None` = the area of the built resolution). The points live in
the `constants` collection (`model.init` returns it; pass it to `apply` with the params). FL-Swin
(mode "fl") takes each image's points from `context` (Swin passes `context` to non-window blocks):
an array (B, N_r, 2) image-normalised, or a dict with key "points". Every deformable block of a
stage draws the same points (same keypoints, sigma and `seed`); give blocks different seeds through
separate factories if wanted.

Parameters (one block, `jax.eval_shape`): stage 3 (384, 12 heads, 14×14): DeformableBlock
3,108,866 (of which the offset network 1,334,402: conv1 3×3×384×384) vs SwinBlock 1,776,492;
stage 4 (768, 24 heads): 12,410,882 (offsets 5,323,010) vs 7,091,928. q/k/v/out (4·(C²+C)) equal
Swin's qkv + proj; the window block's extra is its relative-position table. `offset_hidden=C/4`
brings the stage-3 block to 2,108,066. The paper gives no hidden width; C is the literal reading.

The paper's trailing ReLU (offsets "paper") has a dead zone: a point whose pre-activation offset
is negative gets zero gradient on that axis and can only move again if the input changes; the
"signed" variant has no dead zone.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxaffect.errors import UserError
from jaxaffect.nn.attention import FeedForward, MultiHeadAttention
from jaxaffect.nn.layers import layer_norm
from jaxaffect.nn.sampling import grid_sample
from jaxaffect.nn.vit import drop_path

Dtype = Any
Pair = tuple[int, int]

MODES = ("rp", "fl", "tdls")
OFFSETS = ("paper", "signed")
CONSTANTS = "constants"
REF_POINTS = "ref_points"

KEYPOINTS7_NAMES = ("brow_left", "brow_right", "under_eye_left", "under_eye_right", "nose_tip",
                    "mouth_left", "mouth_right")
KEYPOINTS7_IBUG68: tuple[tuple[int, ...], ...] = ((19,), (24,), (40, 41), (46, 47), (30,), (48,),
                                                  (54,))

# A stand-in template in [0, 1] image units for when no manifest template is given (tests, smoke
# configs): the ArcFace 5-point template (insightface `arcface_dst`, 112 px) for the eyes' x, the
# nose and the mouth corners; brows 16 px above the eye centres, under-eye points 5 px below them.
# Real runs pass the training set's mean template (`keypoints_from_landmarks68` of the manifest).
DEFAULT_KEYPOINTS7: tuple[tuple[float, float], ...] = tuple(
    ((x + 0.5) / 112, (y + 0.5) / 112) for x, y in (
        (38.29, 35.70), (73.53, 35.50), (38.29, 56.70), (73.53, 56.50), (56.03, 71.74),
        (41.55, 92.37), (70.73, 92.20)))


# ------------------------------------------------------------------------------------------------
# Key points and reference points


def keypoints_from_landmarks68(mean68: Any, size: float | None = None) -> np.ndarray:
  """(68, 2) iBUG-68 landmarks (x, y) -> (7, 2) TDLS key points (`KEYPOINTS7_IBUG68`, order
  `KEYPOINTS7_NAMES`). With `size` the landmarks are crop pixels (pixel-centre coordinates, as
  data_prep writes `manifest["template"]["landmarks"]`) of a size×size crop and the result is in
  [0, 1] image units ((p + 0.5) / size); without it the units are kept."""
  lm = np.asarray(mean68, np.float64)
  if lm.shape != (68, 2):
    raise UserError(f"keypoints_from_landmarks68: expected (68, 2) iBUG-68 landmarks, "
                    f"got shape {lm.shape}")
  if not np.all(np.isfinite(lm)):
    raise UserError("keypoints_from_landmarks68: the landmarks contain NaN/inf")
  key = np.stack([lm[list(g)].mean(axis=0) for g in KEYPOINTS7_IBUG68])
  if size is not None:
    if not size > 0:
      raise UserError(f"keypoints_from_landmarks68: size must be > 0, got {size}")
    key = (key + 0.5) / float(size)
  return key


def keypoint_heatmap(keypoints: Any, *, heat_size: int = 28, sigma: float) -> np.ndarray:
  """(heat_size, heat_size) heatmap H[i, j] = max_k exp(-|c_ij - k_k|² / (2 σ²)), c_ij the centre
  of cell (row i, column j) and σ in cells; key points in [0, 1] image units (x, y).

  MAX of the Gaussians, not their sum: every key point gets the same peak 1 whatever its
  neighbours, so the brow and under-eye points (close on a 28-cell map) do not make a hot spot
  between them that outweighs the nose and mouth; a sum would favour where points crowd."""
  kp = np.asarray(keypoints, np.float64)
  if kp.ndim != 2 or kp.shape[1] != 2 or not np.all(np.isfinite(kp)):
    raise UserError(f"keypoint_heatmap: keypoints must be finite (K, 2) (x, y), got {kp.shape}")
  if not sigma > 0:
    raise UserError(f"keypoint_heatmap: sigma must be > 0 (cells), got {sigma}")
  c = (np.arange(heat_size) + 0.5)                              # cell centres in cells
  kx, ky = kp[:, 0] * heat_size, kp[:, 1] * heat_size          # key points in cells
  d2 = (c[None, None, :] - kx[:, None, None]) ** 2 + (c[None, :, None] - ky[:, None, None]) ** 2
  return np.exp(-d2 / (2.0 * sigma ** 2)).max(axis=0)


def to_grid(points: Any, size: Pair, align_corners: bool):
  """Image-normalised points g0 (..., 2) (x, y) -> torch grid coordinates of an (H, W) = `size` map
  at `align_corners`. False: unchanged (g0 is already that convention). True: pixel
  px = (g0 + 1)/2 · W - 0.5, g = 2 px / (W - 1) - 1 (per axis; a 1-pixel axis maps to 0)."""
  if not align_corners:
    return points
  h, w = size
  wh = jnp.asarray([w, h], jnp.float32)
  px = (points + 1.0) * 0.5 * wh - 0.5
  return jnp.where(wh > 1, 2.0 * px / jnp.maximum(wh - 1.0, 1.0) - 1.0, 0.0)


def pixels_to_grid(size: Pair, align_corners: bool) -> np.ndarray:
  """(2,) factor (x, y): an offset of one map pixel in grid units, 2/W (False) or 2/(W-1) (True)."""
  h, w = size
  if align_corners:
    return np.asarray([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], np.float32)
  return np.asarray([2.0 / w, 2.0 / h], np.float32)


def landmark_reference_points(keypoints: Any, *, heat_size: int = 28, sigma: float,
                              num_points: int, seed: int, align_corners: bool = False,
                              map_size: Pair | None = None) -> np.ndarray:
  """The TDLS reference points p (N_r, 2) (x, y) for `grid_sample`: the training set's 7 key points
  (mean template, [0, 1] image units) -> `keypoint_heatmap` (heat_size², σ in cells) -> `num_points`
  cells drawn with probability ∝ heat, WITHOUT replacement (every point its own cell: N_r = 196 of
  784 cells in stage 3; with replacement duplicates would waste keys), each point at its CELL
  CENTRE (no sub-cell jitter: the points are a fixed constant kept with the model, and the
  centre is the cell's expected position). numpy `Generator(PCG64(seed)).choice(..., replace=False,
  p=heat/Σheat)`: deterministic from `seed`. Drawing without replacement is successive sampling:
  the FIRST draw is ∝ heat exactly, the inclusion probability of later cells is monotone in heat
  but flatter than ∝ heat (the hottest cells are taken early, the rest of the mass spreads).
  The points are sorted by cell (row-major, y then x), so laid out as a √N_r × √N_r grid (Eq. 2)
  neighbouring grid entries are (roughly) neighbouring on the face.

  Returned image-normalised (2u - 1, = grid coordinates at align_corners=False for every map) or,
  with `align_corners=True`, converted for an (H, W) = `map_size` map (`to_grid`)."""
  n_cells = heat_size * heat_size
  if not 0 < num_points <= n_cells:
    raise UserError(f"landmark_reference_points: num_points={num_points} must be in "
                    f"[1, heat_size² = {n_cells}]")
  heat = keypoint_heatmap(keypoints, heat_size=heat_size, sigma=sigma).reshape(-1)
  p = heat / heat.sum()
  if np.count_nonzero(p) < num_points:
    raise UserError(f"landmark_reference_points: only {np.count_nonzero(p)} cells have heat > 0 "
                    f"for {num_points} points; increase sigma={sigma}")
  rng = np.random.Generator(np.random.PCG64(int(seed)))
  cells = np.sort(rng.choice(n_cells, size=num_points, replace=False, p=p))
  row, col = np.divmod(cells, heat_size)
  pts = np.stack([(col + 0.5) / heat_size, (row + 0.5) / heat_size], axis=-1) * 2.0 - 1.0
  if align_corners:
    if map_size is None:
      raise UserError("landmark_reference_points: align_corners=True needs map_size=(H, W)")
    pts = np.asarray(to_grid(jnp.asarray(pts, jnp.float32), tuple(map_size), True))
  return pts.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Eqs. 1-6


def sample_points(x: jax.Array, points: jax.Array, *, align_corners: bool, form: str) -> jax.Array:
  """Eqs. 1 and 3, x' = φ(x; p) and x'' = φ(x; p + Δp): bilinear sampling (torch `grid_sample`,
  zeros padding) of the map x (B, H, W, C) at points (B, N, 2) grid coordinates -> (B, N, C)."""
  b, n = points.shape[:2]
  out = grid_sample(x, points.reshape(b, n, 1, 2), align_corners=align_corners, form=form)
  return out.reshape(b, n, x.shape[-1])


class OffsetNetwork(nn.Module):
  """Eq. 2, Δp = θ(x'): x' (B, N_r, C) laid out as a √N_r × √N_r grid (row-major, the order of the
  sorted reference points) -> Conv 3×3 (`hidden`, pad 1) -> ReLU -> Conv 3×3 (2 channels, pad 1)
  -> [ReLU] -> (B, N_r, 2) offsets (Δx, Δy) in MAP PIXELS (channel 0 = x, 1 = y; DAT's order is
  (y, x)). One offset per point SHARED by all heads (the paper writes one θ with a 2-channel
  output; DAT has per-group offsets, `groups` heads share one). `offsets`:
  * "paper": the trailing ReLU as the paper writes it: Δp ≥ 0, the points can only move right/down
    (unbounded);
  * "signed": no trailing ReLU, `offset_range · tanh(·)` pixels as DAT (DAT's
    `offset_range_factor` 2 is tanh·2/Hk normalised = ±1 map pixel, so offset_range=1 is DAT's)."""
  hidden: int
  offsets: str = "paper"
  offset_range: float = 2.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, xs: jax.Array) -> jax.Array:
    b, n, c = xs.shape
    s = math.isqrt(n)
    if s * s != n:
      raise UserError(f"DeformableLandmarkAttention: the offset network lays the {n} reference "
                      "points out as a square grid (Eq. 2): num_points must be a perfect square")
    conv = lambda f, name: nn.Conv(f, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                                   param_dtype=self.param_dtype, name=name)
    y = nn.relu(conv(self.hidden, "conv1")(xs.reshape(b, s, s, c)))
    y = conv(2, "conv2")(y).reshape(b, n, 2).astype(jnp.float32)
    if self.offsets == "paper":
      return nn.relu(y)
    return self.offset_range * jnp.tanh(y)


class DeformableLandmarkAttention(nn.Module):
  """TDLS deformable landmark attention (Eqs. 1-6).

  Call `(x (B, H, W, C), points=None, *, deterministic=True, return_points=False)` -> y (B, H, W, C)
  (and the sampling points (B, N_r, 2) grid coordinates with `return_points`; also sown to
  `intermediates/sampling_points` for Fig. 8).

  `points` (image-normalised, see the module docstring): (N_r, 2) reference points p shared by the
  batch, or (B, N_r, 2) per-image points p'. None: the `constants/ref_points` variable, drawn at
  init by `landmark_reference_points(keypoints, sigma, num_points, seed)` (required for "rp" and
  "tdls" when no points are passed; "fl" needs per-image points).

  `mode`: "rp" (RP-Swin: keys/values at p, no offsets), "fl" (FL-Swin: at each image's own
  landmarks p', no offsets), "tdls" (p + Δp, Δp = `OffsetNetwork` of x' (Eq. 2)).
  Eq. 4: q = x W_q at EVERY position of the map, k = x'' W_k, v = x'' W_v (Dense `q`, `k`, `v`,
  bias `qkv_bias`); Eqs. 5-6: softmax(q kᵀ / √d) v per head, heads concatenated, W_o (`out`):
  `MultiHeadAttention(qkv_layout="separate")` with x'' as the context. No positional bias (the
  paper names none; DAT adds a sampled relative-position table).
  """
  num_heads: int
  mode: str = "tdls"
  offsets: str = "paper"
  offset_range: float = 2.0
  offset_hidden: int | None = None          # conv1 channels of Eq. 2; None: C (the map's width)
  num_points: int = 196
  keypoints: tuple[tuple[float, float], ...] | None = None
  sigma: float = 3.0
  heat_size: int = 28
  seed: int = 0
  align_corners: bool = False
  form: str = "matmul"                      # grid_sample form; matmul is fastest at 14×14 / 7×7
  qkv_bias: bool = True
  attn_dropout: float = 0.0
  proj_dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def reference_points(self) -> jax.Array:
    """The constant p (N_r, 2), image-normalised, in the `constants` collection."""
    def init():
      key = DEFAULT_KEYPOINTS7 if self.keypoints is None else self.keypoints
      return jnp.asarray(landmark_reference_points(
          key, heat_size=self.heat_size, sigma=self.sigma, num_points=self.num_points,
          seed=self.seed))
    return self.variable(CONSTANTS, REF_POINTS, init).value

  @nn.compact
  def __call__(self, x: jax.Array, points: jax.Array | None = None, *, deterministic: bool = True,
               return_points: bool = False):
    if self.mode not in MODES:
      raise UserError(f"DeformableLandmarkAttention: mode={self.mode!r}, expected one of {MODES}")
    if self.offsets not in OFFSETS:
      raise UserError(f"DeformableLandmarkAttention: offsets={self.offsets!r}, "
                      f"expected one of {OFFSETS}")
    if x.ndim != 4:
      raise UserError(f"DeformableLandmarkAttention: x must be (B, H, W, C), got {x.shape}")
    b, h, w, c = x.shape
    if points is None:
      if self.mode == "fl":
        raise UserError("DeformableLandmarkAttention: mode 'fl' needs each image's landmark "
                        "points (B, N_r, 2) (the block's context)")
      points = self.reference_points()
    points = jnp.asarray(points, jnp.float32)
    if points.ndim == 2:
      points = jnp.broadcast_to(points[None], (b,) + points.shape)
    if points.ndim != 3 or points.shape[0] != b or points.shape[-1] != 2:
      raise UserError(f"DeformableLandmarkAttention: points must be (N_r, 2) or (B={b}, N_r, 2), "
                      f"got {points.shape}")
    p = to_grid(points, (h, w), self.align_corners)
    sample = lambda pts: sample_points(x, pts, align_corners=self.align_corners, form=self.form)
    if self.mode == "tdls":
      x1 = sample(p)                                                          # Eq. 1
      delta = OffsetNetwork(self.offset_hidden or c, self.offsets, self.offset_range,
                            self.dtype, self.param_dtype, name="offset")(x1)  # Eq. 2 (pixels)
      p = p + delta * jnp.asarray(pixels_to_grid((h, w), self.align_corners))
    x2 = sample(p)                                                            # Eqs. 1 / 3
    self.sow("intermediates", "sampling_points", p)
    attn = MultiHeadAttention(self.num_heads, qkv_layout="separate", qkv_bias=self.qkv_bias,
                              attn_dropout=self.attn_dropout, proj_dropout=self.proj_dropout,
                              dtype=self.dtype, param_dtype=self.param_dtype, name="attn")
    y = attn(x.reshape(b, h * w, c), x2, deterministic=deterministic).reshape(b, h, w, c)  # 4-6
    return (y, p) if return_points else y


class DeformableBlock(nn.Module):
  """Pre-norm residual block with the Swin window block's interface (`SwinBlock`): fields
  `BLOCK_KWARGS` of `jaxaffect.nn.swin` (window and shift are accepted and unused), call
  `(x (B, H, W, C), rate=0.0, *, deterministic=True, context=None)`:
  x += DropPath(DLA(LN(x))); x += DropPath(MLP(LN(x))) (fc1 4C, exact GELU, fc2), LN eps 1e-5.
  Submodules `norm1`, `attn` (DeformableLandmarkAttention; its `attn` holds q/k/v/out, its
  `offset` conv1/conv2), `norm2`, `mlp`. `num_points=None`: the area of the built `resolution`
  (196 at 14×14, 49 at 7×7, as the paper). `context`: per-image points for mode "fl" (array
  (B, N_r, 2) image-normalised, or {"points": ...}); other modes ignore it unless it is a dict
  with "points" (to override the constant reference points)."""
  num_heads: int
  resolution: Pair = (14, 14)
  window: Pair = (7, 7)
  shift: Pair = (0, 0)
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  dropout: float = 0.0
  attn_dropout: float = 0.0
  ln_eps: float = 1e-5
  drop_path_rng: str = "dropout"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  mode: str = "tdls"
  offsets: str = "paper"
  offset_range: float = 2.0
  offset_hidden: int | None = None
  num_points: int | None = None
  keypoints: tuple[tuple[float, float], ...] | None = None
  sigma: float = 3.0
  heat_size: int = 28
  seed: int = 0
  align_corners: bool = False
  form: str = "matmul"

  @nn.compact
  def __call__(self, x: jax.Array, rate=0.0, *, deterministic: bool = True,
               context: Any = None) -> jax.Array:
    b, h, w, c = x.shape
    no_drop = deterministic or (isinstance(rate, (int, float)) and rate == 0)

    def branch(y):
      return y if no_drop else drop_path(y, rate, self.make_rng(self.drop_path_rng))
    points = None
    if isinstance(context, dict):
      points = context.get("points")
    elif context is not None and self.mode == "fl":
      points = context
    n = self.num_points or int(np.prod(self.resolution))
    # a distinct default seed per block position would need the name; the seed is a field
    dla = DeformableLandmarkAttention(
        self.num_heads, mode=self.mode, offsets=self.offsets, offset_range=self.offset_range,
        offset_hidden=self.offset_hidden, num_points=n, keypoints=self.keypoints,
        sigma=self.sigma, heat_size=self.heat_size, seed=self.seed,
        align_corners=self.align_corners, form=self.form, qkv_bias=self.qkv_bias,
        attn_dropout=self.attn_dropout, proj_dropout=self.dropout, dtype=self.dtype,
        param_dtype=self.param_dtype, name="attn")
    ln = lambda name: layer_norm(self.ln_eps, self.dtype, self.param_dtype, name)
    x = x + branch(dla(ln("norm1")(x), points, deterministic=deterministic))
    mlp = FeedForward(int(c * self.mlp_ratio), activation="gelu", dropout=self.dropout,
                      dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")
    y = mlp(ln("norm2")(x).reshape(b * h * w, c), deterministic=deterministic)
    return x + branch(y.reshape(b, h, w, c))
