"""A model is a module found by convention (issue 11, item 1): a tiny model package written to a
temporary directory — not a file of jaxaffect touched — trains, evaluates and exports through the
trainer, `jaxaffect eval` and `jaxaffect export`, with its own PyTorch mapping; its export loads
into an equivalent torch module and reproduces the verification sample."""
from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
import torch

from jaxaffect import cli, interop
from jaxaffect.errors import UserError
from jaxaffect.models import registry
from jaxaffect.train import loop

PACKAGE = {
    "__init__.py": "",
    "nomap.py": "from jaxaffect.nn.resnet import ResNet as Model\n",
    "tiny.py": '''
        """A toy clip classifier: mean and std colour of the clip -> MLP."""
        from typing import Any

        import flax.linen as nn
        import jax.numpy as jnp
        import numpy as np

        from jaxaffect.interop.mapping import ModelMapping, linear


        class Model(nn.Module):
          num_classes: int = 7
          hidden: int = 16
          dtype: Any = jnp.float32

          @nn.compact
          def __call__(self, video, train: bool = False):
            x = jnp.concatenate([video.mean(axis=(1, 2, 3)), video.std(axis=(1, 2, 3))], -1)
            x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
            return nn.Dense(self.num_classes, name="fc")(x)


        def _example_input(module, variables, batch, rng, input_shape=None):
          x = rng.random((batch, 2, 8, 8, 3), dtype=np.float32)
          return x, x


        def _snippet(weights, verify, module):
          return "# torch.nn.Sequential(Linear(6, hidden), ReLU(), Linear(hidden, classes))"


        def torch_mapping():
          return ModelMapping(name="tiny", rules=tuple(linear("hidden", "hidden") +
                                                       linear("fc", "fc")),
                              example_input=_example_input, snippet=_snippet)
    ''',
}

CONFIG = '''
    import ml_collections
    from configs import common
    from jaxaffect.data import parts


    def get_config(arg=None):
      c = common.base_config()
      c.model_name = "toyaffect_pkg.tiny"      # a model outside jaxaffect, by module path
      c.model = ml_collections.ConfigDict(dict(num_classes=7, hidden=16))
      c.task = ml_collections.ConfigDict(dict(name="clip_classification", num_classes=7))
      c.data = parts.data_config(
          dict(name="synthetic", num_train=64, num_eval=32, video_frames=4, seed=0, pose=0.3,
               occlusion=0.0),
          dict(name="former_dfer", num_segments=2, duration=1, hflip=False),
          image_size=32, num_classes=7, class_names=("Happy", "Sad", "Neutral", "Angry",
                                                     "Surprise", "Disgust", "Fear"))
      c.optim = ml_collections.ConfigDict(dict(name="adamw", lr=3e-2, weight_decay=0.0,
                                               schedule="constant", warmup_epochs=0))
      c.batch_size = 16
      c.num_steps = 60
      c.eval_every_steps = 30
      c.log_every_steps = 10
      c.checkpoint.async_save = False
      c.lock()
      return c
'''


@pytest.fixture()
def toy_package(tmp_path, monkeypatch):
  pkg = tmp_path / "toyaffect_pkg"
  pkg.mkdir()
  for name, text in PACKAGE.items():
    (pkg / name).write_text(textwrap.dedent(text))
  (tmp_path / "toy_config.py").write_text(textwrap.dedent(CONFIG))
  monkeypatch.syspath_prepend(str(tmp_path))
  return tmp_path


def test_a_model_package_outside_jaxaffect_trains_evaluates_and_exports(toy_package, capsys):
  from jaxaffect import config_loader
  config = config_loader.load(str(toy_package / "toy_config.py"))
  wd = str(toy_package / "run")
  ev = loop.train(config, wd)
  rows = [json.loads(x) for x in open(os.path.join(wd, "tensorboard", "metrics.jsonl"))]
  # It trains (the training loss goes down); the toy's colour statistics are not meant to classify
  # expressions well, so no held-out threshold is claimed for it.
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses) == 6 and losses[-1] < losses[0] - 0.05, losses
  assert {r["step"] for r in rows if "eval/uar" in r} == {30, 60}
  assert cli.main(["eval", "--workdir", wd, "--json"]) == 0
  got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert got["step"] == 60 and got["war"] == pytest.approx(ev["war"])
  out = str(toy_package / "tiny.pth")
  assert cli.main(["export", "--checkpoint", wd, "--out", out]) == 0
  sd = torch.load(out, weights_only=True)
  assert sorted(sd) == ["fc.bias", "fc.weight", "hidden.bias", "hidden.weight"]
  ref = np.load(interop.verify_path(out))
  net = torch.nn.Sequential()
  net.add_module("hidden", torch.nn.Linear(6, 16))
  net.add_module("relu", torch.nn.ReLU())
  net.add_module("fc", torch.nn.Linear(16, 7))
  net.load_state_dict(sd, strict=True)
  x = torch.from_numpy(ref["input"])
  feats = torch.cat([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3), correction=0)], -1)
  with torch.no_grad():
    np.testing.assert_allclose(net(feats).numpy(), ref["output"], rtol=1e-5, atol=1e-5)


def test_the_package_s_models_are_found_without_a_table(toy_package):
  assert {"abaw_tcn", "est", "former_dfer", "frame_resnet", "resnet"} <= set(registry.available())
  assert set(registry.available("bench_model")) == {"abaw_tcn", "est", "former_dfer", "mae",
                                                    "vit_frames"}
  from jaxaffect.models import tasks
  assert tasks.by_name("frame_labels") is tasks.FrameLabelsTask
  with pytest.raises(UserError, match=r"model 'nope' \(config.model_name\): no module "
                                      r"'jaxaffect.models.nope'"):
    registry.model_module("nope")
  with pytest.raises(UserError, match="config.task.name='nope': known tasks"):
    tasks.by_name("nope")
  with pytest.raises(UserError, match="model 'toyaffect_pkg.nomap' has no PyTorch mapping"):
    registry.torch_mapping("toyaffect_pkg.nomap")
  with pytest.raises(UserError, match="model 'toyaffect_pkg.nomap' has no benchmark"):
    registry.bench_model("toyaffect_pkg.nomap")
