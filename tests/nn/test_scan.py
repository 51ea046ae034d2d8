"""TransformerEncoder: every layer's output, `nn.scan` vs the Python loop (outputs and gradients
after converting the parameters with `scan_utils`), `nn.remat` policies, exact round trips."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaffect.errors import UserError
from jaxaffect.nn import attention, scan_utils
from tests.interop.torch_refs import assert_close, jit

LAYERS, HEADS, MLP = 3, 4, 48
KW = dict(num_layers=LAYERS, num_heads=HEADS, mlp_dim=MLP, final_norm=True)


def _randn(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


X = _randn(2, 6, 32, seed=1)
W = _randn(2, 6, 32, seed=2)
MASK = np.ones((2, 1, 1, 6), bool)
MASK[1, ..., 4:] = False


def _loss_and_grads(enc, params):
  """Train mode (dropout 0, a dropout key given), with a key-padding mask."""
  def loss(p, x):
    y = enc.apply({"params": p}, x, mask=jnp.asarray(MASK), deterministic=False,
                  rngs={"dropout": jax.random.key(5)})
    return jnp.sum(y * W), y
  (_, y), grads = jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, X)
  return y, grads


@pytest.fixture(scope="module")
def looped_params():
  return attention.TransformerEncoder(**KW).init(jax.random.key(0), X)["params"]


def test_return_all_layers_equals_layers_one_by_one(looped_params):
  enc = attention.TransformerEncoder(**KW)
  outs = enc.apply({"params": looped_params}, X, return_all_layers=True)
  assert isinstance(outs, tuple) and len(outs) == LAYERS
  np.testing.assert_array_equal(np.asarray(outs[-1]),
                                np.asarray(enc.apply({"params": looped_params}, X)))
  layer = attention.TransformerEncoderLayer(HEADS, MLP)
  h = X
  for i in range(LAYERS):
    h = layer.apply({"params": looped_params[f"layer_{i}"]}, h)
    if i < LAYERS - 1:       # the final norm applies to the last output only
      np.testing.assert_allclose(np.asarray(outs[i]), np.asarray(h), rtol=1e-6, atol=1e-6)
  norm = attention.layer_norm(1e-5, jnp.float32, jnp.float32)
  last = norm.apply({"params": looped_params["norm"]}, h)
  np.testing.assert_allclose(np.asarray(outs[-1]), np.asarray(last), rtol=1e-6, atol=1e-6)


def test_stack_unstack_round_trip_is_exact(looped_params):
  stacked = scan_utils.stack_layers(looped_params, LAYERS)
  assert set(stacked) == {"layers", "norm"}
  kernel = stacked["layers"]["attn"]["qkv"]["kernel"]
  assert kernel.shape == (LAYERS,) + looped_params["layer_0"]["attn"]["qkv"]["kernel"].shape
  np.testing.assert_array_equal(np.asarray(kernel[2]),
                                np.asarray(looped_params["layer_2"]["attn"]["qkv"]["kernel"]))
  back = scan_utils.unstack_layers(stacked, LAYERS)
  assert jax.tree.structure(back) == jax.tree.structure(looped_params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               back, looped_params)
  # nested (a model's params with the encoder under `path`), other keys untouched
  model = {"encoder": looped_params, "head": {"kernel": jnp.ones((2, 2))}}
  nested = scan_utils.stack_layers(model, LAYERS, path=("encoder",))
  assert set(nested) == {"encoder", "head"} and "layers" in nested["encoder"]
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               scan_utils.unstack_layers(nested, path=("encoder",)), model)


def test_stack_layers_rejects_wrong_counts(looped_params):
  with pytest.raises(UserError, match="expected layer_0"):
    scan_utils.stack_layers(looped_params, LAYERS - 1)
  with pytest.raises(UserError, match="expected layer_0"):
    scan_utils.stack_layers(looped_params, LAYERS + 1)
  with pytest.raises(UserError, match="leading axes"):
    scan_utils.unstack_layers(scan_utils.stack_layers(looped_params, LAYERS), LAYERS + 1)


def test_scanned_init_has_the_stacked_layout(looped_params):
  scanned = attention.TransformerEncoder(scan=True, **KW).init(jax.random.key(0), X)["params"]
  shapes = lambda t: jax.tree.map(lambda a: a.shape, t)
  assert shapes(scanned) == shapes(scan_utils.stack_layers(looped_params, LAYERS))


@pytest.mark.parametrize("policy", ["none", "full", "dots_saveable",
                                    "dots_with_no_batch_dims_saveable"])
def test_scanned_equals_looped_outputs_and_gradients(looped_params, policy):
  looped = attention.TransformerEncoder(remat_policy=policy, **KW)
  scanned = attention.TransformerEncoder(scan=True, remat_policy=policy, **KW)
  y_ref, (gp_ref, gx_ref) = _loss_and_grads(attention.TransformerEncoder(**KW), looped_params)
  y_l, (gp_l, gx_l) = _loss_and_grads(looped, looped_params)
  y_s, (gp_s, gx_s) = _loss_and_grads(scanned, scan_utils.stack_layers(looped_params, LAYERS))
  for y, gx, gp in ((y_l, gx_l, gp_l), (y_s, gx_s, scan_utils.unstack_layers(gp_s, LAYERS))):
    assert_close(y, y_ref, err="forward")
    assert_close(gx, gx_ref, err="d x")
    flat_ref = dict(jax.tree_util.tree_flatten_with_path(gp_ref)[0])
    for k, g in jax.tree_util.tree_flatten_with_path(gp)[0]:
      assert_close(g, flat_ref[k], err=jax.tree_util.keystr(k))


def test_remat_is_in_the_program_and_scan_is_one_loop(looped_params):
  def jaxpr(enc, params):
    f = lambda p: jnp.sum(enc.apply({"params": p}, X))
    return str(jax.make_jaxpr(jax.grad(f))(params))
  stacked = scan_utils.stack_layers(looped_params, LAYERS)
  assert "remat" not in jaxpr(attention.TransformerEncoder(**KW), looped_params)
  assert "remat" in jaxpr(attention.TransformerEncoder(remat_policy="full", **KW), looped_params)
  text = jaxpr(attention.TransformerEncoder(scan=True, remat_policy="dots_saveable", **KW), stacked)
  assert "scan" in text and "remat" in text


def test_scanned_return_all_layers(looped_params):
  enc_l = attention.TransformerEncoder(**KW)
  enc_s = attention.TransformerEncoder(scan=True, remat_policy="full", **KW)
  stacked = scan_utils.stack_layers(looped_params, LAYERS)
  outs_l = enc_l.apply({"params": looped_params}, X, return_all_layers=True)
  outs_s = enc_s.apply({"params": stacked}, X, return_all_layers=True)
  assert isinstance(outs_s, tuple) and len(outs_s) == LAYERS
  np.testing.assert_array_equal(np.asarray(outs_s[-1]), np.asarray(enc_s.apply({"params": stacked},
                                                                               X)))
  for a, b in zip(outs_s, outs_l):
    assert_close(a, b)


def test_bad_remat_policy_is_a_user_error():
  with pytest.raises(UserError, match="remat_policy"):
    attention.TransformerEncoder(remat_policy="dots", **KW).init(jax.random.key(0), X)
