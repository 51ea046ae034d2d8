"""TDLS: Swin-T with deformable landmark attention and temporal-cue guided frame representation
learning (Li, Meng, Hu, Dong; stage 1 of TDLS + MGCT). The paper has no public code; each choice
it leaves open is a field, said here.

    x (B, H, W, 3) pixels in [0, 1] → ImageNet mean/std (inside, as timm's Swin input)
    → `backbone` = nn.swin.SwinTransformer(num_classes=0): stages 1-2 window blocks; stages 3-4
      (`deformable_stages`) hold `DeformableBlock`s (nn/deformable.py, Eqs. 1-6) placed by
      `placement`: "alternate" (window, deformable, window, ...: DAT's placement, the default) or
      "all" (every block of those stages); `mode` chooses the Table IV variant:
        "swin"  plain Swin-T (no deformable block),
        "rp"    RP-Swin: keys/values at the landmark reference points p, no offsets,
        "fl"    FL-Swin: at each image's own 68 landmarks p' (the batch's `landmarks`),
        "tdls"  p + Δp, Δp from the offset network (Eq. 2; `offsets` "paper" = trailing ReLU,
                "signed" = tanh × `offset_range`);
      the reference points come from `keypoints` (the training set's mean 7-point template: the
      face-shard manifest's `template.keypoints7`, read by configs/tdls.py; None = the stand-in
      template of nn/deformable.py), a 28×28 heatmap of std `sigma`, N_r = each stage's area;
    → pooled, normalised feature f (768 for Swin-T) = `embed` (the per-frame feature that
      `data_prep features` writes for MGCT, stage 2)
    → `head_va`: Linear → tanh (valence, arousal), the frame-level VA prediction;
    → `proj`: MLP (Linear `proj_hidden` → ReLU → Linear `proj_dim`), L2-normalised: the frame
      representation a of Eq. 7 (MoCo v2's projection head).
    `tg`: MLP on [a''; c] (Linear `tg_hidden` → ReLU → Linear 2) predicting |ΔV|, |ΔA| (Eq. 7).

Eq. 7, temporal-cue guided frame representation learning, as implemented (`tg_loss`): a momentum
copy of the whole model (`extra["momentum"]`, m = 0.999, updated after every step from the new
parameters, `after_update`) embeds a second augmented view of the frame into b = proj(f_m(view 2));
b enters a queue with the frame's VA labels, video id (the record index) and time (the frame
index). For each training frame, a = proj(f(view 1)) of the online model; a' is a drawn from the
online branch (the frame's own representation; no extra predictor), a'' is a' repeated for each
of the N_k = `num_neighbours` queue entries c_j chosen "near the frame": `neighbours="time"` (the
default reading: entries of the same video closest in time, i.e. the temporal cue), or "label"
(entries of any video closest in (V, A)). The MLP `tg([a''; c_j])` predicts |VA − VA_j| and
L_TG = the masked mean squared error over frames, neighbours and {V, A} (or L1: `tg_error`).
Entries are used only when filled and labelled; a frame with no eligible neighbour adds nothing.
The queue is read before this step's keys are pushed (MoCo's order: compute, then enqueue); keys
come from the momentum model before its update this step (MoCo updates it first: one EMA step of
difference). The stage-1 loss is L_VA + β·L_TG (Eq. 12's β = 0.1; L_VA = the frame-level
1 − CCC of valence and arousal, `FrameLabelsTask`). The queue update is `hooks.queue_push_sharded`:
inside `jax.shard_map` each device all-gathers the keys of its batch shard over the batch axes
and every device writes the same rows (tested: 8 devices = 1 device).

Parameter count (Table III says 60.7 M for TDLS + MGCT): `param_table()` gives backbone, heads,
the momentum copy (backbone + proj again, counted separately: it is training state, not part of the
model that runs at inference), and MGCT. Measured (`jax.eval_shape`, 224 px, D_in 768): Swin-T
backbone 27,519,354 (timm's 28,288,354 minus its 769,000-parameter ImageNet head). With the
configs' offset hidden width 96: backbone 29,175,398 (deformable attention 5,802,632), heads
527,236, TDLS 29,702,634, momentum copy 29,634,790, MGCT 3,191,430: TDLS + MGCT 32,894,064 at
inference, 62,528,854 with the momentum copy, the reading nearest Table III's 60.7 M (the paper
does not say what it counts). With hidden width C (the literal reading of Eq. 2): backbone
36,835,430, TDLS 37,362,666.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxaffect.errors import UserError
from jaxaffect.nn import deformable as dla
from jaxaffect.nn.layers import Dense
from jaxaffect.nn.swin import SwinTransformer

Dtype = Any
MODES = ("swin", "rp", "fl", "tdls")
PLACEMENTS = ("alternate", "all")
NEIGHBOURS = ("time", "label")
TG_ERRORS = ("mse", "l1")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def block_kinds(depths: Sequence[int], stages: Sequence[int], placement: str,
                mode: str) -> tuple[tuple[str, ...], ...]:
  """Per Swin stage, the kind of each block: "deformable" in `stages` by `placement`."""
  if placement not in PLACEMENTS:
    raise UserError(f"TDLS.placement={placement!r}: expected one of {PLACEMENTS}")
  out = []
  for i, d in enumerate(depths):
    if mode == "swin" or i not in stages:
      out.append(("window",) * d)
    elif placement == "all":
      out.append(("deformable",) * d)
    else:
      out.append(tuple("window" if j % 2 == 0 else "deformable" for j in range(d)))
  return tuple(out)


def landmarks_to_points(landmarks: jax.Array, size: int) -> jax.Array:
  """(B, 68, 2) landmarks in output pixels (pixel-centre coordinates, as `frame_views` gives
  them) → image-normalised grid points (edges at ±1): g = 2·(p + 0.5)/size − 1."""
  return 2.0 * (landmarks.astype(jnp.float32) + 0.5) / size - 1.0


class MLP(nn.Module):
  hidden: int
  out: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    return Dense(self.out, name="fc2", **kw)(nn.relu(Dense(self.hidden, name="fc1", **kw)(x)))


class TDLS(nn.Module):
  """See the module docstring. Call `(x (B, H, W, 3) in [0, 1], *, train, landmarks=None)` →
  {"va" (B, 2) tanh, "embed" (B, C), "proj" (B, proj_dim) L2-normalised}."""
  mode: str = "tdls"
  img_size: int = 224
  patch_size: int = 4
  embed_dim: int = 96
  depths: tuple[int, ...] = (2, 2, 6, 2)
  num_heads: tuple[int, ...] = (3, 6, 12, 24)
  window_size: int = 7
  deformable_stages: tuple[int, ...] = (2, 3)
  placement: str = "alternate"
  offsets: str = "paper"
  offset_range: float = 2.0
  offset_hidden: int = 0                  # 0: the map's width C (the literal reading of Eq. 2)
  keypoints: tuple | None = None          # 7 (x, y) in [0, 1] image units; None: stand-in
  sigma: float = 3.0
  heat_size: int = 28
  seed: int = 0
  form: str = "matmul"
  drop_path_rate: float = 0.1
  proj_hidden: int = 512
  proj_dim: int = 128
  tg_hidden: int = 256
  normalize: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self):
    # configs restored from JSON give lists: keep the module hashable (jit static arguments)
    if self.keypoints is not None:
      object.__setattr__(self, "keypoints", tuple(tuple(float(v) for v in p)
                                                  for p in self.keypoints))
    for f in ("depths", "num_heads", "deformable_stages"):
      object.__setattr__(self, f, tuple(int(v) for v in getattr(self, f)))
    super().__post_init__()

  def setup(self):
    if self.mode not in MODES:
      raise UserError(f"TDLS.mode={self.mode!r}: expected one of {MODES} (Table IV)")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    factory = functools.partial(
        dla.DeformableBlock, mode="tdls" if self.mode == "swin" else self.mode,
        offsets=self.offsets, offset_range=self.offset_range,
        offset_hidden=self.offset_hidden or None,
        keypoints=self.keypoints,
        sigma=self.sigma, heat_size=self.heat_size, seed=self.seed, form=self.form)
    self.backbone = SwinTransformer(
        img_size=self.img_size, patch_size=self.patch_size, embed_dim=self.embed_dim,
        depths=tuple(self.depths), num_heads=tuple(self.num_heads),
        window_size=self.window_size, num_classes=0,
        block_kinds=block_kinds(self.depths, self.deformable_stages, self.placement, self.mode),
        block_types=(("deformable", factory),), drop_path_rate=self.drop_path_rate, **kw)
    self.head_va = Dense(2, **kw)
    self.proj = MLP(self.proj_hidden, self.proj_dim, **kw)
    self.tg = MLP(self.tg_hidden, 2, **kw)

  def _normalize(self, x):
    x = x.astype(jnp.float32)
    if self.normalize:
      x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    return x.astype(self.dtype)

  def _context(self, x, landmarks):
    if self.mode != "fl":
      return None
    if landmarks is None:
      raise UserError("TDLS mode 'fl' (FL-Swin) needs each image's landmarks: a `frame_views` "
                      "sampler with landmarks=True over shards with 68-point landmarks")
    return landmarks_to_points(landmarks, x.shape[1])

  def embed(self, x: jax.Array, train: bool = False, landmarks: jax.Array | None = None):
    """(N, H, W, 3) pixels in [0, 1] → the pooled, normalised Swin feature (N, C) float32."""
    f = self.backbone(self._normalize(x), train=train, context=self._context(x, landmarks))
    return f.astype(jnp.float32)

  def represent(self, f: jax.Array) -> jax.Array:
    """Eq. 7's frame representation a = proj(f), L2-normalised."""
    a = self.proj(f.astype(self.dtype)).astype(jnp.float32)
    return a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)

  def keys(self, x: jax.Array, landmarks: jax.Array | None = None) -> jax.Array:
    """The momentum branch of Eq. 7 (run with the momentum copy of `backbone` and `proj`):
    b = proj(f(x)) of the second view, L2-normalised, evaluation mode (no drop path)."""
    return self.represent(self.embed(x, train=False, landmarks=landmarks))

  def predict_delta(self, a: jax.Array, c: jax.Array) -> jax.Array:
    """Eq. 7's MLP on [a''; c]: `a (B, P)`, `c (B, N_k, P)` → predicted |ΔVA| (B, N_k, 2)."""
    a2 = jnp.broadcast_to(a[:, None], c.shape[:2] + a.shape[-1:])
    return self.tg(jnp.concatenate([a2, c], -1).astype(self.dtype)).astype(jnp.float32)

  def __call__(self, x: jax.Array, *, train: bool = False,
               landmarks: jax.Array | None = None) -> dict[str, jax.Array]:
    f = self.embed(x, train=train, landmarks=landmarks)
    va = jnp.tanh(self.head_va(f.astype(self.dtype)).astype(jnp.float32))
    out = {"va": va, "embed": f, "proj": self.represent(f)}
    if self.is_initializing():                     # create `tg`'s parameters
      self.predict_delta(out["proj"], out["proj"][:, None])
    return out


