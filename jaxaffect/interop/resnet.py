"""`jaxaffect.nn.ResNet` ↔ torchvision / timm ResNet (`conv1`, `bn1`, `layer{1-4}.{b}.*`, `fc`)."""
from __future__ import annotations

import numpy as np

from jaxaffect.interop.mapping import (ModelMapping, Rule, _j, batchnorm, conv2d, linear,
                                       torch_load_expr)


def resnet_rules(jp: str = "", tp: str = "", fc: bool = True) -> list[Rule]:
  """Rules for a ResNet whose Flax module path is `jp` and torch prefix `tp` ("" or "s_former.")."""
  blk = _j(jp, "layer<s>/block_<b>")
  tblk = f"{tp}layer<s>.<b>"
  rules = [*conv2d(_j(jp, "stem/conv1"), f"{tp}conv1"),
           *batchnorm(_j(jp, "stem/bn1"), f"{tp}bn1"),
           *conv2d(f"{blk}/<c:conv[12]>", f"{tblk}.<c>"),
           *batchnorm(f"{blk}/<n:bn[12]>", f"{tblk}.<n>"),
           *conv2d(f"{blk}/downsample_conv", f"{tblk}.downsample.0"),
           *batchnorm(f"{blk}/downsample_bn", f"{tblk}.downsample.1")]
  if fc:
    rules += linear(_j(jp, "fc"), f"{tp}fc")
  return rules


def _example_input(module, variables, batch, rng, input_shape=None):
  h, w = input_shape or (224, 224)
  x = rng.random((batch, h, w, 3), dtype=np.float32)
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), x


def _snippet(weights: str, verify: str, module) -> str:
  load = torch_load_expr(weights)
  nc = module.num_classes or 0
  arch = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}.get(tuple(module.stage_sizes), "?")
  return f'''import numpy as np, torch, timm
from safetensors.torch import load_file
model = timm.create_model("{arch}", num_classes={nc}).eval()   # torchvision layout
model.load_state_dict({load}, strict=True)
ref = np.load("{verify}")
with torch.no_grad():
  out = model(torch.from_numpy(ref["input"])).numpy()
print("max |diff|:", np.abs(out - ref["output"]).max())
'''


MAPPING = ModelMapping(
    name="resnet", rules=tuple(resnet_rules()), example_input=_example_input, snippet=_snippet,
    description="jaxaffect.nn.ResNet ↔ torchvision/timm resnet18/34 (NCHW input (B,3,H,W))")
