"""Independent PyTorch reference of the ABAW TCN + Transformer model (helpers, not collected).

Written from torch.nn primitives and the published equations, not from the official code:
  * `WNConv1d`: `W = g·v/‖v‖` (norm over (I, K) per output channel) applied with `F.conv1d`,
    symmetric padding (k−1)·d, then the right (k−1)·d outputs cropped (locuslab's Chomp1d);
    parameters `weight_g (O,1,1)`, `weight_v (O,I,K)`, `bias`.
  * `Block`: conv1 → PReLU/ReLU → Dropout → conv2 → PReLU/ReLU → Dropout, residual (1×1 Conv1d when
    widths differ), act(out + res). The convs and PReLUs are ALSO registered inside `net`
    (`nn.Sequential`) at positions 0/2/4/6 as in locuslab's TemporalBlock, so the state dict has
    both names and `named_parameters()` lists each once.
  * The encoder is `torch.nn.TransformerEncoder` (post-norm, ReLU, sequence-first), after a
    Conv1d 1×1; heads `nn.Sequential(Linear, BatchNorm1d, Linear)` on `(B·T, d)`.
  * Padded windows (`valid (B, T)` given): the encoder gets `src_key_padding_mask = ~valid` (a row
    with no valid frame masks nothing: torch would give NaN there), and in train mode the heads
    run on the valid frames only (`h[valid]`, so BatchNorm statistics are theirs).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class WNConv1d(nn.Module):
  def __init__(self, cin: int, cout: int, k: int, dilation: int):
    super().__init__()
    self.k, self.d = k, dilation
    self.weight_v = nn.Parameter(torch.randn(cout, cin, k) * 0.1)
    self.weight_g = nn.Parameter(torch.rand(cout, 1, 1) + 0.5)
    self.bias = nn.Parameter(torch.randn(cout) * 0.1)

  def weight(self) -> torch.Tensor:
    norm = self.weight_v.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()
    return self.weight_g * self.weight_v / norm

  def forward(self, x: torch.Tensor) -> torch.Tensor:       # (B, C, T)
    pad = (self.k - 1) * self.d
    y = F.conv1d(x, self.weight(), self.bias, padding=pad, dilation=self.d)
    return y[:, :, :-pad] if pad else y                       # chomp


class Identity(nn.Module):
  def forward(self, x):
    return x


class Block(nn.Module):
  def __init__(self, cin: int, cout: int, k: int, dilation: int, dropout: float, prelu: bool):
    super().__init__()
    act = (lambda: nn.PReLU()) if prelu else (lambda: nn.ReLU())
    self.conv1 = WNConv1d(cin, cout, k, dilation)
    self.relu1 = act()
    self.dropout1 = nn.Dropout(dropout)
    self.conv2 = WNConv1d(cout, cout, k, dilation)
    self.relu2 = act()
    self.dropout2 = nn.Dropout(dropout)
    self.net = nn.Sequential(self.conv1, Identity(), self.relu1, self.dropout1,
                             self.conv2, Identity(), self.relu2, self.dropout2)
    self.downsample = nn.Conv1d(cin, cout, 1) if cin != cout else None
    self.relu = act()

  def forward(self, x):
    res = x if self.downsample is None else self.downsample(x)
    return self.relu(self.net(x) + res)


class TCN(nn.Module):
  """`network.<i>` blocks; (B, C, T) → (B, C_last, T)."""

  def __init__(self, cin: int, channels: Sequence[int], k: int, dropout: float = 0.0,
               prelu: bool = True):
    super().__init__()
    blocks = []
    for i, c in enumerate(channels):
      blocks.append(Block(cin if i == 0 else channels[i - 1], c, k, 2 ** i, dropout, prelu))
    self.network = nn.Sequential(*blocks)

  def forward(self, x):
    return self.network(x)


class Encoder(nn.Module):
  """`conv1` (1×1) + `transformer_encoder`; (B, C, T) → (T, B, d) (sequence-first)."""

  def __init__(self, cin: int, d: int, heads: int, layers: int, ff: int, dropout: float):
    super().__init__()
    self.conv1 = nn.Conv1d(cin, d, 1)
    layer = nn.TransformerEncoderLayer(d, heads, ff, dropout)   # post-norm, relu, seq-first
    self.transformer_encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

  def forward(self, x, key_padding_mask=None):
    return self.transformer_encoder(self.conv1(x).permute(2, 0, 1),
                                    src_key_padding_mask=key_padding_mask)


def head(d: int, hidden: int, n: int) -> nn.Sequential:
  return nn.Sequential(nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.Linear(hidden, n))


class TorchABAW(nn.Module):
  """streams: [(name, input dim, channels)]; one stream → `temporal` is the TCN itself (ABAW6),
  several → `temporal[name]` (ABAW5 `nn.ModuleDict`). `heads`: [(torch name, units)], outputs
  concatenated in that order → `(B·T, Σ n)`. `encoder_name`: "encoder" (ABAW6) or "decoder"."""

  def __init__(self, streams, heads, k=5, d=512, nheads=4, layers=8, ff=512, dropout=0.0,
               prelu=True, hidden=None, encoder_name="encoder"):
    super().__init__()
    self.names = [s[0] for s in streams]
    tcns = {n: TCN(cin, ch, k, dropout, prelu) for n, cin, ch in streams}
    self.temporal = tcns[self.names[0]] if len(streams) == 1 else nn.ModuleDict(tcns)
    self.encoder_name = encoder_name
    setattr(self, encoder_name, Encoder(sum(s[2][-1] for s in streams), d, nheads, layers, ff,
                                        dropout))
    self.head_names = [h[0] for h in heads]
    for name, n in heads:
      setattr(self, name, head(d, hidden or d // 2, n))

  def forward(self, feats: dict[str, torch.Tensor],
              valid: torch.Tensor | None = None) -> torch.Tensor:
    """`(B·T, Σ n)`; with `valid (B, T)` bool in train mode the rows of padding frames are NaN
    (the heads only see valid frames)."""
    b, t, _ = feats[self.names[0]].shape
    if len(self.names) == 1:
      h = self.temporal(feats[self.names[0]].transpose(1, 2))
    else:
      h = torch.cat([self.temporal[n](feats[n].transpose(1, 2)) for n in self.names], dim=1)
    kpm = None
    if valid is not None:
      kpm = ~valid & valid.any(dim=1, keepdim=True)     # True = padding key, ignored
    h = getattr(self, self.encoder_name)(h, kpm)       # (T, B, d)
    h = h.transpose(0, 1).reshape(b * t, -1)
    heads = lambda z: torch.cat([getattr(self, n)(z) for n in self.head_names], dim=1)
    if valid is None or not self.training:
      return heads(h)
    sel = valid.reshape(-1)
    y = heads(h[sel])
    out = torch.full((b * t, y.shape[1]), float("nan"), dtype=y.dtype)
    out[sel] = y
    return out


def va_ccc_loss_torch(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                      eps: float = 1e-8):
  """The ABAW VA loss as published: frames with valid labels selected by boolean indexing, then
  per dimension CCC = 2ρ·sx·sy/(sx²+sy²+(mx−my)²) with ρ = Σvxvy/(√Σvx²·√Σvy² + eps) and
  s = torch.std (unbiased); L = Σ (1 − CCC). Returns (loss, ccc (2,))."""
  p, y = pred.reshape(-1, 2)[valid.reshape(-1)], target.reshape(-1, 2)[valid.reshape(-1)]
  cccs = []
  for i in range(2):
    x, z = p[:, i], y[:, i]
    vx, vz = x - torch.mean(x), z - torch.mean(z)
    rho = torch.sum(vx * vz) / (torch.sqrt(torch.sum(vx ** 2)) * torch.sqrt(torch.sum(vz ** 2))
                                + eps)
    sx, sz = torch.std(x), torch.std(z)
    cccs.append(2 * rho * sx * sz / (sx ** 2 + sz ** 2 + (torch.mean(x) - torch.mean(z)) ** 2))
  ccc = torch.stack(cccs)
  return (1 - ccc).sum(), ccc