# ---------------------------------------------------------------------------------------- Eq. 7


def select_neighbours(query: dict[str, jax.Array], queue: dict[str, jax.Array], k: int,
                      how: str = "time") -> tuple[jax.Array, jax.Array]:
  """Indices (B, k) of the queue rows "near" each query frame, and their validity (B, k).
  `query`: `video (B,)`, `time (B,)`, `va (B, 2)`; `queue`: the same fields (Q rows) plus
  `va_mask (Q,)` and `count` (filled rows, the ring buffer's first `count` rows are filled when
  it has not wrapped; rows ≥ count are empty). "time": rows of the same video, closest in time;
  "label": rows of any video, closest in (V, A) (Euclidean)."""
  if how not in NEIGHBOURS:
    raise UserError(f"TDLS neighbours={how!r}: expected one of {NEIGHBOURS}")
  q = queue["keys"].shape[0]
  if k > q:
    raise UserError(f"TDLS: num_neighbours={k} exceeds the queue size {q}")
  filled = jnp.arange(q) < queue["count"]
  ok = filled[None] & (queue["va_mask"][None] > 0)
  if how == "time":
    ok = ok & (queue["video"][None] == query["video"][:, None])
    dist = jnp.abs(queue["time"][None].astype(jnp.float32)
                   - query["time"][:, None].astype(jnp.float32))
  else:
    dist = jnp.linalg.norm(queue["va"][None] - query["va"][:, None], axis=-1)
  dist = jnp.where(ok, dist, jnp.inf)
  neg, idx = jax.lax.top_k(-dist, k)
  return idx, jnp.isfinite(neg)


