"""MAE pretraining (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"), as
facebookresearch/mae `models_mae.MaskedAutoencoderViT`: the ABAW6 system's image pretraining.

    x (B, H, W, 3) uint8, or float pixels in [0, 1]
    → (x − ImageNet mean) / ImageNet std  (inside the model: MAE's `transforms.Normalize`; the
        image the loss target is computed from, as MAE computes it from the normalised batch)
    → `encoder.embed`: patch tokens + fixed sin-cos position table  (B, L, D), L = (H/p)·(W/p)
    → `random_masking` (per sample: argsort of uniform noise from the `masking` rng stream, or
        injected `noise`; keep the first ⌊L·(1 − mask_ratio)⌋ = `len_keep` of the shuffle)
    → `encoder.add_cls` → `encoder.encode` (the blocks) → `encoder.final_norm` (`norm`)
    → `decoder_embed` Dense(D → Dd) → append `mask_token`s, unshuffle with `ids_restore`
        (the class token stays first) → + `decoder_pos_embed` (fixed sin-cos, `constants`)
    → `decoder_blocks_i` (timm Block: Dd wide, `decoder_num_heads`, mlp 4, qkv bias, LN eps 1e-6)
    → `decoder_norm` → `decoder_pred` Dense(Dd → p·p·3) → drop the class token: `pred` (B, L, p·p·3).
Loss (`masked_patch_loss`, MAE `forward_loss`): target = `patchify(normalised image)` in MAE's
`nhwpqc` order (patch row-major, then pixel row, pixel column, channel); with `norm_pix_loss` every
target patch is standardised by its own mean and UNBIASED variance: (t − mean)/sqrt(var + 1e-6).
Per patch the mean squared error over its p·p·3 values, averaged over the masked patches of the
whole batch (Σ loss·mask / Σ mask; padding rows of an eval batch weigh 0).

The encoder is `jaxaffect.nn.vit.ViT` as the submodule `encoder` (global_pool="token",
num_classes=0, sin-cos table), so the fine-tuning model (`models/vit_frames.py`) takes its weights
with `init_from.keep = ("^params/encoder/", "^constants/encoder/")`.

Initialisation (`init_variables`, MAE `initialize_weights`): every Linear xavier-uniform with zero
bias (the blocks through `vit.mae_init`), the patch embedding xavier-uniform on its flattened
(D, p·p·3) view, `cls_token` and `mask_token` N(0, 0.02²), LayerNorms 1 / 0.

Parameters: MAE ViT-B/16 at 224 px has 111,907,840 values in MAE's `model.parameters()`, which
include the two frozen sin-cos tables (pos_embed 197·768 + decoder_pos_embed 197·512 = 252,160).
Here those tables are `constants` (never trained or decayed): 111,655,680 `params` + 252,160
`constants` = 111,907,840 (tested with `jax.eval_shape`).

Layouts: `scan=True` scans the encoder blocks (`encoder/blocks`) and the decoder blocks
(`decoder_blocks`, leading layer axis); `remat_policy` applies to both. `to_looped` / `to_scanned`
convert; the PyTorch table (`jaxaffect.interop.mae`) is written for the looped layout.
Evaluation without `noise` and without a `masking` rng uses the fixed key 0 (deterministic); in
training the `masking` stream is required.
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
from jaxaffect.nn import vit as vit_lib
from jaxaffect.nn.attention import REMAT_POLICIES
from jaxaffect.nn.layers import Dense, layer_norm
from jaxaffect.nn.vit import ViT, ViTBlock

Dtype = Any
IMAGENET_MEAN = (0.485, 0.456, 0.406)       # timm IMAGENET_DEFAULT_MEAN (MAE's Normalize)
IMAGENET_STD = (0.229, 0.224, 0.225)        # timm IMAGENET_DEFAULT_STD
DEC_PREFIX = "decoder_blocks_"              # looped decoder blocks (torch decoder_blocks.i)
DEC_SCAN = "decoder_blocks"                 # scanned decoder blocks
NORM_PIX_EPS = 1e-6                         # MAE forward_loss: (target - mean) / (var + 1e-6)**.5


# ------------------------------------------------------------------------------------------------
# Patches, masking, targets and losses (pure functions; the task and the tests use them)


def patchify(imgs: jax.Array, p: int) -> jax.Array:
  """(B, H, W, C) → (B, (H/p)·(W/p), p·p·C), MAE `patchify`: patches row-major over the grid,
  each flattened in MAE's `nhwpqc` order: value index = (pixel row · p + pixel column) · C + channel."""
  b, hh, ww, c = imgs.shape
  h, w = hh // p, ww // p
  x = imgs.reshape(b, h, p, w, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * w, p * p * c)


