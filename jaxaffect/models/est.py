"""EST, the Expression Snippet Transformer (Liu et al., "Expression Snippet Transformer for Robust
Video-based Facial Expression Recognition", Pattern Recognition 138, 2023; arXiv 2109.08409).

Follows the official code (`DreamMr/EST`, `models/Model.py` EST / `resnet18_EST`, `models/
transformer.py`, a copy of torch-1.7 `nn.Transformer`); equivalence with a PyTorch model that has
the official state-dict keys is tested through `jaxaffect.interop` (`load_state_dict(strict=True)`).

A clip is `num_snippets` (7) snippets of `frames_per_snippet` (5) frames, `video (B, S·F, H, W, 3)`
snippet-major (official `rearrange('b s f c h w -> (b s f) c h w')`), float pixels in [0,1] without
mean/std normalisation (official loader: `ToTensor()` only).

* Backbone: ResNet-18 (torchvision layout, no `fc`) on every frame, global average pool → `8·width`
  (= d_model) per frame. BatchNorm statistics over all B·S·F frames.
* AA-SFE (attention-augmented snippet feature extractor), shared by all snippets: self-attention
  over the F frames of a snippet (`nn.MultiheadAttention(d, 4, dropout)`, sequence-first in the
  official code), `out = LayerNorm(v + Dropout(attn(v)))`, a global feature `g = max_j out_j`,
  weights `w_j = clamp(cos(out_j, g), min=1e-8)` (torch `CosineSimilarity`, eps 1e-8) and the
  snippet feature `Σ_j w_j·out_j / Σ_j w_j` (`aasfe_pool`).
* Snippet positions: a fixed sinusoidal table `PE (S, d)` (`sinusoid_table`, the official
  `PosEncoding`), **permuted per sample**: position i, which holds snippet `perm[b, i]` of the
  original order, gets `PE[perm[b, i]]` (official `pos_enc[i] = pos_enc[i][per[i]]`).
* DETR-style post-norm encoder–decoder (torch `nn.Transformer` semantics: ReLU FF, dropout,
  final LayerNorms, no positional terms inside the layers), one learned emotion query
  `query_embed (1, d)`; its decoder output is the emotion token `(B, d)`.
* Classifier: `d → 128 → ReLU → 64 → ReLU → Dropout(0.4) → num_classes`.
* SSOP head (shuffled snippet order prediction): input `stop_gradient(snippets) + emotion token`
  — a broadcast **sum** `(B, S, d) + (B, 1, d)`, flattened to `S·d` (official `ori_video_feature.
  detach() + emotion_clip_feature.unsqueeze(1)`, then `view(b, -1)`) → `2048 → BN → ReLU → 512 →
  BN → ReLU → num_permutations`. The emotion token is not detached: L_S also trains the
  transformer.

The fixed PE table is not a parameter: it lives in the read-only `constants` collection as
`constants/pos_enc/table`, like the official frozen `pos_enc.pos_enc.weight`
(`requires_grad=False`): saved in checkpoints (with the other non-parameter collections),
exported and imported under its official key, never trained, weight-decayed or updated (the task
applies the model with every collection but `constants` mutable). `sum(p.numel())` of the official
model (42,779,345) counts it; our `params` collection holds the 42,775,761 trainable parameters.

The paper's baseline (Table 6: "Transformer" without AA-SFE and SSOP) is `use_aasfe=False,
use_ssop=False`: the transformer gets one token per snippet, the **mean of its F frame features**
(the paper does not say how frames are pooled there; any parameter-free pooling gives the Table 6
figures, see `est_table6_rows`), still with the permuted PE.

Initialisation (`EST.init`): Flax init with torch defaults (`jaxaffect.nn`), then the official
re-draws (`official_init`): all transformer weight matrices `kaiming_uniform_` (a=0, the official
`Transformer._reset_parameters`), every attention in-projection/out-projection bias 0 and the AA-SFE
in-projection `xavier_uniform_` over the packed `(3d, d)` matrix (`nn.MultiheadAttention`
defaults). The official training starts the ResNet from FER+-pretrained weights (import them with
`jaxaffect.interop`).
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxaffect import flops as flops_lib
from jaxaffect.errors import UserError
from jaxaffect.models.losses import classification_loss
from jaxaffect.nn.attention import MultiHeadAttention, TransformerDecoder, TransformerEncoder
from jaxaffect.nn.layers import BatchNorm, Dense, layer_norm
from jaxaffect.nn.resnet import resnet18

Dtype = Any

OFFICIAL_NUM_PARAMS = 42_779_345     # resnet18_EST(...): sum(p.numel() for p in model.parameters())
OFFICIAL_NUM_TRAINABLE = 42_775_761  # the same without the frozen PE table (7·512)

# Official `datasets/permutation_10.npy` (int32, (10, 7)): the SSOP label is the row index; the
# shuffled clip holds snippet `row[i]` at position i.
PERMUTATIONS_10 = np.array([
    [0, 4, 3, 2, 6, 1, 5],
    [5, 3, 1, 6, 4, 0, 2],
    [0, 4, 3, 5, 2, 6, 1],
    [5, 4, 3, 2, 1, 0, 6],
    [5, 1, 2, 4, 0, 6, 3],
    [0, 5, 2, 6, 4, 1, 3],
    [3, 1, 5, 0, 6, 2, 4],
    [2, 3, 0, 4, 1, 6, 5],
    [5, 0, 4, 1, 3, 2, 6],
    [0, 3, 2, 6, 4, 5, 1],
], dtype=np.int32)
PERMUTATIONS_10.setflags(write=False)

COS_EPS = 1e-8      # torch.nn.CosineSimilarity default eps
WEIGHT_MIN = 1e-8   # torch.clamp(dis_alpha, min=1e-8)


# ----------------------------------------------------------------------------------------------
# Pieces with an equation of their own.


def sinusoid_table(num_positions: int, d_model: int) -> np.ndarray:
  """Official `PosEncoding`: `pos / 10000^(2·(j//2)/d)`, sin on even j, cos on odd j; computed in
  float64 and stored as float32 (as the official numpy code does)."""
  pos = np.arange(num_positions, dtype=np.float64)[:, None]
  j = np.arange(d_model)
  angle = pos / np.power(10000.0, 2.0 * (j // 2) / d_model)
  table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
  return table.astype(np.float32)


def shuffle_snippets(video: jax.Array, perm: jax.Array, num_snippets: int) -> jax.Array:
  """Reorder the snippets of `video (B, S·F, ...)` so that position i holds snippet `perm[b, i]`
  (official `order_clip`: `stack([clips[order[i]] for i in range(S)])`). `perm (B, S)` int."""
  b, t = video.shape[:2]
  if t % num_snippets:
    raise UserError(f"shuffle_snippets: {t} frames are not {num_snippets} equal snippets")
  if perm.shape != (b, num_snippets):
    raise UserError(f"shuffle_snippets: perm has shape {perm.shape}, expected {(b, num_snippets)}")
  f = t // num_snippets
  v = video.reshape((b, num_snippets, f) + video.shape[2:])
  idx = perm.astype(jnp.int32).reshape((b, num_snippets) + (1,) * (v.ndim - 2))
  return jnp.take_along_axis(v, idx, axis=1).reshape(video.shape)


def _norm(x: jax.Array) -> jax.Array:
  """Euclidean norm over the last axis, with gradient 0 (not NaN) at the zero vector."""
  ss = jnp.sum(x * x, axis=-1)
  pos = ss > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, ss, 1.0)), 0.0)


def cosine_similarity(x: jax.Array, y: jax.Array, eps: float = COS_EPS) -> jax.Array:
  """`torch.nn.functional.cosine_similarity(x, y, dim=-1, eps)` as torch 2.x computes it:
  `Σ x·y / (max(‖x‖, eps)·max(‖y‖, eps))`, where the clamp changes the value only — the gradient
  is that of the unclamped norm (measured on torch 2.14; matters only for norms below eps).
  Element-wise products and sums (no matmul: not counted as MACs, like torch)."""
  def clamped_norm(v):
    n = _norm(v)
    return n + jax.lax.stop_gradient(jnp.maximum(n, eps) - n)
  return jnp.sum(x * y, axis=-1) / (clamped_norm(x) * clamped_norm(y))


def aasfe_pool(frames: jax.Array) -> tuple[jax.Array, jax.Array]:
  """AA-SFE pooling of attended frame features `frames (..., F, d)` → `(snippet (..., d),
  weights (..., F))`: global `g = max over frames` (official `AdaptiveMaxPool1d(1)`),
  `w_j = clamp(cos(frame_j, g), min=1e-8)`, `snippet = Σ_j w_j·frame_j / Σ_j w_j`."""
  f32 = jnp.promote_types(frames.dtype, jnp.float32)
  x = frames.astype(f32)
  # The max as a gather at the argmax: its gradient goes to the selected frame, as torch's
  # AdaptiveMaxPool1d / max(dim) backward does. (`jnp.max`'s gradient re-finds the maximum by
  # comparing the input with the result for equality; after a LayerNorm, compiled with the XLA CPU
  # backend at optimisation level 0, we measured all-NaN gradients from it.)
  g = jnp.take_along_axis(x, jnp.argmax(x, axis=-2, keepdims=True), axis=-2)
  w = jnp.maximum(cosine_similarity(x, g), WEIGHT_MIN)
  snippet = jnp.sum(x * w[..., None], axis=-2) / jnp.sum(w, axis=-1, keepdims=True)
  return snippet.astype(frames.dtype), w


# ----------------------------------------------------------------------------------------------
# Modules.


class AASFE(nn.Module):
  """Attention-augmented snippet feature extractor: frames `(N, F, d)` → snippets `(N, d)`.

  Submodules `attn` (torch `nn.MultiheadAttention(d, heads, dropout)`: separate q/k/v with bias,
  dropout on the attention weights) and `norm1` (LayerNorm eps 1e-5). `dropout` also acts on the
  attention output before the residual (official `dropout3 = nn.Dropout(0.1)`, fixed at 0.1 there;
  here the model's `dropout`, 0.1 by default). The frame weights are sown to
  `intermediates/cos_weights` `(N, F)`.
  """
  num_heads: int = 4
  dropout: float = 0.1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    attn = MultiHeadAttention(self.num_heads, qkv_layout="separate", qkv_bias=True,
                              attn_dropout=self.dropout, proj_dropout=self.dropout,
                              dtype=self.dtype, param_dtype=self.param_dtype, name="attn")
    y = layer_norm(1e-5, self.dtype, self.param_dtype, "norm1")(
        x + attn(x, deterministic=not train))
    snippet, w = aasfe_pool(y)
    self.sow("intermediates", "cos_weights", w)
    return snippet


class PosEncoding(nn.Module):
  """The fixed sinusoid table `(S, d)` as the read-only variable `constants/table`."""
  num_positions: int
  d_model: int

  @nn.compact
  def __call__(self) -> jax.Array:
    table = self.variable("constants", "table",
                          lambda: jnp.asarray(sinusoid_table(self.num_positions, self.d_model)))
    return table.value


class MLPHead(nn.Module):
  """Dense stack `fc0, (bn0), ReLU, fc1, (bn1), ReLU, [Dropout], out` (official classifier:
  no BN, Dropout(0.4) before the last Linear; SSOP head: BatchNorm1d after each hidden Linear)."""
  hidden: Sequence[int]
  out_features: int
  batch_norm: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i, h in enumerate(self.hidden):
      x = Dense(h, name=f"fc{i}", **kw)(x)
      if self.batch_norm:
        x = BatchNorm(use_running_average=not train, name=f"bn{i}", **kw)(x)
      x = nn.relu(x)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    return Dense(self.out_features, name="out", **kw)(x)


class EST(nn.Module):
  """Expression Snippet Transformer.

  Call: `video (B, S·F, H, W, 3)` float pixels in [0,1]; `perm (B, S)` int or None (identity): the
  video's position i holds snippet `perm[b, i]` of the original order (pass the same `perm` that
  `shuffle_snippets` used; identity for unshuffled clips). Returns `{"logits": (B, num_classes),
  "perm_logits": (B, num_permutations)}` (float32 or wider; `perm_logits` only with `use_ssop`).

  Defaults are the official configuration (`resnet18_EST(clips=7, img_num_per_clip=5, d_model=512,
  nhead=4, encoder_nums=3, decoder_nums=3, per_classes=10)`; 42,779,345 parameters with the PE
  table). `width` scales the ResNet (`8·width` must equal `d_model`); the transformer, classifier
  and SSOP sizes are set by their own fields. Dropout uses the `dropout` rng stream; BatchNorm
  statistics are in `batch_stats` (mutable in training), the PE table in `constants` (never).
  """
  num_classes: int = 7
  num_snippets: int = 7
  frames_per_snippet: int = 5
  d_model: int = 512
  num_heads: int = 4
  num_encoder_layers: int = 3
  num_decoder_layers: int = 3
  dim_feedforward: int = 2048
  dropout: float = 0.1
  num_permutations: int = 10
  use_aasfe: bool = True            # False: mean of the frame features per snippet (baseline)
  use_ssop: bool = True
  width: int = 64
  classifier_dims: Sequence[int] = (128, 64)   # official Linear(512,128), Linear(128,64)
  classifier_dropout: float = 0.4              # official Dropout(0.4)
  ssop_dims: Sequence[int] = (2048, 512)       # official Linear(S·512,2048), Linear(2048,512)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _check(self, video: jax.Array, perm: jax.Array | None) -> None:
    if self.d_model != 8 * self.width:
      raise UserError(f"EST: d_model={self.d_model} must equal the ResNet output width "
                      f"8·width = {8 * self.width}")
    if self.d_model % self.num_heads:
      raise UserError(f"EST: d_model={self.d_model} is not divisible by "
                      f"num_heads={self.num_heads}")
    t = self.num_snippets * self.frames_per_snippet
    if video.ndim != 5 or video.shape[1] != t or video.shape[-1] != 3:
      raise UserError(f"EST expects video (B, {t}, H, W, 3) = {self.num_snippets} snippets × "
                      f"{self.frames_per_snippet} frames, got shape {video.shape}")
    if perm is not None and tuple(perm.shape) != (video.shape[0], self.num_snippets):
      raise UserError(f"EST: perm has shape {tuple(perm.shape)}, expected "
                      f"{(video.shape[0], self.num_snippets)} (batch, snippets)")

  @nn.compact
  def __call__(self, video: jax.Array, perm: jax.Array | None = None, *,
               train: bool) -> dict[str, jax.Array]:
    self._check(video, perm)
    b, s, f, d = video.shape[0], self.num_snippets, self.frames_per_snippet, self.d_model
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    det = not train
    frames = video.astype(self.dtype).reshape((b * s * f,) + video.shape[2:])
    feats = resnet18(width=self.width, num_classes=None, name="backbone", **kw)(frames, train=train)
    feats = feats.reshape(b, s, f, d)
    if self.use_aasfe:
      snippets = AASFE(self.num_heads, self.dropout, name="aasfe", **kw)(
          feats.reshape(b * s, f, d), train=train).reshape(b, s, d)
    else:
      snippets = jnp.mean(feats, axis=2)
    table = PosEncoding(s, d, name="pos_enc")()
    if perm is None:
      pe = jnp.broadcast_to(table, (b, s, d))
    else:
      pe = jnp.take(table, perm.astype(jnp.int32), axis=0)       # position i ← PE[perm[b, i]]
    x = snippets + pe.astype(self.dtype)
    common = dict(num_heads=self.num_heads, mlp_dim=self.dim_feedforward, norm_first=False,
                  activation="relu", qkv_bias=True, dropout=self.dropout, ln_eps=1e-5,
                  final_norm=True, **kw)
    memory = TransformerEncoder(self.num_encoder_layers, qkv_layout="separate",
                                attn_dropout=self.dropout, name="encoder", **common)(
                                    x, deterministic=det)
    query = self.param("query_embed", nn.initializers.normal(1.0), (1, d), self.param_dtype)
    tgt = jnp.broadcast_to(query.astype(self.dtype)[None], (b, 1, d))
    emotion = TransformerDecoder(self.num_decoder_layers, name="decoder", **common)(
        tgt, memory, deterministic=det)[:, 0]
    out_dtype = jnp.promote_types(self.dtype, jnp.float32)
    logits = MLPHead(tuple(self.classifier_dims), self.num_classes,
                     dropout=self.classifier_dropout, name="classifier", **kw)(emotion, train=train)
    out = {"logits": logits.astype(out_dtype)}
    if self.use_ssop:
      z = jax.lax.stop_gradient(snippets) + emotion[:, None, :]
      perm_logits = MLPHead(tuple(self.ssop_dims), self.num_permutations, batch_norm=True,
                            name="ssop", **kw)(z.reshape(b, s * d), train=train)
      out["perm_logits"] = perm_logits.astype(out_dtype)
    return out

  def init(self, rngs, *args, **kwargs):
    """`flax.linen.Module.init`, then `official_init` on the parameters (a key derived from the
    `params` rng). `init_with_output` / `lazy_init` keep the torch-default draws."""
    variables = super().init(rngs, *args, **kwargs)
    key = rngs["params"] if isinstance(rngs, Mapping) else rngs
    return official_init(variables, jax.random.fold_in(key, 0x0E57))


# ----------------------------------------------------------------------------------------------
# Official initialisation.

_AASFE_IN_PROJ = re.compile(r"aasfe/attn/[qkv]/kernel")
_ATTN_BIAS = re.compile(r"(aasfe/attn|(encoder|decoder)/layer_\d+/(attn|self_attn|cross_attn))/"
                        r"[qkvo]\w*/bias")
_TRANSFORMER_KERNEL = re.compile(r"(encoder|decoder)/layer_\d+/.*/kernel")


def official_init(variables: Mapping[str, Any], key: jax.Array) -> dict[str, Any]:
  """Re-draw the parameters whose official initialisation differs from torch's Linear default:

  * transformer (encoder/decoder) weight matrices: `kaiming_uniform_` (a=0),
    U(±√(6/fan_in)), fan_in = input features (official `Transformer._reset_parameters`);
  * attention q/k/v/out biases (AA-SFE and transformer): 0 (`nn.MultiheadAttention`);
  * AA-SFE q/k/v kernels: `xavier_uniform_` over the packed `in_proj_weight (3d, d)`:
    U(±√(6/(d + 3d))).
  Other parameters are kept. Pure function (jit/eval_shape friendly)."""
  variables = dict(variables)
  if "params" not in variables:
    return variables
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  out = {}
  for i, (path, p) in enumerate(sorted(flat.items())):
    k = jax.random.fold_in(key, i)
    if _ATTN_BIAS.fullmatch(path):
      p = jnp.zeros_like(p)
    elif _AASFE_IN_PROJ.fullmatch(path):
      bound = math.sqrt(6.0 / (p.shape[0] + 3 * p.shape[1]))
      p = jax.random.uniform(k, p.shape, p.dtype, -bound, bound)
    elif _TRANSFORMER_KERNEL.fullmatch(path):
      bound = math.sqrt(6.0 / p.shape[0])
      p = jax.random.uniform(k, p.shape, p.dtype, -bound, bound)
    out[path] = p
  variables["params"] = traverse_util.unflatten_dict(out, sep="/")
  return variables


# ----------------------------------------------------------------------------------------------
# Losses.


def ssop_loss(perm_logits: jax.Array, perm_labels: jax.Array,
              mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """L_S: cross-entropy of the SSOP head against the permutation row index, averaged over the
  real examples. Returns `(loss, per-example CE)`."""
  return classification_loss(perm_logits, perm_labels, mask, perm_logits.shape[-1])


def est_loss(logits: jax.Array, labels: jax.Array, perm_logits: jax.Array | None,
             perm_labels: jax.Array | None, mask: jax.Array, num_snippets: int = 7, *,
             ssop_weight: float | None = None,
             label_smoothing: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Eq. 7: `L = L_cls + (1/n)·L_S`, n = number of snippets; both CE terms are means over the
  real examples (`mask`). `ssop_weight` overrides 1/n (the official code uses 0.1428). Without
  `perm_logits` (no SSOP head) L = L_cls. Returns `(L, {"cls_loss", "ssop_loss", "ce",
  "perm_ce"})`."""
  cls, ce = classification_loss(logits, labels, mask, logits.shape[-1], label_smoothing)
  aux = {"cls_loss": cls, "ce": ce}
  if perm_logits is None:
    return cls, aux
  if perm_labels is None:
    raise UserError("est_loss: perm_logits given without perm_labels")
  lam = 1.0 / num_snippets if ssop_weight is None else ssop_weight
  ls, perm_ce = ssop_loss(perm_logits, perm_labels, mask)
  aux.update(ssop_loss=ls, perm_ce=perm_ce)
  return cls + lam * ls, aux


# ----------------------------------------------------------------------------------------------
# Parameters and compute (Table 6).


def num_params(params: Any) -> int:
  return flops_lib.num_params(params)


def abstract_variables(model: EST, image_size: int = 32, batch: int = 1):
  """`model.init` shapes via `jax.eval_shape` (nothing is computed). Parameter shapes do not
  depend on the image size."""
  t = model.num_snippets * model.frames_per_snippet
  video = jax.ShapeDtypeStruct((batch, t, image_size, image_size, 3), jnp.float32)
  perm = jax.ShapeDtypeStruct((batch, model.num_snippets), jnp.int32)
  return jax.eval_shape(lambda v, p: model.init(jax.random.key(0), v, p, train=False),
                        video, perm)


# The model-module convention (models/registry.py): `config.model_name = "est"` finds these.
Model = EST


def torch_mapping():
  """The official PyTorch key layout (`jaxaffect.interop.est`)."""
  from jaxaffect.interop import est
  return est.MAPPING


def bench_model():
  """`jaxaffect bench est` (train step vs the official PyTorch code)."""
  from jaxaffect import bench
  return bench.EST
