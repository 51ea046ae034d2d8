"""Basic layers with PyTorch semantics: `Dense` (torch `nn.Linear` init), `BatchNorm` (torch
`nn.BatchNorm{1,2}d` statistics), activations and initialisers.

Parameter names follow Flax (`kernel`, `bias`, `scale`; BatchNorm statistics `mean`, `var` in the
`batch_stats` collection), so PyTorch mappings are one transpose per tensor (`jaxaffect.interop`).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.errors import UserError
from jaxaffect.nn import fast_grads as _fast_grads

Dtype = Any
Initializer = Callable[..., jax.Array]

# torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"): N(0, 2/fan_out), where
# fan_out = out_channels * kh * kw (torchvision ResNet convs, Former-DFER). Flax HWIO kernels have
# the output axis last, so variance_scaling's default in/out axes give the same fan_out.
conv_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# torch.nn.Linear default: kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int) -> Initializer:
  """torch.nn.Linear default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    # torch nn.GELU() (exact erf form): timm/MAE/DAT/Swin.
    # With the CPU `gelu` switch (nn/fast_grads.py) in torch's erf form, else jax.nn.gelu's erfc.
    "gelu": _fast_grads.gelu,
    # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))): Former-DFER's custom GELU class, nn.GELU('tanh').
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"activation={name!r}: expected one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


class Dense(nn.Module):
  """`y = x @ kernel + bias` over the last axis, initialised like `torch.nn.Linear`.

  `kernel` is `(in, out)` (torch `weight.T`). `kernel_init`/`bias_init` override the torch default.
  """
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer | None = None
  bias_init: Initializer | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init or torch_linear_kernel_init,
                        (fan_in, self.features), self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param("bias", self.bias_init or torch_linear_bias_init(fan_in),
                        (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    if bias is not None:
      y = y + bias
    return y


class BatchNorm(nn.Module):
  """Batch normalisation over all axes but the last, with `torch.nn.BatchNorm{1,2}d` semantics.

  Training: normalise with the batch mean and the *biased* batch variance; update
  `running = momentum·running + (1-momentum)·batch` with the *unbiased* variance (torch), where
  `momentum` follows the Flax convention (torch momentum 0.1 ⇔ 0.9). Evaluation: running statistics.
  Statistics are computed over the whole array passed in: under `jax.jit` in the global view that is
  the global batch on every device layout (no `axis_name` needed). As in `flax.linen.BatchNorm`,
  the running statistics are not updated during `init`. Reductions run in (at least) float32;
  the running statistics are stored in float32.

  `mask` (training only; the input's leading shape, 1/True = counts): the batch statistics are
  taken over the masked-in positions only (n = their number; the running variance is unbiased
  with n) — torch BatchNorm on the valid rows; every position is still normalised. With no valid
  position the running statistics are left unchanged. `mask=None` is the plain path above.
  """
  use_running_average: bool | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  unbiased_running_var: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  # `nn/fast_grads` switch of the train-mode backward (None: the backend default).
  fast_grads: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None) -> jax.Array:
    use_ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    feat = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((feat,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((feat,), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (feat,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (feat,), self.param_dtype)
    if use_ra:
      mean, var = ra_mean.value, ra_var.value
    elif mask is not None:
      mean, var = self._masked_statistics(x, mask, ra_mean, ra_var)
    else:
      axes = tuple(range(x.ndim - 1))
      fused = _fast_grads.enabled("batch_norm", self.fast_grads)
      if fused:            # same forward, closed-form backward (nn/fast_grads.py)
        y, mean, var = _fast_grads.batch_norm_train(x, scale, bias, self.epsilon)
      else:
        mean, var = _fast_grads.bn_stats(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axes)
      if not self.is_initializing():
        n = math.prod(x.shape[:-1])
        run_var = var * (n / (n - 1)) if (self.unbiased_running_var and n > 1) else var
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1.0 - m) * jax.lax.stop_gradient(mean)
        ra_var.value = m * ra_var.value + (1.0 - m) * jax.lax.stop_gradient(run_var)
      if fused:
        return y.astype(self.dtype)
    f = jnp.promote_types(x.dtype, jnp.float32)
    mul = scale.astype(f) * jax.lax.rsqrt(var.astype(f) + self.epsilon)
    y = (x.astype(f) - mean.astype(f)) * mul + bias.astype(f)
    return y.astype(self.dtype)

  def _masked_statistics(self, x, mask, ra_mean, ra_var):
    if mask.shape != x.shape[:-1]:
      raise UserError(f"BatchNorm: mask shape {mask.shape} != leading shape {x.shape[:-1]} of "
                      "the input")
    f = jnp.promote_types(x.dtype, jnp.float32)
    xf = x.astype(f).reshape(-1, x.shape[-1])
    m = mask.astype(f).reshape(-1, 1)
    n = jnp.sum(m)
    n_safe = jnp.maximum(n, 1.0)
    mean = jnp.sum(xf * m, 0) / n_safe
    var = jnp.sum(jnp.square(xf - mean) * m, 0) / n_safe      # two-pass, biased
    if not self.is_initializing():
      run_var = var * (n / jnp.maximum(n - 1.0, 1.0)) if self.unbiased_running_var else var
      mo = self.momentum
      new_mean = mo * ra_mean.value + (1.0 - mo) * jax.lax.stop_gradient(mean)
      new_var = mo * ra_var.value + (1.0 - mo) * jax.lax.stop_gradient(run_var)
      ra_mean.value = jnp.where(n > 0, new_mean, ra_mean.value)
      ra_var.value = jnp.where(n > 0, new_var, ra_var.value)
    return mean, var


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype,
               name: str | None = None) -> nn.LayerNorm:
  """`torch.nn.LayerNorm(eps=eps)` (biased variance, two-pass), params `scale`/`bias`."""
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
                      name=name)