def unpatchify(x: jax.Array, p: int, h: int, w: int, c: int = 3) -> jax.Array:
  """Inverse of `patchify`: (B, h·w, p·p·C) → (B, h·p, w·p, C)."""
  b = x.shape[0]
  x = x.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c)


def random_masking(noise: jax.Array, mask_ratio: float):
  """MAE `random_masking` from its noise (B, L): `ids_shuffle = argsort(noise)`, `ids_restore =
  argsort(ids_shuffle)`, keep `ids_shuffle[:, :len_keep]` with len_keep = int(L·(1 − mask_ratio))
  (exactly that many per sample). Returns (ids_keep (B, len_keep), mask (B, L) 1 = removed,
  ids_restore (B, L))."""
  n, length = noise.shape
  len_keep = int(length * (1 - mask_ratio))
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  mask = (ids_restore >= len_keep).astype(jnp.float32)     # = gather([0]*keep + [1]*rest, restore)
  return ids_shuffle[:, :len_keep], mask, ids_restore


def patch_stats(patches: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-patch mean and UNBIASED variance (torch `.var(dim=-1)`) over the last axis."""
  mean = jnp.mean(patches, axis=-1, keepdims=True)
  var = jnp.sum(jnp.square(patches - mean), axis=-1, keepdims=True) / (patches.shape[-1] - 1)
  return mean, var


def patch_target(imgs: jax.Array, p: int, norm_pix_loss: bool) -> jax.Array:
  """The loss target of MAE `forward_loss` from the NORMALISED images (B, H, W, 3)."""
  t = patchify(imgs.astype(jnp.float32), p)
  if norm_pix_loss:
    mean, var = patch_stats(t)
    t = (t - mean) / jnp.sqrt(var + NORM_PIX_EPS)
  return t


def per_patch_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error of each patch (B, L)."""
  return jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)


def masked_patch_loss(pred, target, mask, weight=None) -> jax.Array:
  """MAE `forward_loss`: per-patch MSE averaged over the removed patches of the batch
  (Σ loss·mask / Σ mask); `weight` (B,) zeroes examples (padding rows)."""
  m = mask if weight is None else mask * weight[:, None].astype(mask.dtype)
  return jnp.sum(per_patch_loss(pred, target) * m) / jnp.maximum(jnp.sum(m), 1.0)


def mean_baseline_pred(imgs: jax.Array, mask: jax.Array, p: int, norm_pix_loss: bool) -> jax.Array:
  """The reference predictor of the learning test: every patch = the mean of the image's VISIBLE
  pixel values (one number per image, over rows, columns and channels of the normalised image, as
  the target), put through the target's own transform (`patch_target`): without `norm_pix_loss`
  that constant; with it, a constant patch minus its mean is 0 (so the baseline predicts 0, the
  mean of every standardised patch, loss ≈ (n − 1)/n). Returns (B, L, p·p·3)."""
  t = patchify(imgs.astype(jnp.float32), p)
  vis = (1.0 - mask)[:, :, None]
  mean = jnp.sum(t * vis, axis=(1, 2)) / jnp.maximum(jnp.sum(vis, axis=(1, 2)) * t.shape[-1], 1.0)
  base = jnp.broadcast_to(mean[:, None, None], t.shape)
  if norm_pix_loss:                 # (c − mean(c)) / sqrt(0 + 1e-6) = 0 exactly
    base = jnp.zeros_like(t)
  return base


