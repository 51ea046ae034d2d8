"""PyTorch references for the equivalence tests (helpers, not collected as tests).

`TorchFormerDFER` is written here from the equations of the official Former-DFER code
(zengqunzhao/Former-DFER, models/{S,T,ST}_Former.py), with its module nesting so that its
`state_dict()` has the official key names (`s_former.*`, `t_former.*`, `fc.*`), and with the ResNet
taken from timm's `resnet18` (torchvision layout). Unlike the official code it accepts any
(B, T, 3, H, W) input.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping

import jax
import numpy as np
import timm
import torch
from torch import nn


def jit(fun=None, **kwargs):
  """`jax.jit` for tests with the XLA CPU backend optimiser off: roughly halves compile time,
  which dominates these tests; results differ from the optimised build only by rounding."""
  if fun is None:
    return lambda f: jit(f, **kwargs)
  return jax.jit(fun, compiler_options={"xla_backend_optimization_level": 0}, **kwargs)


# ----------------------------------------------------------------------------------------------
# Random variables of a given structure (no Flax init compile; values that make tests non-trivial).


def random_variables(shapes: Mapping[str, Any], seed: int = 0) -> dict[str, Any]:
  """Fill a `jax.eval_shape(module.init, ...)` tree with random float32 numpy values.

  Kernels: He-normal on fan-in for convs, N(0, 1/fan_in) for Dense; biases N(0, 0.1²); norm scales
  1 + N(0, 0.1²); BatchNorm running means N(0, 0.1²) and variances U(0.5, 1.5); embeddings and
  class tokens N(0, 1)."""
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    shape = s.shape
    if name.endswith("['kernel']"):   # convs: He (ReLU nets); Dense: variance 1/fan_in
      fan_in = math.prod(shape[:-1])
      gain = 2.0 if len(shape) == 4 else 1.0
      return rng.normal(0, math.sqrt(gain / fan_in), shape).astype(np.float32)
    if name.endswith("['var']"):
      return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if name.endswith("['scale']"):
      return (1 + 0.1 * rng.normal(size=shape)).astype(np.float32)
    if name.endswith("['bias']") or name.endswith("['mean']"):
      return (0.1 * rng.normal(size=shape)).astype(np.float32)
    return rng.normal(size=shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, dict(shapes))


def load_numpy_state_dict(module: nn.Module, sd: Mapping[str, np.ndarray]) -> None:
  module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)


# ----------------------------------------------------------------------------------------------
# Former-DFER transformer, from the official equations (pre-norm, packed to_qkv, tanh GELU).


class Residual(nn.Module):
  def __init__(self, fn):
    super().__init__()
    self.fn = fn

  def forward(self, x):
    return x + self.fn(x)


class PreNorm(nn.Module):
  def __init__(self, dim, fn):
    super().__init__()
    self.norm = nn.LayerNorm(dim)            # eps 1e-5
    self.fn = fn

  def forward(self, x):
    return self.fn(self.norm(x))


class PackedAttention(nn.Module):
  """`to_qkv` (no bias) → chunk(3) → each `(b, n, (h d))` split with the head index outermost."""

  def __init__(self, dim, heads, dim_head, dropout=0.0):
    super().__init__()
    self.heads, self.dim_head = heads, dim_head
    inner = heads * dim_head
    self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
    self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

  def forward(self, x):
    b, n, _ = x.shape
    q, k, v = self.to_qkv(x).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
    attn = torch.softmax(q @ k.transpose(-1, -2) * self.dim_head ** -0.5, dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
    return self.to_out(out)


class FeedForward(nn.Module):
  def __init__(self, dim, hidden, dropout=0.0, approximate="tanh"):
    super().__init__()
    self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate=approximate),
                             nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))

  def forward(self, x):
    return self.net(x)


class Transformer(nn.Module):
  def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout=0.0):
    super().__init__()
    self.layers = nn.ModuleList([
        nn.ModuleList([Residual(PreNorm(dim, PackedAttention(dim, heads, dim_head, dropout))),
                       Residual(PreNorm(dim, FeedForward(dim, mlp_dim, dropout)))])
        for _ in range(depth)])

  def forward(self, x):
    for attn, ff in self.layers:
      x = ff(attn(x))
    return x


class SFormer(nn.Module):
  """CS-Former: timm resnet18 stem, layer1-3 → tokens + pos_embedding → Transformer → layer4 →
  GAP."""

  def __init__(self, num_patches=49, depth=1, heads=8, dim_head=32, mlp_dim=512):
    super().__init__()
    r = timm.create_model("resnet18", pretrained=False, num_classes=0)
    self.conv1, self.bn1, self.maxpool = r.conv1, r.bn1, r.maxpool
    self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
    self.pos_embedding = nn.Parameter(torch.randn(1, num_patches, 256))
    self.spatial_transformer = Transformer(256, depth, heads, dim_head, mlp_dim)

  def forward(self, x):                          # (B, T, 3, H, W)
    x = x.reshape((-1,) + x.shape[2:])
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    x = self.layer3(self.layer2(self.layer1(x)))
    n, c, h, w = x.shape
    t = x.reshape(n, c, h * w).permute(0, 2, 1) + self.pos_embedding
    t = self.spatial_transformer(t)
    x = t.permute(0, 2, 1).reshape(n, c, h, w)
    return torch.flatten(nn.functional.adaptive_avg_pool2d(self.layer4(x), 1), 1)


class TFormer(nn.Module):
  def __init__(self, num_frames=16, depth=3, heads=8, dim_head=64, mlp_dim=1024):
    super().__init__()
    self.cls_token = nn.Parameter(torch.randn(1, 1, 512))
    self.pos_embedding = nn.Parameter(torch.randn(1, num_frames + 1, 512))
    self.spatial_transformer = Transformer(512, depth, heads, dim_head, mlp_dim)

  def forward(self, x, t):                       # (B·T, 512)
    x = x.reshape(-1, t, 512)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = x + self.pos_embedding[:, :t + 1]
    return self.spatial_transformer(x)[:, 0]


class TorchFormerDFER(nn.Module):
  """Official defaults: N=1, M=3, 112 px (49 patches), 16 frames, 7 classes."""

  def __init__(self, num_classes=7, num_frames=16, num_patches=49, num_spatial_layers=1,
               num_temporal_layers=3):
    super().__init__()
    self.s_former = SFormer(num_patches, num_spatial_layers)
    self.t_former = TFormer(num_frames, num_temporal_layers)
    self.fc = nn.Linear(512, num_classes)

  def forward(self, x):                          # (B, T, 3, H, W)
    return self.fc(self.t_former(self.s_former(x), x.shape[1]))


# ----------------------------------------------------------------------------------------------
# Comparisons


def assert_close(actual, desired, rtol: float = 1e-4, atol_frac: float = 1e-5, err: str = "",
                 atol_abs: float = 0.0, scale=None):
  """`|a - d| ≤ rtol·|d| + max(atol_frac·S, atol_abs)` elementwise, S = max|d| (float32 tolerances
  scaled to the data; `atol_abs` for tensors that are zero up to rounding). Given `scale` (the
  sizes of the terms the values are sums of, e.g. from `linear_bias_term_scales`), S is the larger
  of max|d| and the largest of them: a tensor whose terms cancel to ~0 in theory is then compared
  at the rounding noise of those terms, not of its own noise-sized values (tests/tolerances.py)."""
  actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
  assert actual.shape == desired.shape, f"{err}: shape {actual.shape} != {desired.shape}"
  s = max(float(np.abs(desired).max(initial=0.0)), 1e-12)
  if scale is not None:
    s = max(s, float(np.max(scale)))
  np.testing.assert_allclose(actual, desired, rtol=rtol, atol=max(atol_frac * s, atol_abs),
                             err_msg=err)


@contextlib.contextmanager
def linear_bias_term_scales(module: nn.Module):
  """Within the block, record for every `nn.Linear` (with a bias) of `module` that a forward calls
  the sum over all rows of `|∂L/∂z|` per output unit, z its output: the absolute values of the
  terms its bias gradient is the sum of. Yields `{"<name>.bias": (out,) float64 array}`, filled by
  the backward pass. The rounding noise of a bias gradient scales with these terms, also when they
  cancel to 0 in theory (a Linear followed by a train-mode BatchNorm has `∂L/∂b = 0`), see
  tests/tolerances.py."""
  scales: dict[str, np.ndarray] = {}

  def forward_hook(name):
    def record(grad):
      s = grad.detach().abs().reshape(-1, grad.shape[-1]).sum(0).double().numpy()
      scales[name] = scales.get(name, 0.0) + s           # a module called twice: both calls' terms

    def hook(mod, inputs, out):
      if out.requires_grad:
        out.register_hook(record)
    return hook

  handles = [m.register_forward_hook(forward_hook(f"{name}.bias"))
             for name, m in module.named_modules()
             if isinstance(m, nn.Linear) and m.bias is not None]
  try:
    yield scales
  finally:
    for h in handles:
      h.remove()


def assert_grads_match(torch_module: nn.Module, grads_sd: Mapping[str, np.ndarray],
                       rtol: float = 1e-4, atol_frac: float = 1e-5, atol_abs: float = 0.0,
                       term_scales: Mapping[str, np.ndarray] | None = None) -> int:
  """Compare every torch parameter's `.grad` with the Flax gradient mapped to torch layout
  (`term_scales`: per-parameter `scale`s for `assert_close`, e.g. from `linear_bias_term_scales`).
  Returns the number of tensors compared."""
  n = 0
  for name, p in torch_module.named_parameters():
    assert name in grads_sd, f"no Flax gradient for torch parameter {name}"
    assert p.grad is not None, f"torch parameter {name} received no gradient"
    assert_close(grads_sd[name], p.grad.numpy(), rtol, atol_frac, err=f"grad {name}",
                 atol_abs=atol_abs, scale=(term_scales or {}).get(name))
    n += 1
  return n
