"""ABAW TCN + Transformer per-frame models (ABAW5 audio-visual fusion, ABAW6 sequential learning;
Zhou, Lu et al., code `upczww/abaw5`, `upczww/abaw6`) and their losses.

    features {stream: (B, T, D_s)} ─ TCN_s (one per stream) ─ concat (B, T, Σ C_s)
      ─ `proj`: 1×1 Conv1d → d_model (official `encoder.conv1`)
      ─ `encoder`: post-norm `nn.TransformerEncoder` (ReLU, no positional encoding, no final norm)
      ─ heads: Linear(d, d/2) – BatchNorm1d – Linear(d/2, n), no activation, per frame

ABAW6 (one 768-d MAE stream, TCN [768, 256, 128], k=5, PReLU; 8 layers, 4 heads, FF 512,
d 512; dropout 0) is the default. ABAW5's VA model has six streams (`temporal[modality]`) and
split valence/arousal heads (`vhead`, `ahead`, one unit each): `va_heads="split"`; dropout 0.3.

Padded windows (`frame_mask (B, T)`, 1 = real frame). The official code never pads: training
keeps full windows only (`preprocess/split_*.py`) and inference runs the tail window truncated
(`VA/test.py`). Here a tail window is padded to T (`samplers.window_indices`), and `frame_mask`
makes that padding invisible to the real frames: the TCN is causal (padding at the end cannot reach
earlier frames); the encoder gets a key-padding mask (torch `src_key_padding_mask = ~valid`) — a row
with no real frame (eval batch padding) keeps all keys, so no softmax is over an empty set; the
heads' BatchNorm batch statistics (and their running-average update, unbiased over the n valid
frames) use only real frames (evaluation uses the running statistics). So real frames of a padded
window get the outputs and gradients of the truncated window (tested to float rounding); queries at
padding positions attend normally and their outputs are meaningless. `frame_mask=None` treats every
frame as real: the official model on full windows.

Module names (→ torch keys, `jaxaffect.interop.abaw_tcn`): one stream: `temporal/block_<i>`
(`temporal.network.<i>`), several: `temporal_<stream>/block_<i>` (`temporal.<stream>.network.<i>`);
`proj` (`encoder.conv1`); `encoder/layer_<j>` (`encoder.transformer_encoder.layers.<j>`); heads
`head` (one output), `head_<output>` (several), `vhead`/`ahead` (split VA), each `fc0`, `bn`,
`out` (torch `.0`, `.1`, `.2`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.errors import UserError
from jaxaffect.nn.attention import TransformerEncoder
from jaxaffect.nn.layers import BatchNorm, Dense
from jaxaffect.nn.tcn import PointwiseConv, TemporalConvNet

Dtype = Any

# Output name → number of units (EXPR is configurable: `num_expr_classes`).
OUTPUT_DIMS = {"va": 2, "expr": 8, "au": 12}
VA_HEADS = ("joint", "split")
# ABAW6 / ABAW5 default stream layouts (name, TCN channels).
ABAW6_STREAMS = (("mae", (768, 256, 128)),)
ABAW5_VA_STREAMS = (("wav_base", (512, 256, 128)), ("wav_emotion", (512, 256, 128)),
                    ("arcface", (512, 256, 128)), ("emotion", (1024, 512, 256)),
                    ("affecnet8", (512, 256, 128)), ("rafdb", (512, 256, 128)))


def normalize_streams(streams: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
  """`{name: channels}` or `[(name, channels), ...]` → hashable `((name, (c, ...)), ...)`."""
  items = list(streams.items()) if isinstance(streams, Mapping) else list(streams)
  out = []
  for item in items:
    if len(item) != 2:
      raise UserError(f"ABAWTCN.streams: expected (name, channels) pairs, got {item!r}")
    name, chans = item
    if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
      raise UserError(f"ABAWTCN.streams: stream name {name!r} must be a non-empty identifier "
                      "(letters, digits, _): it names Flax modules and torch keys")
    chans = tuple(int(c) for c in chans)
    if not chans:
      raise UserError(f"ABAWTCN.streams[{name!r}]: empty channel list")
    out.append((name, chans))
  names = [n for n, _ in out]
  if not out or len(set(names)) != len(names):
    raise UserError(f"ABAWTCN.streams: need one or more distinct names, got {names}")
  return tuple(out)


def key_padding_mask(frame_mask: jax.Array | None) -> jax.Array | None:
  """`frame_mask (B, T)` (1 = real frame) → attention mask `(B, 1, 1, T)`, True = key may be
  attended (torch `src_key_padding_mask = ~valid`): every query sees only the real frames of its
  window. A row with no real frame (a padding row of the last eval batch) keeps all its keys, so
  its softmax is never over an empty set (its outputs are ignored by losses and metrics)."""
  if frame_mask is None:
    return None
  valid = frame_mask > 0
  keep = valid | ~jnp.any(valid, axis=-1, keepdims=True)
  return keep[:, None, None, :]


# The test of the masked statistics (tests/models/test_abaw_tcn.py) builds the head's BatchNorm
# under this name; the same class, names `scale`/`bias` and `batch_stats` `mean`/`var`.
MaskedBatchNorm = BatchNorm


class FrameHead(nn.Module):
  """`nn.Sequential(Linear(d, hidden), BatchNorm1d(hidden), Linear(hidden, n))` per frame:
  submodules `fc0`, `bn`, `out` (torch `.0`, `.1`, `.2`); no activation (as the official heads)."""
  hidden: int
  num_outputs: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = Dense(self.hidden, name="fc0", **kw)(x)
    if mask is None:   # the masked statistics' arithmetic either way (as before: same rounding)
      mask = jnp.ones(y.shape[:-1], y.dtype)
    y = BatchNorm(name="bn", **kw)(y, use_running_average=not train, mask=mask)
    return Dense(self.num_outputs, name="out", **kw)(y)


class ABAWTCN(nn.Module):
  """Per-frame TCN + Transformer model (see the module docstring).

  Attributes:
    streams: `((name, channels), ...)` (or a `{name: channels}` mapping): one TCN per feature
      stream, concatenated in this order (ABAW5: its modality list order).
    outputs: names among `OUTPUT_DIMS` ("va" → 2 units [valence, arousal], "expr" →
      `num_expr_classes`, "au" → 12); one head each.
    num_expr_classes: EXPR head size (8 in ABAW5/6).
    va_heads: "joint" (ABAW6: one head, 2 units) or "split" (ABAW5: `vhead`, `ahead`, 1 unit each,
      concatenated to the "va" output).
    kernel_size: TCN kernel k (dilations 2^i, causal).
    tcn_activation: "prelu" (ABAW5/6) or "relu" (locuslab).
    d_model, num_heads, num_layers, dim_feedforward: the transformer (ABAW6: 512, 4, 8, 512).
    head_hidden: hidden width of each head; None = d_model // 2 (official).
    dropout: TCN, transformer (attention weights, after attention, FF) — ABAW5 0.3, ABAW6 0.0.

  Call: `features` mapping stream name → `(B, T, D_s)` (or `(B, T, 1, D_s)`, squeezed as the
  official `forward`); other keys are ignored. `frame_mask (B, T)` (1 = real frame; None = all)
  masks padding out of attention keys and BatchNorm statistics (module docstring). Returns `{output: (B, T, n)}`. Random stream:
  `dropout` when `train` and `dropout > 0`. BatchNorm statistics live in `batch_stats`.
  """
  streams: Any = ABAW6_STREAMS
  outputs: Sequence[str] = ("expr",)
  num_expr_classes: int = 8
  va_heads: str = "joint"
  kernel_size: int = 5
  tcn_activation: str = "prelu"
  d_model: int = 512
  num_heads: int = 4
  num_layers: int = 8
  dim_feedforward: int = 512
  head_hidden: int | None = None
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self):
    # Hashable, canonical attributes (configs give lists / dicts; jit hashes modules).
    object.__setattr__(self, "streams", normalize_streams(self.streams))
    outs = (self.outputs,) if isinstance(self.outputs, str) else tuple(self.outputs)
    object.__setattr__(self, "outputs", outs)
    super().__post_init__()

  def output_dims(self) -> dict[str, int]:
    return {o: (self.num_expr_classes if o == "expr" else OUTPUT_DIMS[o]) for o in self.outputs}

  def head_names(self) -> dict[str, tuple[str, ...]]:
    """Output → Flax/torch head module name(s)."""
    out = {}
    for o in self.outputs:
      if o == "va" and self.va_heads == "split":
        out[o] = ("vhead", "ahead")
      else:
        out[o] = ("head",) if len(self.outputs) == 1 else (f"head_{o}",)
    return out

  def _check(self):
    bad = [o for o in self.outputs if o not in OUTPUT_DIMS]
    if bad or not self.outputs or len(set(self.outputs)) != len(self.outputs):
      raise UserError(f"ABAWTCN.outputs={self.outputs}: expected distinct names among "
                      f"{sorted(OUTPUT_DIMS)}")
    if self.va_heads not in VA_HEADS:
      raise UserError(f"ABAWTCN.va_heads={self.va_heads!r}: expected one of {VA_HEADS}")

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], train: bool = False, *,
               frame_mask: jax.Array | None = None) -> dict[str, jax.Array]:
    self._check()
    det = not train
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    missing = [n for n, _ in self.streams if n not in features]
    if missing:
      raise UserError(f"ABAWTCN: feature stream(s) {missing} of config.model.streams missing "
                      f"from the input (config.data.source.features gives {sorted(features)})")
    xs, bt = [], None
    for name, chans in self.streams:
      x = jnp.asarray(features[name])
      if x.ndim == 4 and x.shape[2] == 1:        # official: (B, T, 1, D) → (B, T, D)
        x = x[:, :, 0, :]
      if x.ndim != 3:
        raise UserError(f"ABAWTCN: stream {name!r} has shape {x.shape}, expected (B, T, D)")
      if bt is None:
        bt = x.shape[:2]
      elif x.shape[:2] != bt:
        raise UserError(f"ABAWTCN: stream {name!r} has (B, T) = {x.shape[:2]}, the first "
                        f"stream {bt}")
      tcn_name = "temporal" if len(self.streams) == 1 else f"temporal_{name}"
      xs.append(TemporalConvNet(chans, self.kernel_size, self.dropout, self.tcn_activation,
                                name=tcn_name, **kw)(x.astype(self.dtype), deterministic=det))
    if frame_mask is not None and frame_mask.shape != bt:
      raise UserError(f"ABAWTCN: frame_mask shape {frame_mask.shape} != (B, T) = {bt}")
    h = jnp.concatenate(xs, axis=-1) if len(xs) > 1 else xs[0]
    h = PointwiseConv(self.d_model, name="proj", **kw)(h)
    h = TransformerEncoder(
        self.num_layers, self.num_heads, self.dim_feedforward, norm_first=False,
        activation="relu", qkv_layout="separate", qkv_bias=True, dropout=self.dropout,
        attn_dropout=self.dropout, ln_eps=1e-5, final_norm=False, name="encoder",
        **kw)(h, mask=key_padding_mask(frame_mask), deterministic=det)
    hidden = self.head_hidden or self.d_model // 2
    dims = self.output_dims()
    result = {}
    for o, names in self.head_names().items():
      n_units = dims[o] // len(names)
      ys = [FrameHead(hidden, n_units, name=hn, **kw)(h, train=train, mask=frame_mask)
            for hn in names]
      result[o] = jnp.concatenate(ys, axis=-1) if len(ys) > 1 else ys[0]
    return result


# ---------------------------------------------------------------------------------------- losses


def _safe_sqrt(s: jax.Array) -> jax.Array:
  # sqrt with a finite gradient at 0 (constant predictions); differs from sqrt only below 1e-38.
  return jnp.sqrt(jnp.maximum(s, jnp.finfo(jnp.float32).tiny))


def ccc_from_sums(x: jax.Array, y: jax.Array, m: jax.Array, ddof: int = 1,
                  eps: float = 1e-8) -> jax.Array:
  """CCC of the masked entries of 1-D `x` (prediction) and `y` (target), official formula
  (`upczww/abaw6` `VA/utils/loss.py` `CCCLoss.forward`, `digitize_num=1`):

      ρ = Σ vx·vy / (√Σvx² · √Σvy² + eps),   vx = x − mean(x), vy = y − mean(y)
      CCC = 2·ρ·sx·sy / (sx² + sy² + (mean(x) − mean(y))²),   s = torch.std (ddof=1)

  i.e. ρ from sums (ddof-free) mixed with `ddof`-corrected standard deviations (the official code
  does this; with ddof=0 it is Lin's CCC exactly)."""
  f = jnp.promote_types(x.dtype, jnp.float32)
  x, y, m = x.astype(f), y.astype(f), m.astype(f)
  n = jnp.sum(m)
  n_safe = jnp.maximum(n, 1.0)
  mx, my = jnp.sum(x * m) / n_safe, jnp.sum(y * m) / n_safe
  vx, vy = (x - mx) * m, (y - my) * m
  sxx, syy = jnp.sum(vx * vx), jnp.sum(vy * vy)
  rho = jnp.sum(vx * vy) / (_safe_sqrt(sxx) * _safe_sqrt(syy) + eps)
  dof = jnp.maximum(n - ddof, 1.0)
  sx, sy = _safe_sqrt(sxx / dof), _safe_sqrt(syy / dof)
  den = sx * sx + sy * sy + jnp.square(mx - my)
  # den = 0 only when both are constant and equal in mean (CCC undefined, torch NaN): 0 here.
  return 2.0 * rho * sx * sy / jnp.where(den > 0, den, 1.0)


def va_ccc_loss(pred: jax.Array, target: jax.Array, mask: jax.Array, ddof: int = 1,
                eps: float = 1e-8) -> tuple[jax.Array, jax.Array]:
  """ABAW VA loss L = (1 − CCC_v) + (1 − CCC_a) over all masked-in frames of the (global) batch.

  `pred`, `target` `(..., 2)` ([valence, arousal]); `mask (...)` float {0,1} — the official
  solver keeps frames whose valence label is not −5 (`mask = valence != -5`, one mask for both
  dimensions) and computes each CCC over the flattened (B·T) kept frames with `ccc_from_sums`
  (ddof=1 as `torch.std`; `ddof` is explicit here). Returns `(loss, ccc (2,))`. With ≤ ddof valid
  frames CCC is undefined: the loss is 0 (no gradient) and `ccc` NaN."""
  if pred.shape != target.shape or pred.shape[-1] != 2 or mask.shape != pred.shape[:-1]:
    raise UserError(f"va_ccc_loss: pred {pred.shape}, target {target.shape} must be (..., 2) "
                    f"and mask {mask.shape} their leading shape")
  m = mask.reshape(-1)
  ok = jnp.sum(m.astype(jnp.float32)) > ddof
  m = jnp.where(ok, m, jnp.ones_like(m))   # finite (unused) values and gradients when not ok
  ccc = jnp.stack([ccc_from_sums(pred[..., i].reshape(-1), target[..., i].reshape(-1), m,
                                 ddof, eps) for i in range(2)])
  loss = jnp.where(ok, jnp.sum(1.0 - ccc), 0.0)
  return loss, jnp.where(ok, ccc, jnp.nan)


def expr_ce_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array,
                 label_smoothing: float = 0.0) -> jax.Array:
  """EXPR loss: cross-entropy averaged over the valid frames of the (global) batch — torch
  `CrossEntropyLoss(ignore_index=-1, label_smoothing=ε)` on the flattened `(B·T, C)` logits, as
  the official EXPR solver (labels −1 dropped; ε = 0 there, MAE fine-tuning uses 0.1: target
  (1 − ε)·onehot + ε/C). `logits (..., C)`, integer `labels (...)`, float `mask (...)`; a frame
  counts when mask = 1 and label ≠ −1. With no valid frame the loss is 0 (torch: NaN)."""
  if logits.shape[:-1] != labels.shape or mask.shape != labels.shape:
    raise UserError(f"expr_ce_loss: logits {logits.shape}, labels {labels.shape}, mask "
                    f"{mask.shape}: expected (..., C), (...), (...)")
  f = jnp.promote_types(logits.dtype, jnp.float32)
  logp = jax.nn.log_softmax(logits.astype(f), axis=-1)
  valid = mask.astype(f) * (labels != -1).astype(f)
  safe = jnp.clip(labels, 0, logits.shape[-1] - 1).astype(jnp.int32)
  ce = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  if label_smoothing:
    ce = (1.0 - label_smoothing) * ce - label_smoothing * jnp.mean(logp, axis=-1)
  return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def au_bce_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """AU loss: `BCEWithLogitsLoss()` (mean) over the frames whose 12 AU labels are all valid — the
  official AU solver keeps rows `~(labels == -1).any(axis=1)` of the `(B·T, 12)` outputs and
  averages over kept rows × units. `logits`, `labels`, float `mask` all `(..., U)`; a frame counts
  when every unit has mask 1 and label ≠ −1. With no valid frame the loss is 0 (torch: NaN)."""
  if logits.shape != labels.shape or mask.shape != labels.shape:
    raise UserError(f"au_bce_loss: logits {logits.shape}, labels {labels.shape}, mask "
                    f"{mask.shape} must have the same shape (..., U)")
  f = jnp.promote_types(logits.dtype, jnp.float32)
  z, y = logits.astype(f), labels.astype(f)
  row = jnp.all((mask > 0) & (labels != -1), axis=-1).astype(f)
  bce = jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))   # torch's stable form
  return jnp.sum(bce * row[..., None]) / jnp.maximum(jnp.sum(row) * z.shape[-1], 1.0)


