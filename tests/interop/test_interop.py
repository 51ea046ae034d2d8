"""jaxaffect.interop: key tables, round trips, export files and the verification sample."""
import contextlib
import io
import sys
import types

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from jaxaffect import interop
from jaxaffect.interop import mapping
from jaxaffect.models import former_dfer as fd
from jaxaffect.nn import resnet
from tests.interop.torch_refs import (TorchFormerDFER, assert_close, load_numpy_state_dict,
                                      random_variables)


def _fd_variables(model=None, x_shape=(1, 16, 112, 112, 3), seed=0):
  model = model or fd.FormerDFER()
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x_shape), train=False))
  return model, random_variables(shapes, seed)


def _tree_equal(a, b):
  fa, fb = mapping.flatten_variables(a), mapping.flatten_variables(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_former_dfer_keys_equal_official_layout():
  _, variables = _fd_variables()
  sd = interop.to_torch_state_dict("former_dfer", variables)
  ref_sd = TorchFormerDFER().state_dict()
  assert sd.keys() == ref_sd.keys() and len(sd) == 169          # reference_impls.md §1
  assert sum(k.endswith("num_batches_tracked") for k in sd) == 20
  for k, v in ref_sd.items():
    assert sd[k].shape == tuple(v.shape), k
  assert sd["s_former.layer1.0.bn1.num_batches_tracked"].dtype == np.int64
  assert sd["s_former.conv1.weight"].shape == (64, 3, 7, 7)                  # OIHW
  assert sd["t_former.spatial_transformer.layers.2.0.fn.fn.to_qkv.weight"].shape == (1536, 512)
  np.testing.assert_array_equal(                                             # (out, in) = kernel.T
      sd["fc.weight"], np.asarray(variables["params"]["fc"]["kernel"]).T)
  np.testing.assert_array_equal(
      sd["s_former.layer2.0.downsample.1.running_var"],
      variables["batch_stats"]["cs_former"]["layer2"]["block_0"]["downsample_bn"]["var"])


@pytest.mark.parametrize("name", ["former_dfer", "resnet"])
def test_round_trip_is_identity(name):
  if name == "former_dfer":
    _, variables = _fd_variables(fd.FormerDFER(num_spatial_layers=3), seed=1)
  else:
    m = resnet.resnet18(num_classes=3)
    variables = random_variables(jax.eval_shape(
        lambda: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)), seed=1)
  sd = interop.to_torch_state_dict(name, variables)
  _tree_equal(interop.from_torch_state_dict(name, sd, like_variables=variables), variables)
  _tree_equal(interop.from_torch_state_dict(name, sd), variables)              # structure from sd
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
  _tree_equal(interop.from_torch_state_dict(name, sd, like_variables=abstract), variables)
  dp = {"module." + k: torch.from_numpy(v) for k, v in sd.items()}          # DataParallel, tensors
  _tree_equal(interop.from_torch_state_dict(name, dp, like_variables=variables), variables)


def test_import_errors_name_the_problem():
  _, variables = _fd_variables(fd.FormerDFER(width=8, num_frames=2), x_shape=(1, 2, 32, 32, 3))
  sd = interop.to_torch_state_dict("former_dfer", variables)
  missing = {k: v for k, v in sd.items() if k != "fc.bias"}
  with pytest.raises(KeyError, match="missing.*params/fc/bias"):
    interop.from_torch_state_dict("former_dfer", missing, like_variables=variables)
  with pytest.raises(KeyError, match="unexpected torch keys.*s_former.extra.weight"):
    interop.from_torch_state_dict("former_dfer", {**sd, "s_former.extra.weight": np.zeros(1)})
  bad = dict(sd, **{"fc.weight": np.zeros((7, 65), np.float32)})
  with pytest.raises(ValueError, match=r"params/fc/kernel has shape \(65, 7\)"):
    interop.from_torch_state_dict("former_dfer", bad, like_variables=variables)
  with pytest.raises(KeyError, match="no torch mapping.*params/extra/kernel"):
    interop.to_torch_state_dict("former_dfer", {**variables, "params": {
        **variables["params"], "extra": {"kernel": np.zeros((2, 2))}}})
  from jaxaffect.errors import UserError
  with pytest.raises(UserError, match=r"model 'no_such_model'.*models here: \[.*'former_dfer'"):
    interop.to_torch_state_dict("no_such_model", variables)


def test_mha_packing_layout():
  """`in_proj_weight = [Wq; Wk; Wv]` with (out, in) rows; split back exactly."""
  rng = np.random.default_rng(0)
  p = {n: {"kernel": rng.normal(size=(6, 4)).astype(np.float32),
           "bias": rng.normal(size=4).astype(np.float32)} for n in ("q", "k", "v", "out")}
  rules = mapping.torch_mha("attn", "mha")
  sd = mapping.to_torch(rules, {"params": {"attn": p}})
  assert sd["mha.in_proj_weight"].shape == (12, 6)
  np.testing.assert_array_equal(sd["mha.in_proj_weight"][4:8], p["k"]["kernel"].T)
  np.testing.assert_array_equal(sd["mha.in_proj_bias"][8:], p["v"]["bias"])
  _tree_equal(mapping.from_torch(rules, sd), {"params": {"attn": p}})


