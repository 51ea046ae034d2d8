"""`jaxaffect.models.frame_resnet.FrameResNet` ↔ a torchvision ResNet-18 with per-task heads.

    Flax                                 torch
    backbone/{stem,layer1-4}/…           conv1, bn1, layer1-4.…  (torchvision `resnet18`, no fc)
    heads_va, heads_expr, heads_au       va_head, expr_head, au_head  (nn.Linear(8·width, n))

The trunk keys are torchvision's, so `{k: v for k in sd if not k.endswith("_head.*")}` loads into
`torchvision.models.resnet18()` with `strict=False` (missing: fc), and the same file initialises
EST's backbone (`jaxaffect import --partial`). Verification sample: `input` (B, 3, H, W) pixels in
[0, 1]; `output` the heads concatenated in `outputs` order (va after tanh).
"""
from __future__ import annotations

import jax
import numpy as np

from jaxaffect.interop.mapping import ModelMapping, linear, torch_load_expr
from jaxaffect.interop.resnet import resnet_rules

RULES = (
    *resnet_rules("backbone", "", fc=False),
    *linear("heads_va", "va_head"),
    *linear("heads_expr", "expr_head"),
    *linear("heads_au", "au_head"),
)


def _example_input(module, variables, batch, rng, input_shape=None):
  h, w = input_shape or (112, 112)
  x = rng.random((batch, h, w, 3), dtype=np.float32)
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), x


def run_eval_heads(module, variables, x):
  """Eval forward of a per-frame model with `outputs` heads, concatenated in `module.outputs`
  order (va, expr, au as the snippet's torch model returns them; shared by vit_frames)."""
  out = jax.jit(lambda v, a: module.apply(v, a, train=False))(variables, x)
  return np.concatenate([np.asarray(out[o], np.float32) for o in module.outputs], axis=1)


def _snippet(weights: str, verify: str, module) -> str:
  load = torch_load_expr(weights)
  dims = {"va": 2, "expr": module.num_expr, "au": module.num_au}
  feat = module.width * 8
  heads = "\n".join(f'    self.{o}_head = torch.nn.Linear({feat}, {dims[o]})' for o in module.outputs)
  outs = ", ".join(("torch.tanh(self.va_head(f))" if o == "va" else f"self.{o}_head(f)")
                   for o in module.outputs)
  note = "" if module.width == 64 else (
      f"# NOTE: width {module.width} (torchvision's resnet18 is width 64): build the trunk with\n"
      f"# torchvision.models.resnet.ResNet(BasicBlock, [2, 2, 2, 2]) and the channel counts scaled.\n")
  return f'''{note}import numpy as np, torch, torchvision
from safetensors.torch import load_file


class FrameResNet(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.trunk = torchvision.models.resnet18()
    self.trunk.fc = torch.nn.Identity()
{heads}

  def forward(self, x):
    f = self.trunk(x)
    return torch.cat([{outs}], dim=1)


model = FrameResNet().eval()
sd = {load}
model.trunk.load_state_dict({{k: v for k, v in sd.items() if "_head." not in k}}, strict=True)
model.load_state_dict({{**{{"trunk." + k: v for k, v in sd.items() if "_head." not in k}},
                       **{{k: v for k, v in sd.items() if "_head." in k}}}}, strict=True)
ref = np.load("{verify}")
with torch.no_grad():
  out = model(torch.from_numpy(ref["input"])).numpy()
print("max |diff|:", np.abs(out - ref["output"]).max())
'''


MAPPING = ModelMapping(
    name="frame_resnet", rules=RULES, example_input=_example_input, snippet=_snippet,
    run_eval=run_eval_heads,
    description="FrameResNet ↔ torchvision resnet18 trunk + va/expr/au Linear heads (B,3,H,W)")
