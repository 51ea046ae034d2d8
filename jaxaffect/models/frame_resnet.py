"""Frame-level baselines: a ResNet-18 that reads one face crop and predicts its per-frame labels.

`FrameResNet` is the image model of the ABAW feature path. The ABAW5 fusion system feeds its
temporal model with embeddings of per-frame FER networks (ArcFace, AffectNet-8 and RAF-DB
ResNets; ABAW6 with an MAE ViT-B fine-tuned on expressions). This is the same recipe: a torchvision
ResNet-18 trunk (`backbone`, global average pooling → `8·width` features) with one linear head per
Aff-Wild2 task, trained on single frames with the ABAW losses, whose pooled features
(`FrameResNet.embed`) `python -m data_prep features` writes as a feature stream.

Its trunk has the torchvision key layout, so a trained trunk also initialises EST's per-frame
ResNet-18 (`jaxaffect import --partial`), as the official EST starts from a FER+ ResNet-18.

Heads (all optional, by `outputs`):
  va    Linear(8·width, 2) then tanh (valence, arousal in [-1, 1]),
  expr  Linear(8·width, num_expr) logits,
  au    Linear(8·width, num_au) logits.
Input: `(N, H, W, 3)` float pixels in [0, 1] (as Former-DFER/EST: no mean/std normalisation).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.errors import UserError
from jaxaffect.nn.layers import Dense
from jaxaffect.nn.resnet import ResNet

Dtype = Any

OUTPUTS = ("va", "expr", "au")


class FrameResNet(nn.Module):
  """ResNet-18 trunk + per-frame VA / EXPR / AU heads (see the module docstring)."""
  outputs: Sequence[str] = OUTPUTS
  num_expr: int = 8
  num_au: int = 12
  width: int = 64
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  dropout: float = 0.0            # before the heads
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    unknown = [o for o in self.outputs if o not in OUTPUTS]
    if unknown or not self.outputs:
      raise UserError(f"FrameResNet.outputs={tuple(self.outputs)}: expected a non-empty subset "
                      f"of {OUTPUTS}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.backbone = ResNet(stage_sizes=tuple(self.stage_sizes), width=self.width,
                           num_classes=None, **kw)
    dims = {"va": 2, "expr": self.num_expr, "au": self.num_au}
    self.heads = {o: Dense(dims[o], **kw) for o in self.outputs}   # heads_va, heads_expr, …
    self.drop = nn.Dropout(self.dropout)

  @property
  def embed_dim(self) -> int:
    return self.width * 2 ** (len(self.stage_sizes) - 1)

  def embed(self, x: jax.Array, train: bool = False) -> jax.Array:
    """`(N, H, W, 3)` → pooled trunk features `(N, 8·width)` (the exported feature stream)."""
    return self.backbone(x, train=train)

  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    f = self.drop(self.embed(x, train=train), deterministic=not train)
    out = {o: self.heads[o](f) for o in self.outputs}
    if "va" in out:
      out["va"] = jnp.tanh(out["va"])
    return out


# The model-module convention (models/registry.py): `config.model_name = "frame_resnet"` finds these.
Model = FrameResNet


def torch_mapping():
  """The official PyTorch key layout (`jaxaffect.interop.frame_resnet`)."""
  from jaxaffect.interop import frame_resnet
  return frame_resnet.MAPPING
