"""FrameResNet export = torchvision resnet18 (width 64) trunk + Linear heads: the exported state dict
loads strictly into that torch model, which reproduces the verification sample; import round trip."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchvision

from jaxaffect import interop
from jaxaffect.models.frame_resnet import FrameResNet


class _TorchFrameResNet(torch.nn.Module):
  def __init__(self, num_expr=8, num_au=12):
    super().__init__()
    self.trunk = torchvision.models.resnet18()
    self.trunk.fc = torch.nn.Identity()
    self.va_head = torch.nn.Linear(512, 2)
    self.expr_head = torch.nn.Linear(512, num_expr)
    self.au_head = torch.nn.Linear(512, num_au)

  def forward(self, x):
    f = self.trunk(x)
    return torch.cat([torch.tanh(self.va_head(f)), self.expr_head(f), self.au_head(f)], 1)


def test_export_loads_into_torchvision_and_reproduces_the_sample(tmp_path):
  m = FrameResNet(num_expr=8)
  v = m.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False)
  # Non-trivial BatchNorm statistics, so that the running stats mapping is exercised.
  _, upd = m.apply(v, jax.random.uniform(jax.random.key(1), (4, 32, 32, 3)), train=True,
                   mutable=["batch_stats"])
  v = {"params": v["params"], **upd}
  info = interop.export("frame_resnet", m, v, str(tmp_path / "f.safetensors"), input_shape=(48, 48))
  sd = interop.load_state_dict_file(info["weights"])
  tm = _TorchFrameResNet().eval()
  trunk = {k: torch.from_numpy(np.asarray(x)) for k, x in sd.items() if "_head." not in k}
  tm.trunk.load_state_dict(trunk, strict=True)            # plain torchvision keys (no fc)
  tm.load_state_dict({**{"trunk." + k: x for k, x in trunk.items()},
                      **{k: torch.from_numpy(np.asarray(x)) for k, x in sd.items()
                         if "_head." in k}}, strict=True)
  ref = np.load(info["verify"])
  with torch.no_grad():
    out = tm(torch.from_numpy(ref["input"])).numpy()
  np.testing.assert_allclose(out, ref["output"], atol=2e-5, rtol=1e-4)
  assert out.shape == (2, 2 + 8 + 12)
  back = interop.from_torch_state_dict("frame_resnet", sd, v)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(v)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