def test_bfloat16_params_export_as_float32():
  variables = {"params": {"fc": {"kernel": np.ones((3, 2), ml_dtypes.bfloat16),
                                 "bias": np.zeros(2, ml_dtypes.bfloat16)}}}
  sd = mapping.to_torch(mapping.linear("fc", "fc"), variables)
  assert sd["fc.weight"].dtype == np.float32 and sd["fc.weight"].shape == (2, 3)


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
  """A width-64 Former-DFER at 32×32 px, 2 frames (the torch reference needs width 64)."""
  model, variables = _fd_variables(fd.FormerDFER(num_frames=2), x_shape=(1, 2, 32, 32, 3),
                                   seed=2)
  out = tmp_path_factory.mktemp("export") / "fd.safetensors"
  info = interop.export("former_dfer", model, variables, out, seed=3, batch=2)
  return model, variables, info


def test_export_writes_weights_and_verify_sample(small_export):
  model, variables, info = small_export
  assert info["format"] == "safetensors" and info["verify"].endswith("fd.safetensors.verify.npz")
  assert info["num_params"] == fd.num_params(variables["params"])
  sd = load_file(info["weights"])
  ref_sd = interop.to_torch_state_dict("former_dfer", variables)
  assert sd.keys() == ref_sd.keys() and info["num_tensors"] == len(sd)
  for k in sd:
    np.testing.assert_array_equal(sd[k], ref_sd[k], err_msg=k)
  ver = np.load(info["verify"])
  assert ver["input"].shape == (2, 2, 3, 32, 32) and ver["output"].shape == (2, 7)
  assert 0.0 <= ver["input"].min() and ver["input"].max() < 1.0
  # The torch reference loaded from the written file reproduces the sample's (JAX) outputs.
  ref = TorchFormerDFER(num_frames=2, num_patches=4).eval()
  load_numpy_state_dict(ref, sd)
  with torch.no_grad():
    yt = ref(torch.from_numpy(ver["input"])).numpy()
  assert_close(yt, ver["output"])


def test_export_snippet_runs_against_a_stand_in_official_module(small_export, monkeypatch):
  """Execute the returned snippet with `models.ST_Former.GenerateModel` provided by the test."""
  _, _, info = small_export
  fake = types.ModuleType("models.ST_Former")
  fake.GenerateModel = lambda: TorchFormerDFER(num_frames=2, num_patches=4)
  monkeypatch.setitem(sys.modules, "models", types.ModuleType("models"))
  monkeypatch.setitem(sys.modules, "models.ST_Former", fake)
  assert "NOTE: GenerateModel() only builds the official configuration" in info["snippet"]
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    exec(compile(info["snippet"], "<snippet>", "exec"), {})
  diff = float(buf.getvalue().strip().split(":")[-1])
  assert diff < 1e-4


def test_export_pth_and_checkpoint_loading(small_export, tmp_path):
  model, variables, _ = small_export
  info = interop.export("former_dfer", model, variables, tmp_path / "fd.pth", fmt="pth", batch=2)
  sd = torch.load(info["weights"], weights_only=True)
  assert sd["s_former.bn1.num_batches_tracked"].dtype == torch.int64
  assert "torch.load" in info["snippet"]
  # An official-style training checkpoint: DataParallel keys inside {"state_dict": ...}.
  ckpt = tmp_path / "ckpt.pth"
  torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in sd.items()}}, ckpt)
  loaded = interop.load_state_dict_file(ckpt)
  _tree_equal(interop.from_torch_state_dict("former_dfer", loaded, variables),
              jax.tree.map(np.asarray, variables))
  with pytest.raises(ValueError, match="fmt"):
    interop.export("former_dfer", model, variables, tmp_path / "x.bin", fmt="onnx")


def test_registry_and_official_config_detection():
  from jaxaffect.models import registry
  assert {"abaw_tcn", "est", "former_dfer", "frame_resnet", "resnet"} <= set(
      registry.available("torch_mapping"))
  from jaxaffect.interop import former_dfer as fd_map
  assert fd_map.is_official_config(fd.FormerDFER())
  assert not fd_map.is_official_config(fd.FormerDFER(num_spatial_layers=3))
  _, variables = _fd_variables(fd.FormerDFER(width=8, num_frames=2), x_shape=(1, 2, 64, 64, 3))
  assert fd_map.input_hw(variables) == (64, 64)


def test_safetensors_export_works_without_torch(small_export, tmp_path, monkeypatch):
  model, variables, _ = small_export
  monkeypatch.setitem(sys.modules, "torch", None)        # `import torch` now raises ImportError
  info = interop.export("former_dfer", model, variables, tmp_path / "w.safetensors", batch=2)
  sd = interop.load_state_dict_file(info["weights"])
  _tree_equal(interop.from_torch_state_dict("former_dfer", sd, variables),
              jax.tree.map(np.asarray, variables))
  with pytest.raises(ImportError, match="needs torch"):
    interop.export("former_dfer", model, variables, tmp_path / "w.pth", fmt="pth", batch=2)
  assert not (tmp_path / "w.pth").exists()
