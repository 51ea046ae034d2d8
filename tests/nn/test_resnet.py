"""jaxaffect.nn.ResNet-18 == timm `resnet18` (torchvision layout) loaded with our exported weights:
forward, input and all-parameter gradients, BatchNorm running statistics; eval and train mode."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch

from jaxaffect import interop
from jaxaffect.nn import resnet
from tests.interop.torch_refs import (assert_close, assert_grads_match, jit,
                                      load_numpy_state_dict, random_variables)

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def models():
  model = resnet.resnet18(num_classes=NUM_CLASSES)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)),
                                             train=False))
  variables = random_variables(shapes, seed=0)
  tmodel = timm.create_model("resnet18", pretrained=False, num_classes=NUM_CLASSES)
  load_numpy_state_dict(tmodel, interop.to_torch_state_dict("resnet", variables))  # strict
  return model, variables, tmodel


@pytest.mark.parametrize("train", [False, True])
def test_resnet18_matches_timm_forward_and_grads(models, train):
  model, variables, tmodel = models
  rng = np.random.default_rng(1)
  x = rng.random((2, 48, 48, 3), dtype=np.float32)
  w = rng.normal(size=(2, NUM_CLASSES)).astype(np.float32)

  @jit
  def f(params, x):
    def loss(params, x):
      out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                        train=train, mutable=["batch_stats"] if train else False)
      y, stats = out if train else (out, None)
      return jnp.sum(y * w), (y, stats)
    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)

  (_, (y, stats)), (gp, gx) = f(variables["params"], x)

  tmodel.train(train)
  tmodel.zero_grad(set_to_none=True)
  sd0 = {k: v.clone() for k, v in tmodel.state_dict().items()}
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  yt = tmodel(xt)
  (yt * torch.from_numpy(w)).sum().backward()

  assert np.abs(np.asarray(y)).max() > 1e-2          # non-trivial outputs
  # Train mode: layer4's BatchNorm normalises over only 2·2·2 values per channel, which makes
  # its gradients ill-conditioned; float32 agreement is ~1e-5 of the largest entry there (measured:
  # ≤ 130 eps32 of a tensor's largest entry for the parameters, 62 for the input gradient, which
  # flows back through the same BatchNorm: at 1e-5 = 84 eps32 it was within 1.4x of its noise,
  # which another CPU's convolution kernels can exceed). 5e-5 = 420 eps32; a real error (padding,
  # stride, statistics over the wrong axes) is orders of magnitude larger.
  atol_frac = 5e-5 if train else 1e-5
  assert_close(y, yt.detach().numpy(), err="logits")
  assert_close(gx, xt.grad.numpy().transpose(0, 2, 3, 1), err="d input", atol_frac=atol_frac)
  n = assert_grads_match(tmodel, interop.to_torch_state_dict("resnet", {"params": gp}),
                         atol_frac=atol_frac)
  assert n == 62
  if train:   # running statistics after one step (torch: unbiased variance, momentum 0.1)
    new_sd = interop.to_torch_state_dict("resnet", {"params": variables["params"], **stats})
    tsd = tmodel.state_dict()
    for k in [k for k in tsd if k.endswith(("running_mean", "running_var"))]:
      assert not np.allclose(tsd[k].numpy(), sd0[k].numpy()), k
      assert_close(new_sd[k], tsd[k].numpy(), err=k)
  tmodel.load_state_dict(sd0)


def test_resnet18_odd_input_size_matches_timm(models):
  """Explicit symmetric paddings: odd, non-square inputs give torch's output sizes and values."""
  model, variables, tmodel = models
  x = np.random.default_rng(2).random((1, 37, 45, 3), dtype=np.float32)
  feats = jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  tmodel.eval()
  with torch.no_grad():
    ft = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  assert_close(feats, ft)


def test_width_variant_shapes():
  """`width` scales every stage (CPU smoke variants); torchvision's 64 is the default."""
  shapes = jax.eval_shape(lambda: resnet.resnet18(width=16, num_classes=None).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  p = shapes["params"]
  assert p["stem"]["conv1"]["kernel"].shape == (7, 7, 3, 16)
  assert p["layer4"]["block_0"]["downsample_conv"]["kernel"].shape == (1, 1, 64, 128)
  assert "downsample_conv" not in p["layer1"]["block_0"] and "fc" not in p
