"""`jaxaffect.models.tdls.TDLS` ↔ a PyTorch state dict in OUR OWN layout (the paper has no public
code, so there is no official layout to follow; this one is chosen so that existing checkpoints
line up):

    Flax                                          torch
    params/backbone/…: patch embedding, merges,   timm 1.x `SwinTransformer` keys, NO prefix
      window blocks, final norm                   (`interop.swin.swin_rules`): patch_embed.proj,
                                                  patch_embed.norm, layers.i.downsample.*,
                                                  layers.i.blocks.j.{norm1, attn.qkv, attn.proj,
                                                  attn.relative_position_bias_table, norm2,
                                                  mlp.fc1, mlp.fc2}, norm
    deformable blocks (DeformableBlock)
      …/blocks_j/{norm1, norm2, mlp/fc1, mlp/fc2} layers.i.blocks.j.{norm1, norm2, mlp.fc1,
                                                  mlp.fc2}  (as a Swin block)
      …/blocks_j/attn/attn/{q, k, v, out}         layers.i.blocks.j.attn.{proj_q, proj_k, proj_v,
                                                  proj_out}  (DAT's names; nn.Linear here, DAT's
                                                  are 1×1 Conv2d: weight[..., None, None] there)
      …/blocks_j/attn/offset/{conv1, conv2}       layers.i.blocks.j.attn.conv_offset.{0, 2}
                                                  (Sequential(Conv2d 3×3, ReLU, Conv2d 3×3))
      constants/…/blocks_j/attn/ref_points        layers.i.blocks.j.attn.ref_points, a buffer
        (N_r, 2)                                  (image-normalised (x, y): grid_sample's
                                                  convention at align_corners=False)
    params/head_va                                head_va  (nn.Linear(C, 2), tanh after)
    params/proj/{fc1, fc2}, params/tg/{fc1, fc2}  proj.fc1/fc2, tg.fc1/fc2 (ReLU between)

So a timm ImageNet Swin-T state dict (`head.fc` aside) fills every window block of a TDLS with
`load_state_dict(strict=False)`, and a model of mode "swin" (no deformable block) is a timm
`SwinTransformer(num_classes=0)` plus the heads. Mode "rp" has no `conv_offset`, mode "fl" no
`ref_points` (its points are each image's landmarks). The torch module that loads this layout is
`TORCH_SOURCE` (subclass of timm's SwinTransformer; the export snippet prints it).

Verification sample (`jaxaffect export`): `input` (B, 3, H, W) pixels in [0, 1] (mode "fl":
`input_image` and `input_landmarks` (B, 68, 2) in input pixels); `output` the VA prediction
(B, 2) after tanh. The torch model normalises with ImageNet mean/std as ours does inside
(`TDLS.normalize`).

ImageNet initialisation (`load_imagenet_swin`; `jaxaffect import --partial --weights
swin_tiny_patch4_window7_224.pth` reaches it): a Swin checkpoint in timm or Microsoft layout
(`interop.swin.detect_layout`) fills the window blocks, and at each deformable position the Swin
block's norm1, norm2 and mlp, with q/k/v = the three row blocks of its `attn.qkv` and out = its
`attn.proj`. Its relative-position table (at deformable positions), `head.fc` and the Microsoft
buffers are dropped; the offset network, the reference points and the heads keep their init.

Training state (`models/tdls_task.py`): the momentum copy is set to the imported `backbone` and
`proj` (MoCo starts the key encoder as a copy of the query encoder); a full import also returns
an empty queue, so `jaxaffect import` without `--partial` restores a complete state.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from jaxaffect.interop import swin as swin_interop
from jaxaffect.interop.mapping import (ModelMapping, Rule, _compile, _placeholder_regexes,
                                       _to_numpy, conv2d, from_torch, linear, strip_prefix,
                                       to_torch, torch_load_expr)
from jaxaffect.nn import deformable as dla
from jaxaffect.nn import swin as swin_lib

log = logging.getLogger(__name__)

_ST, _BL = swin_lib.STAGE_PREFIX, swin_lib.BLOCK_PREFIX
_DBLK, _TBLK = f"backbone/{_ST}<i>/{_BL}<j>", "layers.<i>.blocks.<j>"

SWIN_RULES = tuple(r for r in swin_interop.swin_rules("backbone", "")
                   if not r.torch.startswith("head."))     # TDLS's backbone has no classifier
DEFORMABLE_RULES = (
    *(r for n, t in (("q", "proj_q"), ("k", "proj_k"), ("v", "proj_v"), ("out", "proj_out"))
      for r in linear(f"{_DBLK}/attn/attn/{n}", f"{_TBLK}.attn.{t}")),
    *conv2d(f"{_DBLK}/attn/offset/conv1", f"{_TBLK}.attn.conv_offset.0"),
    *conv2d(f"{_DBLK}/attn/offset/conv2", f"{_TBLK}.attn.conv_offset.2"),
    Rule((f"{dla.CONSTANTS}/{_DBLK}/attn/{dla.REF_POINTS}",), f"{_TBLK}.attn.{dla.REF_POINTS}"),
)
HEAD_RULES = (*linear("head_va", "head_va"),
              *(r for m in ("proj", "tg") for f in ("fc1", "fc2")
                for r in linear(f"{m}/{f}", f"{m}.{f}")))
RULES = (*SWIN_RULES, *DEFORMABLE_RULES, *HEAD_RULES)
MODEL_COLLECTIONS = ("params", "constants")
_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(.+)$")


def _model_part(variables: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in dict(variables).items() if k in MODEL_COLLECTIONS}


def to_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """TDLS variables (`params`, `constants`; training state such as `momentum` is ignored) → our
  torch layout (module docstring), numpy float32."""
  return to_torch(RULES, _model_part(variables), where="tdls")


# ------------------------------------------------------------------------------------------------
# ImageNet Swin → TDLS


def block_kinds_of(like_variables: Mapping[str, Any]) -> dict[tuple[int, int], str]:
  """(stage, block) → "window" | "deformable", read from a TDLS variable tree (a deformable block
  has `attn/attn/…`, a window block `attn/qkv`)."""
  out = {}
  backbone = dict(like_variables)["params"]["backbone"]
  for sname, stage in backbone.items():
    if not sname.startswith(_ST):
      continue
    for bname, blk in stage.items():
      if bname.startswith(_BL):
        key = (int(sname[len(_ST):]), int(bname[len(_BL):]))
        out[key] = "deformable" if "attn" in blk["attn"] else "window"
  return out


def _microsoft_geometry(sd: Mapping[str, Any]) -> tuple[int, int] | None:
  """(img_size, window_size) of a Microsoft-layout Swin state dict, from its own buffers: the
  window from stage 0's table, the image from stage 0's shifted-window mask (nW windows), or
  None when stage 0 has no mask to read (one block)."""
  table = sd.get(f"layers.0.blocks.0.attn.{swin_lib.TABLE}")
  patch = sd.get("patch_embed.proj.weight")
  if table is None or patch is None:
    return None
  window = (math.isqrt(int(np.shape(table)[0])) + 1) // 2
  for k in sorted(sd):
    if re.fullmatch(r"layers\.0\.blocks\.\d+\.attn_mask", k):
      return math.isqrt(int(np.shape(sd[k])[0])) * window * int(np.shape(patch)[-1]), window
  return None


def _check_rules_cover(sd: Mapping[str, Any], where: str) -> None:
  pats = [_compile(r.torch, _placeholder_regexes(*r.jax, r.torch)) for r in RULES]
  left = sorted(k for k in sd if not any(p.fullmatch(k) for p in pats))
  if left:
    raise KeyError(f"{where}: unexpected keys (no rule): {left[:10]}")


def imagenet_to_tdls_layout(state_dict: Mapping[str, Any], kinds: Mapping[tuple[int, int], str], *,
                            layout: str | None = None, img_size: int | None = None,
                            window_size: int | None = None
                            ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """An ImageNet Swin state dict (timm or Microsoft layout, `{'model': sd}` unwrapped) → our TDLS
  torch layout for a model whose blocks are `kinds` (`block_kinds_of`), plus a report
  {layout, qkv_split (the deformable positions filled from a window block), dropped (keys with
  no counterpart)}. Microsoft buffers are checked against `img_size` / `window_size`, or against
  the geometry read from the checkpoint's own stage-0 buffers when not given."""
  sd = {k: _to_numpy(v) for k, v in strip_prefix(swin_interop._unwrap(state_dict)).items()}
  layout = layout or swin_interop.detect_layout(sd)
  if layout not in swin_interop.LAYOUTS:
    raise KeyError(f"tdls: layout={layout!r}; expected one of {swin_interop.LAYOUTS}")
  dropped = [k for k in sd if swin_interop._is_buffer(k)]      # Microsoft's / timm's buffers
  if layout == "microsoft":
    geom = ((img_size, window_size) if img_size is not None and window_size is not None
            else _microsoft_geometry(sd))
    if geom is None:
      sd = swin_interop.microsoft_to_timm(sd, check_buffers=False)
    else:
      sd = swin_interop.microsoft_to_timm(sd, img_size=geom[0], window_size=geom[1])
  sd = {k: v for k, v in sd.items() if not swin_interop._is_buffer(k)}
  have = {(int(m.group(1)), int(m.group(2))) for m in map(_BLOCK_KEY.match, sd) if m}
  if have != set(kinds):
    raise KeyError(f"tdls: the Swin checkpoint's blocks do not match the model's: checkpoint only "
                   f"{sorted(have - set(kinds))[:6]}, model only {sorted(set(kinds) - have)[:6]}"
                   f" (stage, block)")
  out: dict[str, np.ndarray] = {}
  split = []
  for k, v in sd.items():
    if k.startswith("head."):                                   # ImageNet classifier
      dropped.append(k)
      continue
    m = _BLOCK_KEY.match(k)
    if m is None or kinds[(int(m.group(1)), int(m.group(2)))] != "deformable":
      out[k] = v
      continue
    pre, rest = f"layers.{m.group(1)}.blocks.{m.group(2)}.attn.", m.group(3)
    if rest in ("attn.qkv.weight", "attn.qkv.bias"):
      leaf = rest.rsplit(".", 1)[1]
      if np.shape(v)[0] % 3:
        raise KeyError(f"tdls: {k} has {np.shape(v)[0]} rows, not 3 × C")
      for name, part in zip(("proj_q", "proj_k", "proj_v"), np.split(v, 3, axis=0)):
        out[f"{pre}{name}.{leaf}"] = part
      if leaf == "weight":
        split.append(f"layers.{m.group(1)}.blocks.{m.group(2)}")
    elif rest.startswith("attn.proj."):
      out[f"{pre}proj_out.{rest[len('attn.proj.'):]}"] = v
    elif rest == f"attn.{swin_lib.TABLE}":
      dropped.append(k)                   # the deformable attention has no positional bias
    else:
      out[k] = v                          # norm1, norm2, mlp.fc1, mlp.fc2
  return out, {"layout": layout, "qkv_split": sorted(split), "dropped": sorted(dropped)}


