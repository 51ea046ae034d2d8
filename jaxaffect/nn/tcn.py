"""Temporal convolutional network (Bai, Kolter & Koltun 2018, `locuslab/TCN`), channels-last.

`TemporalConvNet(channels)` stacks `TemporalBlock`s; block i has dilation 2^i:

    y = act1(WN-Conv1d_{k,d}(x)) → Dropout → act2(WN-Conv1d_{k,d}(·)) → Dropout
    out = act(y + res),   res = x, or a plain 1×1 Conv1d when the widths differ (`downsample`)

* **Causal convolution.** The official code pads `(k−1)·d` on both sides and crops the right
  `(k−1)·d` outputs (`Chomp1d`); here only the left side is padded by `(k−1)·d`: output t sees
  inputs t−(k−1)·d … t, identical values, no chomp.
* **Weight normalisation** (Salimans & Kingma 2016; torch's `weight_norm(dim=0)`):
  `W = g · v / ‖v‖`, the norm taken over (input channels, taps) per output channel, no epsilon.
  Parameters `weight_v` in Flax conv layout `(K, I, O)` (torch `(O, I, K)`) and `weight_g` as
  `(1, 1, O)` (torch `(O, 1, 1)`), so both map to torch with the Conv1d transpose.
* **Activations.** `"relu"` (locuslab) or `"prelu"` (ABAW6 / ABAW5 Chinatelecom code): three
  `nn.PReLU()` per block — `relu1`, `relu2` and `relu` on the sum — each ONE learnable slope,
  initialised to 0.25. Dropout (elementwise, torch `nn.Dropout`) follows `relu1` and `relu2`.
* **Initialisation (torch defaults in distribution).** `v ~ U(±1/√(I·K))` (Conv1d default) and
  `g = ‖v‖`, i.e. `W = v` at init: the official `init_weights` draws `conv.weight ~ N(0, 0.01)`
  but the old weight-norm hook recomputes `weight` from (g, v) at every forward, so that draw is
  lost. Biases `U(±1/√(I·K))`. The 1×1 `downsample` keeps its `N(0, 0.01)` draw (it is a plain
  conv), bias `U(±1/√I)`.

Input/output `(B, T, C)`; `TemporalConvNet` returns `(B, T, channels[-1])`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.nn.layers import torch_linear_bias_init, torch_linear_kernel_init

Dtype = Any
TCN_ACTIVATIONS = ("relu", "prelu")


class PReLU(nn.Module):
  """`torch.nn.PReLU()` (one shared slope): `max(0, x) + a·min(0, x)`; param `weight` (1,),
  init 0.25."""
  init_slope: float = 0.25
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    a = self.param("weight", nn.initializers.constant(self.init_slope), (1,), self.param_dtype)
    x = x.astype(self.dtype)
    return jnp.where(x >= 0, x, a.astype(self.dtype) * x)


def causal_conv1d(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
  """`x (B, T, I)` ⊛ `kernel (K, I, O)` with dilation d and left padding (K−1)·d → `(B, T, O)`:
  out[t] = Σ_j kernel[j] · x[t − (K−1−j)·d] (zeros before the start); torch Conv1d with
  padding (K−1)·d followed by a right crop of (K−1)·d (Chomp1d)."""
  k = kernel.shape[0]
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1,), padding=[((k - 1) * dilation, 0)],
      rhs_dilation=(dilation,), dimension_numbers=("NWC", "WIO", "NWC"))


class WeightNormConv1D(nn.Module):
  """Causal dilated Conv1d with weight normalisation; params `weight_v (K, I, O)`,
  `weight_g (1, 1, O)`, `bias (O,)`. `W = g·v/‖v‖` computed in (at least) float32."""
  features: int
  kernel_size: int
  dilation: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1] * self.kernel_size
    v = self.param("weight_v", torch_linear_kernel_init,
                   (self.kernel_size, x.shape[-1], self.features), self.param_dtype)
    acc = jnp.promote_types(self.param_dtype, jnp.float32)

    def norm_v(vv):
      vv = vv.astype(acc)
      return jnp.sqrt(jnp.sum(vv * vv, axis=(0, 1), keepdims=True))

    # torch weight_norm initialises g = ‖v‖ (so W = v at init).
    g = self.param("weight_g", lambda key, shape, dtype: norm_v(v).astype(dtype),
                   (1, 1, self.features), self.param_dtype)
    b = self.param("bias", torch_linear_bias_init(fan_in), (self.features,), self.param_dtype)
    w = g.astype(acc) * v.astype(acc) / norm_v(v)
    y = causal_conv1d(x.astype(self.dtype), w.astype(self.dtype), self.dilation)
    return y + b.astype(self.dtype)


class PointwiseConv(nn.Module):
  """Conv1d with kernel size 1 (`kernel (1, I, O)`, `bias (O,)`), i.e. a per-frame Linear stored
  in Conv1d layout (torch `(O, I, 1)`). Default init = torch Conv1d / Linear default
  (`U(±1/√I)`); `kernel_init` overrides it (TCN `downsample`: N(0, 0.01))."""
  features: int
  kernel_init: Any = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    k = self.param("kernel", self.kernel_init or torch_linear_kernel_init,
                   (1, fan_in, self.features), self.param_dtype)
    b = self.param("bias", torch_linear_bias_init(fan_in), (self.features,), self.param_dtype)
    y = jnp.einsum("...i,io->...o", x.astype(self.dtype), k[0].astype(self.dtype))
    return y + b.astype(self.dtype)


def _activation(kind: str, name: str, dtype: Dtype, param_dtype: Dtype):
  if kind == "prelu":
    return PReLU(dtype=dtype, param_dtype=param_dtype, name=name)
  if kind == "relu":
    return jax.nn.relu
  raise ValueError(f"TCN activation={kind!r}: expected one of {TCN_ACTIVATIONS}")


class TemporalBlock(nn.Module):
  """One residual block (locuslab `TemporalBlock`): submodules `conv1`, `conv2`
  (`WeightNormConv1D`), `relu1`, `relu2`, `relu` (PReLU only) and `downsample` (when the input
  width differs from `features`)."""
  features: int
  kernel_size: int
  dilation: int
  dropout: float = 0.0
  activation: str = "prelu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    conv = lambda name: WeightNormConv1D(self.features, self.kernel_size, self.dilation,
                                         dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    act = lambda name: _activation(self.activation, name, self.dtype, self.param_dtype)
    y = act("relu1")(conv("conv1")(x))
    y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
    y = act("relu2")(conv("conv2")(y))
    y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
    if x.shape[-1] != self.features:
      res = PointwiseConv(self.features, nn.initializers.normal(0.01), dtype=self.dtype,
                          param_dtype=self.param_dtype, name="downsample")(x)
    else:
      res = x.astype(self.dtype)
    return act("relu")(y + res)


class TemporalConvNet(nn.Module):
  """locuslab `TemporalConvNet(num_inputs, num_channels, kernel_size, dropout)`: block i
  (`block_<i>`, torch `network.<i>`) has `channels[i]` outputs and dilation 2^i. `(B, T, C_in)` →
  `(B, T, channels[-1])`."""
  channels: Sequence[int]
  kernel_size: int = 2
  dropout: float = 0.0
  activation: str = "prelu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
    if x.ndim != 3:
      raise ValueError(f"TemporalConvNet expects (B, T, C) input, got shape {x.shape}")
    if self.activation not in TCN_ACTIVATIONS:
      raise ValueError(f"TCN activation={self.activation!r}: expected one of {TCN_ACTIVATIONS}")
    for i, c in enumerate(self.channels):
      x = TemporalBlock(int(c), self.kernel_size, 2 ** i, self.dropout, self.activation,
                        dtype=self.dtype, param_dtype=self.param_dtype,
                        name=f"block_{i}")(x, deterministic=deterministic)
    return x


def tcn_receptive_field(num_levels: int, kernel_size: int) -> int:
  """Frames seen by the last output of a `num_levels`-block TCN: 1 + 2·(k−1)·(2^L − 1)."""
  return 1 + 2 * (kernel_size - 1) * (2 ** num_levels - 1)
