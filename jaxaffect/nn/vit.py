"""Vision Transformer in timm's `VisionTransformer` layout (Dosovitskiy et al. 2021; MAE, He et al.
2022), split into parts that the MAE encoder calls one by one.

Architecture (timm `vit_*_patch*_224`, MAE `models_vit` / `models_mae` encoder):
  patch embedding: Conv kernel = stride = patch (`patch_embed`, timm `patch_embed.proj`), tokens
    row-major over the (H/p, W/p) grid; `cls_token (1, 1, D)`; position embedding `(1, 1 + N, D)`
    (index 0 = the class token), added to the cls token and to the patch tokens;
  `depth` pre-norm blocks `blocks_i` (timm `blocks.i`): x += DropPath(Attn(LN1 x)),
    x += DropPath(MLP(LN2 x)); packed `attn/qkv` (one Dense D → 3D, bias; timm `attn.qkv`), output
    Dense `attn/out` (timm `attn.proj`), MLP `mlp/fc1` → exact (erf) GELU → `mlp/fc2` (hidden
    `int(D · mlp_ratio)`), LayerNorm eps 1e-6 everywhere;
  `global_pool="token"`: final LayerNorm `norm` on every token, the class token is the feature
    (timm default; the MAE pre-training encoder); `global_pool="avg"`: no `norm`, the mean of the
    patch tokens (class token excluded) → `fc_norm` (timm global_pool='avg', MAE fine-tuning
    default `--global_pool`); then optional dropout + `head` (Dense, `num_classes > 0`).

Position embeddings (`pos_embed`):
  "sincos" (MAE): the fixed 2-D sin-cos table of facebookresearch/mae `get_2d_sincos_pos_embed`
    (`sincos_2d_pos_embed` here, float64 then float32 as MAE's `.float()`), class position = 0. MAE
    builds `np.meshgrid(grid_w, grid_h)`, so the *first* D/2 channels encode the column (w)
    coordinate and the last D/2 the row (h) — kept as is, pretrained MAE weights depend on it. It
    is the read-only variable `constants/pos_embed` (as EST's table: never trained or decayed;
    apply the model with the `constants` collection, not mutable); it exports as timm `pos_embed`.
  "learn" (timm checkpoints): the parameter `params/pos_embed` (truncated normal 0.02).
Importing a checkpoint of another image size: `jaxaffect.interop.vit.interpolate_pos_embed`.

Interface (MAE calls these parts through a bound submodule `self.encoder = ViT(...)`, or
`ViT.apply(variables, ..., method=ViT.embed)`):
  `embed(x)`            (B, H, W, C) images → (B, N, D) patch tokens + their position embedding
                        (no class token). N = (H/p)·(W/p), row-major; the image size must equal
                        `img_size` (the table's grid).
  `add_cls(tokens)`     (B, n, D) → (B, 1 + n, D): prepends cls_token + pos_embed[:, :1]. MAE keeps
                        the visible tokens by index between `embed` and `add_cls`.
  `encode(tokens, train=)`  the `depth` blocks on any (B, L, D) sequence (no final norm).
  `final_norm(tokens)`  LayerNorm `norm` (global_pool="token"); the identity for "avg" (timm).
  `forward_features(x, train=)` = final_norm(encode(add_cls(embed(x)))) (timm forward_features).
  `forward_head(tokens, train=)` pool → fc_norm ("avg") → dropout → head (if num_classes > 0).
  `__call__(x, *, train=False, return_tokens=False)`: logits (or pooled features without a head),
    or with `return_tokens` the token sequence of `forward_features`; returned in float32.
  The parts return the compute `dtype`. Every part only creates the parameters it uses, so an
  encoder that never calls `forward_head` has no `head`/`fc_norm`.

Training: `train=True` enables dropout (`dropout` after attn proj / in the MLP, `attn_dropout`,
`head_dropout`; rng stream "dropout") and drop path (stochastic depth per sample, timm `DropPath`
with `scale_by_keep`, rate `drop_path_rates`: linear 0 → `drop_path_rate` over the blocks, as
timm/MAE) on the rng stream `drop_path_rng` ("dropout" by default, the stream every task passes;
set "drop_path" for a separate stream). Deterministic given the rng; the identity at eval.

Layouts: `scan=False` loops over `blocks_0 … blocks_{depth-1}`; `scan=True` runs `nn.scan` over
one `blocks` submodule whose parameters have a leading layer axis; `remat_policy` as
`jaxaffect.nn.attention.REMAT_POLICIES`. Convert parameters with `to_scanned` / `to_looped`
(`scan_utils`); the PyTorch table (`jaxaffect.interop.vit`) is written for the looped layout.
With drop path, looped and scanned draw different masks (per-layer keys are split differently).

`dtype` is the compute dtype (bfloat16 switch), `param_dtype` the parameters' (float32); attention
softmax and LayerNorm statistics run in float32. Presets: `PRESETS` / `vit_b16`, `vit_l16`,
`vit_h14` (timm vit_base_patch16_224, vit_large_patch16_224, vit_huge_patch14_224).
Initialisation: torch defaults for the block Dense layers (as `jaxaffect.nn.Dense`), xavier-uniform
patch embedding on its flattened (D, p·p·C) view, cls N(0, 0.02²), head N(0, (2e-5)²) (MAE
fine-tuning); `mae_init` re-draws the block Dense layers as MAE does (xavier-uniform, zero bias).
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxaffect.errors import UserError
from jaxaffect.nn import scan_utils
from jaxaffect.nn.attention import REMAT_POLICIES, FeedForward, MultiHeadAttention
from jaxaffect.nn.layers import Dense, layer_norm

Dtype = Any
BLOCK_PREFIX = "blocks_"       # looped blocks: blocks_0, blocks_1, … (timm blocks.0, …)
SCAN_BLOCKS = "blocks"         # scanned blocks: one submodule, leading layer axis
POS_EMBEDS = ("sincos", "learn")
POOLS = ("avg", "token")
LN_EPS = 1e-6

PRESETS: dict[str, dict[str, int]] = {
    "vit_b16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_l16": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "vit_h14": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
}


# ------------------------------------------------------------------------------------------------
# Fixed 2-D sin-cos position embedding (facebookresearch/mae util/pos_embed.py)


def sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
  """MAE `get_1d_sincos_pos_embed_from_grid`: (M,) positions → (M, D) = [sin(p·ω) | cos(p·ω)],
  ω_k = 10000^(-k / (D/2)), k < D/2; float64."""
  if embed_dim % 2:
    raise UserError(f"sin-cos position embedding: dim {embed_dim} must be even")
  omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
  omega = 1.0 / 10000 ** omega
  out = np.einsum("m,d->md", np.asarray(pos, np.float64).reshape(-1), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d_pos_embed(embed_dim: int, grid: int | tuple[int, int],
                        cls_token: bool = True) -> np.ndarray:
  """MAE `get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token)`: `(cls + gh·gw, D)` float32.

  Token (i, j) (row i, column j, row-major) gets `[sincos_1d(D/2, j) | sincos_1d(D/2, i)]`: MAE's
  `np.meshgrid(grid_w, grid_h)` puts the column coordinate first (its variable is called emb_h).
  The class position is zeros. `grid` may be (gh, gw) (MAE: square, grid_size)."""
  if embed_dim % 4:
    raise UserError(f"2-D sin-cos position embedding: dim {embed_dim} must be divisible by 4")
  gh, gw = (grid, grid) if isinstance(grid, int) else tuple(grid)
  cols, rows = np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32))
  emb = np.concatenate([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], axis=1)
  if cls_token:
    emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
  return emb.astype(np.float32)


def drop_path_rates(rate: float, depth: int) -> list[float]:
  """timm/MAE stochastic-depth rule `torch.linspace(0, rate, depth)`: block i drops its residual
  branches with probability rate·i/(depth-1) (float32 values, as torch's)."""
  return [float(v) for v in np.linspace(0.0, rate, depth).astype(np.float32)]


def drop_path(x: jax.Array, rate, rng: jax.Array) -> jax.Array:
  """timm `drop_path(x, rate, training=True, scale_by_keep=True)`: each example's branch is zeroed
  with probability `rate`, the kept ones scaled by 1/(1 - rate). `rate` may be traced (scan)."""
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  scale = jnp.where(keep > 0, mask / jnp.maximum(keep, 1e-12), 0.0)
  return x * scale.astype(x.dtype)


# ------------------------------------------------------------------------------------------------
# FSDP: per-layer weight gathering in the scanned blocks

FSDP_AXIS = "fsdp"   # the mesh axis that shards parameters (jaxaffect.train.mesh.MESH_AXES)


def gathering_layers() -> bool:
  """True inside a step traced under a mesh (`jax.set_mesh`) whose `fsdp` axis has size > 1."""
  mesh = jax.sharding.get_abstract_mesh()
  return not mesh.empty and dict(mesh.shape).get(FSDP_AXIS, 1) > 1


@jax.custom_vjp
def _gathered(x):
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec())


