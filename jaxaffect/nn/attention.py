"""Multi-head attention with explicit q/k/v layouts, and transformer encoder/decoder layers.

Layouts (parameter names → PyTorch, see `jaxaffect.interop.mapping`):
  * `qkv_layout="packed"` — one Dense `qkv` (dim → 3·H·Dh) whose output splits into
    q | k | v chunks, each `(h d)` with the head index outermost: Former-DFER `to_qkv`
    (`chunk(3)`, then `rearrange('b n (h d) -> b h n d')`), timm/MAE `attn.qkv`.
    Self-attention only.
  * `qkv_layout="separate"` — Dense `q`, `k`, `v` (each dim → H·Dh, same `(h d)` order). This is
    `torch.nn.MultiheadAttention`, whose `in_proj_weight` is `[Wq; Wk; Wv]` stacked on the output
    axis: `in_proj_weight = concat([q.kernel.T, k.kernel.T, v.kernel.T])`. Self- and
    cross-attention.
The output projection is Dense `out` (Former-DFER `to_out.0`, timm `proj`, torch `out_proj`).

Scores are `softmax(q·kᵀ·Dh^-0.5)` (Vaswani et al. Eq. 1; all official codes use this scale),
computed in (at least) float32. Attention-weight dropout (`attn_dropout`, torch MHA `dropout`) and
dropout after the output projection (`proj_dropout`, Former-DFER `to_out.1`, torch `dropout1`)
are separate.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.errors import UserError
from jaxaffect.nn.layers import Dense, get_activation, layer_norm

Dtype = Any
QKV_LAYOUTS = ("packed", "separate")
# `TransformerEncoder.remat_policy` → `jax.checkpoint` policy ("none": no rematerialisation).
REMAT_POLICIES = {
    "none": None,
    "full": None,                 # save nothing: recompute the whole layer
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
LAYER_PREFIX = "layer_"           # looped encoder layers: layer_0, layer_1, …
SCAN_NAME = "layers"              # scanned encoder: one submodule, leading layer axis


class MultiHeadAttention(nn.Module):
  """Multi-head (self or cross) attention.

  Attributes:
    num_heads: H.
    head_dim: Dh; default `in_dim // num_heads`.
    out_dim: output features; default the query input dim.
    qkv_layout: "packed" (Dense `qkv`) or "separate" (Dense `q`, `k`, `v`).
    qkv_bias: bias on the q/k/v projections (Former-DFER: False; torch MHA, timm ViT: True).
    out_bias: bias on the output projection.
    attn_dropout: dropout on the attention weights.
    proj_dropout: dropout after the output projection.

  Call: `x (B, Lq, D)`, `context (B, Lk, Dk)` (cross-attention, "separate" only),
  `bias` float broadcastable to `(B, H, Lq, Lk)`, added to the scaled logits (Swin relative-position
  bias, shifted-window −100 masks; torch `scaled_dot_product_attention(attn_mask=float)`), then
  `mask` broadcastable to `(B, H, Lq, Lk)`, True = may attend. The attention weights are sown to
  `intermediates/attention_weights` when that collection is mutable.
  """
  num_heads: int
  head_dim: int | None = None
  out_dim: int | None = None
  qkv_layout: str = "packed"
  qkv_bias: bool = False
  out_bias: bool = True
  attn_dropout: float = 0.0
  proj_dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, *,
               mask: jax.Array | None = None, bias: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    if self.qkv_layout not in QKV_LAYOUTS:
      raise ValueError(f"qkv_layout={self.qkv_layout!r}: expected one of {QKV_LAYOUTS}")
    in_dim = x.shape[-1]
    h = self.num_heads
    if self.head_dim is None and in_dim % h:
      raise ValueError(f"input dim {in_dim} is not divisible by num_heads={h}; set head_dim")
    dh = self.head_dim or in_dim // h
    inner = h * dh
    dense = lambda feats, use_bias, name: Dense(feats, use_bias=use_bias, dtype=self.dtype,
                                            param_dtype=self.param_dtype, name=name)
    if self.qkv_layout == "packed":
      if context is not None:
        raise ValueError("qkv_layout='packed' is self-attention only; use 'separate' for "
                         "cross-attention")
      q, k, v = jnp.split(dense(3 * inner, self.qkv_bias, "qkv")(x), 3, axis=-1)
    else:
      kv_in = x if context is None else context
      q = dense(inner, self.qkv_bias, "q")(x)
      k = dense(inner, self.qkv_bias, "k")(kv_in)
      v = dense(inner, self.qkv_bias, "v")(kv_in)
    split = lambda t: t.reshape(t.shape[:-1] + (h, dh))   # (h d): head index outermost
    q, k, v = split(q), split(k), split(v)
    acc = jnp.promote_types(self.dtype, jnp.float32)    # softmax in (at least) float32
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k, preferred_element_type=acc) * (dh ** -0.5)
    if bias is not None:
      logits = logits + bias.astype(acc)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(acc).min)
    weights = jax.nn.softmax(logits, axis=-1)
    self.sow("intermediates", "attention_weights", weights)
    weights = nn.Dropout(self.attn_dropout)(weights, deterministic=deterministic)
    out = jnp.einsum("...hqk,...khd->...qhd", weights.astype(self.dtype), v)
    out = out.reshape(out.shape[:-2] + (inner,))
    out = dense(self.out_dim or in_dim, self.out_bias, "out")(out)
    return nn.Dropout(self.proj_dropout)(out, deterministic=deterministic)


class FeedForward(nn.Module):
  """`fc1 → activation → Dropout → fc2 → Dropout` (Former-DFER `net`, torch encoder `_ff_block`,
  timm `Mlp`). `out_dim` defaults to the input dim."""
  hidden_dim: int
  out_dim: int | None = None
  activation: str = "gelu"
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    out_dim = self.out_dim or x.shape[-1]
    y = Dense(self.hidden_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(x)
    y = get_activation(self.activation)(y)
    y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
    y = Dense(out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(y)
    return nn.Dropout(self.dropout)(y, deterministic=deterministic)


class TransformerEncoderLayer(nn.Module):
  """Self-attention + feed-forward block; submodules `norm1`, `attn`, `norm2`, `mlp`.

  `norm_first=True` (pre-norm; Former-DFER `Residual(PreNorm(·))`, ViT):
      x = x + Attn(LN1(x));  x = x + FF(LN2(x))
  `norm_first=False` (post-norm; `torch.nn.TransformerEncoderLayer` default, DETR, ABAW):
      x = LN1(x + Attn(x));  x = LN2(x + FF(x))
  `dropout` acts after the attention output projection and inside FF (torch `dropout`, `dropout1`,
  `dropout2`; Former-DFER `to_out.1`, `net.2`, `net.4`); `attn_dropout` on the attention weights
  (torch MHA uses `dropout` there too; Former-DFER has none).
  """
  num_heads: int
  mlp_dim: int
  head_dim: int | None = None
  norm_first: bool = True
  activation: str = "gelu"
  qkv_layout: str = "packed"
  qkv_bias: bool = False
  dropout: float = 0.0
  attn_dropout: float = 0.0
  ln_eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None,
               bias: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    ln = lambda name: layer_norm(self.ln_eps, self.dtype, self.param_dtype, name)
    attn = MultiHeadAttention(
        self.num_heads, self.head_dim, qkv_layout=self.qkv_layout, qkv_bias=self.qkv_bias,
        attn_dropout=self.attn_dropout, proj_dropout=self.dropout, dtype=self.dtype,
        param_dtype=self.param_dtype, name="attn")
    mlp = FeedForward(self.mlp_dim, activation=self.activation, dropout=self.dropout,
                      dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")
    norm1, norm2 = ln("norm1"), ln("norm2")
    if self.norm_first:
      x = x + attn(norm1(x), mask=mask, bias=bias, deterministic=deterministic)
      x = x + mlp(norm2(x), deterministic=deterministic)
    else:
      x = norm1(x + attn(x, mask=mask, bias=bias, deterministic=deterministic))
      x = norm2(x + mlp(x, deterministic=deterministic))
    return x


class TransformerDecoderLayer(nn.Module):
  """`torch.nn.TransformerDecoderLayer` semantics; submodules `self_attn`, `norm1`, `cross_attn`,
  `norm2`, `mlp`, `norm3` (torch: `self_attn`, `norm1`, `multihead_attn`, `norm2`,
  `linear1/linear2`, `norm3`). Attention uses the "separate" layout with biases (torch MHA).

  Post-norm (`norm_first=False`, torch default, DETR/EST):
      x = LN1(x + SA(x));  x = LN2(x + CA(x, memory));  x = LN3(x + FF(x))
  Pre-norm: x = x + SA(LN1(x));  x = x + CA(LN2(x), memory);  x = x + FF(LN3(x)).
  """
  num_heads: int
  mlp_dim: int
  head_dim: int | None = None
  norm_first: bool = False
  activation: str = "relu"
  qkv_bias: bool = True
  dropout: float = 0.0
  attn_dropout: float | None = None   # None: same as `dropout` (torch)
  ln_eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, memory: jax.Array, *, self_mask: jax.Array | None = None,
               cross_mask: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    attn_drop = self.dropout if self.attn_dropout is None else self.attn_dropout
    mha = lambda name: MultiHeadAttention(
        self.num_heads, self.head_dim, qkv_layout="separate", qkv_bias=self.qkv_bias,
        attn_dropout=attn_drop, proj_dropout=self.dropout, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    ln = lambda name: layer_norm(self.ln_eps, self.dtype, self.param_dtype, name)
    sa, ca = mha("self_attn"), mha("cross_attn")
    mlp = FeedForward(self.mlp_dim, activation=self.activation, dropout=self.dropout,
                      dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")
    norm1, norm2, norm3 = ln("norm1"), ln("norm2"), ln("norm3")
    det = deterministic
    if self.norm_first:
      x = x + sa(norm1(x), mask=self_mask, deterministic=det)
      x = x + ca(norm2(x), memory, mask=cross_mask, deterministic=det)
      x = x + mlp(norm3(x), deterministic=det)
    else:
      x = norm1(x + sa(x, mask=self_mask, deterministic=det))
      x = norm2(x + ca(x, memory, mask=cross_mask, deterministic=det))
      x = norm3(x + mlp(x, deterministic=det))
    return x


class TransformerEncoder(nn.Module):
  """`num_layers` × `TransformerEncoderLayer`, optional final LayerNorm `norm` (torch
  `TransformerEncoder(norm=...)`, ViT `norm`; Former-DFER has none).

  Layouts: looped (`scan=False`, default) — a Python loop, one submodule per layer `layer_0`, …;
  scanned (`scan=True`) — `nn.scan` over identical layers, one submodule `layers` whose parameters
  have a leading layer axis (compiles one layer instead of `num_layers`). The two give the same
  function; `jaxaffect.nn.scan_utils.stack_layers` / `unstack_layers` convert the parameters, so
  PyTorch key tables are written for the looped layout only.
  `remat_policy` (`REMAT_POLICIES`): "none", or rematerialise each layer in the backward pass
  (`nn.remat`) saving nothing ("full") or the matmul outputs ("dots_saveable",
  "dots_with_no_batch_dims_saveable", `jax.checkpoint_policies`). With scan, dropout draws an
  independent key per layer (`split_rngs`), so looped and scanned agree only without dropout;
  likewise a scanned `init` draws other initial values than a looped one with the same key:
  convert parameters between the layouts, do not re-initialise to compare.

  Call: `mask`/`bias` as in `MultiHeadAttention`, the same for every layer. With
  `return_all_layers=True` it returns the tuple of every layer's output (MGCT levels, MAE
  features); the final norm, if any, applies to the last one, which so equals the normal output.
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  head_dim: int | None = None
  norm_first: bool = True
  activation: str = "gelu"
  qkv_layout: str = "packed"
  qkv_bias: bool = False
  dropout: float = 0.0
  attn_dropout: float = 0.0
  ln_eps: float = 1e-5
  final_norm: bool = False
  scan: bool = False
  remat_policy: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None,
               bias: jax.Array | None = None, deterministic: bool = True,
               return_all_layers: bool = False) -> jax.Array | tuple[jax.Array, ...]:
    if self.remat_policy not in REMAT_POLICIES:
      raise UserError(f"TransformerEncoder: remat_policy={self.remat_policy!r}; expected one of "
                      f"{sorted(REMAT_POLICIES)}")
    layer = lambda name: TransformerEncoderLayer(
        self.num_heads, self.mlp_dim, self.head_dim, norm_first=self.norm_first,
        activation=self.activation, qkv_layout=self.qkv_layout, qkv_bias=self.qkv_bias,
        dropout=self.dropout, attn_dropout=self.attn_dropout, ln_eps=self.ln_eps,
        dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    def apply_layer(mdl, y):
      return mdl(y, mask=mask, bias=bias, deterministic=deterministic)
    if self.remat_policy != "none":
      apply_layer = nn.remat(apply_layer, policy=REMAT_POLICIES[self.remat_policy],
                             prevent_cse=not self.scan)   # scan already prevents CSE
    if self.scan:
      def body(mdl, y, _):
        y = apply_layer(mdl, y)
        return y, (y if return_all_layers else None)
      x, stacked = nn.scan(body, variable_axes={"params": 0},
                           split_rngs={"params": True, "dropout": True},
                           length=self.num_layers)(layer(SCAN_NAME), x, None)
      outs = [stacked[i] for i in range(self.num_layers)] if return_all_layers else []
    else:
      outs = []
      for i in range(self.num_layers):
        x = apply_layer(layer(f"{LAYER_PREFIX}{i}"), x)
        outs.append(x)
    if self.final_norm:
      x = layer_norm(self.ln_eps, self.dtype, self.param_dtype, "norm")(x)
    return (*outs[:-1], x) if return_all_layers else x


class TransformerDecoder(nn.Module):
  """`num_layers` × `TransformerDecoderLayer` (`layer_0`, …), optional final LayerNorm `norm`
  (torch `TransformerDecoder(norm=...)`; DETR/EST use one)."""
  num_layers: int
  num_heads: int
  mlp_dim: int
  head_dim: int | None = None
  norm_first: bool = False
  activation: str = "relu"
  qkv_bias: bool = True
  dropout: float = 0.0
  attn_dropout: float | None = None
  ln_eps: float = 1e-5
  final_norm: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, memory: jax.Array, *, self_mask: jax.Array | None = None,
               cross_mask: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    for i in range(self.num_layers):
      x = TransformerDecoderLayer(
          self.num_heads, self.mlp_dim, self.head_dim, norm_first=self.norm_first,
          activation=self.activation, qkv_bias=self.qkv_bias, dropout=self.dropout,
          attn_dropout=self.attn_dropout, ln_eps=self.ln_eps, dtype=self.dtype,
          param_dtype=self.param_dtype, name=f"layer_{i}",
      )(x, memory, self_mask=self_mask, cross_mask=cross_mask, deterministic=deterministic)
    if self.final_norm:
      x = layer_norm(self.ln_eps, self.dtype, self.param_dtype, "norm")(x)
    return x
