"""Former-DFER (Zhao & Liu, ACM MM 2021): CS-Former (ResNet-18 + spatial transformer) per frame,
T-Former (temporal transformer with a class token) over the clip, linear classifier.

Follows the official code (`zengqunzhao/Former-DFER`, `models/{S,T,ST}_Former.py`); equivalence
with it is tested through `jaxaffect.interop` (official key names, `load_state_dict(strict=True)`):

* CS-Former: ResNet-18 stem + layer1..3 per frame (112 → 7×7×256), tokens in row-major (h, w)
  order plus a learnable `pos_embedding` (torch.randn init, std 1), `num_spatial_layers` pre-norm
  encoder layers (8 heads × 32, MLP 512, tanh-GELU as the official custom `GELU` class), tokens back
  to the map, layer4 (7 → 4), global average pool → 512 per frame. The official code has ONE
  spatial layer (`depth=1`) in every commit; the paper's Table 3 default is N=3: set
  `num_spatial_layers=3` to follow the paper.
* T-Former: `cls_token` prepended, `pos_embedding` (T+1 rows, std-1 init) added, 3 pre-norm layers
  (8 heads × 64, MLP 1024), output token 0 with no final LayerNorm.
* `fc`: Linear(512, num_classes).
Inputs are float pixels in [0,1] without mean/std normalisation (official data loader).

Scaling with `width` (64 = official): the CNN stage widths are `width·(1,2,4,8)`, so the spatial
token dim is `4·width` and the temporal dim `8·width`. The attention head dims and MLP widths given
by the fields are the width-64 values and are scaled by `width/64` (heads unchanged), so a
`width=16` smoke model is the official one shrunk 4× in every dim. At width 64 they are used as is.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.errors import UserError
from jaxaffect.nn.attention import TransformerEncoder
from jaxaffect.nn.layers import Dense
from jaxaffect.nn.resnet import ResNetStage, ResNetStem

Dtype = Any
REFERENCE_WIDTH = 64
OFFICIAL_NUM_PARAMS = 18_031_943   # GenerateModel(): sum(p.numel() for p in model.parameters())


def _scaled(value: int, width: int) -> int:
  if (value * width) % REFERENCE_WIDTH:
    raise UserError(f"{value}·width/{REFERENCE_WIDTH} is not an integer for width={width}")
  return value * width // REFERENCE_WIDTH


def _encoder(num_layers, heads, dim_head, mlp, dropout, dtype, param_dtype, name):
  # Former-DFER Transformer: Residual(PreNorm(Attention)) + Residual(PreNorm(FeedForward));
  # to_qkv Linear without bias, chunk(3) → (h d); LN eps 1e-5; tanh GELU; no final norm.
  return TransformerEncoder(
      num_layers=num_layers, num_heads=heads, head_dim=dim_head, mlp_dim=mlp, norm_first=True,
      activation="gelu_tanh", qkv_layout="packed", qkv_bias=False, dropout=dropout,
      attn_dropout=0.0, ln_eps=1e-5, final_norm=False, dtype=dtype, param_dtype=param_dtype,
      name=name)


class CSFormer(nn.Module):
  """Convolution-spatial transformer (official `S_Former.ResNet`): frames `(N, H, W, 3)` →
  `(N, 8·width)`. `pos_embedding` has `(H/16)·(W/16)` rows, fixed by the input shape at init."""
  width: int = 64
  num_layers: int = 1
  heads: int = 8
  dim_head: int = 32
  mlp_dim: int = 512
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    w = self.width
    x = ResNetStem(w, name="stem", **kw)(x, train=train)
    x = ResNetStage(w, 2, 1, name="layer1", **kw)(x, train=train)
    x = ResNetStage(2 * w, 2, 2, name="layer2", **kw)(x, train=train)
    x = ResNetStage(4 * w, 2, 2, name="layer3", **kw)(x, train=train)
    n, h, wd, c = x.shape
    tokens = x.reshape(n, h * wd, c)                     # torch: (b,c,h·w).permute(0,2,1)
    if self.has_variable("params", "pos_embedding"):
      rows = self.get_variable("params", "pos_embedding").shape[1]
      if rows != h * wd:
        raise UserError(f"CS-Former: the input gives {h}×{wd}={h * wd} tokens after layer3 but "
                        f"pos_embedding has {rows} rows (fixed by the image size at init)")
    pos = self.param("pos_embedding", nn.initializers.normal(1.0), (1, h * wd, c),
                     self.param_dtype)
    tokens = tokens + pos.astype(self.dtype)
    tokens = _encoder(self.num_layers, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                      self.dtype, self.param_dtype, "encoder")(tokens, deterministic=not train)
    x = tokens.reshape(n, h, wd, c)
    x = ResNetStage(8 * w, 2, 2, name="layer4", **kw)(x, train=train)
    return jnp.mean(x, axis=(1, 2))                      # AdaptiveAvgPool2d(1) + flatten


class TFormer(nn.Module):
  """Temporal transformer (official `T_Former.TFormer`): `(B, T, D)` → class token `(B, D)`.
  `pos_embedding` has `num_frames + 1` rows; shorter clips use its first T+1 rows (official
  `pos_embedding[:, :(n+1)]`)."""
  num_frames: int = 16
  num_layers: int = 3
  heads: int = 8
  dim_head: int = 64
  mlp_dim: int = 1024
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    b, t, d = x.shape
    if t > self.num_frames:
      raise UserError(f"T-Former: clip has {t} frames, more than num_frames={self.num_frames}")
    cls = self.param("cls_token", nn.initializers.normal(1.0), (1, 1, d), self.param_dtype)
    pos = self.param("pos_embedding", nn.initializers.normal(1.0), (1, self.num_frames + 1, d),
                     self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d)), x], axis=1)
    x = x + pos[:, :t + 1].astype(self.dtype)
    x = _encoder(self.num_layers, self.heads, self.dim_head, self.mlp_dim, self.dropout,
                 self.dtype, self.param_dtype, "encoder")(x, deterministic=not train)
    return x[:, 0]


class FormerDFER(nn.Module):
  """Former-DFER: `x (B, T, H, W, 3)` float pixels in [0,1] → logits `(B, num_classes)` (float32,
  or float64 for a float64 model).

  Defaults are the official code (`GenerateModel()`: N=1, M=3, 18,031,943 parameters at 112 px,
  16 frames). Any H, W that survive the ResNet strides and T ≤ num_frames work; the spatial
  positional embedding length is fixed by H, W at init. BatchNorm statistics are over all B·T frames
  (collection `batch_stats`); dropout uses the `dropout` rng stream.
  """
  num_classes: int = 7
  num_frames: int = 16
  num_spatial_layers: int = 1       # official code: depth=1; paper Table 3 default N=3
  num_temporal_layers: int = 3
  width: int = 64
  spatial_heads: int = 8
  spatial_dim_head: int = 32        # at width 64; scaled by width/64
  spatial_mlp: int = 512            # at width 64; scaled by width/64
  temporal_heads: int = 8
  temporal_dim_head: int = 64       # at width 64; scaled by width/64
  temporal_mlp: int = 1024          # at width 64; scaled by width/64
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if x.ndim != 5 or x.shape[-1] != 3:
      raise UserError(f"FormerDFER expects (B, T, H, W, 3) frames, got shape {x.shape}")
    b, t, h, w, c = x.shape
    kw = dict(dropout=self.dropout, dtype=self.dtype, param_dtype=self.param_dtype)
    s = lambda v: _scaled(v, self.width)
    frames = x.astype(self.dtype).reshape(b * t, h, w, c)
    f = CSFormer(self.width, self.num_spatial_layers, self.spatial_heads, s(self.spatial_dim_head),
                 s(self.spatial_mlp), name="cs_former", **kw)(frames, train=train)
    z = TFormer(self.num_frames, self.num_temporal_layers, self.temporal_heads,
                s(self.temporal_dim_head), s(self.temporal_mlp), name="t_former",
                **kw)(f.reshape(b, t, -1), train=train)
    logits = Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(z)
    return logits.astype(jnp.promote_types(self.dtype, jnp.float32))


# ----------------------------------------------------------------------------------------------
# Compute cost.


def _conv_out(n: int, k: int, s: int, p: int) -> int:
  return (n + 2 * p - k) // s + 1


def former_dfer_macs(num_spatial_layers: int = 1, num_temporal_layers: int = 3, *,
                     image_size: int | tuple[int, int] = 112, num_frames: int = 16,
                     width: int = 64, num_classes: int = 7, spatial_heads: int = 8,
                     spatial_dim_head: int = 32, spatial_mlp: int = 512, temporal_heads: int = 8,
                     temporal_dim_head: int = 64, temporal_mlp: int = 1024) -> dict[str, int]:
  """Multiply-accumulates of one clip (batch 1), counted like `thop`/`fvcore`/torch's
  FlopCounterMode÷2: convolutions, Linears and the two attention matmuls; BN, LN, softmax,
  activations, pooling and additions are not counted. Head dims/MLPs are the width-64 values,
  scaled like `FormerDFER`. Returns per-part counts and `total`.
  """
  hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  s = lambda v: _scaled(v, width)

  def conv(shape, cin, cout, k, stride, pad):
    oh, ow = (_conv_out(d, k, stride, pad) for d in shape)
    return (oh, ow), oh * ow * cout * cin * k * k

  def stage(shape, cin, cout, stride, blocks=2):
    macs = 0
    for i in range(blocks):
      st = stride if i == 0 else 1
      out, m1 = conv(shape, cin, cout, 3, st, 1)
      _, m2 = conv(out, cout, cout, 3, 1, 1)
      macs += m1 + m2
      if st != 1 or cin != cout:
        macs += conv(shape, cin, cout, 1, st, 0)[1]
      shape, cin = out, cout
    return shape, macs

  def encoder_layer(n, d, heads, dh, mlp):
    inner = heads * dh
    return (n * d * 3 * inner            # to_qkv
            + 2 * heads * n * n * dh     # q·kᵀ and attn·v
            + n * inner * d              # to_out
            + 2 * n * d * mlp)           # net.0, net.3

  shape, stem = conv(hw, 3, width, 7, 2, 3)
  shape = tuple(_conv_out(d, 3, 2, 1) for d in shape)   # maxpool
  shape, l1 = stage(shape, width, width, 1)
  shape, l2 = stage(shape, width, 2 * width, 2)
  shape, l3 = stage(shape, 2 * width, 4 * width, 2)
  n_tok = shape[0] * shape[1]
  s_enc = num_spatial_layers * encoder_layer(n_tok, 4 * width, spatial_heads,
                                             s(spatial_dim_head), s(spatial_mlp))
  shape, l4 = stage(shape, 4 * width, 8 * width, 2)
  t_enc = num_temporal_layers * encoder_layer(num_frames + 1, 8 * width, temporal_heads,
                                              s(temporal_dim_head), s(temporal_mlp))
  fc = 8 * width * num_classes
  out = {"resnet18": num_frames * (stem + l1 + l2 + l3 + l4),
         "spatial_encoder": num_frames * s_enc, "temporal_encoder": t_enc, "fc": fc}
  out["total"] = sum(out.values())
  return out


def num_params(params: Any) -> int:
  """The parameter count (`flops.num_params`, the one counter; paper tables live in flops.py)."""
  from jaxaffect import flops
  return flops.num_params(params)


# The model-module convention (models/registry.py): `config.model_name = "former_dfer"` finds these.
Model = FormerDFER


def torch_mapping():
  """The official PyTorch key layout (`jaxaffect.interop.former_dfer`)."""
  from jaxaffect.interop import former_dfer
  return former_dfer.MAPPING


def bench_model():
  """`jaxaffect bench former_dfer` (train step vs the official PyTorch code)."""
  from jaxaffect import bench
  return bench.FORMER_DFER