def _gathered_fwd(x):
  return _gathered(x), None


def _gathered_bwd(_, ct):
  return (ct,)          # unconstrained: the partitioner shards the gradient like the stacked leaf


_gathered.defvjp(_gathered_fwd, _gathered_bwd)


def gather_layer_params(variables):
  """FSDP / ZeRO-3 inside `nn.scan`: one layer's parameters (a slice of the stacked, `fsdp`-sharded
  kernels) constrained to replicated for the block's compute, i.e. all-gathered per layer, while
  the batch stays sharded. The train step (`train.step.fsdp_gather`) gathers the other parameters
  and leaves the stacked blocks to this; gathering a whole (depth, ...) stack at once would hold
  the full model per device. The gradient is left unconstrained here (a plain sharding constraint
  would force it replicated, i.e. an all-reduce of full layer gradients): the partitioner then
  reduces each layer's gradient straight into the sharded stack (an all-reduce + slice on
  XLA:CPU, a reduce-scatter on TPU/GPU)."""
  return jax.tree.map(_gathered, variables)


def is_layer_gathered(name: str) -> bool:
  """A stacked parameter subtree that `scan_body` gathers per layer: the scanned ViT blocks,
  `blocks` (the encoder) or `*_blocks` (MAE's `decoder_blocks`). The train step leaves them alone."""
  return name == SCAN_BLOCKS or name.endswith("_" + SCAN_BLOCKS)