def tg_loss(module: TDLS, params, a: jax.Array, query: dict[str, jax.Array],
            queue: dict[str, jax.Array], *, k: int, how: str = "time",
            error: str = "mse") -> tuple[jax.Array, jax.Array]:
  """Eq. 7, L_TG (module docstring): `a (B, P)` online representations, `query` = {video, time,
  va (B, 2), va_mask (B,)}. Returns (loss, number of (frame, neighbour) pairs used)."""
  if error not in TG_ERRORS:
    raise UserError(f"TDLS tg_error={error!r}: expected one of {TG_ERRORS}")
  idx, valid = select_neighbours(query, queue, k, how)
  c = jax.lax.stop_gradient(queue["keys"][idx].astype(jnp.float32))        # (B, k, P)
  target = jnp.abs(query["va"][:, None] - queue["va"][idx])                 # (B, k, 2)
  pred = module.apply({"params": params}, a, c, method=TDLS.predict_delta)
  w = (valid & (query["va_mask"][:, None] > 0)).astype(jnp.float32)
  e = jnp.square(pred - target) if error == "mse" else jnp.abs(pred - target)
  n = jnp.sum(w)
  return jnp.sum(e.mean(-1) * w) / jnp.maximum(n, 1.0), n


def queue_init(size: int, dim: int) -> dict[str, jax.Array]:
  if size < 1 or dim < 1:
    raise UserError(f"TDLS queue: size={size}, dim={dim}: expected >= 1")
  return {"keys": jnp.zeros((size, dim), jnp.float32), "va": jnp.zeros((size, 2), jnp.float32),
          "va_mask": jnp.zeros((size,), jnp.float32), "video": jnp.full((size,), -1, jnp.int32),
          "time": jnp.zeros((size,), jnp.float32), "ptr": jnp.zeros((), jnp.int32),
          "count": jnp.zeros((), jnp.int32)}