def load_imagenet_swin(state_dict: Mapping[str, Any], like_variables: Mapping[str, Any], *,
                       layout: str | None = None, img_size: int | None = None,
                       window_size: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """An ImageNet Swin checkpoint (timm or Microsoft layout) → the TDLS `params` it covers (the
  reference points, `constants`, stay at their init), and a report: `layout`, `qkv_split`
  (deformable positions whose q/k/v/out come from the Swin block's qkv / proj), `dropped`
  (checkpoint keys with no counterpart: head.fc, the tables at deformable positions, Microsoft
  buffers), `copied` and `fresh` (Flax paths of `params`/`constants`: loaded, or left at their
  initialisation: offsets, reference points, heads). Merge the result into a fresh init
  (`train.init_from.merge`, which `jaxaffect import --partial` does) for a complete model.

  Strict where it can be: the checkpoint's blocks must be the model's blocks (stage, index) and
  every kept key must have a rule and a variable of the same shape."""
  like = _model_part(like_variables)
  sd, report = imagenet_to_tdls_layout(state_dict, block_kinds_of(like), layout=layout,
                                       img_size=img_size, window_size=window_size)
  _check_rules_cover(sd, "tdls (ImageNet Swin)")
  variables = from_torch(RULES, sd, like, where="tdls (ImageNet Swin)", partial=True)
  got = set(traverse_util.flatten_dict(variables, sep="/"))
  want = set(traverse_util.flatten_dict(like, sep="/"))
  report.update(copied=sorted(got), fresh=sorted(want - got))
  return variables, report


def is_swin_checkpoint(state_dict: Mapping[str, Any],
                       like_variables: Mapping[str, Any] | None) -> bool:
  """True for an ImageNet Swin checkpoint rather than our TDLS layout: Microsoft layout, a
  classifier `head.*`, or `attn.qkv` where the model has a deformable block."""
  sd = strip_prefix(swin_interop._unwrap(state_dict))
  if any(k.startswith("head.") for k in sd):
    return True
  if not any(k.startswith("layers.") for k in sd):
    return False
  if swin_interop.detect_layout(sd) == "microsoft":
    return True
  if like_variables is None:
    return False
  kinds = block_kinds_of(like_variables)
  return any(f"layers.{i}.blocks.{j}.attn.qkv.weight" in sd
             for (i, j), kind in kinds.items() if kind == "deformable")


def _training_state(out: dict[str, Any], like: Mapping[str, Any], partial: bool) -> dict[str, Any]:
  """The task's state beyond the model (`models/tdls_task.py`): `momentum` = a copy of the
  imported backbone / proj (what is imported; `--partial` merges the rest from the fresh init,
  whose momentum copy equals its fresh parameters); with a full import, an empty `queue`."""
  like = dict(like)
  params = out.get("params", {})
  if "momentum" in like:
    parts = {k: params[k] for k in like["momentum"]["params"] if k in params}
    if parts:
      out["momentum"] = {"params": parts}
  if "queue" in like and not partial:
    from jaxaffect.models import tdls as tdls_model
    rows, dim = like["queue"]["keys"].shape
    out["queue"] = tdls_model.queue_init(int(rows), int(dim))
  return out


def _part(path: str) -> str:
  """A Flax path's kind for the import log: offset, ref_points, head_va, proj, tg, ..."""
  for kind in ("offset", dla.REF_POINTS):
    if f"/{kind}/" in path or path.endswith(f"/{kind}"):
      return kind
  return path.split("/")[1]


def from_state_dict(state_dict: Mapping[str, Any], like: Mapping[str, Any] | None,
                    partial: bool = False) -> dict[str, Any]:
  """Our TDLS layout, or (with `partial`) an ImageNet Swin checkpoint (`load_imagenet_swin`)."""
  if is_swin_checkpoint(state_dict, like):
    if like is None:
      raise KeyError("tdls: importing a Swin checkpoint needs the model's variables")
    if not partial:
      raise KeyError("tdls: this is an ImageNet Swin checkpoint (timm/Microsoft keys); it fills "
                     "the Swin part of TDLS only (the offset networks, reference points and "
                     "heads start fresh): import it with --partial")
    out, rep = load_imagenet_swin(state_dict, like)
    log.info("tdls: ImageNet Swin (%s layout): %d variables copied, q/k/v/out of %d deformable "
             "blocks from Swin's qkv/proj; %d fresh (%s); %d checkpoint keys dropped (%s)",
             rep["layout"], len(rep["copied"]), len(rep["qkv_split"]), len(rep["fresh"]),
             ", ".join(sorted({_part(p) for p in rep["fresh"]})), len(rep["dropped"]),
             ", ".join(sorted({"head" if k.startswith("head.") else k.rsplit(".", 1)[-1]
                               for k in rep["dropped"]})))
  else:
    out = from_torch(RULES, state_dict, None if like is None else _model_part(like), where="tdls",
                     partial=partial)
  return out if like is None else _training_state(out, like, partial)


# ------------------------------------------------------------------------------------------------
# Export: example input, evaluation, snippet


def _example_input(module, variables, batch, rng, input_shape=None):
  h, w = input_shape or (module.img_size, module.img_size)
  x = rng.random((batch, h, w, 3), dtype=np.float32)
  xt = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
  if module.mode != "fl":
    return xt, x
  # 68 landmarks per image in input pixels (pixel-centre coordinates), inside the face region
  lm = np.stack([rng.uniform(0.15 * w, 0.85 * w, (batch, 68)),
                 rng.uniform(0.15 * h, 0.85 * h, (batch, 68))], axis=-1).astype(np.float32)
  return {"image": xt, "landmarks": lm}, {"image": x, "landmarks": lm}


def _apply_va(module, variables, x, landmarks):
  return module.apply(variables, x, train=False, landmarks=landmarks)["va"]


def run_eval(module, variables, x):
  """The VA prediction (B, 2) after tanh, evaluation mode."""
  v = _model_part(variables)
  if isinstance(x, Mapping):
    y = jax.jit(_apply_va, static_argnums=0)(module, v, x["image"], x["landmarks"])
  else:
    y = jax.jit(_apply_va, static_argnums=0)(module, v, x, None)
  return np.asarray(y, np.float32)


TORCH_SOURCE = '''
import math
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.swin_transformer import SwinTransformer


class DeformableLandmarkAttention(torch.nn.Module):
  """TDLS Eqs. 1-6 with DAT's names: keys/values sampled (bilinear, zeros, align_corners=False)
  at the reference points p (+ offsets from conv_offset, in map pixels), queries everywhere."""

  def __init__(self, dim, num_heads, mode="tdls", offsets="paper", offset_range=2.0,
               offset_hidden=None, num_points=196):
    super().__init__()
    self.num_heads, self.mode, self.offsets, self.offset_range = num_heads, mode, offsets, \\
        offset_range
    self.proj_q, self.proj_k, self.proj_v, self.proj_out = (torch.nn.Linear(dim, dim)
                                                            for _ in range(4))
    if mode == "tdls":
      hid = offset_hidden or dim
      self.conv_offset = torch.nn.Sequential(torch.nn.Conv2d(dim, hid, 3, padding=1),
                                             torch.nn.ReLU(), torch.nn.Conv2d(hid, 2, 3, padding=1))
    if mode != "fl":
      self.register_buffer("ref_points", torch.zeros(num_points, 2))
    self.points = None              # mode "fl": (B, N_r, 2) image-normalised, set by TDLS

  @staticmethod
  def sample(x, p):                 # x (B, C, H, W), p (B, N, 2) -> (B, N, C)
    return F.grid_sample(x, p[:, :, None], mode="bilinear", padding_mode="zeros",
                         align_corners=False)[..., 0].transpose(1, 2)

  def forward(self, x):             # (B, H, W, C)
    b, h, w, c = x.shape
    xc = x.permute(0, 3, 1, 2)
    p = self.points if self.mode == "fl" else self.ref_points.expand(b, -1, -1)
    if self.mode == "tdls":
      x1 = self.sample(xc, p)
      s = math.isqrt(x1.shape[1])
      off = self.conv_offset(x1.transpose(1, 2).reshape(b, c, s, s)).flatten(2).transpose(1, 2)
      off = torch.relu(off) if self.offsets == "paper" else self.offset_range * torch.tanh(off)
      p = p + off * torch.tensor([2.0 / w, 2.0 / h], dtype=off.dtype)
    x2 = self.sample(xc, p)
    d = c // self.num_heads
    heads = lambda t: t.reshape(b, -1, self.num_heads, d).transpose(1, 2)
    q = heads(self.proj_q(x.reshape(b, h * w, c)))
    y = F.scaled_dot_product_attention(q, heads(self.proj_k(x2)), heads(self.proj_v(x2)))
    return self.proj_out(y.transpose(1, 2).reshape(b, h, w, c))


class DeformableBlock(torch.nn.Module):
  def __init__(self, dim, num_heads, mlp_ratio=4.0, **attn_kw):
    super().__init__()
    self.norm1 = torch.nn.LayerNorm(dim)
    self.attn = DeformableLandmarkAttention(dim, num_heads, **attn_kw)
    self.norm2 = torch.nn.LayerNorm(dim)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class TDLS(SwinTransformer):
  """timm Swin (num_classes=0) whose blocks at `deformable` [(stage, block)] are DeformableBlocks;
  forward(x (B, 3, H, W) in [0, 1], landmarks (B, 68, 2) pixels for mode "fl") -> VA (B, 2)."""

  def __init__(self, deformable=(), mode="tdls", offsets="paper", offset_range=2.0,
               offset_hidden=None, proj_hidden=512, proj_dim=128, tg_hidden=256, normalize=True,
               **swin_kw):
    super().__init__(num_classes=0, **swin_kw)
    self.mode, self.normalize = mode, normalize
    for i, j in deformable:
      old = self.layers[i].blocks[j]
      dim = old.norm1.normalized_shape[0]
      self.layers[i].blocks[j] = DeformableBlock(
          dim, old.attn.num_heads, mode=mode, offsets=offsets, offset_range=offset_range,
          offset_hidden=offset_hidden, num_points=math.prod(old.input_resolution))
    c = self.num_features
    self.head_va = torch.nn.Linear(c, 2)
    self.proj = Mlp(c, proj_hidden, proj_dim, act_layer=torch.nn.ReLU)
    self.tg = Mlp(2 * proj_dim, tg_hidden, 2, act_layer=torch.nn.ReLU)

  def embed(self, x, landmarks=None):
    if self.mode == "fl":
      pts = 2.0 * (landmarks + 0.5) / x.shape[-2] - 1.0
      for m in self.modules():
        if isinstance(m, DeformableLandmarkAttention):
          m.points = pts
    if self.normalize:
      mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
      x = (x - mean) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return self.forward_head(self.forward_features(x))

  def forward(self, x, landmarks=None):
    return torch.tanh(self.head_va(self.embed(x, landmarks)))
'''


def torch_kwargs(module) -> dict[str, Any]:
  """`TDLS(**kwargs)` of `TORCH_SOURCE` for a `models.tdls.TDLS`."""
  from jaxaffect.models import tdls as tdls_model
  kinds = tdls_model.block_kinds(module.depths, module.deformable_stages, module.placement,
                                 module.mode)
  return dict(deformable=[(i, j) for i, st in enumerate(kinds) for j, k in enumerate(st)
                          if k == "deformable"],
              mode=module.mode, offsets=module.offsets, offset_range=float(module.offset_range),
              offset_hidden=module.offset_hidden or None, proj_hidden=module.proj_hidden,
              proj_dim=module.proj_dim, tg_hidden=module.tg_hidden, normalize=module.normalize,
              img_size=module.img_size, patch_size=module.patch_size, embed_dim=module.embed_dim,
              depths=tuple(module.depths), num_heads=tuple(module.num_heads),
              window_size=module.window_size)


def _snippet(weights: str, verify: str, module) -> str:
  load = torch_load_expr(weights)
  fl = module.mode == "fl"
  call = ('model(torch.from_numpy(ref["input_image"]), '
          'torch.from_numpy(ref["input_landmarks"]))' if fl
          else 'model(torch.from_numpy(ref["input"]))')
  return f'''# TDLS has no official code: jaxaffect's own torch layout (jaxaffect/interop/tdls.py)
import numpy as np
from safetensors.torch import load_file
{TORCH_SOURCE.strip()}


model = TDLS(**{torch_kwargs(module)!r}).eval()
model.load_state_dict({load}, strict=True)
ref = np.load("{verify}")
with torch.no_grad():
  out = {call}.numpy()
print("max |diff|:", np.abs(out - ref["output"]).max())
'''


MAPPING = ModelMapping(
    name="tdls", rules=RULES, example_input=_example_input, snippet=_snippet, run_eval=run_eval,
    to_state_dict=to_state_dict, from_state_dict=from_state_dict,
    description="TDLS ↔ jaxaffect's own torch layout (no official code): timm Swin keys, DAT's "
                "names for the deformable attention, head_va/proj/tg; imports ImageNet Swin-T "
                "(timm or Microsoft) with --partial (B,3,H,W)")