def pred_to_pixels(pred, imgs, p: int, norm_pix_loss: bool, normalize: bool) -> jax.Array:
  """Predicted patches → images in [0, 1] (for the reconstruction sheet). With `norm_pix_loss` the
  prediction is de-standardised with the TRUE patch's mean and variance (the usual MAE
  visualisation: the model predicts shape, not each patch's brightness)."""
  t = patchify(imgs.astype(jnp.float32), p)
  x = pred.astype(jnp.float32)
  if norm_pix_loss:
    mean, var = patch_stats(t)
    x = x * jnp.sqrt(var + NORM_PIX_EPS) + mean
  _, hh, ww, c = imgs.shape
  out = unpatchify(x, p, hh // p, ww // p, c)
  if normalize:
    out = out * jnp.asarray(IMAGENET_STD, jnp.float32) + jnp.asarray(IMAGENET_MEAN, jnp.float32)
  return jnp.clip(out, 0.0, 1.0)


# ------------------------------------------------------------------------------------------------
# The model


class MAE(nn.Module):
  """MaskedAutoencoderViT (module docstring). `__call__(x, *, train=False, noise=None)` returns
  `{"pred" (B, L, p·p·3), "target" (same), "mask" (B, L), "ids_restore", "ids_keep",
  "image" (the normalised input, float32)}`; the loss is `masked_patch_loss(pred, target, mask)`."""
  img_size: int = 224
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  decoder_embed_dim: int = 512
  decoder_depth: int = 8
  decoder_num_heads: int = 16
  mlp_ratio: float = 4.0
  mask_ratio: float = 0.75
  norm_pix_loss: bool = False     # MAE's default; its pretraining recipe sets --norm_pix_loss
  normalize: bool = True          # ImageNet mean/std inside the model
  scan: bool = False              # nn.scan over encoder and decoder blocks
  remat_policy: str = "none"      # none | full | dots_saveable | dots_with_no_batch_dims_saveable
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def grid_size(self) -> tuple[int, int]:
    h, w = (self.img_size,) * 2 if isinstance(self.img_size, int) else tuple(self.img_size)
    if h % self.patch_size or w % self.patch_size:
      raise UserError(f"MAE: img_size {self.img_size} is not a multiple of patch_size "
                      f"{self.patch_size}")
    return h // self.patch_size, w // self.patch_size

  def setup(self):
    if not 0.0 <= self.mask_ratio < 1.0:
      raise UserError(f"MAE: mask_ratio={self.mask_ratio}; expected a value in [0, 1)")
    if self.remat_policy not in REMAT_POLICIES:
      raise UserError(f"MAE: remat_policy={self.remat_policy!r}; expected one of "
                      f"{sorted(REMAT_POLICIES)}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = ViT(img_size=self.img_size, patch_size=self.patch_size,
                       embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads,
                       mlp_ratio=self.mlp_ratio, num_classes=0, global_pool="token",
                       pos_embed="sincos", scan=self.scan, remat_policy=self.remat_policy, **kw)
    dd, p = self.decoder_embed_dim, self.patch_size
    xavier, zeros = nn.initializers.xavier_uniform(), nn.initializers.zeros
    self.decoder_embed = Dense(dd, kernel_init=xavier, bias_init=zeros, **kw)
    self.mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, dd),
                                 self.param_dtype)
    self.decoder_pos = self.variable(
        "constants", "decoder_pos_embed",
        lambda: jnp.asarray(vit_lib.sincos_2d_pos_embed(dd, self.grid_size)[None])).value
    block = functools.partial(ViTBlock, self.decoder_num_heads, int(dd * self.mlp_ratio),
                              qkv_bias=True, **kw)
    if self.scan:
      self.decoder_blocks = block(name=DEC_SCAN)
    else:
      self.decoder_blocks = [block(name=f"{DEC_PREFIX}{i}") for i in range(self.decoder_depth)]
    self.decoder_norm = layer_norm(vit_lib.LN_EPS, self.dtype, self.param_dtype, "decoder_norm")
    self.decoder_pred = Dense(p * p * 3, kernel_init=xavier, bias_init=zeros, **kw)

  def preprocess(self, x: jax.Array) -> jax.Array:
    """uint8 (÷255) or [0, 1] float pixels → the normalised float32 image."""
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    if self.normalize:
      x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
    return x

  def _decoder_blocks(self, x: jax.Array, train: bool) -> jax.Array:
    det = not train

    def apply_block(mdl, y):
      return mdl(y, 0.0, deterministic=det)
    if self.scan:
      def body(mdl, y, _):
        return apply_block(mdl, y), None
      body = vit_lib.scan_body(body, self.remat_policy, self.is_initializing())  # + FSDP gather
      x, _ = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True,
                                                                     "dropout": True},
                     length=self.decoder_depth)(self.decoder_blocks, x,
                                                jnp.zeros((self.decoder_depth,)))
      return x
    for blk in self.decoder_blocks:
      fn = apply_block
      if self.remat_policy != "none":
        fn = nn.remat(fn, policy=REMAT_POLICIES[self.remat_policy])
      x = fn(blk, x)
    return x

  def decode(self, latent: jax.Array, ids_restore: jax.Array, *, train: bool = False):
    """MAE `forward_decoder`: (B, 1 + len_keep, D) encoder output → (B, L, p·p·3)."""
    x = self.decoder_embed(latent)
    b, length = ids_restore.shape
    n_mask = length + 1 - x.shape[1]
    tokens = jnp.broadcast_to(self.mask_token.astype(x.dtype), (b, n_mask, x.shape[-1]))
    x_ = jnp.concatenate([x[:, 1:], tokens], axis=1)
    x_ = jnp.take_along_axis(x_, ids_restore[:, :, None], axis=1)     # unshuffle
    x = jnp.concatenate([x[:, :1], x_], axis=1) + self.decoder_pos.astype(x.dtype)
    x = self.decoder_norm(self._decoder_blocks(x, train))
    return self.decoder_pred(x)[:, 1:]

  def encode_visible(self, imgs: jax.Array, noise: jax.Array, *, train: bool = False):
    """MAE `forward_encoder` on a normalised image: (latent, mask, ids_restore, ids_keep)."""
    enc = self.encoder
    tokens = enc.embed(imgs.astype(self.dtype))
    ids_keep, mask, ids_restore = random_masking(noise, self.mask_ratio)
    vis = jnp.take_along_axis(tokens, ids_keep[:, :, None], axis=1)
    latent = enc.final_norm(enc.encode(enc.add_cls(vis), train=train))
    return latent, mask, ids_restore, ids_keep

  def __call__(self, x: jax.Array, *, train: bool = False,
               noise: jax.Array | None = None) -> dict[str, jax.Array]:
    imgs = self.preprocess(x)
    gh, gw = self.grid_size
    if noise is None:
      if self.has_rng("masking"):
        key = self.make_rng("masking")
      elif not train:
        key = jax.random.key(0)
      else:
        raise UserError("MAE: training needs the 'masking' rng stream (or injected noise)")
      noise = jax.random.uniform(key, (x.shape[0], gh * gw))
    latent, mask, ids_restore, ids_keep = self.encode_visible(imgs, noise, train=train)
    pred = self.decode(latent, ids_restore, train=train).astype(jnp.float32)
    return {"pred": pred, "target": patch_target(imgs, self.patch_size, self.norm_pix_loss),
            "mask": mask, "ids_restore": ids_restore, "ids_keep": ids_keep, "image": imgs}


