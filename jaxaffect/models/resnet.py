"""A plain ResNet image classifier (torchvision layout): the trunk EST, Former-DFER and the frame
encoder share, as a model of its own so that its torchvision weights can be exported and imported
(`interop.to_torch_state_dict("resnet", ...)`, EST's FER+ backbone through `import --partial`)."""
from __future__ import annotations

from jaxaffect.nn.resnet import ResNet

# The model-module convention (models/registry.py).
Model = ResNet


def torch_mapping():
  """torchvision `resnet18` / `resnet34` keys (`jaxaffect.interop.resnet`)."""
  from jaxaffect.interop import resnet
  return resnet.MAPPING