def scan_body(body, remat_policy: str, initializing: bool):
  """The `nn.scan` body over a stack of ViT blocks (name it per `is_layer_gathered`), with remat.

  Under FSDP (`gathering_layers()`) each layer's weights are gathered inside the body
  (`gather_layer_params`) and the gather sits inside the remat, so the backward gathers again
  instead of keeping a gathered stack. Without a remat policy the gathered weights (and their
  compute-dtype casts) would be saved for the backward, stacked over the layers: the full model on
  every device; so under FSDP "none" becomes "dots_saveable" (matmul outputs kept, element-wise
  ops recomputed)."""
  if gathering_layers() and not initializing:
    body = nn.map_variables(body, "params", trans_in_fn=gather_layer_params)
    policy = REMAT_POLICIES["dots_saveable" if remat_policy == "none" else remat_policy]
    return nn.remat(body, policy=policy, prevent_cse=False)
  if remat_policy != "none":
    return nn.remat(body, policy=REMAT_POLICIES[remat_policy], prevent_cse=False)
  return body


# ------------------------------------------------------------------------------------------------
# Modules


class ViTBlock(nn.Module):
  """timm `Block` (pre-norm, no LayerScale): submodules `norm1`, `attn` (packed `qkv`, `out`),
  `norm2`, `mlp` (`fc1`, `fc2`) — the names of `TransformerEncoderLayer`, plus drop path.
  Call `(x, rate=0.0, *, deterministic=True)`: `rate` this block's drop-path probability."""
  num_heads: int
  mlp_dim: int
  qkv_bias: bool = True
  dropout: float = 0.0
  attn_dropout: float = 0.0
  ln_eps: float = LN_EPS
  drop_path_rng: str = "dropout"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, rate=0.0, *, deterministic: bool = True) -> jax.Array:
    ln = lambda name: layer_norm(self.ln_eps, self.dtype, self.param_dtype, name)
    attn = MultiHeadAttention(self.num_heads, qkv_layout="packed", qkv_bias=self.qkv_bias,
                              attn_dropout=self.attn_dropout, proj_dropout=self.dropout,
                              dtype=self.dtype, param_dtype=self.param_dtype, name="attn")
    mlp = FeedForward(self.mlp_dim, activation="gelu", dropout=self.dropout, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="mlp")
    no_drop = deterministic or (isinstance(rate, (int, float)) and rate == 0)

    def branch(y):
      return y if no_drop else drop_path(y, rate, self.make_rng(self.drop_path_rng))
    x = x + branch(attn(ln("norm1")(x), deterministic=deterministic))
    x = x + branch(mlp(ln("norm2")(x), deterministic=deterministic))
    return x


