"""ViT frame model: an (MAE-pretrained) ViT fine-tuned on single face crops with per-frame heads.

The ABAW6 system's image model (issue 13 item 6): MAE ViT-B/16 pretrained on face images
(`models/mae.py`), fine-tuned on Aff-Wild2 expression labels as MAE's `main_finetune.py` does, then
its pooled 768-d features feed the TCN + Transformer (`python -m data_prep features` calls `embed`).

    x uint8/255 in [0, 1] → (x − ImageNet mean) / ImageNet std  (inside the model: MAE's
        `transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)`)
    → `encoder` = jaxaffect.nn.vit.ViT(num_classes=0, global_pool="avg"): patch tokens → blocks
        (drop path, linear rule) → mean of the patch tokens → `fc_norm`  (MAE fine-tuning: the
        pretraining encoder's final `norm` is dropped and `fc_norm` starts fresh)
    → `embed` = that pooled feature (B, D) (768 for ViT-B)
    → dropout (`head_dropout`) → heads `heads_expr` (num_expr logits), optional `heads_va`
        (2, then tanh) and `heads_au` (num_au logits), as `frame_resnet.FrameResNet`.
Heads are initialised as MAE's fine-tuning head: N(0, 2e-5) truncated, zero bias.

Parameter paths line up with the MAE pretraining model, whose encoder is also the submodule
`encoder` (a ViT): `params/encoder/{patch_embed,cls_token,blocks_i|blocks}/…` and, for the fixed
sin-cos table, `constants/encoder/pos_embed`. A fine-tune starts from a pretraining checkpoint with
`config.init_from.keep = ("^params/encoder/", "^constants/encoder/")`; the pretraining encoder's
`params/encoder/norm` is unused here (reported "unused") and `fc_norm` + heads stay fresh.

Position table: "sincos" keeps MAE's fixed table (a constant, as in pretraining). MAE's fine-tuning
code trains the table (timm's `pos_embed` Parameter loaded from the checkpoint); with `init_from`
from our pretraining checkpoints the table stays fixed here (a recorded deviation: a learned table
would start from timm's random init, as `init_from` does not move a constant into `params`).
"learn" is for timm / official MAE fine-tuned checkpoints (`jaxaffect import`).

Input: `(N, H, W, 3)` float pixels in [0, 1] (the `frame_labels` task's `image`/255).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.errors import UserError
from jaxaffect.nn.layers import Dense
from jaxaffect.nn.vit import ViT

Dtype = Any

OUTPUTS = ("va", "expr", "au")
IMAGENET_MEAN = (0.485, 0.456, 0.406)       # timm IMAGENET_DEFAULT_MEAN (MAE's Normalize)
IMAGENET_STD = (0.229, 0.224, 0.225)        # timm IMAGENET_DEFAULT_STD


class ViTFrames(nn.Module):
  """ViT (`encoder`, avg pool + fc_norm) + per-frame VA / EXPR / AU heads (module docstring)."""
  outputs: Sequence[str] = ("expr",)
  num_expr: int = 8
  num_au: int = 12
  img_size: int = 224
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  pos_embed: str = "sincos"        # "sincos" (MAE, fixed) or "learn" (timm checkpoints)
  drop_path_rate: float = 0.1      # MAE fine-tuning --drop_path 0.1 (ViT-B)
  head_dropout: float = 0.0        # before the heads (timm drop_rate)
  normalize: bool = True           # ImageNet mean/std inside the model
  scan: bool = False               # nn.scan over the blocks (fast compile; see nn/vit.py)
  remat_policy: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    unknown = [o for o in self.outputs if o not in OUTPUTS]
    if unknown or not self.outputs:
      raise UserError(f"ViTFrames.outputs={tuple(self.outputs)}: expected a non-empty subset of "
                      f"{OUTPUTS}")
    self.encoder = ViT(img_size=self.img_size, patch_size=self.patch_size,
                       embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads,
                       mlp_ratio=self.mlp_ratio, num_classes=0, global_pool="avg",
                       pos_embed=self.pos_embed, drop_path_rate=self.drop_path_rate,
                       scan=self.scan, remat_policy=self.remat_policy, dtype=self.dtype,
                       param_dtype=self.param_dtype)
    dims = {"va": 2, "expr": self.num_expr, "au": self.num_au}
    init = nn.initializers.truncated_normal(2e-5)          # MAE: trunc_normal_(head.weight, 2e-5)
    self.heads = {o: Dense(dims[o], dtype=self.dtype, param_dtype=self.param_dtype,
                           kernel_init=init, bias_init=nn.initializers.zeros)
                  for o in self.outputs}                    # heads_va, heads_expr, heads_au
    self.drop = nn.Dropout(self.head_dropout)

  def _normalize(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    if self.normalize:
      x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
    return x.astype(self.dtype)

  def embed(self, x: jax.Array, train: bool = False) -> jax.Array:
    """`(N, H, W, 3)` pixels in [0, 1] → the pooled `fc_norm` features `(N, embed_dim)` float32
    (the feature stream `data_prep features` writes)."""
    return self.encoder(self._normalize(x), train=train)

  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    f = self.drop(self.embed(x, train=train), deterministic=not train)
    out = {o: self.heads[o](f).astype(jnp.float32) for o in self.outputs}
    if "va" in out:
      out["va"] = jnp.tanh(out["va"])
    return out


# The model-module convention (models/registry.py): `config.model_name = "vit_frames"`.
Model = ViTFrames


def torch_mapping():
  """timm `VisionTransformer(global_pool='avg', num_classes=0)` keys + `{va,expr,au}_head`
  (`jaxaffect.interop.vit_frames`; looped or scanned, either position table)."""
  from jaxaffect.interop import vit_frames
  return vit_frames.MAPPING


def bench_model():
  """`jaxaffect bench vit_frames [--plan]` (no PyTorch reference: timm's ViT is the reference of
  the encoder's equivalence tests)."""
  from jaxaffect.bench.core import BenchModel
  return BenchModel("vit_frames", "vit_frames:b16", input_key="image",
                    unit="images")


def plan_batch(config, shapes: dict) -> dict:
  """`bench --plan`: the batch of the data config's stand-in record plus the per-frame labels of
  `config.model.outputs` (shapes only)."""
  b = shapes["image"].shape[0]
  f32, i32 = jnp.float32, jnp.int32
  extra = {"va": ((b, 2), f32), "va_mask": ((b,), f32), "expr": ((b,), i32),
           "expr_mask": ((b,), f32), "au": ((b, config.model.num_au), f32),
           "au_mask": ((b, config.model.num_au), f32)}
  out = {k: v for k, v in shapes.items() if k in ("image", "mask")}
  for o in config.model.outputs:
    for k in (o, f"{o}_mask"):
      out[k] = jax.ShapeDtypeStruct(*extra[k])
  return out