# The model-module convention (models/registry.py): `config.model_name = "mae"`.
Model = MAE


# ------------------------------------------------------------------------------------------------
# Layouts and initialisation


def to_looped(params: Mapping[str, Any]) -> dict[str, Any]:
  """Scanned encoder and decoder blocks → `encoder/blocks_i`, `decoder_blocks_i` (exact)."""
  out = dict(params)
  if vit_lib.is_scanned(out["encoder"]):
    out["encoder"] = vit_lib.to_looped(out["encoder"])
  if DEC_SCAN in out:
    out = scan_utils.unstack_layers(out, None, prefix=DEC_PREFIX, stacked=DEC_SCAN)
  return out


def to_scanned(params: Mapping[str, Any], depth: int, decoder_depth: int) -> dict[str, Any]:
  out = dict(params)
  if not vit_lib.is_scanned(out["encoder"]):
    out["encoder"] = vit_lib.to_scanned(out["encoder"], depth)
  if DEC_SCAN not in out:
    out = scan_utils.stack_layers(out, decoder_depth, prefix=DEC_PREFIX, stacked=DEC_SCAN)
  return out


def mae_init(params: Mapping[str, Any], key: jax.Array) -> dict[str, Any]:
  """MAE `_init_weights` on the blocks (encoder and decoder): xavier-uniform kernels, zero biases
  (`vit.mae_init`); everything else already initialises as MAE."""
  k1, k2 = jax.random.split(key)
  out = dict(params)
  out["encoder"] = vit_lib.mae_init(out["encoder"], k1)
  dec = {k: v for k, v in out.items() if k == DEC_SCAN or k.startswith(DEC_PREFIX)}
  renamed = {k.replace("decoder_", "", 1): v for k, v in dec.items()}   # blocks_i / blocks
  redrawn = vit_lib.mae_init(renamed, k2)
  out.update({"decoder_" + k: v for k, v in redrawn.items()})
  return out


