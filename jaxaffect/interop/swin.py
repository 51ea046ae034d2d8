"""`jaxaffect.nn.swin.SwinTransformer` ↔ timm 1.x `SwinTransformer` and Microsoft Swin-Transformer
(`models/swin_transformer.py`) state dicts.

    Flax                                            timm 1.x                        Microsoft
    params/patch_embed (HWIO)                       patch_embed.proj (OIHW)         same
    params/patch_norm                               patch_embed.norm                same
    params/layers_i/downsample/{norm,reduction}     layers.i.downsample.*  (i ≥ 1)  layers.{i-1}.downsample.*
    params/layers_i/blocks_j/{norm1,norm2}          layers.i.blocks.j.{norm1,norm2} same
    params/layers_i/blocks_j/attn/{qkv,out}         ...attn.{qkv,proj}              same
    params/layers_i/blocks_j/relative_position_bias_table   ...attn.relative_position_bias_table
    params/layers_i/blocks_j/mlp/{fc1,fc2}          ...mlp.{fc1,fc2}                same
    params/norm                                     norm                            same
    params/head                                     head.fc                         head
    (computed from the geometry)                    (non-persistent buffers)        ...attn.relative_position_index (N, N)
                                                                                    ...attn_mask (nW, N, N) (shifted blocks)

PatchMerging's 2×2 concatenation order is the same in both codes (nn/swin.py), so the reduction
weight is copied as is. timm's own `checkpoint_filter_fn` does the Microsoft → timm renaming the
same way (and drops the buffers).

Every function is a pure function of the parameter tree (or state dict) plus the image geometry
(`img_size`, `window_size`) that the Microsoft buffers need; `jp` / `tp` place the table under a
Flax module path / torch prefix, for models that hold a Swin (TDLS's backbone). Import checks the
key set strictly (errors name missing and unexpected keys) and, for Microsoft checkpoints, that the
buffers equal the ones our geometry computes (a different window or image size otherwise goes
unnoticed). `load_pretrained(path, like)` reads `swin_tiny_patch4_window7_224.pth`
(`{'model': sd}`, Microsoft layout) or a timm checkpoint, detected by its keys.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from jaxaffect.errors import UserError
from jaxaffect.interop.mapping import (ModelMapping, Rule, _j, _to_numpy, conv2d, from_torch,
                                       layernorm, linear, param, strip_prefix, to_torch,
                                       torch_load_expr)
from jaxaffect.nn import swin as swin_lib

LAYOUTS = ("timm", "microsoft")
_DOWN = re.compile(r"^(?P<pre>.*?)layers\.(?P<i>\d+)\.downsample\.")
_BLOCK = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.")


def swin_rules(jp: str = "", tp: str = "") -> list[Rule]:
  """timm-layout rules for a `SwinTransformer` at Flax path `jp`, torch prefix `tp`."""
  st, tst = _j(jp, f"{swin_lib.STAGE_PREFIX}<i>"), f"{tp}layers.<i>"
  blk, tblk = f"{st}/{swin_lib.BLOCK_PREFIX}<j>", f"{tst}.blocks.<j>"
  return [*conv2d(_j(jp, "patch_embed"), f"{tp}patch_embed.proj"),
          *layernorm(_j(jp, "patch_norm"), f"{tp}patch_embed.norm"),
          *layernorm(f"{st}/downsample/norm", f"{tst}.downsample.norm"),
          *linear(f"{st}/downsample/reduction", f"{tst}.downsample.reduction"),
          *layernorm(f"{blk}/norm1", f"{tblk}.norm1"),
          *param(f"{blk}/{swin_lib.TABLE}", f"{tblk}.attn.{swin_lib.TABLE}"),
          *linear(f"{blk}/attn/qkv", f"{tblk}.attn.qkv"),
          *linear(f"{blk}/attn/out", f"{tblk}.attn.proj"),
          *layernorm(f"{blk}/norm2", f"{tblk}.norm2"),
          *linear(f"{blk}/mlp/fc1", f"{tblk}.mlp.fc1"),
          *linear(f"{blk}/mlp/fc2", f"{tblk}.mlp.fc2"),
          *layernorm(_j(jp, "norm"), f"{tp}norm"),
          *linear(_j(jp, "head"), f"{tp}head.fc")]


def to_timm(variables: Mapping[str, Any], *, jp: str = "", tp: str = "") -> dict[str, np.ndarray]:
  """Swin variables → timm `SwinTransformer` state dict (numpy float32, no buffers: timm's are
  non-persistent). Parameters without a rule (a block kind other than "window") are an error."""
  return to_torch(swin_rules(jp, tp), {"params": dict(variables)["params"]}, where="swin")


def from_timm(state_dict: Mapping[str, Any], like_variables: Mapping[str, Any], *, jp: str = "",
              tp: str = "", partial: bool = False, drop_head: bool = False) -> dict[str, Any]:
  """timm state dict → variables shaped like `like_variables` (`model.init` or its eval_shape).
  timm buffers (`relative_position_index`, `attn_mask`), if a state dict carries them, are
  dropped. `drop_head`: ignore `head.fc.*` (ImageNet weights into a model with another head;
  with a head in the model, also give `partial=True`)."""
  sd = strip_prefix(_unwrap(state_dict))
  sd = {k: v for k, v in sd.items() if not _is_buffer(k)}
  if drop_head:
    sd = {k: v for k, v in sd.items() if not k.startswith(f"{tp}head.")}
  like = {"params": dict(like_variables)["params"]}
  return from_torch(swin_rules(jp, tp), sd, like, where="swin", partial=partial)


# ------------------------------------------------------------------------------------------------
# Microsoft layout


def _unwrap(sd: Mapping[str, Any]) -> Mapping[str, Any]:
  """`{'model': sd}` (Microsoft's released .pth) or `{'state_dict': sd}` → sd."""
  for k in ("model", "state_dict"):
    if k in sd and isinstance(sd[k], Mapping):
      return sd[k]
  return sd


def _is_buffer(key: str) -> bool:
  return key.endswith(".relative_position_index") or key.endswith(".attn_mask")


def _depths(sd: Mapping[str, Any], tp: str) -> list[int]:
  blocks: dict[int, int] = {}
  for k in sd:
    if k.startswith(tp):
      m = _BLOCK.match(k[len(tp):])
      if m:
        i, j = int(m.group(1)), int(m.group(2))
        blocks[i] = max(blocks.get(i, 0), j + 1)
  if not blocks or sorted(blocks) != list(range(len(blocks))):
    raise UserError(f"swin: no `{tp}layers.<i>.blocks.<j>` keys for stages 0..n (found stages "
                    f"{sorted(blocks)})")
  return [blocks[i] for i in range(len(blocks))]


def _buffers(sd_timm: Mapping[str, Any], img_size, window_size, tp: str
             ) -> dict[str, np.ndarray]:
  """The Microsoft buffers of a timm-layout state dict for this geometry (the relative index
  from each table's window; masks of shifted blocks), checking that every table's shape is the
  geometry's window."""
  depths = _depths(sd_timm, tp)
  patch = int(np.shape(sd_timm[f"{tp}patch_embed.proj.weight"])[-1])
  out: dict[str, np.ndarray] = {}
  for i, stage in enumerate(swin_lib.block_geometry(img_size, patch, window_size, depths)):
    for j, (res, win, sh) in enumerate(stage):
      pre = f"{tp}layers.{i}.blocks.{j}.attn"
      rows = int(np.shape(sd_timm[f"{pre}.{swin_lib.TABLE}"])[0])
      if rows != (2 * win[0] - 1) * (2 * win[1] - 1):
        raise UserError(f"swin: {pre}.{swin_lib.TABLE} has {rows} rows; img_size {img_size} with "
                        f"window {window_size} gives window {win} at stage {i} "
                        f"({(2 * win[0] - 1) * (2 * win[1] - 1)} rows)")
      out[f"{pre}.relative_position_index"] = swin_lib.relative_position_index(win).astype(
          np.int64)
      mask = swin_lib.shifted_window_mask(res, win, sh)
      if mask is not None:
        out[f"{tp}layers.{i}.blocks.{j}.attn_mask"] = mask
  return out


def timm_to_microsoft(sd: Mapping[str, Any], *, img_size=224, window_size=7,
                      tp: str = "") -> dict[str, np.ndarray]:
  """timm 1.x keys → Microsoft keys: `layers.{i}.downsample` → `layers.{i-1}.downsample`,
  `head.fc` → `head`, plus the persistent buffers `relative_position_index` (every block) and
  `attn_mask` (shifted blocks)."""
  sd = {k: _to_numpy(v) for k, v in sd.items() if not _is_buffer(k)}
  out = {}
  for k, v in sd.items():
    m = _DOWN.match(k)
    if m and m.group("pre") == tp:
      i = int(m.group("i"))
      if i == 0:
        raise UserError(f"swin: {k}: timm has no downsample in stage 0")
      k = f"{tp}layers.{i - 1}.downsample." + k[m.end():]
    elif k.startswith(f"{tp}head.fc."):
      k = f"{tp}head." + k[len(f"{tp}head.fc."):]
    out[k] = v
  out.update(_buffers(sd, img_size, window_size, tp))
  return out


def microsoft_to_timm(sd: Mapping[str, Any], *, img_size=224, window_size=7,
                      tp: str = "", check_buffers: bool = True) -> dict[str, np.ndarray]:
  """Microsoft keys → timm 1.x keys (the inverse of `timm_to_microsoft`). The buffers are dropped
  after checking (`check_buffers`) that each equals what this geometry computes; a buffer the
  geometry does not have, or a missing one, is an error naming the key."""
  sd = {k: _to_numpy(v) for k, v in strip_prefix(_unwrap(sd)).items()}
  out = {}
  for k, v in sd.items():
    if _is_buffer(k):
      continue
    m = _DOWN.match(k)
    if m and m.group("pre") == tp:
      k = f"{tp}layers.{int(m.group('i')) + 1}.downsample." + k[m.end():]
    elif k.startswith(f"{tp}head.") and not k.startswith(f"{tp}head.fc."):
      k = f"{tp}head.fc." + k[len(f"{tp}head."):]
    out[k] = v
  if check_buffers:
    want = _buffers(out, img_size, window_size, tp)
    have = {k: v for k, v in sd.items() if _is_buffer(k)}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
      raise UserError(f"swin: Microsoft buffers do not match img_size {img_size}, window "
                      f"{window_size}: missing {missing[:6]}, unexpected {extra[:6]}")
    for k, v in want.items():
      if have[k].shape != v.shape or not np.array_equal(have[k], v):
        raise UserError(f"swin: {k} differs from the one computed for img_size {img_size}, "
                        f"window {window_size} (shape {have[k].shape} vs {v.shape})")
  return out


def detect_layout(sd: Mapping[str, Any], tp: str = "") -> str:
  """'microsoft' or 'timm' from the keys: where the downsample modules sit (Microsoft: stages
  0..n-2, timm: 1..n-1), else the head's name."""
  keys = list(strip_prefix(_unwrap(sd)))
  if any(k.startswith(f"{tp}layers.0.downsample.") for k in keys):
    return "microsoft"
  if any(k.startswith(f"{tp}head.fc.") for k in keys):
    return "timm"
  if any(k.startswith(f"{tp}head.") for k in keys):
    return "microsoft"
  depths = _depths(strip_prefix(_unwrap(sd)), tp)
  last = len(depths) - 1
  if last and any(k.startswith(f"{tp}layers.{last}.downsample.") for k in keys):
    return "timm"
  return "timm"          # one stage, no head: the two layouts are the same


def to_microsoft(variables: Mapping[str, Any], *, img_size=224, window_size=7, jp: str = "",
                 tp: str = "") -> dict[str, np.ndarray]:
  """Swin variables → Microsoft Swin-Transformer state dict (with its persistent buffers)."""
  return timm_to_microsoft(to_timm(variables, jp=jp, tp=tp), img_size=img_size,
                           window_size=window_size, tp=tp)


def from_state_dict(state_dict: Mapping[str, Any], like_variables: Mapping[str, Any],
                    partial: bool = False, *, layout: str | None = None, img_size=224,
                    window_size=7, jp: str = "", tp: str = "",
                    drop_head: bool = False) -> dict[str, Any]:
  """A timm or Microsoft state dict (layout detected unless given; `{'model': sd}` unwrapped)
  → variables like `like_variables`."""
  sd = strip_prefix(_unwrap(state_dict))
  layout = layout or detect_layout(sd, tp)
  if layout not in LAYOUTS:
    raise UserError(f"swin: layout={layout!r}; expected one of {LAYOUTS}")
  if layout == "microsoft":
    sd = microsoft_to_timm(sd, img_size=img_size, window_size=window_size, tp=tp)
  return from_timm(sd, like_variables, jp=jp, tp=tp, partial=partial, drop_head=drop_head)


def load_pretrained(path: str, like_variables: Mapping[str, Any], *, img_size=224,
                    window_size=7, drop_head: bool = False, partial: bool = False
                    ) -> dict[str, Any]:
  """An ImageNet checkpoint file (Microsoft `swin_tiny_patch4_window7_224.pth` = `{'model': sd}`,
  or timm's safetensors / .pth) → variables like `like_variables`."""
  from jaxaffect.interop import load_state_dict_file
  return from_state_dict(load_state_dict_file(path), like_variables, partial,
                         img_size=img_size, window_size=window_size, drop_head=drop_head)


# ------------------------------------------------------------------------------------------------
# Registry mapping (a model module whose `Model` is a SwinTransformer; timm layout on export)


def _example_input(module, variables, batch, rng, input_shape=None):
  h, w = swin_lib._pair(module.img_size if input_shape is None else input_shape)
  x = rng.random((batch, h, w, 3), dtype=np.float32)
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), x


