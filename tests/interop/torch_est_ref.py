"""A PyTorch EST for the equivalence tests (helper module, not collected as tests).

Written from the description of the official model (`DreamMr/EST`, `models/Model.py` EST,
reference_impls.md §2) with stock torch building blocks, so that it checks our Flax model rather
than sharing its code: the ResNet-18 trunk is `torchvision.models.resnet18` (at width 64; for the
small test widths the same layout assembled from torchvision `BasicBlock`s, `narrow_resnet18`),
the AA-SFE attention is `nn.MultiheadAttention` (sequence-first), the encoder/decoder is
`nn.Transformer` (post-norm, ReLU, final LayerNorms — what the official copy of torch-1.7's
`nn.Transformer` is), the SSOP head uses `nn.BatchNorm1d`. Attribute names are chosen so that
`state_dict()` has the official keys: `conv1`, `bn1`, `layer{1-4}.*` (no prefix), `attn.*`,
`norm1.*`, `transformer.{encoder,decoder}.*`, `query_embed.weight`, `pos_enc.pos_enc.weight`
(frozen), `classifier.{0,2,5.0}.*`, `per_branch.classifier.{0,1,3,4,6}.*`.

Unlike the official forward (a Python loop over snippets), the AA-SFE runs on all snippets at once
as one sequence-first batch, and the permuted positional encoding is a gather `PE[per]`.
`forward(x (B, S, F, 3, H, W), per (B, S) long) -> (logits, perm_logits or None)`.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models import resnet


def pe_table(num_positions: int, d_model: int) -> torch.Tensor:
  """Sinusoid written out element by element: `PE[p, j] = sin(p / 10000^(2⌊j/2⌋/d))` for even j,
  `cos(...)` for odd j (float64 `math`, then float32)."""
  rows = [[(math.sin if j % 2 == 0 else math.cos)(p / 10000 ** (2 * (j // 2) / d_model))
           for j in range(d_model)] for p in range(num_positions)]
  return torch.tensor(rows, dtype=torch.float64).float()


def narrow_resnet18(width: int) -> nn.Module:
  """torchvision's ResNet-18 layout and init with stage widths `width·(1, 2, 4, 8)` (torchvision's
  and timm's constructors fix the stem at 64 channels): torchvision `BasicBlock`s, 1×1 conv + BN
  downsample where the stride or width changes, kaiming-normal(fan_out) convs, BN 1/0."""
  m = nn.Module()
  m.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
  m.bn1 = nn.BatchNorm2d(width)
  m.maxpool = nn.MaxPool2d(3, 2, 1)
  cin = width
  for i in range(4):
    cout, stride = width * 2 ** i, 1 if i == 0 else 2
    down = None
    if stride != 1 or cin != cout:
      down = nn.Sequential(resnet.conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
    setattr(m, f"layer{i + 1}", nn.Sequential(resnet.BasicBlock(cin, cout, stride, down),
                                              resnet.BasicBlock(cout, cout)))
    cin = cout
  for mod in m.modules():
    if isinstance(mod, nn.Conv2d):
      nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
  return m


class PosEncoding(nn.Module):
  def __init__(self, num_positions: int, d_model: int):
    super().__init__()
    self.pos_enc = nn.Embedding(num_positions, d_model)
    self.pos_enc.weight = nn.Parameter(pe_table(num_positions, d_model), requires_grad=False)


class SSOPHead(nn.Module):
  def __init__(self, in_features: int, dims=(2048, 512), num_permutations: int = 10):
    super().__init__()
    h1, h2 = dims
    self.classifier = nn.Sequential(
        nn.Linear(in_features, h1), nn.BatchNorm1d(h1), nn.ReLU(inplace=True),
        nn.Linear(h1, h2), nn.BatchNorm1d(h2), nn.ReLU(inplace=True),
        nn.Linear(h2, num_permutations))

  def forward(self, x):
    return self.classifier(x)


class TorchEST(nn.Module):
  """Same fields as `jaxaffect.models.est.EST` (official defaults)."""

  def __init__(self, num_classes=7, num_snippets=7, frames_per_snippet=5, d_model=512,
               num_heads=4, num_encoder_layers=3, num_decoder_layers=3, dim_feedforward=2048,
               dropout=0.1, num_permutations=10, use_aasfe=True, use_ssop=True, width=64,
               classifier_dims=(128, 64), classifier_dropout=0.4, ssop_dims=(2048, 512)):
    super().__init__()
    assert d_model == 8 * width
    self.s, self.f, self.d = num_snippets, frames_per_snippet, d_model
    self.use_aasfe, self.use_ssop = use_aasfe, use_ssop
    trunk = torchvision.models.resnet18() if width == 64 else narrow_resnet18(width)
    self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, nn.ReLU(), trunk.maxpool
    self.layer1, self.layer2, self.layer3, self.layer4 = (trunk.layer1, trunk.layer2,
                                                          trunk.layer3, trunk.layer4)
    if use_aasfe:
      self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout)
      self.norm1 = nn.LayerNorm(d_model)
      self.attn_out_drop = nn.Dropout(dropout)
    with warnings.catch_warnings():   # "enable_nested_tensor is True, but ... batch_first"
      warnings.simplefilter("ignore")
      self.transformer = nn.Transformer(d_model, num_heads, num_encoder_layers,
                                        num_decoder_layers, dim_feedforward, dropout)
    for p in self.transformer.parameters():      # official Transformer._reset_parameters
      if p.dim() > 1:
        nn.init.kaiming_uniform_(p)
    self.query_embed = nn.Embedding(1, d_model)
    self.pos_enc = PosEncoding(num_snippets, d_model)
    c1, c2 = classifier_dims
    self.classifier = nn.Sequential(nn.Linear(d_model, c1), nn.ReLU(True), nn.Linear(c1, c2),
                                    nn.ReLU(True), nn.Dropout(classifier_dropout),
                                    nn.Sequential(nn.Linear(c2, num_classes)))
    if use_ssop:
      self.per_branch = SSOPHead(num_snippets * d_model, ssop_dims, num_permutations)

  def frame_features(self, x):                      # (N, 3, H, W) -> (N, d)
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return x.mean(dim=(2, 3))

  def aasfe(self, v):
    """v (F, N, d) sequence-first → (snippets (N, d), weights (F, N))."""
    a, _ = self.attn(v, v, v)
    y = self.norm1(v + self.attn_out_drop(a))
    g = y.max(dim=0, keepdim=True).values
    w = torch.clamp(nn.functional.cosine_similarity(y, g, dim=-1, eps=1e-8), min=1e-8)
    return (y * w.unsqueeze(-1)).sum(0) / w.sum(0).unsqueeze(-1), w

  def forward(self, x, per):
    b = x.shape[0]
    feats = self.frame_features(x.reshape((-1,) + x.shape[3:])).reshape(b, self.s, self.f, self.d)
    if self.use_aasfe:
      v = feats.reshape(b * self.s, self.f, self.d).transpose(0, 1)
      snippets = self.aasfe(v)[0].reshape(b, self.s, self.d)
    else:
      snippets = feats.mean(dim=2)
    src = (snippets + self.pos_enc.pos_enc.weight[per]).transpose(0, 1)     # (S, B, d)
    tgt = self.query_embed.weight.unsqueeze(1).expand(-1, b, -1)          # (1, B, d)
    emotion = self.transformer(src, tgt)[0]                               # (B, d)
    logits = self.classifier(emotion)
    if not self.use_ssop:
      return logits, None
    z = snippets.detach() + emotion.unsqueeze(1)
    return logits, self.per_branch(z.reshape(b, -1))


def to_torch_video(video: np.ndarray, num_snippets: int) -> np.ndarray:
  """Our `(B, S·F, H, W, 3)` → official `(B, S, F, 3, H, W)`."""
  b, t, h, w, c = video.shape
  x = video.reshape(b, num_snippets, t // num_snippets, h, w, c)
  return np.ascontiguousarray(x.transpose(0, 1, 2, 5, 3, 4))
