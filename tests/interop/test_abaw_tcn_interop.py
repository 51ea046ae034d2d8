"""ABAW TCN export/import (`jaxaffect.interop.abaw_tcn`): the official ABAW6 key set (162 keys,
each weight-normed conv and PReLU under both of its names), export → import round trip through
files, the verification sample reproduced by the independent torch reference, alias-only and
`module.`-prefixed state dicts, a clear error when the two copies disagree, and the ABAW5
multi-stream layout (`temporal.<stream>.network`, `decoder`, `vhead`/`ahead`)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxaffect import interop
from jaxaffect.interop import abaw_tcn as abaw_map
from jaxaffect.models import abaw_tcn
from tests.interop import torch_abaw_ref as tref
from tests.interop.torch_refs import load_numpy_state_dict, random_variables

SMALL = dict(kernel_size=3, d_model=32, num_heads=4, num_layers=2, dim_feedforward=48)


def _shapes(module, dims):
  feats = {n: jax.ShapeDtypeStruct((1, 4, d), jnp.float32) for n, d in dims.items()}
  return jax.eval_shape(lambda f: module.init(jax.random.key(0), f, train=False), feats)


def _flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_abaw6_expr_state_dict_has_the_official_keys():
  module = abaw_tcn.abaw6_expr_model()
  shapes = _shapes(module, {"mae": 768})
  sd = interop.to_torch_state_dict("abaw_tcn", random_variables(shapes, seed=0))
  assert len(sd) == 162
  for i, (cin, c) in enumerate([(768, 768), (768, 256), (256, 128)]):
    p = f"temporal.network.{i}"
    assert sd[f"{p}.conv1.weight_v"].shape == (c, cin, 5)
    assert sd[f"{p}.conv1.weight_g"].shape == (c, 1, 1)
    for canon, alias in abaw_map.ALIASES.items():
      for leaf in (("weight",) if canon.startswith("relu") else ("weight_v", "weight_g", "bias")):
        assert sd[f"{p}.{canon}.{leaf}"] is sd[f"{p}.{alias}.{leaf}"]
    assert sd[f"{p}.relu.weight"].shape == (1,)
    assert (f"{p}.downsample.weight" in sd) == (cin != c)
  assert sd["encoder.conv1.weight"].shape == (512, 128, 1)
  assert sd["encoder.transformer_encoder.layers.7.self_attn.in_proj_weight"].shape == (1536, 512)
  assert sd["head.2.weight"].shape == (8, 256) and sd["head.1.num_batches_tracked"].shape == ()
  # The torch reference built like the official Model loads it strictly (same key set).
  ref = tref.TorchABAW([("mae", 768, (768, 256, 128))], [("head", 8)])
  assert set(ref.state_dict()) == set(sd)
  assert sum(p.numel() for p in ref.parameters()) == 20_512_913


def test_export_import_round_trip_and_verification_sample(tmp_path):
  module = abaw_tcn.ABAWTCN(streams=(("mae", (24, 16)),), outputs=("va",), **SMALL)
  variables = random_variables(_shapes(module, {"mae": 20}), seed=1)
  info = interop.export("abaw_tcn", module, variables, tmp_path / "m.safetensors",
                        input_shape=(17,))
  sd = interop.load_state_dict_file(info["weights"])
  assert info["num_tensors"] == len(sd) and "model.model import Model" in info["snippet"]
  back = interop.from_torch_state_dict("abaw_tcn", sd, _shapes(module, {"mae": 20}))
  a, b = _flat(variables), _flat(back)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  ver = np.load(info["verify"])
  assert ver["input"].shape == (2, 17, 20) and ver["output"].shape == (2 * 17, 2)
  ref = tref.TorchABAW([("mae", 20, (24, 16))], [("head", 2)], k=3, d=32, layers=2, ff=48)
  load_numpy_state_dict(ref, sd)
  with torch.no_grad():
    out = ref.eval()({"mae": torch.from_numpy(ver["input"])}).numpy()
  np.testing.assert_allclose(out, ver["output"], rtol=1e-4, atol=1e-5)
  # .pth through torch, with DataParallel's `module.` prefix
  torch.save({"module." + k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
             tmp_path / "m.pth")
  back2 = interop.from_torch_state_dict("abaw_tcn",
                                        interop.load_state_dict_file(tmp_path / "m.pth"))
  for k, v in _flat(back2).items():
    np.testing.assert_array_equal(v, a[k], err_msg=k)


def test_import_accepts_either_name_and_rejects_disagreeing_copies():
  module = abaw_tcn.ABAWTCN(streams=(("mae", (12, 8)),), **SMALL)
  shapes = _shapes(module, {"mae": 10})
  variables = random_variables(shapes, seed=2)
  sd = interop.to_torch_state_dict("abaw_tcn", variables)
  only_alias = {k: v for k, v in sd.items() if not any(
      f".{c}." in k for c in ("conv1", "conv2", "relu1", "relu2")) or k.startswith("encoder")}
  assert "temporal.network.0.net.0.weight_v" in only_alias
  assert "temporal.network.0.conv1.weight_v" not in only_alias
  back = interop.from_torch_state_dict("abaw_tcn", only_alias, shapes)
  for k, v in _flat(back).items():
    np.testing.assert_array_equal(v, _flat(variables)[k], err_msg=k)
  only_canon = {k: v for k, v in sd.items() if ".net." not in k}
  interop.from_torch_state_dict("abaw_tcn", only_canon, shapes)
  bad = dict(sd)
  bad["temporal.network.1.net.4.weight_g"] = sd["temporal.network.1.conv2.weight_g"] + 1e-3
  with pytest.raises(ValueError, match=r"net\.4\.weight_g.*conv2\.weight_g.*different"):
    interop.from_torch_state_dict("abaw_tcn", bad, shapes)
  bad = dict(sd)
  bad["temporal.network.0.net.2.weight"] = np.array([0.9], np.float32)
  with pytest.raises(ValueError, match=r"relu1\.weight"):
    interop.from_torch_state_dict("abaw_tcn", bad, shapes)


def test_abaw5_multi_stream_split_heads_layout():
  dims = {"wav_base": 14, "emotion": 9}
  module = abaw_tcn.ABAWTCN(streams=(("wav_base", (16, 8)), ("emotion", (10, 6))),
                            outputs=("va",), va_heads="split", **SMALL)
  shapes = _shapes(module, dims)
  variables = random_variables(shapes, seed=3)
  sd = interop.to_torch_state_dict("abaw_tcn", variables)
  assert "temporal.wav_base.network.0.conv1.weight_v" in sd
  assert "temporal.emotion.network.1.net.4.bias" in sd
  assert "decoder.conv1.weight" in sd and not any(k.startswith("encoder.") for k in sd)
  assert sd["vhead.2.weight"].shape == (1, 16) and sd["ahead.2.weight"].shape == (1, 16)
  ref = tref.TorchABAW([("wav_base", 14, (16, 8)), ("emotion", 9, (10, 6))],
                       [("vhead", 1), ("ahead", 1)], k=3, d=32, layers=2, ff=48,
                       encoder_name="decoder")
  load_numpy_state_dict(ref, sd)                      # strict, the ABAW5 VA key layout
  back = interop.from_torch_state_dict("abaw_tcn", sd, shapes)
  for k, v in _flat(back).items():
    np.testing.assert_array_equal(v, _flat(variables)[k], err_msg=k)
  both = {**sd, "encoder.conv1.weight": sd["decoder.conv1.weight"]}
  with pytest.raises(KeyError, match="both"):
    interop.from_torch_state_dict("abaw_tcn", both, shapes)