# ------------------------------------------------------------------------------ size and cost


def abaw6_expr_model(**overrides) -> ABAWTCN:
  """The official ABAW6 EXPR model: MAE 768-d stream, TCN [768, 256, 128] k=5 PReLU, d 512,
  8 layers × 4 heads, FF 512, head 512→256→8, dropout 0."""
  kw = dict(streams=ABAW6_STREAMS, outputs=("expr",), num_expr_classes=8, kernel_size=5,
            d_model=512, num_heads=4, num_layers=8, dim_feedforward=512, dropout=0.0)
  kw.update(overrides)
  return ABAWTCN(**kw)


def input_dims_of(module: ABAWTCN, input_dims: Mapping[str, int] | None = None) -> dict[str, int]:
  """Per-stream input widths: given, else the first TCN width (ABAW6: 768 → [768, …])."""
  input_dims = dict(input_dims or {})
  return {n: int(input_dims.get(n, ch[0])) for n, ch in module.streams}


def param_count(module: ABAWTCN, input_dims: Mapping[str, int] | None = None) -> int:
  """Number of trainable parameters (torch `sum(p.numel() for p in model.parameters())`), from
  `jax.eval_shape` of `init` (no weights made)."""
  dims = input_dims_of(module, input_dims)
  feats = {n: jax.ShapeDtypeStruct((1, 4, d), jnp.float32) for n, d in dims.items()}
  shapes = jax.eval_shape(lambda f: module.init(jax.random.key(0), f, train=False), feats)
  return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes["params"])))


