"""MGCT: multi-layer group temporal transformer (Li, Meng, Hu, Dong, TDLS + MGCT, Eqs. 8-10), the
cross-clip loss (Eq. 11) and the total loss (Eq. 12). The paper has no public code; every choice
below that the paper leaves open is a field, and the choice is said here.

    x (B, T, D_in) TDLS frame features ─ `proj_in` Linear → C_0
      level 0: `enc_0` transformer over the T frames (channels C_0 = 128)              (Eq. 8)
      level l = 1..L: groups of `group_size` g consecutive level-(l-1) tokens summarised
        ("max": masked max-pool, "avg": masked mean, then `down_l` Linear C_{l-1} → C_l;
         "concat": the g tokens concatenated (g·C_{l-1}) then `down_l` Linear → C_l; Table IX),
        `enc_l` transformer over the T/g^l tokens (C_1 = 256, C_2 = 512)
      top-down guidance (Eq. 9), from the coarsest level down:
        G_L = H_L;  G_{l-1} = H_{l-1} + Interp_g(`up_l`(G_l))
        Interp_g: linear interpolation ×g along time with torch `F.interpolate(mode="linear",
        align_corners=False)` semantics (half-pixel: a level-l token sits at its group's centre,
        which is where align_corners=False puts it; tested against torch). The channel mismatch
        C_l → C_{l-1} is bridged by the linear projection `up_l`, applied before the
        interpolation (a Linear commutes with linear interpolation, weights summing to 1, so the
        order changes nothing but the cost).
      heads: `head_l` Linear C_l → 2 (valence, arousal) on every G_l              (Eq. 10)
      prediction at inference: `head_0` on G_0 (the finest level after all top-down additions).

Padding (`frame_mask (B, T)`, 1 = real frame): T is padded inside to a multiple of g^L; a group
token is real when any of its frames is; max/avg pool only real members (concat zeroes padded
members); attention keys are masked (a row with no real token keeps all keys, as abaw_tcn); before
the expansion the padded tail of each level is filled with its last real token, so the
interpolation near the end of a clip sees what the truncated clip would (edge clamp). Result: for
*trailing* padding the real frames' outputs equal the truncated clip's (tested). Holes inside a clip
are masked in attention and pooling but still enter the interpolation.

Table switches (config fields): `group_size` (Table VIII), `num_levels` (Table X; 0 = the frame
transformer alone), `summarise` (Table IX), `guidance=False` (Table XI "no guidance": no top-down
additions, every head reads its own level H_l), `summarise_twice=True` (Table XI "summarise twice").
The paper's text for "summarise twice" is ambiguous; the reading implemented here: the bottom-up
summarisation + top-down guidance pass is run a second time, starting from the guided frame
features G_0 of the first pass, with the same level transformers and projections (no new
parameters); heads read the second pass. The other literal reading, summarising each group twice
in a row, is for max-pooling identical to a group size g² (Table VIII already covers it).

Transformers: post-norm `torch.nn.TransformerEncoderLayer` (ReLU, torch MHA layout `q/k/v`,
dropout `dropout`), `depth` layers per level, `num_heads` heads, feed-forward `mlp_ratio`·C_l, no
positional encoding (the paper names none) — all fields.

Losses. Eq. 10, L_MGCT = Σ_l λ_l · L_l with λ = (1.2, 0.9, 0.6) (finest first), L_l over the
level-l predictions against the labels downsampled to that level by averaging the real frames of
each group (`downsample_labels`; a group without a labelled frame is masked out). L_l = mean over
{V, A} of (1 − CCC) (Lin's CCC, ddof 0, over all real tokens of the batch, as the RECOLA/SEWA metric
and the usual choice for these datasets; our reading, the paper writes its level loss without
saying MSE or CCC) or "mse" (a switch). Eq. 11, `cross_clip_loss`, and Eq. 12, `total_loss`: see
their docstrings.

Elsewhere: the stage-2 task (Eq. 10 loss, VA metrics, Fig. 11 level curves) is
`models/mgct_task.py`, the PyTorch layout (the independent `TorchMGCT` of tests/models/test_mgct.py:
there is no official code) `interop/mgct.py`, the configs `configs/mgct.py`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.errors import UserError
from jaxaffect.models.abaw_tcn import ccc_from_sums, key_padding_mask
from jaxaffect.nn.attention import TransformerEncoder
from jaxaffect.nn.layers import Dense

Dtype = Any
SUMMARISE = ("max", "avg", "concat")
LEVEL_WEIGHTS = (1.2, 0.9, 0.6)        # Eq. 10 λ, finest level first
LEVEL_LOSSES = ("ccc", "mse")
CCL_MODES = ("stats", "relative", "overlap")


def _groups(x: jax.Array, g: int) -> jax.Array:
  """(B, n·g, ...) → (B, n, g, ...)."""
  return x.reshape((x.shape[0], x.shape[1] // g, g) + x.shape[2:])


def summarise_groups(x: jax.Array, valid: jax.Array, g: int, how: str) -> tuple[jax.Array,
                                                                                jax.Array]:
  """Groups of `g` consecutive tokens → one token each (Eq. 8's summary; Table IX). `x (B, n·g, C)`,
  `valid (B, n·g)` bool. "max" / "avg": over the group's real tokens (C channels); "concat": the
  g tokens (padded ones zeroed) side by side, (g·C) channels — the caller projects. Returns
  (tokens, valid (B, n): any real member)."""
  xg, vg = _groups(x, g), _groups(valid, g)[..., None]
  gv = jnp.any(vg[..., 0], axis=-1)
  if how == "max":
    y = jnp.max(jnp.where(vg, xg, jnp.finfo(x.dtype).min), axis=2)
    y = jnp.where(gv[..., None], y, 0.0)
  elif how == "avg":
    w = vg.astype(x.dtype)
    y = jnp.sum(xg * w, axis=2) / jnp.maximum(jnp.sum(w, axis=2), 1.0)
  elif how == "concat":
    y = jnp.where(vg, xg, 0.0).reshape(xg.shape[:2] + (-1,))
  else:
    raise UserError(f"MGCT.summarise={how!r}: expected one of {SUMMARISE}")
  return y, gv


def edge_fill(x: jax.Array, valid: jax.Array) -> jax.Array:
  """Replace every token after the last real one (per row) by the last real token."""
  n = x.shape[1]
  pos = jnp.arange(n)
  last = jnp.max(jnp.where(valid, pos[None], 0), axis=1)
  idx = jnp.minimum(pos[None], last[:, None])
  return jnp.take_along_axis(x, idx[..., None], axis=1)


def expand_linear(x: jax.Array, g: int) -> jax.Array:
  """Linear interpolation ×g along axis 1, `F.interpolate(x, scale_factor=g, mode="linear",
  align_corners=False)` (Eq. 9 Interp): output i reads input (i + 0.5)/g − 0.5, clamped at 0,
  between floor and floor + 1 (clamped at n − 1)."""
  n = x.shape[1]
  src = jnp.maximum((jnp.arange(n * g) + 0.5) / g - 0.5, 0.0)
  i0 = jnp.floor(src).astype(jnp.int32)
  i1 = jnp.minimum(i0 + 1, n - 1)
  w = (src - i0).astype(x.dtype)[None, :, None]
  return x[:, i0] * (1 - w) + x[:, i1] * w


class MGCT(nn.Module):
  """See the module docstring. Call: `x (B, T, D_in)`, `frame_mask (B, T)` (1 = real; None = all),
  `train` (dropout from the `dropout` stream). Returns `{"va": (B, T, 2)` (the final prediction,
  level 0), `"levels"`: tuple of (B, T_l, 2) per level (T_l = ceil(T / g^L)·g^(L−l): padded),
  `"level_masks"`: tuple of (B, T_l) float}.
  Submodules: `proj_in`, `enc_<l>/layer_<j>`, `down_<l>`, `up_<l>` (l ≥ 1), `head_<l>`."""
  channels: Sequence[int] = (128, 256, 512)
  group_size: int = 4
  num_levels: int = 2
  summarise: str = "max"
  guidance: bool = True
  summarise_twice: bool = False
  depth: int = 1
  num_heads: int = 4
  mlp_ratio: float = 2.0
  dropout: float = 0.0
  num_outputs: int = 2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _check(self):
    if self.summarise not in SUMMARISE:
      raise UserError(f"MGCT.summarise={self.summarise!r}: expected one of {SUMMARISE}")
    if len(self.channels) != self.num_levels + 1:
      raise UserError(f"MGCT.channels={tuple(self.channels)}: need num_levels + 1 = "
                      f"{self.num_levels + 1} entries (frame level first)")
    if self.group_size < 2:
      raise UserError(f"MGCT.group_size={self.group_size}: need >= 2")

  @nn.compact
  def __call__(self, x: jax.Array, frame_mask: jax.Array | None = None, *,
               train: bool = False) -> dict[str, Any]:
    self._check()
    if x.ndim != 3:
      raise UserError(f"MGCT: features must be (B, T, D), got {x.shape}")
    b, t, _ = x.shape
    g, nl = self.group_size, self.num_levels
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    valid = jnp.ones((b, t), bool) if frame_mask is None else frame_mask > 0
    tp = -(-t // g ** nl) * g ** nl
    x = jnp.pad(x, ((0, 0), (0, tp - t), (0, 0)))
    valid = jnp.pad(valid, ((0, 0), (0, tp - t)))
    det = not train
    encs = [TransformerEncoder(self.depth, self.num_heads, int(self.mlp_ratio * c),
                               norm_first=False, activation="relu", qkv_layout="separate",
                               qkv_bias=True, dropout=self.dropout, attn_dropout=self.dropout,
                               name=f"enc_{l}", **kw) for l, c in enumerate(self.channels)]
    downs = [None] + [Dense(c, name=f"down_{l}", **kw) for l, c in enumerate(self.channels) if l]
    ups = [None] + [Dense(self.channels[l - 1], name=f"up_{l}", **kw) for l in range(1, nl + 1)]

    def enc(l, h, v):
      return encs[l](h, mask=key_padding_mask(v.astype(h.dtype)), deterministic=det)

    h0 = enc(0, Dense(self.channels[0], name="proj_in", **kw)(x), valid)
    masks = [valid]
    for _ in range(nl):
      masks.append(_groups(masks[-1], g).any(-1))

    def one_pass(h0):
      hs = [h0]
      for l in range(1, nl + 1):
        y, _ = summarise_groups(hs[-1], masks[l - 1], g, self.summarise)
        hs.append(enc(l, downs[l](y), masks[l]))
      if not self.guidance:
        return hs
      gs = [None] * nl + [hs[nl]]
      for l in range(nl, 0, -1):
        up = edge_fill(ups[l](gs[l]), masks[l])
        gs[l - 1] = hs[l - 1] + expand_linear(up, g)           # Eq. 9
      return gs

    gs = one_pass(h0)
    if self.summarise_twice:
      gs = one_pass(gs[0])
    preds = tuple(Dense(self.num_outputs, name=f"head_{l}", **kw)(gl) for l, gl in enumerate(gs))
    return {"va": preds[0][:, :t], "levels": preds,
            "level_masks": tuple(m.astype(jnp.float32) for m in masks)}


# ---------------------------------------------------------------------------------------- losses


def downsample_labels(labels: jax.Array, mask: jax.Array, group_size: int,
                      num_levels: int) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
  """Per-frame labels `(B, T, K)` and label mask `(B, T)` → per level l = 0..L the labels averaged
  over the labelled frames of each group of g^l frames (Eq. 10's downsampled targets; T padded to
  a multiple of g^L as in `MGCT`), and the level mask (any labelled frame in the group)."""
  g = group_size
  t = labels.shape[1]
  tp = -(-t // g ** num_levels) * g ** num_levels
  m = jnp.pad(mask.astype(jnp.float32), ((0, 0), (0, tp - t)))
  y = jnp.pad(labels.astype(jnp.float32), ((0, 0), (0, tp - t), (0, 0))) * m[..., None]
  ys, ms = [y], [m]
  for l in range(1, num_levels + 1):
    s = _groups(y, g ** l).sum(2)
    c = _groups(m, g ** l).sum(2)
    ys.append(s / jnp.maximum(c, 1.0)[..., None])
    ms.append((c > 0).astype(jnp.float32))
  return tuple(ys), tuple(ms)


def level_loss(pred: jax.Array, target: jax.Array, mask: jax.Array, kind: str = "ccc") -> jax.Array:
  """One level's loss: mean over the K outputs of (1 − CCC) (Lin's CCC over all masked-in tokens of
  the batch) or the masked MSE. Fewer than 2 tokens: 0."""
  m = mask.reshape(-1).astype(jnp.float32)
  if kind == "mse":
    d = jnp.square(pred.astype(jnp.float32) - target).reshape(-1, pred.shape[-1])
    return jnp.sum(d * m[:, None]) / jnp.maximum(jnp.sum(m), 1.0) / pred.shape[-1]
  if kind != "ccc":
    raise UserError(f"MGCT level loss {kind!r}: expected one of {LEVEL_LOSSES}")
  ok = jnp.sum(m) > 1
  m = jnp.where(ok, m, jnp.ones_like(m))
  k = pred.shape[-1]
  ccc = jnp.stack([ccc_from_sums(pred[..., i].reshape(-1), target[..., i].reshape(-1), m, ddof=0)
                   for i in range(k)])
  return jnp.where(ok, jnp.mean(1.0 - ccc), 0.0)


def mgct_loss(outputs: dict[str, Any], labels: jax.Array, label_mask: jax.Array, *,
              group_size: int, weights: Sequence[float] = LEVEL_WEIGHTS,
              kind: str = "ccc") -> tuple[jax.Array, jax.Array]:
  """Eq. 10, L_MGCT = Σ_l λ_l · L_l(head_l, labels downsampled to level l), λ finest first.
  `outputs` from `MGCT`; `labels (B, T, 2)`, `label_mask (B, T)` (times the example/frame masks).
  Returns (loss, per-level losses (L + 1,))."""
  preds = outputs["levels"]
  nl = len(preds) - 1
  if len(weights) < nl + 1:
    raise UserError(f"MGCT loss weights {tuple(weights)}: need {nl + 1} (one per level)")
  ys, ms = downsample_labels(labels, label_mask, group_size, nl)
  per = jnp.stack([level_loss(p, y, m * om, kind)
                   for p, y, m, om in zip(preds, ys, ms, outputs["level_masks"])])
  return jnp.sum(jnp.asarray(weights[:nl + 1], jnp.float32) * per), per


def cross_clip_loss(preds: jax.Array, mask: jax.Array, main_index: jax.Array, *,
                    mode: str = "stats", labels: jax.Array | None = None,
                    starts: jax.Array | None = None, stop_main_gradient: bool = False) -> jax.Array:
  """Eq. 11, L_CCL over N_c clips of one video with a main clip (drawn at random per video by the
  caller): the main clip's predictions anchor the others'. `preds (B, N_c, T, K)`, `mask
  (B, N_c, T)` (1 = real, labelled frame), `main_index (B,)` int.

  Modes (the paper's equation is described, not given in full; "stats" is our literal reading of
  "consistency between the main clip and the other clips"):
    "stats": mean over the other clips j and the K outputs of (μ̂_main − μ̂_j)², μ̂ = a clip's mean
      prediction over its real frames (clip-level statistics agree across clips of one video);
    "relative": the same, but the difference of predicted means must match the difference of the
      labels' means, ((μ̂_main − μ̂_j) − (μ_main − μ_j))² (needs `labels`), a variant that lets
      genuine changes of affect between clips stand;
    "overlap": clips with frame offsets `starts (B, N_c)` in the video: the mean over frames shared
      by the main clip and clip j of the squared difference of their predictions at the same video
      frame (0 where clips do not overlap).
  `stop_main_gradient`: the main clip as a fixed target (only the other clips get gradients).
  Videos (rows) without any real frame in the main clip or another clip contribute 0."""
  if preds.ndim != 4 or mask.shape != preds.shape[:3]:
    raise UserError(f"cross_clip_loss: preds {preds.shape} must be (B, N_c, T, K), mask "
                    f"{mask.shape} (B, N_c, T)")
  if mode not in CCL_MODES:
    raise UserError(f"cross_clip_loss: mode={mode!r}: expected one of {CCL_MODES}")
  b, nc, t, k = preds.shape
  p = preds.astype(jnp.float32)
  m = mask.astype(jnp.float32)
  onehot = jax.nn.one_hot(main_index, nc, dtype=jnp.float32)          # (B, N_c)
  other = 1.0 - onehot
  take_main = lambda a: jnp.einsum("bn,bn...->b...", onehot, a)
  pm = take_main(p)
  if stop_main_gradient:
    pm = jax.lax.stop_gradient(pm)
  mm = take_main(m)
  if mode in ("stats", "relative"):
    cnt = jnp.sum(m, axis=2)                                            # (B, N_c)
    mu = jnp.sum(p * m[..., None], axis=2) / jnp.maximum(cnt, 1.0)[..., None]
    mu_main = jnp.sum(pm * mm[..., None], axis=1) / jnp.maximum(jnp.sum(mm, 1), 1.0)[:, None]
    d = mu_main[:, None] - mu                                          # (B, N_c, K)
    if mode == "relative":
      if labels is None or labels.shape != preds.shape:
        raise UserError(f"cross_clip_loss(mode='relative'): labels {None if labels is None else labels.shape} must be {preds.shape}")
      y = labels.astype(jnp.float32)
      ym = jnp.sum(y * m[..., None], axis=2) / jnp.maximum(cnt, 1.0)[..., None]
      d = d - (take_main(ym)[:, None] - ym)
    w = other * (cnt > 0) * (jnp.sum(mm, 1) > 0)[:, None]
    return jnp.sum(jnp.mean(jnp.square(d), -1) * w) / jnp.maximum(jnp.sum(w), 1.0)
  if starts is None or starts.shape != (b, nc):
    raise UserError(f"cross_clip_loss(mode='overlap'): starts must be (B, N_c) = {(b, nc)}")
  s = starts.astype(jnp.int32)
  s_main = jnp.sum(onehot * s, axis=1).astype(jnp.int32)             # (B,)
  u = s[:, :, None] + jnp.arange(t)[None, None] - s_main[:, None, None]   # main-clip frame index
  inside = (u >= 0) & (u < t)
  uc = jnp.clip(u, 0, t - 1)
  pm_at = jax.vmap(lambda a, i: a[i])(pm, uc)                          # (B, N_c, T, K)
  mm_at = jax.vmap(lambda a, i: a[i])(mm, uc)
  w = m * mm_at * inside * other[..., None]
  d = jnp.mean(jnp.square(pm_at - p), -1)
  return jnp.sum(d * w) / jnp.maximum(jnp.sum(w), 1.0)


def total_loss(l_mgct: jax.Array, l_tg: jax.Array | None = None, l_ccl: jax.Array | None = None,
               *, alpha: float = 1.0, beta: float = 0.1, gamma: float = 0.1) -> jax.Array:
  """Eq. 12, L = α·L_MGCT + β·L_TG + γ·L_CCL, (α, β, γ) = (1, 0.1, 0.1). The paper trains in two
  stages: stage 1 trains TDLS on frames (its VA loss and L_TG, models/tdls.py), stage 2 trains MGCT
  on frozen TDLS features with L_MGCT and L_CCL; L_TG has no gradient with respect to MGCT's
  parameters, so in stage 2 it is a constant and is passed as None. A term passed as None is left
  out (not counted as zero)."""
  out = alpha * l_mgct
  if l_tg is not None:
    out = out + beta * l_tg
  if l_ccl is not None:
    out = out + gamma * l_ccl
  return out


def param_count(module: MGCT, d_in: int = 768) -> int:
  v = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, d_in))))
  return sum(int(a.size) for a in jax.tree.leaves(v["params"]))


# ------------------------------------------------------------------------- model-module hooks


def make_task(module: MGCT, task_config) -> Any:
  """The model-module hook (models/registry.py): `mgct_task.MGCTTask` (stage 2 on feature windows:
  Eq. 10 loss, VA metrics, Fig. 11 level curves); `config.task` fields `level_weights`,
  `level_loss`, `num_curves` and the `FrameLabelsTask` ones; outputs are ("va",)."""
  from jaxaffect.models import mgct_task
  return mgct_task.make_task(module, task_config)


def torch_mapping():
  """The state-dict layout of the independent torch MGCT `TorchMGCT` in tests/models/test_mgct.py
  (the paper has no code): `jaxaffect.interop.mgct`."""
  from jaxaffect.interop import mgct as mgct_map
  return mgct_map.MAPPING


Model = MGCT
