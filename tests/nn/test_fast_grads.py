"""`jaxaffect.nn.fast_grads`: the alternative max-pool and conv gradients equal `jax.grad` of the
plain ops and torch's (padding, stride 2, odd sizes, max-pool ties by torch's first-maximum rule);
the switch (flag > override > environment > backend default); off = the plain ops, unchanged; a
ResNet-18 train-mode gradient with the switch on equals the one with it off."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax import lax

from jaxaffect.nn import fast_grads as fg
from jaxaffect.nn import resnet
from tests.tolerances import assert_close_ulps

# Summation-order noise only: a gradient entry is a sum of (at most 4 for these pools, B·Ho·Wo or
# Cout·k·k for the convs) products; against another order it differs by a few eps of the sum of
# the terms' absolute values (measured: ≤ 1 ulp for the pools, ≤ 3 for the convs). A real error
# (a tie given to the wrong element, a tap off by one, a missing stride) is a whole term: ≥ 2^20
# ulps of these magnitudes.
ULPS = 8


def _pool_vjp(f, x, g):
  return jax.jit(lambda x, g: jax.vjp(f, x)[1](g)[0])(x, g)


def _torch_pool(x, g, window, strides, pad):
  xt = torch.from_numpy(np.array(x).transpose(0, 3, 1, 2).copy()).requires_grad_()
  y = torch.nn.functional.max_pool2d(xt, window, strides, pad)
  y.backward(torch.from_numpy(np.array(g).transpose(0, 3, 1, 2).copy()))
  return y.detach().numpy().transpose(0, 2, 3, 1), xt.grad.numpy().transpose(0, 2, 3, 1)


def _inputs(kind, shape, rng):
  if kind == "random":
    return rng.standard_normal(shape).astype(np.float32)
  if kind == "repeated":              # many ties inside windows: values from {-1, 0, 1, 2}
    return rng.integers(-1, 3, shape).astype(np.float32)
  if kind == "constant":              # every window a tie
    return np.full(shape, 0.5, np.float32)
  if kind == "plateaus":              # constant blocks + a random part
    x = rng.standard_normal(shape).astype(np.float32)
    x[:, : shape[1] // 2] = 1.0
    x[:, :, -3:] = -2.0
    return x
  raise ValueError(kind)


# (window, stride, torch padding, H, W): ResNet's 3×3/2 pad 1 at even and odd sizes, no padding,
# stride 1, and a 2×2/2 pool.
POOLS = [(3, 2, 1, 16, 16), (3, 2, 1, 15, 13), (3, 2, 0, 13, 12), (3, 1, 1, 9, 8), (2, 2, 0, 10, 9)]


@pytest.mark.parametrize("window,stride,pad,h,w", POOLS)
@pytest.mark.parametrize("kind", ["random", "repeated", "constant", "plateaus"])
def test_max_pool_grad_matches_plain_and_torch(window, stride, pad, h, w, kind):
  rng = np.random.default_rng(0)
  x = jnp.asarray(_inputs(kind, (2, h, w, 3), rng))
  args = ((window, window), (stride, stride), ((pad, pad), (pad, pad)))
  plain = lambda x: nn.max_pool(x, args[0], strides=args[1], padding=args[2])
  fast = lambda x: fg.max_pool(x, *args, flag=True)
  y = plain(x)
  np.testing.assert_array_equal(fast(x), y)                       # the same forward
  g = jnp.asarray(rng.standard_normal(y.shape).astype(np.float32))
  dx_fast = _pool_vjp(fast, x, g)
  mag = _pool_vjp(fast, x, jnp.abs(g))        # Σ |terms| per entry
  # XLA's select-and-scatter (jax.grad of reduce_window max) also gives a tie to the first max
  assert_close_ulps(dx_fast, _pool_vjp(plain, x, g), magnitude=mag, ulps=ULPS,
                    err_msg="fast vs jax.grad")
  y_t, dx_t = _torch_pool(x, g, window, stride, pad)
  np.testing.assert_array_equal(y_t, y)
  assert_close_ulps(dx_fast, dx_t, magnitude=mag, ulps=ULPS, err_msg="fast vs torch")
  # every window sends its cotangent to exactly one element
  np.testing.assert_allclose(float(jnp.sum(dx_fast)), float(jnp.sum(g)), rtol=1e-5, atol=1e-4)


def test_max_pool_ties_go_to_the_first_maximum_in_row_major_order():
  x = jnp.zeros((1, 3, 3, 1)).at[0, 0, 2, 0].set(1.0).at[0, 1, 0, 0].set(1.0)  # two maxima
  dx = _pool_vjp(lambda x: fg.max_pool(x, (3, 3), (1, 1), "VALID", flag=True), x,
                 jnp.ones((1, 1, 1, 1)))
  expected = np.zeros((1, 3, 3, 1), np.float32)
  expected[0, 0, 2, 0] = 1.0                   # (0, 2) comes before (1, 0) row by row
  np.testing.assert_array_equal(dx, expected)
  _, dx_t = _torch_pool(x, jnp.ones((1, 1, 1, 1)), 3, 1, 0)
  np.testing.assert_array_equal(dx_t, expected)


# (kernel, stride, padding (top, bottom), (left, right), H, W, Cin, Cout)
CONVS = [(3, 1, (1, 1), (1, 1), 9, 9, 4, 5), (3, 2, (1, 1), (1, 1), 9, 8, 3, 6),
         (1, 2, (0, 0), (0, 0), 8, 7, 5, 4), (7, 2, (3, 3), (3, 3), 11, 12, 3, 4),
         (3, 2, (1, 0), (0, 2), 10, 9, 2, 3), (3, 2, (1, 1), (1, 1), 7, 7, 32, 8)]


def _conv(fn, x, w, k, s, pt, pl):
  return fn(x, w, (s, s), (pt, pl), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize("k,s,pt,pl,h,w,cin,cout", CONVS)
def test_conv_grads_match_plain_and_torch(k, s, pt, pl, h, w, cin, cout):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((3, h, w, cin)).astype(np.float32))
  wt = jnp.asarray(rng.standard_normal((k, k, cin, cout)).astype(np.float32))
  plain = lambda x, w: _conv(lax.conv_general_dilated, x, w, k, s, pt, pl)
  # the patch GEMM itself, also where `conv_general_dilated` would keep XLA's own (small Cin)
  fast = lambda x, w: fg._conv_fast(x, w, (s, s), (pt, pl), lax.Precision.HIGHEST)
  if fg.patch_gemm_wins(wt.shape, (s, s)):
    assert "custom_vjp" in str(jax.make_jaxpr(
        lambda x, w: _conv(fg.conv_general_dilated, x, w, k, s, pt, pl))(x, wt))
  y = plain(x, wt)
  np.testing.assert_array_equal(jax.jit(fast)(x, wt), jax.jit(plain)(x, wt))
  g = jnp.asarray(rng.standard_normal(y.shape).astype(np.float32))
  vjp = lambda f, x, w, g: jax.jit(lambda x, w, g: jax.vjp(f, x, w)[1](g))(x, w, g)
  dx, dw = vjp(fast, x, wt, g)
  mag_x, mag_w = vjp(fast, jnp.abs(x), jnp.abs(wt), jnp.abs(g))   # Σ |terms|
  px, pw = vjp(plain, x, wt, g)
  assert_close_ulps(dw, pw, magnitude=mag_w, ulps=ULPS, err_msg="dw fast vs jax.grad")
  assert_close_ulps(dx, px, magnitude=mag_x, ulps=ULPS, err_msg="dx fast vs jax.grad")
  if pt[0] == pt[1] and pl[0] == pl[1]:        # torch pads symmetrically
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_()
    wtt = torch.from_numpy(np.asarray(wt).transpose(3, 2, 0, 1).copy()).requires_grad_()
    yt = torch.nn.functional.conv2d(xt, wtt, stride=s, padding=(pt[0], pl[0]))
    yt.backward(torch.from_numpy(np.asarray(g).transpose(0, 3, 1, 2).copy()))
    assert_close_ulps(dw, wtt.grad.numpy().transpose(2, 3, 1, 0), magnitude=mag_w, ulps=ULPS,
                      err_msg="dw fast vs torch")
    assert_close_ulps(dx, xt.grad.numpy().transpose(0, 2, 3, 1), magnitude=mag_x, ulps=ULPS,
                      err_msg="dx fast vs torch")


def test_conv_falls_back_to_the_plain_op_outside_its_case():
  x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 2, 4))
  kw = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"))
  for args in [dict(padding="SAME", feature_group_count=2), dict(padding=((1, 1), (1, 1)),
               rhs_dilation=(2, 2), feature_group_count=2)]:
    jaxpr = str(jax.make_jaxpr(lambda x, w: fg.conv_general_dilated(x, w, (1, 1), **args,
                                                                     **kw))(x, w))
    assert "custom_vjp" not in jaxpr


def test_switch_order_and_parsing(monkeypatch):
  monkeypatch.delenv(fg.ENV, raising=False)
  backend = jax.default_backend()
  for op in fg.OPS:
    assert fg.enabled(op) == fg.DEFAULTS.get(backend, {}).get(op, False)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert not any(fg.enabled(op) for op in fg.OPS)            # accelerators: XLA's own
  monkeypatch.setenv(fg.ENV, "max_pool")
  assert fg.enabled("max_pool") and not fg.enabled("conv")
  with fg.override(False):
    assert not fg.enabled("max_pool")
    assert fg.enabled("max_pool", flag=True)                 # an explicit flag wins
    with fg.override(["conv"]):
      assert fg.enabled("conv") and not fg.enabled("max_pool")
  monkeypatch.setenv(fg.ENV, "off")
  assert not fg.enabled("max_pool", flag="auto")
  monkeypatch.setenv(fg.ENV, "1")
  assert fg.enabled("conv")
  with pytest.raises(ValueError, match="unknown op"):
    fg.enabled("max_pool", flag="maxpool")
  with pytest.raises(ValueError, match="unknown op"):
    fg.override("avg_pool").__enter__()


def _resnet_loss(model, x, labels):
  def loss(params, batch_stats):
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                            mutable=["batch_stats"])
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
  return loss


def test_switch_off_is_the_plain_model_and_on_gives_the_same_gradient():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.random((4, 40, 40, 3), np.float32))
  labels = jnp.asarray(rng.integers(0, 5, 4))
  off, on = (resnet.resnet18(num_classes=5, width=16, fast_grads=f) for f in (False, True))
  variables = off.init(jax.random.key(0), x, train=False)
  jaxpr_off = str(jax.make_jaxpr(jax.grad(_resnet_loss(off, x, labels)))(
      variables["params"], variables["batch_stats"]))
  assert "custom_vjp" not in jaxpr_off and "select_and_scatter" in jaxpr_off
  grads = [jax.jit(jax.grad(_resnet_loss(m, x, labels)))(variables["params"],
                                                         variables["batch_stats"])
           for m in (off, on)]
  # Train-mode BatchNorm makes these gradients ill-conditioned (tests/nn/test_resnet.py): the
  # summation-order noise of the weight gradients is amplified; measured ≤ 40 eps32 of each
  # tensor's largest entry; allowed 400 (a wrong tap or tie is of the order of the entries).
  flat_off, flat_on = (jax.tree_util.tree_leaves_with_path(g) for g in grads)
  for (path, a), (_, b) in zip(flat_off, flat_on):
    assert_close_ulps(b, a, magnitude=float(jnp.max(jnp.abs(a))), ulps=400,
                      err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------------------------------------- gelu


def test_gelu_erf_form_matches_jax_and_torch_forward_and_gradient():
  """torch's erf form, jax.nn.gelu's erfc form and torch itself against the float64 truth,
  forward and gradient, on −12…12 (tails included): each within 8 eps·max(|y|, 1) + 4 eps·|x|
  (the second term: the erf form's 1 + erf cancels for x ≪ 0, torch's too). A wrong form (the
  tanh approximation) is ~1e-3 off and fails that bound."""
  import math
  import torch
  x = np.concatenate([np.linspace(-12, 12, 4001),
                      np.random.default_rng(0).normal(0, 3, 20000)]).astype(np.float32)
  x64 = x.astype(np.float64)
  erf64 = np.vectorize(math.erf)(x64 / math.sqrt(2.0))
  y64 = 0.5 * x64 * (1.0 + erf64)
  d64 = 0.5 * (1.0 + erf64) + x64 * np.exp(-0.5 * x64 ** 2) / math.sqrt(2.0 * math.pi)
  eps = float(np.finfo(np.float32).eps)
  tol = lambda ref: 8 * eps * np.maximum(np.abs(ref), 1.0) + 4 * eps * np.abs(x64)
  grad = lambda f: np.asarray(jax.vmap(jax.grad(f))(jnp.asarray(x)), np.float64)
  xt = torch.from_numpy(x).requires_grad_(True)
  yt = torch.nn.functional.gelu(xt)
  yt.sum().backward()
  cases = {"erf form (ours)": (np.asarray(fg.gelu_erf(jnp.asarray(x))), grad(fg.gelu_erf)),
           "jax.nn.gelu": (np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=False)),
                           grad(lambda a: jax.nn.gelu(a, approximate=False))),
           "torch": (yt.detach().numpy(), xt.grad.numpy())}
  for name, (y, d) in cases.items():
    ey, ed = np.abs(y - y64), np.abs(d - d64)
    assert np.all(ey <= tol(y64)), (name, "forward", ey.max(), x[np.argmax(ey / tol(y64))])
    assert np.all(ed <= tol(d64)), (name, "gradient", ed.max(), x[np.argmax(ed / tol(d64))])
  wrong = np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=True))
  assert not np.all(np.abs(wrong - y64) <= tol(y64))


def test_gelu_switch_off_is_jax_nn_gelu_bit_for_bit():
  from jaxaffect.nn import layers
  x = jnp.asarray(np.random.default_rng(1).normal(0, 3, (64, 33)).astype(np.float32))
  act = layers.get_activation("gelu")
  with fg.override(False):
    off = jax.jit(lambda a: act(a))(x)
  np.testing.assert_array_equal(
      np.asarray(off), np.asarray(jax.jit(lambda a: jax.nn.gelu(a, approximate=False))(x)))
  with fg.override(["gelu"]):
    on = jax.jit(lambda a: act(a))(x)
  np.testing.assert_array_equal(np.asarray(on), np.asarray(jax.jit(fg.gelu_erf)(x)))


# ------------------------------------------------------------------------------------ batch norm


@pytest.mark.parametrize("shape", [(4, 9, 7, 6), (3, 5, 16), (2, 3, 4, 5, 8)])
def test_batch_norm_closed_form_backward_matches_autodiff_and_torch(shape):
  """The `batch_norm` switch: same forward and running statistics as the plain BatchNorm, and
  gradients w.r.t. x, scale and bias equal to autodiff's and to torch's (f32, ulps of Σ|terms|).
  A non-zero input mean (3) makes a wrong centring term visible."""
  import torch
  from jaxaffect.nn.layers import BatchNorm
  rng = np.random.default_rng(7)
  c = shape[-1]
  x = jnp.asarray((rng.standard_normal(shape) * 2 + 3).astype(np.float32))
  g = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
  scale = jnp.asarray(rng.uniform(0.5, 1.5, c).astype(np.float32))
  bias = jnp.asarray(rng.standard_normal(c).astype(np.float32))
  stats = {"mean": jnp.zeros(c), "var": jnp.ones(c)}

  def run(flag, x, scale, bias, g):
    bn = BatchNorm(use_running_average=False, fast_grads=flag)

    def f(x, scale, bias):
      y, upd = bn.apply({"params": {"scale": scale, "bias": bias}, "batch_stats": stats}, x,
                        mutable=["batch_stats"])
      return y, upd["batch_stats"]
    y, new = f(x, scale, bias)
    _, pull = jax.vjp(lambda *a: f(*a)[0], x, scale, bias)
    return y, new, pull(g)

  on = jax.jit(lambda *a: run(["batch_norm"], *a))(x, scale, bias, g)
  off = jax.jit(lambda *a: run(False, *a))(x, scale, bias, g)
  np.testing.assert_allclose(np.asarray(on[0]), np.asarray(off[0]), rtol=0, atol=4e-6)
  for k in ("mean", "var"):
    np.testing.assert_allclose(np.asarray(on[1][k]), np.asarray(off[1][k]), rtol=1e-6)
  # Σ |terms| of each gradient (float64): dx = scale·rstd·(g − mean(g) − x̂·mean(g·x̂)); sums.
  x64, g64 = np.asarray(x, np.float64), np.asarray(g, np.float64)
  axes = tuple(range(x.ndim - 1))
  xc = x64 - x64.mean(axes)
  rstd = 1 / np.sqrt((xc ** 2).mean(axes) + 1e-5)
  xhat = xc * rstd
  mag = (np.abs(np.asarray(scale, np.float64)) * rstd
         * (np.abs(g64) + np.abs(g64).mean(axes) + np.abs(xhat) * np.abs(g64 * xhat).mean(axes)),
         np.abs(g64 * xhat).sum(axes), np.abs(g64).sum(axes))
  for name, a, b, m in zip(("dx", "dscale", "dbias"), on[2], off[2], mag):
    assert_close_ulps(a, b, magnitude=m, ulps=ULPS * 4, err_msg=f"{name} closed form vs autodiff")
  # torch: channels first
  perm = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
  xt = torch.from_numpy(np.asarray(x).transpose(perm).copy()).requires_grad_()
  st = torch.from_numpy(np.asarray(scale)).requires_grad_()
  bt = torch.from_numpy(np.asarray(bias)).requires_grad_()
  yt = torch.nn.functional.batch_norm(xt, None, None, st, bt, training=True, eps=1e-5)
  yt.backward(torch.from_numpy(np.asarray(g).transpose(perm).copy()))
  inv = tuple(np.argsort(perm))
  np.testing.assert_allclose(np.asarray(on[0]), yt.detach().numpy().transpose(inv), atol=2e-5)
  for name, a, ref, m in (("dx", on[2][0], xt.grad.numpy().transpose(inv), mag[0]),
                          ("dscale", on[2][1], st.grad.numpy(), mag[1]),
                          ("dbias", on[2][2], bt.grad.numpy(), mag[2])):
    assert_close_ulps(a, ref, magnitude=m, ulps=ULPS * 4, err_msg=f"{name} closed form vs torch")


def test_batch_norm_train_refuses_scale_and_bias_of_different_dtypes():
  """The closed-form backward returns both parameter cotangents in scale's dtype."""
  x = jnp.ones((4, 3))
  with pytest.raises(TypeError, match="scale is float32 but bias is bfloat16"):
    fg.batch_norm_train(x, jnp.ones(3), jnp.zeros(3, jnp.bfloat16), 1e-5)
