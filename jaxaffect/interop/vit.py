"""`jaxaffect.nn.vit.ViT` ↔ timm `VisionTransformer` / MAE `models_vit` state_dict keys.

    Flax (looped layout)                          torch (timm)
    params/cls_token (1, 1, D)                    cls_token
    params/pos_embed (1, 1+N, D)  ("learn")       pos_embed
    constants/pos_embed           ("sincos")      pos_embed   (MAE: requires_grad=False)
    params/patch_embed (HWIO)                     patch_embed.proj (OIHW)
    params/blocks_i/{norm1,norm2}                 blocks.i.{norm1,norm2}
    params/blocks_i/attn/{qkv,out}                blocks.i.attn.{qkv,proj}
    params/blocks_i/mlp/{fc1,fc2}                 blocks.i.mlp.{fc1,fc2}
    params/{norm,fc_norm,head}                    norm, fc_norm, head  (those the model has)
The table is written for the looped layout; `to_timm` / `from_timm` convert a scanned model
(`params/blocks`, leading layer axis) through `jaxaffect.nn.vit.to_looped` / `to_scanned`, and
`from_timm` resizes a checkpoint's position table to the model's grid (`interpolate_pos_embed`,
MAE util/pos_embed.py: bicubic, align_corners=False; for a fixed sin-cos table the table of the
new grid is computed instead, `sincos_for_grid`, with a warning when the checkpoint's table was not
a sin-cos table). `vit_rules(jp, tp)` places the table under a Flax module path / a
torch prefix, for models that hold a ViT (MAE's encoder).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import numpy as np

from jaxaffect.errors import UserError
from jaxaffect.interop.mapping import (ModelMapping, Rule, _j, conv2d, from_torch, layernorm,
                                       linear, param, strip_prefix, to_torch, torch_load_expr)
from jaxaffect.nn import vit as vit_lib


def vit_rules(jp: str = "", tp: str = "", pos_embed: str = "learn") -> list[Rule]:
  """Rules for a `ViT` at Flax module path `jp` with torch prefix `tp` ("" or "encoder.")."""
  if pos_embed not in vit_lib.POS_EMBEDS:
    raise UserError(f"pos_embed={pos_embed!r}; expected one of {vit_lib.POS_EMBEDS}")
  blk, tblk = _j(jp, f"{vit_lib.BLOCK_PREFIX}<i>"), f"{tp}blocks.<i>"
  pos = (param(_j(jp, "pos_embed"), f"{tp}pos_embed") if pos_embed == "learn"
         else [Rule((_j("constants", jp, "pos_embed"),), f"{tp}pos_embed")])
  return [*param(_j(jp, "cls_token"), f"{tp}cls_token"), *pos,
          *conv2d(_j(jp, "patch_embed"), f"{tp}patch_embed.proj"),
          *layernorm(f"{blk}/norm1", f"{tblk}.norm1"),
          *linear(f"{blk}/attn/qkv", f"{tblk}.attn.qkv"),
          *linear(f"{blk}/attn/out", f"{tblk}.attn.proj"),
          *layernorm(f"{blk}/norm2", f"{tblk}.norm2"),
          *linear(f"{blk}/mlp/fc1", f"{tblk}.mlp.fc1"),
          *linear(f"{blk}/mlp/fc2", f"{tblk}.mlp.fc2"),
          *layernorm(_j(jp, "norm"), f"{tp}norm"), *layernorm(_j(jp, "fc_norm"), f"{tp}fc_norm"),
          *linear(_j(jp, "head"), f"{tp}head")]


# ------------------------------------------------------------------------------------------------
# Position-table resizing (MAE util/pos_embed.py `interpolate_pos_embed`)


def _cubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
  """(n_out, n_in) matrix of torch `F.interpolate(mode='bicubic', align_corners=False)` along one
  axis: source x = (i + 0.5)·n_in/n_out − 0.5 (not clamped), Keys' cubic kernel with A = −0.75 on
  the taps ⌊x⌋−1 … ⌊x⌋+2, taps outside the input clamped to the border (aten UpSample.h)."""
  def near(t):        # |t| ≤ 1
    return ((a + 2) * t - (a + 3)) * t * t + 1

  def far(t):         # 1 < |t| < 2
    return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
  m = np.zeros((n_out, n_in), np.float64)
  scale = n_in / n_out
  for i in range(n_out):
    src = scale * (i + 0.5) - 0.5
    x0 = math.floor(src)
    t = src - x0
    for k, w in enumerate((far(t + 1), near(t), near(1 - t), far(2 - t))):
      m[i, min(max(x0 - 1 + k, 0), n_in - 1)] += w
  return m


def interpolate_pos_embed(pos_embed: Any, new_grid: int | tuple[int, int], *,
                          old_grid: int | tuple[int, int] | None = None,
                          num_extra_tokens: int = 1) -> np.ndarray:
  """Resize a `(1, extra + gh·gw, D)` position table to `new_grid` (MAE `interpolate_pos_embed`):
  the extra (class) tokens are kept, the patch grid (row-major; square unless `old_grid`) is resized
  bicubically exactly as torch `F.interpolate(..., mode='bicubic', align_corners=False)` (no
  antialiasing). Computed in float64, returned in the input's float dtype."""
  arr = np.asarray(pos_embed)
  if arr.ndim != 3 or arr.shape[0] != 1:
    raise UserError(f"interpolate_pos_embed: expected a (1, L, D) table, got {arr.shape}")
  n = arr.shape[1] - num_extra_tokens
  if old_grid is None:
    side = int(round(math.sqrt(n)))
    if side * side != n:
      raise UserError(f"interpolate_pos_embed: {n} patch positions are not a square grid; "
                      "give old_grid=(gh, gw)")
    old_grid = side
  oh, ow = (old_grid, old_grid) if isinstance(old_grid, int) else tuple(old_grid)
  nh, nw = (new_grid, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
  if oh * ow != n:
    raise UserError(f"interpolate_pos_embed: old_grid {(oh, ow)} does not hold {n} positions")
  if (oh, ow) == (nh, nw):
    return arr
  grid = arr[0, num_extra_tokens:].astype(np.float64).reshape(oh, ow, -1)
  out = np.einsum("ah,bw,hwd->abd", _cubic_matrix(oh, nh), _cubic_matrix(ow, nw), grid)
  out = np.concatenate([arr[0, :num_extra_tokens].astype(np.float64),
                        out.reshape(nh * nw, -1)], axis=0)
  return out[None].astype(arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float32)


SINCOS_ATOL = 1e-5     # a float32 copy of MAE's float64 table differs by < 1e-7


def sincos_deviation(table: Any, num_extra_tokens: int = 1) -> float:
  """max |table − the fixed 2-D sin-cos table of its own (square) grid| (inf if not square)."""
  arr = np.asarray(table, np.float64)
  if arr.ndim != 3 or arr.shape[1] <= num_extra_tokens:
    return float("inf")
  n = arr.shape[1] - num_extra_tokens
  side = int(round(math.sqrt(n)))
  if side * side != n or arr.shape[-1] % 4:
    return float("inf")
  ref = vit_lib.sincos_2d_pos_embed(arr.shape[-1], side, cls_token=False)
  return float(np.abs(arr[0, num_extra_tokens:] - ref).max(initial=0.0))


def sincos_for_grid(table: Any, dim: int, grid: tuple[int, int], key: str = "pos_embed"):
  """The table a model with a FIXED sin-cos `pos_embed` gets from a checkpoint table of another
  grid: the sin-cos table of the model's grid (a fixed function of the grid; MAE's pretraining
  tables are exactly that). Checked: a checkpoint table that is not the sin-cos table of its own
  grid (a fine-tuned, learned table) is replaced all the same, with a warning naming `key` and
  the deviation: keep it with a learned table (`pos_embed='learn'`), which is resized bicubically
  as MAE's `interpolate_pos_embed`."""
  dev = sincos_deviation(table)
  if dev > SINCOS_ATOL:
    import warnings
    warnings.warn(f"{key}: the checkpoint's table {tuple(np.shape(table))} is not a fixed sin-cos "
                  f"table (max |diff| {dev:.3g}); the model's fixed table of grid {tuple(grid)} "
                  f"replaces it. Use a learned table (pos_embed='learn') to resize it "
                  f"bicubically as MAE's interpolate_pos_embed.", UserWarning, stacklevel=3)
  return vit_lib.sincos_2d_pos_embed(dim, grid)[None]


# ------------------------------------------------------------------------------------------------
# Whole-model conversion (looped or scanned)


def _pos_mode(variables: Mapping[str, Any], jp: str = "") -> str:
  consts = variables.get("constants", {})
  for part in filter(None, jp.split("/")):
    consts = consts.get(part, {})
  return "sincos" if "pos_embed" in consts else "learn"


def _at(tree: Mapping[str, Any], jp: str) -> Mapping[str, Any]:
  for part in filter(None, jp.split("/")):
    tree = tree.get(part, {})
  return tree


def _replace_at(tree: Mapping[str, Any], jp: str, fn) -> dict[str, Any]:
  parts = [p for p in jp.split("/") if p]
  if not parts:
    return fn(tree)
  return {**tree, parts[0]: _replace_at(tree[parts[0]], "/".join(parts[1:]), fn)}


def to_timm(variables: Mapping[str, Any], *, jp: str = "", tp: str = "") -> dict[str, np.ndarray]:
  """ViT variables (`params` + `constants` for a sin-cos table; looped or scanned) → timm
  `VisionTransformer` state dict (numpy float32)."""
  variables = {k: v for k, v in dict(variables).items() if k in ("params", "constants")}
  if vit_lib.is_scanned(_at(variables["params"], jp)):
    variables["params"] = _replace_at(variables["params"], jp, vit_lib.to_looped)
  return to_torch(vit_rules(jp, tp, _pos_mode(variables, jp)), variables, where="vit")


def _looped_like(blocks: Mapping[str, Any], depth: int) -> dict[str, Any]:
  """Shapes of the looped blocks from a scanned subtree (arrays or ShapeDtypeStructs)."""
  one = jax.tree.map(lambda s: jax.ShapeDtypeStruct(tuple(s.shape[1:]), s.dtype), dict(blocks))
  return {f"{vit_lib.BLOCK_PREFIX}{i}": one for i in range(depth)}


def from_timm(state_dict: Mapping[str, Any], like_variables: Mapping[str, Any], *, jp: str = "",
              tp: str = "", grid: tuple[int, int] | None = None,
              partial: bool = False) -> dict[str, Any]:
  """timm / MAE state dict → variables shaped like `like_variables` (`model.init` or its
  `jax.eval_shape`; looped or scanned; the position mode is read from it). A `pos_embed` of
  another size is resized to the model's grid (`grid`, default square): bicubically for a learned
  table, recomputed for a fixed sin-cos one. `partial`: see `mapping.from_torch` (e.g. an MAE
  pre-training checkpoint with decoder keys: give `tp`-filtered keys or partial=True)."""
  sd = strip_prefix(state_dict)
  like = {k: v for k, v in dict(like_variables).items() if k in ("params", "constants")}
  mode = _pos_mode(like, jp)
  like_pos = _at(like.get("constants" if mode == "sincos" else "params", {}), jp).get("pos_embed")
  key = f"{tp}pos_embed"
  if key in sd and like_pos is not None and tuple(np.shape(sd[key])) != tuple(like_pos.shape):
    n = like_pos.shape[1] - 1
    new = grid or (int(round(math.sqrt(n))),) * 2
    if mode == "sincos":
      sd[key] = sincos_for_grid(sd[key], like_pos.shape[-1], new, key)
    else:
      sd[key] = interpolate_pos_embed(np.asarray(sd[key], np.float32), new)
  scanned = vit_lib.is_scanned(_at(like["params"], jp))
  if scanned:
    blocks = _at(like["params"], jp)[vit_lib.SCAN_BLOCKS]
    depth = jax.tree.leaves(blocks)[0].shape[0]
    like["params"] = _replace_at(like["params"], jp, lambda t: {
        **{k: v for k, v in t.items() if k != vit_lib.SCAN_BLOCKS}, **_looped_like(blocks, depth)})
  out = from_torch(vit_rules(jp, tp, mode), sd, like, where="vit", partial=partial)
  if scanned:
    out["params"] = _replace_at(out["params"], jp, lambda t: vit_lib.to_scanned(t, depth))
  return out


# ------------------------------------------------------------------------------------------------
# Registry mapping (a model whose module is a plain ViT with a learned table)


def _example_input(module, variables, batch, rng, input_shape=None):
  size = module.img_size if input_shape is None else input_shape
  h, w = (size, size) if isinstance(size, int) else tuple(size)
  x = rng.random((batch, h, w, 3), dtype=np.float32)
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), x


