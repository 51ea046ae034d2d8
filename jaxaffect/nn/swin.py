"""Swin Transformer (Liu et al. 2021) in timm 1.x's `SwinTransformer` layout, channels-last (NHWC).

Architecture (timm `swin_tiny_patch4_window7_224` = Microsoft Swin-T; `SWIN_T`):
  patch embedding: Conv p×p / stride p (`patch_embed`, timm `patch_embed.proj`) → LayerNorm
    (`patch_norm`, timm `patch_embed.norm`), tokens kept as a (B, H/p, W/p, C) map;
  stages `layers_i` (timm `layers.i`), i = 0..3, dims C·2^i: stage i > 0 starts with PatchMerging
    (`downsample`, timm 1.x `layers.i.downsample`; Microsoft holds the same module at the *end* of
    stage i-1, `layers.{i-1}.downsample`): zero-pad odd H/W (timm; Microsoft asserts even), the
    2×2 neighbourhood concatenated as [x(0::2,0::2), x(1::2,0::2), x(0::2,1::2), x(1::2,1::2)]
    (row offset fastest: Microsoft's x0,x1,x2,x3 and timm's reshape(B,H/2,2,W/2,2,C)
    .permute(0,1,3,4,2,5) give the same order, so one reduction weight serves both) → LayerNorm(4C)
    → Linear 4C → 2C without bias; then `depths[i]` blocks `blocks_j`;
  block (timm `SwinTransformerBlock`): x += DropPath(WindowAttn(LN1 x)); x += DropPath(MLP(LN2 x)).
    WindowAttn (`WindowAttention`): cyclic shift by -s (`jnp.roll`) → zero-pad H, W to multiples of the window (timm)
    → partition into w×w windows (row-major inside a window) → multi-head self-attention with packed
    `attn/qkv` (bias) and `attn/out` (timm `attn.proj`), logits + relative position bias
    `B[h, i, j] = table[index[i, j], h]` (`relative_position_bias_table ((2wh-1)(2ww-1), heads)`,
    `relative_position_index` as Swin computes it) + the shifted-window mask (−100 between tokens
    of different regions, 0 inside one) → reverse → crop → roll by +s. Odd blocks shift by w//2;
    a stage whose resolution is ≤ the window (per axis, timm `_calc_window_shift`; stage 4 at 224,
    7×7) uses window = resolution and no shift. MLP: fc1 (4C) → exact GELU → fc2. LayerNorm
    eps 1e-5 everywhere;
  final LayerNorm `norm`, global average pool over (H, W), dropout, `head` (timm `head.fc`).

Blocks by kind. `block_kinds` is one tuple of kind names per stage (None: all "window"), so a
config can say which blocks are replaced, e.g. DAT/TDLS's stages 3-4
`(("window",)*2, ("window",)*2, ("window", "deformable")*3, ("window", "deformable"))`. A kind is
"window" (`SwinBlock`) or one of `block_types`, pairs (name, factory) where `factory(**kw)` builds a
Flax module with the keyword arguments `BLOCK_KWARGS` (plus `name`) and is called as
`block(x (B, H, W, C), rate, deterministic=bool, context=context)`. The block of a kind keeps the
index of its position (`blocks_j`), so a deformable block at j = 1 still shifts nothing: the
shift rule (odd j) concerns window blocks only; it is passed as `shift` to every block.

Interface: `__call__(x (B, H, W, 3), *, train=False, return_features=False, context=None)` →
logits (float32; pooled features if `num_classes == 0`), or with `return_features` the pair
(logits, [stage outputs (B, h_i, w_i, C_i)]) = timm `forward_intermediates(norm=False)` in NHWC
(the last one before the final norm). `context` goes to every non-window block (e.g. landmarks).
`forward_features(x)` = timm `forward_features` (after the final norm, (B, h, w, C)).
The image size is an attribute (`img_size`, as timm's strict image size): the window per stage and
so the shape of each relative-position table depend on it; another size is a clear error. Sizes
whose merges stay even (multiples of 32: 64, 96, 128, 160, 224) are plain Swin; 112 runs as timm
runs it (stage 4 built for 3×3 windows on a zero-padded 4×4 map; Microsoft's code refuses it);
sizes not a multiple of 28 pad some stage's map to whole windows (timm; Microsoft refuses).

Training: dropout (`dropout` after attention proj and in the MLP, `attn_dropout`, `head_dropout`;
rng "dropout") and drop path (timm `calculate_drop_path_rates(rate, depths, stagewise=True)`:
linear 0 → rate over all blocks, split by stage) on `drop_path_rng`. timm's SwinTransformer default
drop_path_rate is 0.1 (kept); Microsoft's Swin-T config uses 0.2.

Init: tables, PatchMerging reduction and head truncated normal std 0.02 (|x| < 2 absolute, i.e. a
plain normal at this std; timm), zero head bias; the attention and MLP Dense layers and the patch
conv torch's defaults (`jaxaffect.nn.Dense`; timm re-draws them at std 0.02). The paper starts from
ImageNet weights (`jaxaffect.interop.swin.load_pretrained`).
`dtype` is the compute dtype (bfloat16 switch), softmax and LayerNorm statistics run in float32.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxaffect.errors import UserError
from jaxaffect.nn.attention import FeedForward
from jaxaffect.nn.layers import Dense, layer_norm
from jaxaffect.nn.vit import drop_path, drop_path_rates

Dtype = Any
Pair = tuple[int, int]
LN_EPS = 1e-5
MASK_VALUE = -100.0           # Swin's shifted-window mask value (not -inf)
STAGE_PREFIX = "layers_"
BLOCK_PREFIX = "blocks_"
TABLE = "relative_position_bias_table"
WINDOW = "window"
# Keyword arguments every block factory receives (besides `name`).
BLOCK_KWARGS = ("num_heads", "resolution", "window", "shift", "mlp_ratio", "qkv_bias", "dropout",
                "attn_dropout", "ln_eps", "drop_path_rng", "dtype", "param_dtype")

SWIN_T = dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2),
              num_heads=(3, 6, 12, 24))
SWIN_S = dict(SWIN_T, depths=(2, 2, 18, 2))
SWIN_B = dict(SWIN_T, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
PRESETS = {"swin_t": SWIN_T, "swin_s": SWIN_S, "swin_b": SWIN_B}

_dense_init = nn.initializers.truncated_normal(0.02, lower=-100.0, upper=100.0)
_table_init = nn.initializers.truncated_normal(0.02, lower=-100.0, upper=100.0)


def _pair(v) -> Pair:
  return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


# ------------------------------------------------------------------------------------------------
# Geometry (static, numpy)


def window_and_shift(resolution: Pair, window: Pair, shift: Pair) -> tuple[Pair, Pair]:
  """timm `_calc_window_shift` (Microsoft: the same for square maps): per axis, a resolution not
  larger than the window gets window = resolution and no shift."""
  win = tuple(r if r <= w else w for r, w in zip(resolution, window))
  sh = tuple(0 if r <= w else s for r, w, s in zip(resolution, win, shift))
  return win, sh


def relative_position_index(window: int | Pair) -> np.ndarray:
  """Swin's `relative_position_index` (N, N), N = wh·ww, int32: for tokens i = (hi, wi) and
  j = (hj, wj) (row-major in the window), (hi - hj + wh - 1)·(2ww - 1) + (wi - wj + ww - 1)."""
  wh, ww = _pair(window)
  coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :]
  return ((rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)).astype(np.int32)


def window_partition(x: jax.Array, window: Pair) -> jax.Array:
  """(B, H, W, C) → (B, nW, wh·ww, C); windows row-major over the map, tokens row-major inside
  (timm `window_partition`, with the batch kept as its own axis)."""
  b, h, w, c = x.shape
  wh, ww = window
  x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // wh) * (w // ww), wh * ww, c)


def window_reverse(windows: jax.Array, window: Pair, h: int, w: int) -> jax.Array:
  """Inverse of `window_partition`: (B, nW, wh·ww, C) → (B, H, W, C)."""
  b, _, _, c = windows.shape
  wh, ww = window
  x = windows.reshape(b, h // wh, w // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


def shifted_window_mask(resolution: Pair, window: Pair, shift: Pair) -> np.ndarray | None:
  """Swin's `attn_mask` (nW, N, N) float32 for a shifted block (None without shift): the (padded)
  map is labelled by the 3×3 regions [0, -w), [-w, -s), [-s, end) per axis; tokens of a window in
  different regions get MASK_VALUE (−100), the same region 0."""
  if not any(shift):
    return None
  hp = -(-resolution[0] // window[0]) * window[0]
  wp = -(-resolution[1] // window[1]) * window[1]
  img = np.zeros((1, hp, wp, 1), np.float32)
  cnt = 0
  for hs in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
    for ws in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
      img[:, hs, ws, :] = cnt
      cnt += 1
  win = np.asarray(window_partition(img, window))[0, :, :, 0]           # (nW, N)
  diff = win[:, None, :] - win[:, :, None]
  return np.where(diff != 0, np.float32(MASK_VALUE), np.float32(0.0)).astype(np.float32)


def stage_resolutions(img_size: Pair, patch_size: int, num_stages: int, *,
                      built: bool = True) -> list[Pair]:
  """The map size of each stage's blocks: the patch grid, then per merge ⌈·/2⌉ (the map
  PatchMerging produces: it zero-pads odd sizes) or, with `built`, ⌊·/2⌋: the resolution timm
  builds the blocks for (`SwinTransformerStage.output_resolution = i // 2`), which sets their
  window, shift and mask. The two differ only after an odd merge (img 112: stage 4 built for
  3×3, fed a 4×4 map)."""
  r = (img_size[0] // patch_size, img_size[1] // patch_size)
  out = [r]
  for _ in range(num_stages - 1):
    r = (r[0] // 2, r[1] // 2) if built else (-(-r[0] // 2), -(-r[1] // 2))
    out.append(r)
  return out


def block_geometry(img_size, patch_size: int, window_size, depths: Sequence[int]
                   ) -> list[list[tuple[Pair, Pair, Pair]]]:
  """Per stage, per block: (resolution, window, shift) as timm builds them (odd blocks shift by
  window//2, then `window_and_shift`)."""
  out = []
  win0 = _pair(window_size)
  for res, depth in zip(stage_resolutions(_pair(img_size), patch_size, len(depths)), depths):
    stage = []
    for j in range(depth):
      shift = (0, 0) if j % 2 == 0 else (win0[0] // 2, win0[1] // 2)
      win, sh = window_and_shift(res, win0, shift)
      stage.append((res, win, sh))
    out.append(stage)
  return out


def patch_merge_concat(x: jax.Array) -> jax.Array:
  """(B, H, W, C) → (B, ⌈H/2⌉, ⌈W/2⌉, 4C): zero-pad odd sizes (timm), then the 2×2 neighbourhood
  in the order x(0::2,0::2), x(1::2,0::2), x(0::2,1::2), x(1::2,1::2)."""
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    h, w = h + h % 2, w + w % 2
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
  return x.reshape(b, h // 2, w // 2, 4 * c)


# ------------------------------------------------------------------------------------------------
# Modules


class WindowAttention(nn.Module):
  """timm `WindowAttention` on (B, nW, N, C) windows with an additive bias (relative position
  bias + shift mask) broadcastable to (B, nW, heads, N, N): Dense `qkv` (packed, `(3, heads, Dh)`
  order) and `out` (timm `proj`) — the parameter names of `jaxaffect.nn.MultiHeadAttention` —
  applied to the flattened (B·nW·N, C) matrix (XLA:CPU's backward of a Dense on the 4-D map is
  2-3x slower: bench/swin.py --parts), q pre-scaled by Dh^-0.5 as Swin, softmax in float32."""
  num_heads: int
  qkv_bias: bool = True
  attn_dropout: float = 0.0
  proj_dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, windows: jax.Array, bias: jax.Array, *,
               deterministic: bool = True) -> jax.Array:
    b, nw, n, c = windows.shape
    h = self.num_heads
    dh = c // h
    dense = lambda feats, use_bias, name: Dense(feats, use_bias=use_bias, dtype=self.dtype,
                                                param_dtype=self.param_dtype, name=name)
    qkv = dense(3 * c, self.qkv_bias, "qkv")(windows.reshape(b * nw * n, c))
    qkv = qkv.reshape(b, nw, n, 3, h, dh)
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    acc = jnp.promote_types(self.dtype, jnp.float32)
    logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q * jnp.asarray(dh ** -0.5, q.dtype), k,
                        preferred_element_type=acc) + bias.astype(acc)
    weights = jax.nn.softmax(logits, axis=-1)
    weights = nn.Dropout(self.attn_dropout)(weights, deterministic=deterministic)
    out = jnp.einsum("bwhqk,bwkhd->bwqhd", weights.astype(self.dtype), v)
    out = dense(c, True, "out")(out.reshape(b * nw * n, c))
    out = nn.Dropout(self.proj_dropout)(out, deterministic=deterministic)
    return out.reshape(b, nw, n, c)


class SwinBlock(nn.Module):
  """timm `SwinTransformerBlock` (window kind): submodules `norm1`, `attn` (`qkv`, `out`), the
  parameter `relative_position_bias_table`, `norm2`, `mlp` (`fc1`, `fc2`).
  `resolution` is the map size the block is built for (timm `input_resolution`): with `window`
  and `shift` (from `block_geometry`) it fixes the mask. The map it is given may be one larger
  after an odd merge (timm builds for ⌊r/2⌋, PatchMerging pads to ⌈r/2⌉; img 112: stage 4 built
  for 3×3, fed 4×4): it is zero-padded to whole windows, as timm does.
  Call `(x (B, H, W, C), rate=0.0, *, deterministic=True, context=None)` (context unused)."""
  num_heads: int
  resolution: Pair
  window: Pair
  shift: Pair = (0, 0)
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  dropout: float = 0.0
  attn_dropout: float = 0.0
  ln_eps: float = LN_EPS
  drop_path_rng: str = "dropout"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def relative_bias(self) -> jax.Array:
    """(heads, N, N) = table[relative_position_index] (timm `_get_rel_pos_bias`)."""
    wh, ww = self.window
    table = self.param(TABLE, _table_init, ((2 * wh - 1) * (2 * ww - 1), self.num_heads),
                       self.param_dtype)
    n = wh * ww
    idx = relative_position_index(self.window).reshape(-1)
    return jnp.take(table, idx, axis=0).reshape(n, n, self.num_heads).transpose(2, 0, 1)

  @nn.compact
  def __call__(self, x: jax.Array, rate=0.0, *, deterministic: bool = True,
               context: Any = None) -> jax.Array:
    b, h, w, c = x.shape
    ln = lambda name: layer_norm(self.ln_eps, self.dtype, self.param_dtype, name)
    no_drop = deterministic or (isinstance(rate, (int, float)) and rate == 0)

    def branch(y):
      return y if no_drop else drop_path(y, rate, self.make_rng(self.drop_path_rng))
    win, sh = tuple(self.window), tuple(self.shift)
    y = ln("norm1")(x)
    if any(sh):
      y = jnp.roll(y, (-sh[0], -sh[1]), axis=(1, 2))
    ph, pw = (-h) % win[0], (-w) % win[1]
    if ph or pw:
      y = jnp.pad(y, ((0, 0), (0, ph), (0, pw), (0, 0)))
    windows = window_partition(y, win)                             # (B, nW, N, C)
    bias = self.relative_bias()                                    # (heads, N, N)
    mask = shifted_window_mask(tuple(self.resolution), win, sh)   # timm: the built resolution
    if mask is not None:
      if mask.shape[0] != windows.shape[1]:
        raise UserError(f"SwinBlock: a {(h, w)} map makes {windows.shape[1]} windows, the shift "
                        f"mask built for {tuple(self.resolution)} has {mask.shape[0]} (timm fails "
                        "here too: choose an image size whose merges are even)")
      bias = bias[None] + jnp.asarray(mask)[:, None]               # (nW, heads, N, N)
    attn = WindowAttention(self.num_heads, self.qkv_bias, self.attn_dropout, self.dropout,
                           self.dtype, self.param_dtype, name="attn")
    out = attn(windows, bias, deterministic=deterministic)
    y = window_reverse(out, win, h + ph, w + pw)[:, :h, :w]
    if any(sh):
      y = jnp.roll(y, sh, axis=(1, 2))
    x = x + branch(y)
    mlp = FeedForward(int(c * self.mlp_ratio), activation="gelu", dropout=self.dropout,
                      dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")
    # the MLP on a (B·H·W, C) matrix: alone, at the stage-1 size (batch 8), XLA:CPU's fwd+bwd of
    # Dense + erf GELU + Dense took 315-680 ms on the 2-D view vs 980-1060 ms on the 4-D map
    # (loaded 2-core box); in the whole train step the gain is within the noise
    y = mlp(ln("norm2")(x).reshape(b * h * w, c), deterministic=deterministic)
    return x + branch(y.reshape(b, h, w, c))


class PatchMerging(nn.Module):
  """timm `PatchMerging`: `patch_merge_concat` → LayerNorm `norm` (4C) → Dense `reduction`
  (no bias) to `out_dim` (default 2C)."""
  out_dim: int | None = None
  ln_eps: float = LN_EPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = patch_merge_concat(x)
    y = layer_norm(self.ln_eps, self.dtype, self.param_dtype, "norm")(y)
    return Dense(self.out_dim or 2 * x.shape[-1], use_bias=False, dtype=self.dtype,
                 param_dtype=self.param_dtype, kernel_init=_dense_init, name="reduction")(y)


class SwinStage(nn.Module):
  """timm `SwinTransformerStage`: optional `downsample` (PatchMerging) then `blocks_j`."""
  dim: int
  geometry: tuple[tuple[Pair, Pair, Pair], ...]        # per block (resolution, window, shift)
  kinds: tuple[str, ...]
  num_heads: int
  downsample: bool
  rates: tuple[float, ...]
  block_kw: tuple[tuple[str, Any], ...] = ()
  block_types: tuple[tuple[str, Callable[..., nn.Module]], ...] = ()
  ln_eps: float = LN_EPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True, context: Any = None):
    if self.downsample:
      x = PatchMerging(self.dim, self.ln_eps, self.dtype, self.param_dtype, name="downsample")(x)
    factories = {WINDOW: SwinBlock, **dict(self.block_types)}
    for j, ((res, win, sh), kind, rate) in enumerate(zip(self.geometry, self.kinds, self.rates)):
      blk = factories[kind](num_heads=self.num_heads, resolution=res, window=win, shift=sh,
                            ln_eps=self.ln_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                            **dict(self.block_kw), name=f"{BLOCK_PREFIX}{j}")
      x = blk(x, rate, deterministic=deterministic, context=None if kind == WINDOW else context)
    return x


class SwinTransformer(nn.Module):
  """Swin Transformer in timm's layout; see the module docstring.

  Attributes:
    img_size: the input size (int or (H, W)); fixes each stage's window and table shape.
    patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio: the architecture (`SWIN_T`).
    num_classes: head outputs; 0 = no head (pooled features).
    block_kinds: per stage, the kind of each block (None: all "window"); `block_types` adds kinds.
    dropout / attn_dropout / head_dropout / drop_path_rate: timm proj_drop_rate / attn_drop_rate /
      drop_rate / drop_path_rate; `drop_path_rng` the stream of drop path.
  """
  img_size: int | Pair = 224
  patch_size: int = 4
  embed_dim: int = 96
  depths: tuple[int, ...] = (2, 2, 6, 2)
  num_heads: tuple[int, ...] = (3, 6, 12, 24)
  window_size: int | Pair = 7
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  num_classes: int = 1000
  block_kinds: tuple[tuple[str, ...], ...] | None = None
  block_types: tuple[tuple[str, Callable[..., nn.Module]], ...] = ()
  ln_eps: float = LN_EPS
  dropout: float = 0.0
  attn_dropout: float = 0.0
  head_dropout: float = 0.0
  drop_path_rate: float = 0.1
  drop_path_rng: str = "dropout"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def num_features(self) -> int:
    return self.embed_dim * 2 ** (len(self.depths) - 1)

  def geometry(self) -> list[list[tuple[Pair, Pair, Pair]]]:
    """Per stage, per block: (resolution, window, shift)."""
    return block_geometry(self.img_size, self.patch_size, self.window_size, self.depths)

  def kinds(self) -> tuple[tuple[str, ...], ...]:
    kinds = self.block_kinds or tuple((WINDOW,) * d for d in self.depths)
    known = {WINDOW, *dict(self.block_types)}
    if len(kinds) != len(self.depths) or any(len(k) != d for k, d in zip(kinds, self.depths)):
      raise UserError(f"Swin: block_kinds {kinds} does not match depths {tuple(self.depths)}")
    bad = sorted({k for s in kinds for k in s} - known)
    if bad:
      raise UserError(f"Swin: block kinds {bad} unknown; known {sorted(known)} "
                      "(add kinds with block_types)")
    return tuple(tuple(k) for k in kinds)

  def _check(self, x):
    h, w = _pair(self.img_size)
    if len(self.num_heads) != len(self.depths):
      raise UserError(f"Swin: num_heads {self.num_heads} and depths {self.depths} differ in length")
    if h % self.patch_size or w % self.patch_size:
      raise UserError(f"Swin: img_size {(h, w)} is not a multiple of patch_size {self.patch_size}")
    if x.ndim != 4 or tuple(x.shape[1:3]) != (h, w):
      raise UserError(f"Swin: input of shape {tuple(x.shape)}; expected (B, {h}, {w}, C) "
                      f"(img_size={self.img_size}, channels last)")

  def setup(self):
    p = self.patch_size
    self.patch_embed = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID",
                               dtype=self.dtype, param_dtype=self.param_dtype, name="patch_embed")
    ln = lambda name: layer_norm(self.ln_eps, self.dtype, self.param_dtype, name)
    self.patch_norm = ln("patch_norm")
    rates = drop_path_rates(self.drop_path_rate, sum(self.depths))
    kw = (("mlp_ratio", self.mlp_ratio), ("qkv_bias", self.qkv_bias), ("dropout", self.dropout),
          ("attn_dropout", self.attn_dropout), ("drop_path_rng", self.drop_path_rng))
    layers, start = [], 0
    for i, (geom, kinds) in enumerate(zip(self.geometry(), self.kinds())):
      d = len(geom)
      layers.append(SwinStage(self.embed_dim * 2 ** i, tuple(geom), kinds, self.num_heads[i],
                              i > 0, tuple(rates[start:start + d]), kw, self.block_types,
                              self.ln_eps, self.dtype, self.param_dtype,
                              name=f"{STAGE_PREFIX}{i}"))
      start += d
    self.layers = layers
    self.norm = ln("norm")
    self.head_drop = nn.Dropout(self.head_dropout)
    if self.num_classes:
      self.head = Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                        kernel_init=_dense_init, bias_init=nn.initializers.zeros, name="head")

  def stages(self, x: jax.Array, *, train: bool = False, context: Any = None) -> list[jax.Array]:
    """(B, H, W, C) images → every stage's output map (B, h_i, w_i, C_i), no final norm."""
    self._check(x)
    x = self.patch_norm(self.patch_embed(x.astype(self.dtype)))
    outs = []
    for stage in self.layers:
      x = stage(x, deterministic=not train, context=context)
      outs.append(x)
    return outs

  def forward_features(self, x: jax.Array, *, train: bool = False, context: Any = None):
    """timm `forward_features`: (B, h, w, C) after the final norm."""
    return self.norm(self.stages(x, train=train, context=context)[-1])

  def forward_head(self, feats: jax.Array, *, train: bool = False) -> jax.Array:
    """timm `forward_head`: mean over (h, w) → dropout → `head` (if num_classes > 0)."""
    f = self.head_drop(jnp.mean(feats, axis=(1, 2)), deterministic=not train)
    return self.head(f) if self.num_classes else f

  def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False,
               context: Any = None):
    feats = self.stages(x, train=train, context=context)
    out = self.forward_head(self.norm(feats[-1]), train=train)
    out = out.astype(jnp.promote_types(self.param_dtype, jnp.float32))
    return (out, feats) if return_features else out


def swin(preset: str = "swin_t", **kwargs) -> SwinTransformer:
  """`SwinTransformer(**PRESETS[preset], **kwargs)`."""
  if preset not in PRESETS:
    raise UserError(f"Swin preset {preset!r}; expected one of {sorted(PRESETS)}")
  return SwinTransformer(**{**PRESETS[preset], **kwargs})


swin_t = functools.partial(swin, "swin_t")


def no_decay_regex() -> str:
  """timm `no_weight_decay`: the relative position tables (plus the usual biases/norms by rule)."""
  return TABLE
