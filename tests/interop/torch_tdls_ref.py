"""A torch TDLS for the interop tests (a helper, not collected), independent of
`jaxaffect.interop.tdls.TORCH_SOURCE`: timm's `SwinTransformer(num_classes=0)` for the patch
embedding, merges, window blocks and final norm; at the deformable positions a pre-norm block
(torch LayerNorm, timm Mlp) around `TorchDLA` of tests/nn/test_deformable.py (Eqs. 1-6 written
from the paper), its submodules registered under the names of our documented layout
(`attn.proj_q/k/v/out`, `attn.conv_offset.{0,2}`, buffer `attn.ref_points`), so the exported
state dict loads with `strict=True`."""
from __future__ import annotations

import math

import torch
from timm.layers import Mlp
from timm.models.swin_transformer import SwinTransformer

from tests.nn.test_deformable import TorchDLA

_ALIAS = {"q": "proj_q", "k": "proj_k", "v": "proj_v", "o": "proj_out"}


class NamedDLA(TorchDLA):
  """TorchDLA with its Linear layers named proj_q/k/v/out, its convs in `conv_offset` (0, 2; mode
  "tdls" only) and the reference points as a buffer (modes "rp"/"tdls")."""

  def __init__(self, c, heads, mode, offsets, offset_range, num_points, hidden=None):
    super().__init__(c, heads, hidden or c, mode, offsets, offset_range, False)
    mods = self._modules
    for old, new in _ALIAS.items():
      mods[new] = mods.pop(old)
    conv1, conv2 = mods.pop("conv1"), mods.pop("conv2")
    if mode == "tdls":
      self.conv_offset = torch.nn.Sequential(conv1, torch.nn.ReLU(), conv2)
    if mode != "fl":
      self.register_buffer("ref_points", torch.zeros(num_points, 2))
    self.points = None

  def __getattr__(self, name):           # TorchDLA.forward reads self.q ... self.conv2
    if name in _ALIAS:
      return super().__getattr__(_ALIAS[name])
    if name in ("conv1", "conv2"):
      return super().__getattr__("conv_offset")[0 if name == "conv1" else 2]
    return super().__getattr__(name)

  def forward(self, x):                  # (B, H, W, C)
    pts = self.points if self.mode == "fl" else self.ref_points.expand(x.shape[0], -1, -1)
    return super().forward(x, pts)[0]


class RefDeformableBlock(torch.nn.Module):
  def __init__(self, dim, heads, **kw):
    super().__init__()
    self.norm1, self.norm2 = torch.nn.LayerNorm(dim, eps=1e-5), torch.nn.LayerNorm(dim, eps=1e-5)
    self.attn = NamedDLA(dim, heads, **kw)
    self.mlp = Mlp(dim, 4 * dim)          # fc1, exact GELU, fc2

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class RefTDLS(SwinTransformer):
  """`forward(x (B, 3, H, W) in [0, 1], landmarks=None)` → tanh(head_va(pooled feature))."""

  def __init__(self, deformable, mode, offsets, offset_range, proj_hidden, proj_dim, tg_hidden,
               **swin_kw):
    super().__init__(num_classes=0, **swin_kw)
    self.mode = mode
    for i, j in deformable:
      old = self.layers[i].blocks[j]
      self.layers[i].blocks[j] = RefDeformableBlock(
          old.norm1.normalized_shape[0], old.attn.num_heads, mode=mode, offsets=offsets,
          offset_range=offset_range, num_points=math.prod(old.input_resolution))
    c = self.num_features
    self.head_va = torch.nn.Linear(c, 2)
    self.proj = Mlp(c, proj_hidden, proj_dim, act_layer=torch.nn.ReLU)
    self.tg = Mlp(2 * proj_dim, tg_hidden, 2, act_layer=torch.nn.ReLU)

  def forward(self, x, landmarks=None):
    if self.mode == "fl":
      for m in self.modules():
        if isinstance(m, NamedDLA):
          m.points = 2.0 * (landmarks + 0.5) / x.shape[-2] - 1.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    f = self.forward_head(self.forward_features((x - mean) / std))
    return torch.tanh(self.head_va(f))