def timm_kwargs(module: swin_lib.SwinTransformer) -> dict[str, Any]:
  """timm `SwinTransformer(**kwargs)` of a `SwinTransformer` (window blocks only)."""
  return dict(img_size=module.img_size, patch_size=module.patch_size,
              embed_dim=module.embed_dim, depths=tuple(module.depths),
              num_heads=tuple(module.num_heads), window_size=module.window_size,
              mlp_ratio=module.mlp_ratio, qkv_bias=module.qkv_bias,
              num_classes=module.num_classes)


def _snippet(weights: str, verify: str, module) -> str:
  load = torch_load_expr(weights)
  return f'''import numpy as np, torch
from safetensors.torch import load_file
from timm.models.swin_transformer import SwinTransformer
model = SwinTransformer(**{timm_kwargs(module)!r}).eval()
model.load_state_dict({load}, strict=True)
ref = np.load("{verify}")
with torch.no_grad():
  out = model(torch.from_numpy(ref["input"])).numpy()
print("max |diff|:", np.abs(out - ref["output"]).max())
'''


MAPPING = ModelMapping(
    name="swin", rules=tuple(swin_rules()), example_input=_example_input, snippet=_snippet,
    to_state_dict=to_timm,
    from_state_dict=lambda sd, like, partial: from_state_dict(sd, like, partial),
    description="jaxaffect.nn.swin.SwinTransformer ↔ timm SwinTransformer (export); import of "
                "timm or Microsoft Swin-Transformer checkpoints (NCHW input (B,3,H,W))")