# ---------------------------------------------------------------------------------- parameters


def param_count(tree) -> int:
  return int(sum(np.prod(a.shape) for a in jax.tree.leaves(tree)))


def param_table(module: TDLS, mgct_module=None, d_in: int | None = None) -> dict[str, int]:
  """Parameter counts by part (shapes only): backbone (Swin + deformable blocks), its deformable
  blocks alone, heads (VA, proj, tg), the momentum copy (backbone + proj), MGCT."""
  s = module.img_size
  v = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, s, s, 3)),
                                         landmarks=jnp.zeros((1, 68, 2))))
  p = v["params"]
  deform = 0
  for stage in p["backbone"].values():
    for block in (stage.values() if isinstance(stage, dict) else ()):
      if isinstance(block, dict) and "attn" in block and "attn" in block["attn"]:
        deform += param_count(block["attn"])          # DeformableBlock: attn/{attn, offset}
  out = {"backbone": param_count(p["backbone"]), "deformable attention (q/k/v/out, offsets)":
         deform, "heads (va, proj, tg)": param_count({k: p[k] for k in p if k != "backbone"})}
  out["TDLS total"] = out["backbone"] + out["heads (va, proj, tg)"]
  out["momentum copy (backbone + proj, training state)"] = out["backbone"] + param_count(p["proj"])
  if mgct_module is not None:
    from jaxaffect.models import mgct
    out["MGCT"] = mgct.param_count(mgct_module, d_in or module.embed_dim * 8)
    out["TDLS + MGCT (inference)"] = out["TDLS total"] + out["MGCT"]
  return out


Model = TDLS


def make_task(module: TDLS, task_config) -> Any:
  from jaxaffect.models import tdls_task
  return tdls_task.make_task(module, task_config)


def torch_mapping():
  """Our own torch layout (no official code): timm Swin keys for the backbone, DAT's names for
  the deformable attention (`interop.tdls`)."""
  from jaxaffect.interop import tdls
  return tdls.MAPPING