def timm_kwargs(module: vit_lib.ViT) -> dict[str, Any]:
  """The timm `VisionTransformer(**kwargs)` of a `ViT` (for snippets and tests)."""
  return dict(img_size=module.img_size, patch_size=module.patch_size,
              embed_dim=module.embed_dim, depth=module.depth, num_heads=module.num_heads,
              mlp_ratio=module.mlp_ratio, qkv_bias=module.qkv_bias,
              num_classes=module.num_classes, global_pool=module.global_pool)


def _snippet(weights: str, verify: str, module) -> str:
  load = torch_load_expr(weights)
  return f'''import numpy as np, torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer   # LayerNorm eps 1e-6 by default
model = VisionTransformer(**{timm_kwargs(module)!r}).eval()
model.load_state_dict({load}, strict=True)
ref = np.load("{verify}")
with torch.no_grad():
  out = model(torch.from_numpy(ref["input"])).numpy()
print("max |diff|:", np.abs(out - ref["output"]).max())
'''


MAPPING = ModelMapping(
    name="vit", rules=tuple(vit_rules(pos_embed="learn")), example_input=_example_input,
    snippet=_snippet,
    description="jaxaffect.nn.vit.ViT (looped, learned pos_embed) ↔ timm VisionTransformer "
                "(NCHW input (B,3,H,W))")