def init_variables(module: MAE, rng: jax.Array, x: jax.Array) -> dict[str, Any]:
  """`module.init` + MAE's initialisation (`mae_init`)."""
  p_rng, m_rng, i_rng = jax.random.split(rng, 3)
  variables = dict(module.init({"params": p_rng, "masking": m_rng, "dropout": m_rng}, x,
                               train=False))
  variables["params"] = mae_init(variables["params"], i_rng)
  return variables


def make_task(module, task_config):
  """The pretraining task (`models/mae_task.py`)."""
  from jaxaffect.models import mae_task
  kwargs = {k: v for k, v in dict(task_config).items() if k != "name"}
  try:
    return mae_task.MAEPretrainTask(module=module, **kwargs)
  except TypeError as e:
    raise UserError(f"config.task of mae: {e}") from None


def torch_mapping():
  """facebookresearch/mae `MaskedAutoencoderViT` state-dict keys (`jaxaffect.interop.mae`)."""
  from jaxaffect.interop import mae
  return mae.MAPPING


def bench_model():
  """`jaxaffect bench mae [--plan] [--reference MAE_CHECKOUT]` (`jaxaffect.bench.mae`)."""
  from jaxaffect import bench
  return bench.MAE_BENCH


def plan_batch(config, shapes: dict) -> dict:
  """`bench --plan`: images and the example mask (shapes only)."""
  return {k: v for k, v in shapes.items() if k in ("image", "mask")}


def num_values(variables: Mapping[str, Any]) -> dict[str, int]:
  """{"params", "constants", "total"}: counted values (total = MAE's `model.parameters()`)."""
  count = lambda t: int(sum(np.prod(np.shape(v)) for v in jax.tree.leaves(t)))
  p, c = count(variables.get("params", {})), count(variables.get("constants", {}))
  return {"params": p, "constants": c, "total": p + c}
