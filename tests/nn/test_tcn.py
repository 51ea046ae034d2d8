"""jaxaffect.nn.tcn vs an independent torch weight-normed causal Conv1d stack (chomp form,
`tests/interop/torch_abaw_ref.py`), weights through the ABAW export mapping: forward and gradients
w.r.t. the input and every parameter, PReLU and ReLU; init semantics; causality."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxaffect.interop import abaw_tcn as abaw_map
from jaxaffect.interop import mapping
from jaxaffect.nn import tcn
from tests.interop import torch_abaw_ref as tref
from tests.interop.torch_refs import assert_close, assert_grads_match, jit, load_numpy_state_dict

RULES = abaw_map._tcn_rules("temporal", "temporal")


def _randn(*shape, seed=0, scale=1.0):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def _random_tcn_variables(module, x, seed):
  """Random weights (not the init: g ≠ ‖v‖, PReLU slopes ≠ 0.25, nonzero biases)."""
  shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "weight_g" in name:
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    if "relu" in name:
      return rng.uniform(0.05, 0.5, s.shape).astype(np.float32)
    if "bias" in name:
      return (0.1 * rng.normal(size=s.shape)).astype(np.float32)
    fan_in = int(np.prod(s.shape[:-1]))
    return rng.normal(0, np.sqrt(2.0 / fan_in), s.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, dict(shapes))


@pytest.mark.parametrize("activation,cin,channels,k", [
    ("prelu", 12, (16, 16, 8), 3),      # downsample in blocks 0 and 2, identity residual in 1
    ("relu", 10, (10, 6), 5),           # identity residual in block 0
])
def test_tcn_matches_torch_weight_norm_chomp_stack(activation, cin, channels, k):
  b, t = 2, 23
  net = tcn.TemporalConvNet(channels, kernel_size=k, activation=activation)
  x = _randn(b, t, cin, seed=1)
  w = _randn(b, t, channels[-1], seed=2)
  v = _random_tcn_variables(net, x, seed=3)
  sd = abaw_map.add_aliases(mapping.to_torch(RULES, {"params": {"temporal": v["params"]}}))
  assert any(".net.0.weight_v" in key for key in sd) and any(".net.4.bias" in key for key in sd)
  ref = torch.nn.Module()
  ref.temporal = tref.TCN(cin, channels, k, prelu=activation == "prelu")
  load_numpy_state_dict(ref, sd)           # strict: both names of every conv present and used

  def loss(params, x):
    y = net.apply({"params": params}, x)
    return jnp.sum(y * w), y
  (_, y), (gp, gx) = jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(v["params"], x)
  xt = torch.from_numpy(x).requires_grad_(True)
  yt = ref.temporal(xt.transpose(1, 2)).transpose(1, 2)
  (yt * torch.from_numpy(w)).sum().backward()
  assert_close(y, yt.detach().numpy(), err="forward")
  assert_close(gx, xt.grad.numpy(), err="d input")
  g_sd = mapping.to_torch(RULES, {"params": {"temporal": gp}})
  n = assert_grads_match(ref, g_sd)
  per_block = 6 + (3 if activation == "prelu" else 0)
  assert n == sum(per_block + (2 if (cin if i == 0 else channels[i - 1]) != c else 0)
                  for i, c in enumerate(channels))


def test_reference_conv_equals_torch_weight_norm_parametrization():
  """The test's weight-norm formula equals torch's own `weight_norm` (dim=0)."""
  torch.manual_seed(0)
  conv = torch.nn.Conv1d(5, 7, 3)
  wn = torch.nn.utils.parametrizations.weight_norm(conv, dim=0)
  ref = tref.WNConv1d(5, 7, 3, 1)
  with torch.no_grad():
    ref.weight_g.copy_(wn.parametrizations.weight.original0)
    ref.weight_v.copy_(wn.parametrizations.weight.original1 * 1.7)   # g/‖v‖ ignores v's scale
    ref.bias.copy_(conv.bias)
  np.testing.assert_allclose(ref.weight().detach().numpy(), wn.weight.detach().numpy(),
                             rtol=1e-6, atol=1e-7)


def test_init_is_torch_default_and_weight_equals_v():
  """v ~ U(±1/√(I·K)); g = ‖v‖ (the weight-norm hook: W = v at init); downsample N(0, 0.01);
  PReLU slopes 0.25."""
  net = tcn.TemporalConvNet((64, 32), kernel_size=4)
  v = net.init(jax.random.key(0), jnp.zeros((1, 8, 48)))["params"]
  c1 = v["block_0"]["conv1"]
  bound = 1 / np.sqrt(48 * 4)
  vv = np.asarray(c1["weight_v"])
  assert vv.shape == (4, 48, 64) and np.abs(vv).max() <= bound and np.abs(vv).max() > 0.9 * bound
  # float64 reference: the float32 norm of 4·48 positive terms is within a few eps32 of it (a
  # float32 numpy reference adds its own rounding, in another summation order)
  np.testing.assert_allclose(np.asarray(c1["weight_g"])[0, 0],
                             np.sqrt((vv.astype(np.float64) ** 2).sum(axis=(0, 1))), rtol=1e-6)
  ds = np.asarray(v["block_0"]["downsample"]["kernel"])
  assert abs(ds.std() - 0.01) < 0.001
  assert float(v["block_1"]["relu"]["weight"][0]) == 0.25
  # W = g·v/‖v‖ = v: the conv at init equals a plain causal conv with kernel v.
  x = _randn(1, 8, 48, seed=5)
  conv = tcn.WeightNormConv1D(64, 4, dilation=2)
  y = conv.apply({"params": c1}, x)
  y0 = tcn.causal_conv1d(jnp.asarray(x), jnp.asarray(vv), 2) + c1["bias"]
  np.testing.assert_allclose(np.asarray(y), np.asarray(y0), rtol=1e-5, atol=1e-6)


def test_causal_future_frames_do_not_change_past_outputs():
  net = tcn.TemporalConvNet((8, 8, 8), kernel_size=3)
  x = _randn(1, 40, 6, seed=6)
  v = _random_tcn_variables(net, x, seed=7)
  x2 = x.copy()
  x2[:, 25:] += 1.0
  y1, y2 = net.apply(v, x), net.apply(v, x2)
  np.testing.assert_array_equal(np.asarray(y1)[:, :25], np.asarray(y2)[:, :25])
  assert np.abs(np.asarray(y1)[:, 25] - np.asarray(y2)[:, 25]).max() > 1e-3
  # Receptive field 1 + 2(k−1)(2^L − 1) = 29: output t depends on inputs t−28 … t only.
  assert tcn.tcn_receptive_field(3, 3) == 29
  x3 = x.copy()
  x3[:, 10] += 1.0
  d = np.abs(np.asarray(net.apply(v, x3)) - np.asarray(y1)).max(axis=(0, 2))
  assert np.all(d[:10] == 0) and d[10 + 28] > 0 and np.all(d[10 + 29:] == 0)


def test_dropout_only_in_training():
  net = tcn.TemporalConvNet((8, 8), kernel_size=2, dropout=0.5)
  x = _randn(2, 10, 8, seed=8)
  v = net.init(jax.random.key(0), x)
  det = net.apply(v, x)
  np.testing.assert_array_equal(np.asarray(det), np.asarray(net.apply(v, x, deterministic=True)))
  tr = net.apply(v, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert np.abs(np.asarray(tr) - np.asarray(det)).max() > 1e-3
  with pytest.raises(ValueError, match="activation"):
    tcn.TemporalConvNet((4,), activation="gelu").init(jax.random.key(0), x)
