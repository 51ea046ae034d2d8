"""MGCT export/import (`jaxaffect.interop.mgct`): the layout is that of `TorchMGCT`, the independent
torch MGCT of tests/models/test_mgct.py (the paper has no code). Our parameters exported by the
rule table load into TorchMGCT strictly and give the same outputs (every level) within the
float32 tolerance of test_mgct.py, import back bit for bit, and the export's snippet reproduces
the verification sample."""
from __future__ import annotations

import contextlib
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxaffect import interop
from jaxaffect.models import mgct, registry
from tests.interop.torch_refs import random_variables
from tests.models.test_mgct import SMALL, _close, _inputs, _torch_model, load_into_torch

CASES = {
    "max_g4_L2": dict(),
    "concat_no_guidance": dict(summarise="concat", guidance=False),
    "avg_g3_L1_twice": dict(summarise="avg", group_size=3, num_levels=1, channels=(8, 16),
                            summarise_twice=True),
    "baseline_L0": dict(num_levels=0, channels=(8,), depth=3),
}


def _params(cfg, d_in, seed=0):
  """Random numpy parameters in the model's tree (no JAX init: fast)."""
  module = mgct.MGCT(**cfg)
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, d_in))))
  return module, random_variables(shapes, seed=seed)["params"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_loads_into_torch_mgct_strictly_and_imports_back(case):
  """Every layout: the exported state dict is, tensor for tensor, what test_mgct.py's own key
  table (`load_into_torch`, written independently) puts into TorchMGCT, and loads strictly;
  import gives our parameters back bit for bit. Outputs: compared on two layouts (test_mgct.py
  compares every layout's outputs and gradients through its own table)."""
  cfg = {**SMALL, **CASES[case]}
  module, params = _params(cfg, 12)
  sd = interop.to_torch_state_dict("mgct", {"params": params})
  ref_tm = _torch_model(cfg, 12)
  load_into_torch(ref_tm, params)
  ref_sd = ref_tm.state_dict()
  assert set(sd) == set(ref_sd)
  for k, v in sd.items():
    assert v.dtype == np.float32 and np.array_equal(v, ref_sd[k].numpy()), k
  tm = _torch_model(cfg, 12)
  tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  if case in ("max_g4_L2", "baseline_L0"):
    x, valid = _inputs(d=12)
    out = jax.jit(lambda p, a, m: module.apply({"params": p}, a, m))(
        params, jnp.asarray(x), jnp.asarray(valid, jnp.float32))
    with torch.no_grad():
      ref = tm.eval()(torch.from_numpy(x), torch.from_numpy(valid))
    for l, (o, r) in enumerate(zip(out["levels"], ref)):
      _close(o, r, f"{case} level {l}")
  back = interop.from_torch_state_dict("mgct", sd, {"params": params})
  flat = lambda t: jax.tree_util.tree_flatten_with_path(t)[0]
  assert [p for p, _ in flat(back["params"])] == [p for p, _ in flat(params)]
  for (p, a), (_, b) in zip(flat(back["params"]), flat(params)):
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b)), p


def test_mapping_is_the_model_modules_and_export_snippet_reproduces_the_sample(tmp_path):
  assert registry.torch_mapping("mgct") is mgct.torch_mapping()
  cfg = {**SMALL, "summarise": "concat"}
  module, params = _params(cfg, 10, seed=3)
  info = interop.export("mgct", module, {"params": params}, tmp_path / "m.safetensors",
                        input_shape=(37,))
  sample = np.load(info["verify"])
  assert sample["input"].shape == (2, 37, 10) and sample["output"].shape == (2, 37, 2)
  assert info["num_params"] == mgct.param_count(module, 10) and "TorchMGCT" in info["snippet"]
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  buf = io.StringIO()
  cwd = os.getcwd()
  try:
    os.chdir(root)                               # the snippet runs from a jaxaffect checkout
    with contextlib.redirect_stdout(buf):
      exec(compile(info["snippet"], "<snippet>", "exec"), {})
  finally:
    os.chdir(cwd)
  diff = float(buf.getvalue().split("max |diff|:")[1])
  assert diff <= 1000 * np.finfo(np.float32).eps * np.max(np.abs(sample["output"])), diff
  # a wrong layout is refused on import
  sd = interop.load_state_dict_file(info["weights"])
  sd.pop("heads.0.bias")
  with pytest.raises(KeyError, match="heads.0.bias|head_0"):
    interop.from_torch_state_dict("mgct", sd, {"params": params})