def forward_macs_per_frame(module: ABAWTCN, seq_len: int,
                           input_dims: Mapping[str, int] | None = None) -> dict[str, float]:
  """Multiply-accumulates of one forward pass per frame (torch/thop convention: matmuls and
  convolutions only; the causal convs counted over all k taps), analytically for a window of
  `seq_len` frames. Attention scores and weighted sum grow with the window: 2·T·d per frame."""
  dims = input_dims_of(module, input_dims)
  k, d, t = module.kernel_size, module.d_model, seq_len
  tcn = 0
  for name, chans in module.streams:
    cin = dims[name]
    for c in chans:
      tcn += k * cin * c + k * c * c + (cin * c if cin != c else 0)
      cin = c
  proj = sum(ch[-1] for _, ch in module.streams) * d
  layer = 4 * d * d + 2 * t * d + 2 * d * module.dim_feedforward
  hidden = module.head_hidden or d // 2
  heads = sum(d * hidden + hidden * n for n in
              [u for o, names in module.head_names().items()
               for u in [module.output_dims()[o] // len(names)] * len(names)])
  total = tcn + proj + module.num_layers * layer + heads
  return {"tcn": float(tcn), "proj": float(proj), "encoder": float(module.num_layers * layer),
          "heads": float(heads), "total": float(total)}


def abaw6_expr_size(seq_len: int = 300) -> dict[str, float]:
  """Parameter count and per-frame / per-window GMACs (and GFLOPs = 2·MACs) of the ABAW6 EXPR
  model at a `seq_len` window (official: 20,512,913 parameters)."""
  m = abaw6_expr_model()
  macs = forward_macs_per_frame(m, seq_len)["total"]
  return {"params": param_count(m), "seq_len": seq_len, "gmacs_per_frame": macs / 1e9,
          "gmacs_per_window": macs * seq_len / 1e9, "gflops_per_window": 2 * macs * seq_len / 1e9}


# The model-module convention (models/registry.py): `config.model_name = "abaw_tcn"` finds these.
Model = ABAWTCN


def torch_mapping():
  """The official PyTorch key layout (`jaxaffect.interop.abaw_tcn`)."""
  from jaxaffect.interop import abaw_tcn
  return abaw_tcn.MAPPING


def bench_model():
  """`jaxaffect bench abaw_tcn` (train step vs the official PyTorch code)."""
  from jaxaffect import bench
  return bench.ABAW_TCN
