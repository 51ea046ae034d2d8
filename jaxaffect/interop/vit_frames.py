"""`jaxaffect.models.vit_frames.ViTFrames` ↔ timm `VisionTransformer(global_pool='avg',
num_classes=0)` (MAE `models_vit`) + per-task Linear heads.

    Flax                                      torch
    params/encoder/…, constants/encoder/…     timm VisionTransformer keys (`interop.vit.vit_rules`:
                                              patch_embed.proj, cls_token, pos_embed, blocks.i.*,
                                              fc_norm)
    params/heads_va, heads_expr, heads_au     va_head, expr_head, au_head  (nn.Linear(D, n))

Scanned encoders (`params/encoder/blocks`, leading layer axis) are exported / imported through the
looped layout (`interop.vit.to_timm` / `from_timm`), and the position table goes to / comes from
`pos_embed` whether it is the fixed sin-cos constant or a learned parameter (a checkpoint table of
another grid is resized). Verification sample: `input` (B, 3, H, W) pixels in [0, 1]; `output` the
heads concatenated in `outputs` order (va after tanh). The torch model normalises with ImageNet
mean/std as ours does inside the model (`model.normalize`).

facebookresearch/mae checkpoints (`{'model': state_dict}`, unwrapped by `jaxaffect import`):
`mae_finetuned_vit_base.pth` (fc_norm + `head`: the head becomes `heads_expr` when its classes are
`num_expr`, else `--partial` starts it fresh), `mae_pretrain_vit_base.pth` (encoder + `norm`, which
avg pooling does not use; fc_norm and heads start fresh: `--partial`), a full pretraining
checkpoint with the decoder (decoder keys ignored with `--partial`). A learned `pos_embed` of
another grid is resized bicubically (MAE `interpolate_pos_embed`); into a fixed sin-cos table the
model's own table is used (warned if the checkpoint's was not sin-cos). `to_mae_state_dict`
exports MAE's fine-tuned layout (`head` = the EXPR head).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from jaxaffect.errors import UserError
from jaxaffect.interop import vit as vit_interop
from jaxaffect.interop.frame_resnet import run_eval_heads
from jaxaffect.interop.mapping import (ModelMapping, from_torch, linear, strip_prefix, to_torch,
                                       torch_load_expr)

HEADS = ("va", "expr", "au")
HEAD_RULES = tuple(r for o in HEADS for r in linear(f"heads_{o}", f"{o}_head"))
RULES = (*vit_interop.vit_rules("encoder", "", "sincos"), *HEAD_RULES)


def to_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  v = {k: val for k, val in dict(variables).items() if k in ("params", "constants")}
  sd = vit_interop.to_timm({"params": {"encoder": v["params"]["encoder"]},
                            **({"constants": v["constants"]} if "constants" in v else {})},
                           jp="encoder")
  heads = {k: val for k, val in v["params"].items() if k.startswith("heads_")}
  sd.update(to_torch(HEAD_RULES, {"params": heads}, where="vit_frames"))
  return sd


def to_mae_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """MAE's fine-tuned layout (`mae_finetuned_vit_base.pth`, `models_vit.VisionTransformer(
  global_pool=True, num_classes=num_expr)`): timm keys with `fc_norm`, and the EXPR head as
  `head`. Only a model whose one head is `expr` fits that model (`load_state_dict(strict=True)`)."""
  sd = to_state_dict(variables)
  heads = sorted(k for k in sd if k.split(".")[0].endswith("_head"))
  if any(not k.startswith("expr_head.") for k in heads) or not heads:
    raise UserError(f"vit_frames: MAE's fine-tuning layout has one `head` (the EXPR head); this "
                    f"model's heads are {sorted({k.split('.')[0] for k in heads})}")
  for k in heads:
    sd["head." + k.split(".", 1)[1]] = sd.pop(k)
  return sd


def _official_head(sd: dict[str, Any], like: Mapping[str, Any], partial: bool) -> None:
  """MAE / timm classifier keys in place: `head.*` → `expr_head.*` when the model's EXPR head has
  its shape; a head of other classes (ImageNet's 1000) is dropped with `partial` (the EXPR head
  starts fresh) and refused without. `norm.*` (the pretraining encoder's final norm, which MAE's
  fine-tuning deletes when it pools: `global_pool=True`) is dropped when the model pools with
  `fc_norm`, as MAE's `load_state_dict(strict=False)` ignores it."""
  enc_like = like["params"]["encoder"]
  if "norm" not in enc_like and "norm.weight" in sd:
    for k in ("norm.weight", "norm.bias"):
      sd.pop(k, None)
    logging.getLogger(__name__).info("vit_frames: the checkpoint's norm.* (MAE pretraining "
                                     "encoder's final norm) is unused by avg pool + fc_norm")
  if "head.weight" not in sd:
    return
  expr = like["params"].get("heads_expr")
  rows = tuple(np.shape(sd["head.weight"]))
  want = None if expr is None else tuple(np.shape(expr["kernel"]))[::-1]
  if want == rows:
    for k in ("weight", "bias"):
      sd[f"expr_head.{k}"] = sd.pop(f"head.{k}")
  elif partial:
    for k in ("head.weight", "head.bias"):
      sd.pop(k, None)
    logging.getLogger(__name__).warning(
        "vit_frames: the checkpoint's head.weight %s does not fit the EXPR head %s: dropped "
        "(the head starts fresh)", rows, want)
  else:
    raise KeyError(f"vit_frames: the checkpoint's head.weight has shape {rows}, the model's EXPR "
                   f"head {want} (outputs {sorted(k[6:] for k in like['params'] if k.startswith('heads_'))}"
                   f"); import with --partial to start the head fresh")


def from_state_dict(state_dict: Mapping[str, Any], like: Mapping[str, Any] | None,
                    partial: bool = False) -> dict[str, Any]:
  """timm / our layout (`expr_head`…) or MAE's fine-tuned layout (`fc_norm` + `head`) or MAE's
  pretraining checkpoints (encoder keys + `norm`, with or without the decoder: `partial`)."""
  if like is None:
    raise KeyError("vit_frames: import needs the model's variables (like_variables)")
  sd = strip_prefix(state_dict)
  _official_head(sd, like, partial)
  head_sd = {k: val for k, val in sd.items() if k.split(".")[0].endswith("_head")}
  enc_sd = {k: val for k, val in sd.items() if k not in head_sd}
  like = {k: val for k, val in dict(like).items() if k in ("params", "constants")}
  enc_like = {"params": {"encoder": like["params"]["encoder"]},
              **({"constants": like["constants"]} if "constants" in like else {})}
  head_like = {"params": {k: val for k, val in like["params"].items() if k.startswith("heads_")}}
  out = vit_interop.from_timm(enc_sd, enc_like, jp="encoder", partial=partial)
  if head_sd:
    heads = from_torch(HEAD_RULES, head_sd, head_like, where="vit_frames", partial=True)
    out.setdefault("params", {}).update(heads["params"])
  if not partial:
    want = set(traverse_util.flatten_dict(like, sep="/"))
    got = set(traverse_util.flatten_dict(out, sep="/"))
    if want - got:
      raise KeyError(f"vit_frames: state dict does not match the model: missing "
                     f"{sorted(want - got)[:10]}")
  return out


def _example_input(module, variables, batch, rng, input_shape=None):
  h, w = input_shape or (module.img_size, module.img_size)
  x = rng.random((batch, h, w, 3), dtype=np.float32)
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), x


def _snippet(weights: str, verify: str, module) -> str:
  load = torch_load_expr(weights)
  dims = {"va": 2, "expr": module.num_expr, "au": module.num_au}
  d = module.embed_dim
  heads = "\n".join(f"    self.{o}_head = torch.nn.Linear({d}, {dims[o]})" for o in module.outputs)
  outs = ", ".join(("torch.tanh(self.va_head(f))" if o == "va" else f"self.{o}_head(f)")
                   for o in module.outputs)
  kw = dict(img_size=module.img_size, patch_size=module.patch_size, embed_dim=d,
            depth=module.depth, num_heads=module.num_heads, mlp_ratio=module.mlp_ratio,
            num_classes=0, global_pool="avg")
  norm = ("x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / "
          "torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)" if module.normalize else "pass")
  return f'''import numpy as np, torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer


class ViTFrames(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.vit = VisionTransformer(**{kw!r})
{heads}

  def forward(self, x):
    {norm}
    f = self.vit(x)
    return torch.cat([{outs}], dim=1)


model = ViTFrames().eval()
sd = {load}
model.load_state_dict({{("vit." + k if "_head." not in k else k): v for k, v in sd.items()}},
                      strict=True)
ref = np.load("{verify}")
with torch.no_grad():
  out = model(torch.from_numpy(ref["input"])).numpy()
print("max |diff|:", np.abs(out - ref["output"]).max())
'''


MAPPING = ModelMapping(
    name="vit_frames", rules=RULES, example_input=_example_input, snippet=_snippet,
    run_eval=run_eval_heads, to_state_dict=to_state_dict, from_state_dict=from_state_dict,
    description="ViTFrames ↔ timm VisionTransformer(global_pool='avg', num_classes=0) + "
                "va/expr/au Linear heads (B,3,H,W)")
