"""ResNet-18/34 (BasicBlock) in the torchvision/timm layout, NHWC, usable piece by piece.

He et al., "Deep Residual Learning", Table 1 (18-layer: [2,2,2,2]). Matches torchvision `resnet18`
/ timm `resnet18` exactly (tested): every padding is explicit and symmetric like torch's
(conv1 7×7/s2 pad 3, maxpool 3/s2 pad 1 with -inf, 3×3 convs pad 1, 1×1 downsample pad 0) — Flax
`'SAME'` would pad (2,3) for the stride-2 7×7 conv on even inputs. BatchNorm is torch's (eps 1e-5,
momentum 0.1, unbiased running variance; `jaxaffect.nn.layers.BatchNorm`). Convs have no bias and
use kaiming-normal(fan_out) init, BN scale 1 / bias 0, `fc` the torch Linear default.

Pieces: `ResNetStem` (conv1, bn1, ReLU, maxpool) and `ResNetStage` (torch `layerN`, blocks named
`block_0`, …) can be composed freely (Former-DFER puts a transformer between layer3 and layer4).
`width` is the stem/layer1 channel count (64 = torchvision); stage i has `width·2^i` channels.
`fast_grads` (every piece): the `jaxaffect.nn.fast_grads` switch for the max-pool, BatchNorm and
conv gradients (None: the backend's measured default; False: exactly the plain flax ops).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.nn import fast_grads as fg
from jaxaffect.nn.layers import BatchNorm, Dense, conv_kaiming_fan_out

Dtype = Any


def _conv(features: int, kernel: int, stride: int, pad: int, dtype, param_dtype, name: str,
          fast_grads: Any = None):
  # fast_grads: `nn.fast_grads` switch (None: backend default); off = flax's own convolution.
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=conv_kaiming_fan_out, dtype=dtype, param_dtype=param_dtype, name=name,
                 conv_general_dilated=fg.conv_fn(fast_grads))


class BasicBlock(nn.Module):
  """`relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`; shortcut = `downsample_bn(
  downsample_conv(x))` (1×1, stride) when the stride or channel count changes (torch
  `downsample.0/1`), else identity."""
  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  fast_grads: Any = None          # nn.fast_grads switch: None = backend default, bool, op names

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = functools.partial(_conv, dtype=self.dtype, param_dtype=self.param_dtype,
                             fast_grads=self.fast_grads)
    bn = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype,
                           param_dtype=self.param_dtype, fast_grads=self.fast_grads)
    y = conv(self.features, 3, self.strides, 1, name="conv1")(x)
    y = nn.relu(bn(name="bn1")(y))
    y = conv(self.features, 3, 1, 1, name="conv2")(y)
    y = bn(name="bn2")(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, self.strides, 0, name="downsample_conv")(x)
      shortcut = bn(name="downsample_bn")(shortcut)
    return nn.relu(y + shortcut)


class ResNetStem(nn.Module):
  """conv1 7×7/s2/p3 → bn1 → ReLU → maxpool 3/s2/p1 (H → ⌈H/4⌉ for even H; 112 → 28)."""
  features: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  fast_grads: Any = None          # nn.fast_grads switch: None = backend default, bool, op names

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = _conv(self.features, 7, 2, 3, self.dtype, self.param_dtype, "conv1",
              self.fast_grads)(x.astype(self.dtype))
    x = BatchNorm(use_running_average=not train, dtype=self.dtype, param_dtype=self.param_dtype,
                  fast_grads=self.fast_grads, name="bn1")(x)
    x = nn.relu(x)
    # lax.reduce_window pads with the init value -inf, like torch MaxPool2d(3, 2, padding=1).
    return fg.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), flag=self.fast_grads)


class ResNetStage(nn.Module):
  """torch `layerN`: `num_blocks` BasicBlocks (`block_0`, …), the first with `strides`."""
  features: int
  num_blocks: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  fast_grads: Any = None          # nn.fast_grads switch: None = backend default, bool, op names

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for i in range(self.num_blocks):
      x = BasicBlock(self.features, self.strides if i == 0 else 1, dtype=self.dtype,
                     param_dtype=self.param_dtype, fast_grads=self.fast_grads,
                     name=f"block_{i}")(x, train=train)
    return x


class ResNet(nn.Module):
  """BasicBlock ResNet: `stem`, `layer1..4`, global average pool, optional `fc`.

  `x (B, H, W, 3)` → logits `(B, num_classes)`, or pooled features `(B, 8·width)` when
  `num_classes` is None/0 (timm `num_classes=0`).
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  num_classes: int | None = 1000
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  fast_grads: Any = None          # nn.fast_grads switch: None = backend default, bool, op names

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, fast_grads=self.fast_grads)
    x = ResNetStem(self.width, name="stem", **kw)(x, train=train)
    for i, n in enumerate(self.stage_sizes):
      x = ResNetStage(self.width * 2 ** i, n, 1 if i == 0 else 2, name=f"layer{i + 1}",
                      **kw)(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes:
      x = Dense(self.num_classes, name="fc", dtype=self.dtype, param_dtype=self.param_dtype)(x)
    return x


def resnet18(**kwargs) -> ResNet:
  return ResNet(stage_sizes=(2, 2, 2, 2), **kwargs)


def resnet34(**kwargs) -> ResNet:
  return ResNet(stage_sizes=(3, 4, 6, 3), **kwargs)
