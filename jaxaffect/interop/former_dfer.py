"""`jaxaffect.models.FormerDFER` ↔ official `zengqunzhao/Former-DFER` `GenerateModel` keys.

    Flax                                          torch (official)
    cs_former/{stem,layer1-4}/…                   s_former.{conv1,bn1,layer1-4}.…  (torchvision)
    cs_former/pos_embedding (1,49,256)            s_former.pos_embedding
    cs_former/encoder/layer_i/norm1               s_former.spatial_transformer.layers.i.0.fn.norm
                             /attn/qkv (no bias)  ….layers.i.0.fn.fn.to_qkv
                             /attn/out            ….layers.i.0.fn.fn.to_out.0
                             /norm2               ….layers.i.1.fn.norm
                             /mlp/fc1, /mlp/fc2   ….layers.i.1.fn.fn.net.0, net.3
    t_former/{cls_token,pos_embedding}            t_former.{cls_token,pos_embedding}
    t_former/encoder/…                            t_former.spatial_transformer.layers.i.… (same)
    fc                                            fc
DataParallel checkpoints (`module.` prefix) load as is.
"""
from __future__ import annotations

import math

import numpy as np

from jaxaffect.interop.mapping import (ModelMapping, Rule, _j, layernorm, linear, param,
                                       torch_load_expr)
from jaxaffect.interop.resnet import resnet_rules


def encoder_rules(jp: str, tp: str) -> list[Rule]:
  """Former-DFER `Transformer` (Residual(PreNorm(Attention)), Residual(PreNorm(FeedForward)))."""
  lj, lt = _j(jp, "layer_<i>"), f"{tp}.layers.<i>"
  return [*layernorm(f"{lj}/norm1", f"{lt}.0.fn.norm"),
          *linear(f"{lj}/attn/qkv", f"{lt}.0.fn.fn.to_qkv"),
          *linear(f"{lj}/attn/out", f"{lt}.0.fn.fn.to_out.0"),
          *layernorm(f"{lj}/norm2", f"{lt}.1.fn.norm"),
          *linear(f"{lj}/mlp/fc1", f"{lt}.1.fn.fn.net.0"),
          *linear(f"{lj}/mlp/fc2", f"{lt}.1.fn.fn.net.3")]


RULES = (
    *resnet_rules("cs_former", "s_former.", fc=False),
    *param("cs_former/pos_embedding", "s_former.pos_embedding"),
    *encoder_rules("cs_former/encoder", "s_former.spatial_transformer"),
    *param("t_former/cls_token", "t_former.cls_token"),
    *param("t_former/pos_embedding", "t_former.pos_embedding"),
    *encoder_rules("t_former/encoder", "t_former.spatial_transformer"),
    *linear("fc", "fc"),
)


def input_hw(variables) -> tuple[int, int]:
  """Image size implied by the spatial positional embedding (square inputs: 49 rows → 112)."""
  rows = variables["params"]["cs_former"]["pos_embedding"].shape[1]
  side = math.isqrt(rows)
  if side * side != rows:
    raise ValueError(f"cs_former/pos_embedding has {rows} rows (not square): pass input_shape")
  return 16 * side, 16 * side


def _example_input(module, variables, batch, rng, input_shape=None):
  """Uniform [0,1) pixels; torch layout (B,T,3,H,W) as the official model takes them."""
  t = module.num_frames
  h, w = input_shape or input_hw(variables)
  x = rng.random((batch, t, h, w, 3), dtype=np.float32)
  return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3)), x


def is_official_config(module) -> bool:
  return (module.num_classes, module.num_frames, module.num_spatial_layers,
          module.num_temporal_layers, module.width, module.spatial_heads,
          module.spatial_dim_head, module.spatial_mlp, module.temporal_heads,
          module.temporal_dim_head, module.temporal_mlp) == (7, 16, 1, 3, 64, 8, 32, 512, 8, 64,
                                                             1024)


def _snippet(weights: str, verify: str, module) -> str:
  load = torch_load_expr(weights)
  note = "" if is_official_config(module) else (
      "# NOTE: GenerateModel() only builds the official configuration (N=1, M=3, 7 classes,\n"
      "# width 64, 16 frames of 112x112); this export differs, so edit the torch model to match.\n")
  return f'''# Run from the root of a zengqunzhao/Former-DFER checkout (torch, einops, safetensors).
{note}import numpy as np, torch
from safetensors.torch import load_file
from models.ST_Former import GenerateModel
model = GenerateModel().eval()
model.load_state_dict({load}, strict=True)
ref = np.load("{verify}")          # input: (B,16,3,112,112) pixels in [0,1]; output: JAX logits
with torch.no_grad():
  out = model(torch.from_numpy(ref["input"])).numpy()
print("max |logit diff|:", np.abs(out - ref["output"]).max())
'''


MAPPING = ModelMapping(
    name="former_dfer", rules=RULES, example_input=_example_input, snippet=_snippet,
    description="FormerDFER ↔ zengqunzhao/Former-DFER GenerateModel (input (B,T,3,H,W))")
