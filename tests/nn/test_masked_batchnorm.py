"""`jaxaffect.nn.BatchNorm(mask=...)`: statistics over the masked-in positions only == torch
`BatchNorm{1,2}d` on those positions (forward, running statistics, gradients); all-ones mask ==
no mask; no valid position leaves the running statistics; evaluation ignores the mask."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxaffect.errors import UserError
from jaxaffect.nn.layers import BatchNorm
from tests.interop.torch_refs import assert_close, jit


def _randn(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(4, 9, 6), (3, 5, 4, 6)])
def test_masked_statistics_match_torch_on_valid_positions(shape):
  c = shape[-1]
  x = _randn(*shape, seed=1) * 3 + 2
  w = _randn(*shape, seed=2)
  mask = np.random.default_rng(3).random(shape[:-1]) > 0.4
  bn = BatchNorm()
  v = bn.init(jax.random.key(0), x, use_running_average=False)
  params = {"scale": jnp.asarray(_randn(c, seed=4)), "bias": jnp.asarray(_randn(c, seed=5))}

  def loss(p, x):
    y, st = bn.apply({"params": p, "batch_stats": v["batch_stats"]}, x, use_running_average=False,
                     mask=jnp.asarray(mask), mutable=["batch_stats"])
    return jnp.sum(y * w * mask[..., None]), (y, st)
  (_, (y, st)), (gp, gx) = jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)

  tb = torch.nn.BatchNorm1d(c).train()
  with torch.no_grad():
    tb.weight.copy_(torch.tensor(np.asarray(params["scale"])))
    tb.bias.copy_(torch.tensor(np.asarray(params["bias"])))
  xv = torch.from_numpy(x[mask]).requires_grad_(True)          # (n_valid, C)
  yt = tb(xv)
  (yt * torch.from_numpy(w[mask])).sum().backward()
  assert_close(np.asarray(y)[mask], yt.detach().numpy(), err="forward (valid)")
  assert_close(st["batch_stats"]["mean"], tb.running_mean.numpy(), err="running mean")
  assert_close(st["batch_stats"]["var"], tb.running_var.numpy(), err="running var")
  assert_close(np.asarray(gx)[mask], xv.grad.numpy(), err="d x (valid)")
  np.testing.assert_array_equal(np.asarray(gx)[~mask], 0.0)     # loss ignores invalid rows
  assert_close(gp["scale"], tb.weight.grad.numpy(), err="d scale")
  assert_close(gp["bias"], tb.bias.grad.numpy(), err="d bias")
  # invalid positions are normalised with the valid positions' statistics
  mean, var = x[mask].mean(0), x[mask].var(0)
  ref = (x - mean) / np.sqrt(var + 1e-5) * np.asarray(params["scale"]) + np.asarray(params["bias"])
  assert_close(np.asarray(y), ref, err="all positions")


def test_all_ones_mask_equals_no_mask_and_empty_mask_keeps_running_stats():
  x = _randn(3, 7, 5, seed=6) * 2 + 1
  bn = BatchNorm()
  v = bn.init(jax.random.key(0), x, use_running_average=False)
  run = lambda m: bn.apply(v, x, use_running_average=False, mask=m, mutable=["batch_stats"])
  (y0, s0), (y1, s1) = run(None), run(jnp.ones((3, 7), bool))
  np.testing.assert_allclose(np.asarray(y0), np.asarray(y1), rtol=1e-6, atol=1e-6)
  for k in ("mean", "var"):
    np.testing.assert_allclose(s0["batch_stats"][k], s1["batch_stats"][k], rtol=1e-6)
  _, s2 = run(jnp.zeros((3, 7)))
  np.testing.assert_array_equal(np.asarray(s2["batch_stats"]["mean"]), np.zeros(5))
  np.testing.assert_array_equal(np.asarray(s2["batch_stats"]["var"]), np.ones(5))
  # biased running variance when asked (unbiased_running_var=False), masked like the plain path
  bb = BatchNorm(unbiased_running_var=False)
  mask = np.ones((3, 7), bool)
  mask[0, 3:] = False
  _, s3 = bb.apply(v, x, use_running_average=False, mask=jnp.asarray(mask),
                   mutable=["batch_stats"])
  assert_close(s3["batch_stats"]["var"], 0.9 + 0.1 * x[mask].var(0), err="biased running var")


def test_evaluation_uses_running_stats_whatever_the_mask():
  x = _randn(2, 4, 3, seed=7)
  bn = BatchNorm()
  v = bn.init(jax.random.key(0), x, use_running_average=True)
  y = bn.apply(v, x, use_running_average=True)
  y_m = bn.apply(v, x, use_running_average=True, mask=jnp.zeros((2, 4)))
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y_m))


def test_mask_shape_must_be_the_leading_shape():
  x = _randn(2, 4, 3)
  bn = BatchNorm()
  v = bn.init(jax.random.key(0), x, use_running_average=False)
  with pytest.raises(UserError, match="mask shape"):
    bn.apply(v, x, use_running_average=False, mask=jnp.ones((2, 4, 3)), mutable=["batch_stats"])