# MAE's initialisers: xavier-uniform patch embedding on the (D, p·p·C) view of the conv weight.
_patch_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2),
                                               out_axis=-1)


class ViT(nn.Module):
  """Vision Transformer, timm layout; see the module docstring for the parts and conventions.

  Attributes:
    img_size: the (square, or (H, W)) image size the position table is built for.
    patch_size, embed_dim, depth, num_heads, mlp_ratio: the architecture (`PRESETS`).
    num_classes: head outputs; 0 = no head (`__call__` returns the pooled features).
    global_pool: "avg" (patch-token mean → `fc_norm`) or "token" (final `norm`, class token).
    pos_embed: "sincos" (fixed, `constants/pos_embed`) or "learn" (`params/pos_embed`).
    dropout / attn_dropout / head_dropout: timm proj_drop_rate / attn_drop_rate / drop_rate.
    drop_path_rate: stochastic depth of the last block (linear from 0); `drop_path_rng` its stream.
    scan, remat_policy: layer layout and rematerialisation (see the module docstring).
  """
  img_size: int | tuple[int, int] = 224
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  num_classes: int = 0
  global_pool: str = "avg"
  pos_embed: str = "sincos"
  qkv_bias: bool = True
  ln_eps: float = LN_EPS
  dropout: float = 0.0
  attn_dropout: float = 0.0
  head_dropout: float = 0.0
  drop_path_rate: float = 0.0
  drop_path_rng: str = "dropout"
  scan: bool = False
  remat_policy: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def grid_size(self) -> tuple[int, int]:
    h, w = (self.img_size, self.img_size) if isinstance(self.img_size, int) else self.img_size
    if h % self.patch_size or w % self.patch_size:
      raise UserError(f"ViT: img_size {self.img_size} is not a multiple of patch_size "
                      f"{self.patch_size}")
    return h // self.patch_size, w // self.patch_size

  @property
  def num_patches(self) -> int:
    gh, gw = self.grid_size
    return gh * gw

  def setup(self):
    if self.global_pool not in POOLS:
      raise UserError(f"ViT: global_pool={self.global_pool!r}; expected one of {POOLS}")
    if self.pos_embed not in POS_EMBEDS:
      raise UserError(f"ViT: pos_embed={self.pos_embed!r}; expected one of {POS_EMBEDS}")
    if self.remat_policy not in REMAT_POLICIES:
      raise UserError(f"ViT: remat_policy={self.remat_policy!r}; expected one of "
                      f"{sorted(REMAT_POLICIES)}")
    d, p = self.embed_dim, self.patch_size
    self.patch_embed = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                               param_dtype=self.param_dtype, kernel_init=_patch_init,
                               name="patch_embed")
    self.cls_token = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, d),
                                self.param_dtype)
    shape = (1, 1 + self.num_patches, d)
    if self.pos_embed == "learn":
      self.pos_table = self.param("pos_embed", nn.initializers.truncated_normal(0.02), shape,
                                  self.param_dtype)
    else:
      self.pos_table = self.variable(
          "constants", "pos_embed",
          lambda: jnp.asarray(sincos_2d_pos_embed(d, self.grid_size)[None])).value
    block = functools.partial(
        ViTBlock, self.num_heads, int(d * self.mlp_ratio), qkv_bias=self.qkv_bias,
        dropout=self.dropout, attn_dropout=self.attn_dropout, ln_eps=self.ln_eps,
        drop_path_rng=self.drop_path_rng, dtype=self.dtype, param_dtype=self.param_dtype)
    if self.scan:
      self.blocks = block(name=SCAN_BLOCKS)
    else:
      self.blocks = [block(name=f"{BLOCK_PREFIX}{i}") for i in range(self.depth)]
    ln = lambda name: layer_norm(self.ln_eps, self.dtype, self.param_dtype, name)
    if self.global_pool == "token":
      self.norm = ln("norm")
    else:
      self.fc_norm = ln("fc_norm")
    if self.num_classes:
      self.head = Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                        kernel_init=nn.initializers.truncated_normal(2e-5),
                        bias_init=nn.initializers.zeros, name="head")
    self.head_drop = nn.Dropout(self.head_dropout)

  # --------------------------------------------------------------------------------------------
  # Parts

  def embed(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) → (B, N, D): patch embedding + position embedding (no class token)."""
    gh, gw = self.grid_size
    if x.shape[1:3] != (gh * self.patch_size, gw * self.patch_size):
      raise UserError(f"ViT: images of {x.shape[1:3]} given, the position table is for "
                      f"img_size {self.img_size} (interop.vit.interpolate_pos_embed resizes "
                      "a learned table)")
    t = self.patch_embed(x)
    t = t.reshape(t.shape[0], gh * gw, t.shape[-1])          # row-major (timm flatten(2))
    return t + self.pos_table[:, 1:].astype(self.dtype)

  def add_cls(self, tokens: jax.Array) -> jax.Array:
    """(B, n, D) → (B, 1 + n, D): class token + its position embedding, then the tokens."""
    cls = (self.cls_token + self.pos_table[:, :1]).astype(self.dtype)
    cls = jnp.broadcast_to(cls, (tokens.shape[0], 1, cls.shape[-1]))
    return jnp.concatenate([cls, tokens.astype(self.dtype)], axis=1)

  def encode(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
    """The `depth` blocks on a (B, L, D) sequence (no final norm)."""
    det = not train
    rates = drop_path_rates(self.drop_path_rate, self.depth)

    def apply_block(mdl, y, rate):
      return mdl(y, rate, deterministic=det)
    x = tokens.astype(self.dtype)
    if self.scan:
      fixed = self.drop_path_rate == 0 or not train     # no traced rate: no rng drawn

      def body(mdl, y, rate):
        return apply_block(mdl, y, 0.0 if fixed else rate), None
      body = scan_body(body, self.remat_policy, self.is_initializing())
      split = {"params": True, "dropout": True, self.drop_path_rng: True}
      x, _ = nn.scan(body, variable_axes={"params": 0}, split_rngs=split,
                     length=self.depth)(self.blocks, x, jnp.asarray(rates, jnp.float32))
      return x
    for blk, rate in zip(self.blocks, rates):
      fn = functools.partial(apply_block, rate=rate)
      if self.remat_policy != "none":
        fn = nn.remat(fn, policy=REMAT_POLICIES[self.remat_policy])
      x = fn(blk, x)
    return x

  def final_norm(self, tokens: jax.Array) -> jax.Array:
    """LayerNorm `norm` (global_pool="token"); identity for "avg" (timm: norm is Identity)."""
    return self.norm(tokens) if self.global_pool == "token" else tokens

  def forward_features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """(B, H, W, C) → (B, 1 + N, D): timm `forward_features`."""
    return self.final_norm(self.encode(self.add_cls(self.embed(x)), train=train))

  def forward_head(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
    """(B, 1 + N, D) → pooled features (B, D) or logits (B, num_classes): timm `forward_head`."""
    if self.global_pool == "avg":
      f = self.fc_norm(jnp.mean(tokens[:, 1:], axis=1))
    else:
      f = tokens[:, 0]
    f = self.head_drop(f, deterministic=not train)
    return self.head(f) if self.num_classes else f

  def __call__(self, x: jax.Array, *, train: bool = False,
               return_tokens: bool = False) -> jax.Array:
    tokens = self.forward_features(x, train=train)
    out = tokens if return_tokens else self.forward_head(tokens, train=train)
    return out.astype(jnp.promote_types(self.param_dtype, jnp.float32))


def vit(preset: str, **kwargs) -> ViT:
  """`ViT(**PRESETS[preset], **kwargs)`."""
  if preset not in PRESETS:
    raise UserError(f"ViT preset {preset!r}; expected one of {sorted(PRESETS)}")
  return ViT(**{**PRESETS[preset], **kwargs})


vit_b16 = functools.partial(vit, "vit_b16")
vit_l16 = functools.partial(vit, "vit_l16")
vit_h14 = functools.partial(vit, "vit_h14")


# ------------------------------------------------------------------------------------------------
# Layouts and initialisation


def is_scanned(params: Mapping[str, Any]) -> bool:
  return SCAN_BLOCKS in params


def to_scanned(params: Mapping[str, Any], depth: int) -> dict[str, Any]:
  """Looped `blocks_0 … blocks_{depth-1}` → scanned `blocks` (exact; any other key kept)."""
  return scan_utils.stack_layers(params, depth, prefix=BLOCK_PREFIX, stacked=SCAN_BLOCKS)


def to_looped(params: Mapping[str, Any], depth: int | None = None) -> dict[str, Any]:
  """Scanned `blocks` → looped `blocks_0 …` (exact)."""
  return scan_utils.unstack_layers(params, depth, prefix=BLOCK_PREFIX, stacked=SCAN_BLOCKS)


def mae_init(params: Mapping[str, Any], key: jax.Array) -> dict[str, Any]:
  """MAE's `_init_weights` for the Dense layers of the blocks: kernels xavier-uniform on
  (fan_in, fan_out) = the last two axes (per layer in the scanned layout), biases zero. The patch
  embedding, cls token, LayerNorms and head already follow MAE at init; nothing else changes."""
  flat = {jax.tree_util.keystr(p): (p, v) for p, v in jax.tree_util.tree_leaves_with_path(params)}
  keys = dict(zip(sorted(flat), jax.random.split(key, len(flat))))

  def redraw(path, v):
    name = jax.tree_util.keystr(path)
    top = str(getattr(path[0], "key", ""))
    if not (top.startswith(BLOCK_PREFIX) or top == SCAN_BLOCKS) or "norm" in name:
      return v
    if name.endswith("['bias']"):
      return jnp.zeros_like(v)
    fan_in, fan_out = v.shape[-2], v.shape[-1]
    bound = float(np.sqrt(6.0 / (fan_in + fan_out)))
    return jax.random.uniform(keys[name], v.shape, v.dtype, -bound, bound)
  return jax.tree_util.tree_map_with_path(redraw, dict(params))
