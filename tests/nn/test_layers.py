"""jaxaffect.nn.layers vs torch: BatchNorm statistics, Dense, activations, initialisers."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxaffect.nn import layers
from tests.interop.torch_refs import assert_close


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4, 6)])   # n=3 makes n/(n-1) matter
def test_batchnorm_matches_torch_train_and_eval(shape):
  rng = np.random.default_rng(0)
  x = (2.0 + 3.0 * rng.normal(size=shape)).astype(np.float32)
  c = shape[-1]
  scale = (1 + 0.2 * rng.normal(size=c)).astype(np.float32)
  bias = (0.3 * rng.normal(size=c)).astype(np.float32)
  mean0 = (0.1 * rng.normal(size=c)).astype(np.float32)
  var0 = rng.uniform(0.5, 1.5, c).astype(np.float32)
  w = rng.normal(size=shape).astype(np.float32)

  bn = layers.BatchNorm()
  variables = {"params": {"scale": scale, "bias": bias},
               "batch_stats": {"mean": mean0, "var": var0}}

  tbn = (torch.nn.BatchNorm1d(c) if len(shape) == 2 else torch.nn.BatchNorm2d(c))
  with torch.no_grad():
    tbn.weight.copy_(torch.from_numpy(scale)); tbn.bias.copy_(torch.from_numpy(bias))
    tbn.running_mean.copy_(torch.from_numpy(mean0)); tbn.running_var.copy_(torch.from_numpy(var0))
  to_t = (lambda a: a) if len(shape) == 2 else (lambda a: a.transpose(0, 3, 1, 2))
  from_t = (lambda a: a) if len(shape) == 2 else (lambda a: a.transpose(0, 2, 3, 1))

  for train in (True, False):
    def loss(params, x):
      y, new = bn.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                        use_running_average=not train, mutable=["batch_stats"])
      return jnp.sum(y * w), (y, new)
    (_, (y, new)), (gp, gx) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        variables["params"], x)
    tbn.train(train)
    for p in tbn.parameters():
      p.grad = None
    xt = torch.from_numpy(to_t(x).copy()).requires_grad_(True)
    yt = tbn(xt)
    (yt * torch.from_numpy(to_t(w).copy())).sum().backward()
    assert_close(y, from_t(yt.detach().numpy()), err=f"forward train={train}")
    assert_close(gx, from_t(xt.grad.numpy()), err=f"dx train={train}")
    assert_close(gp["scale"], tbn.weight.grad.numpy(), err="dscale")
    assert_close(gp["bias"], tbn.bias.grad.numpy(), err="dbias")
    if train:   # torch updates running stats with the unbiased variance, momentum 0.1
      assert_close(new["batch_stats"]["mean"], tbn.running_mean.numpy(), err="running_mean")
      assert_close(new["batch_stats"]["var"], tbn.running_var.numpy(), err="running_var")
      with torch.no_grad():   # reset torch to the pre-step stats for the eval pass
        tbn.running_mean.copy_(torch.from_numpy(mean0))
        tbn.running_var.copy_(torch.from_numpy(var0))


def test_batchnorm_init_does_not_update_stats():
  x = jnp.arange(12.0).reshape(4, 3)
  v = layers.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
  np.testing.assert_array_equal(v["batch_stats"]["mean"], np.zeros(3))
  np.testing.assert_array_equal(v["batch_stats"]["var"], np.ones(3))


def test_dense_matches_torch_linear_and_init_bounds():
  lin = torch.nn.Linear(300, 40)
  x = np.random.default_rng(0).normal(size=(2, 5, 300)).astype(np.float32)
  d = layers.Dense(40)
  params = {"kernel": lin.weight.detach().numpy().T, "bias": lin.bias.detach().numpy()}
  y = d.apply({"params": params}, x)
  assert_close(y, lin(torch.from_numpy(x)).detach().numpy())
  # torch default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
  p = layers.Dense(2000).init(jax.random.key(1), jnp.zeros((1, 300)))["params"]
  bound = 1 / math.sqrt(300)
  for a in (p["kernel"], p["bias"]):
    a = np.asarray(a)
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.99 * bound
  assert abs(np.asarray(p["kernel"]).std() - bound / math.sqrt(3)) < 0.01 * bound


def test_conv_init_matches_torch_kaiming_fan_out():
  shape_hwio = (3, 3, 64, 256)
  k = np.asarray(layers.conv_kaiming_fan_out(jax.random.key(0), shape_hwio))
  w = torch.empty(256, 64, 3, 3)
  torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
  assert abs(k.std() / w.std().item() - 1) < 0.02
  assert abs(k.mean()) < 0.01 * k.std()
  # Not truncated: torch's kaiming_normal_ is a plain normal (tails beyond 2σ exist).
  assert (np.abs(k) > 2.5 * k.std()).mean() > 0.005


@pytest.mark.parametrize("name,torch_fn", [
    ("gelu", torch.nn.GELU()), ("gelu_tanh", torch.nn.GELU(approximate="tanh")),
    ("relu", torch.nn.ReLU())])
def test_activations_match_torch(name, torch_fn):
  x = np.linspace(-6, 6, 1001, dtype=np.float32)
  f = layers.get_activation(name)
  assert_close(f(x), torch_fn(torch.from_numpy(x)).numpy(), rtol=1e-5, atol_frac=1e-6)
  g = jax.vmap(jax.grad(f))(x)
  xt = torch.from_numpy(x).requires_grad_(True)
  torch_fn(xt).sum().backward()
  keep = np.abs(x) > 1e-3 if name == "relu" else slice(None)   # relu'(0) convention differs
  # float32 saturation: JAX's tanh-GELU gradient is exactly 0 below x≈-4.7, torch's ~-2e-6.
  assert_close(np.asarray(g)[keep], xt.grad.numpy()[keep], rtol=1e-5, atol_frac=1e-5)


def test_gelu_tanh_differs_from_exact():
  """Guard against swapping the two GELUs (Former-DFER uses tanh, ViT/MAE exact)."""
  x = jnp.array([1.5])
  assert abs(float(layers.get_activation("gelu")(x)[0] -
                   layers.get_activation("gelu_tanh")(x)[0])) > 1e-4
