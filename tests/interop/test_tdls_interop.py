"""TDLS ↔ our own torch layout (jaxaffect/interop/tdls.py; the paper has no public code).

* Export of a small TDLS (32 px, patch 2, widths 16-128, depths 1/1/2/2, window 4; random
  parameters, the drawn reference points) for modes tdls, rp, fl and swin: the state dict loads
  with `strict=True` into an independent torch TDLS (tests/interop/torch_tdls_ref.py: timm's
  Swin window blocks + `TorchDLA` of tests/nn/test_deformable.py under our key names) which
  reproduces the verification sample's VA; the export snippet (its own torch module) runs and
  reproduces it too; the import is the exact inverse, and fills the task's training state
  (momentum copy = the imported backbone/proj, empty queue).
  Measured max |ours − torch| (VA in (−1, 1), batch 2), reference / snippet: tdls 5.1e-7 /
  6.0e-7, rp 5.7e-7 / 5.1e-7, fl 6.3e-7 / 8.6e-7, swin 2.5e-7 / 2.5e-7 (≤ 7.3 eps32); allowed
  64 eps32 = 7.6e-6. Zeroing the torch offset network moves VA by 0.09 (checked > 1e-3); q and k
  swapped in the table by 0.04, the snippet without the paper's trailing ReLU by 0.11.
* ImageNet Swin-T (timm `swin_tiny_patch4_window7_224`, random init, no download) into a full-size
  TDLS (224 px, Swin-T, deformable blocks at stage 3 blocks 1/3/5 and stage 4 block 1): window
  blocks equal exactly, the deformable blocks' q/k/v = the qkv row blocks, out = proj, norms and
  MLP copied; offsets, reference points and heads fresh; head.fc and the 4 tables dropped. The
  Microsoft layout (`interop.swin.timm_to_microsoft`) gives the same variables; `jaxaffect import`
  reaches it with `--partial` and names `--partial` without it.
* The ImageNet path in mode "swin" at the small size: our embedding = timm's pooled feature.
"""
from __future__ import annotations

import contextlib
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from flax import traverse_util

from jaxaffect import interop
from jaxaffect.interop import swin as swin_map
from jaxaffect.interop import tdls as tdls_map
from jaxaffect.models import tdls
from tests import tolerances
from tests.interop.torch_refs import random_variables
from tests.interop.torch_tdls_ref import RefTDLS

SMALL = dict(img_size=32, patch_size=2, embed_dim=16, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4),
             window_size=4, proj_hidden=8, proj_dim=4, tg_hidden=8)
ULPS = 64


def _flat(tree):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(
      jax.device_get(dict(tree)), sep="/").items()}


def _tree_equal(a, b):
  fa, fb = _flat(a), _flat(b)
  assert set(fa) == set(fb), sorted(set(fa) ^ set(fb))[:10]
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _small_model(mode, **kw):
  """A small TDLS, random parameters (`random_variables`) and its drawn reference points."""
  m = tdls.TDLS(mode=mode, **{**SMALL, **kw})
  x, lm = jnp.zeros((1, 32, 32, 3)), jnp.full((1, 68, 2), 16.0)
  shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), x, landmarks=lm))
  v = random_variables({"params": shapes["params"]}, seed=1)
  if "constants" in shapes:
    # jitted: an eager init dispatches every op of the model (30 s); the points are constants
    v["constants"] = jax.tree.map(np.asarray, jax.jit(
        lambda: m.init(jax.random.key(0), x)["constants"])())
  return m, v


def _torch_sd(sd):
  return {k: torch.from_numpy(np.array(a)) for k, a in sd.items()}


def _run_ref(ref_model, verify):
  with torch.no_grad():
    if "input_image" in verify:
      return ref_model(torch.from_numpy(verify["input_image"]),
                       torch.from_numpy(verify["input_landmarks"])).numpy()
    return ref_model(torch.from_numpy(verify["input"])).numpy()


def _close(actual, expected, err):
  tolerances.assert_close_ulps(actual, expected, magnitude=1.0, ulps=ULPS, dtype=np.float32,
                               err_msg=err)


@pytest.mark.parametrize("mode", ["tdls", "rp", "fl", "swin"])
def test_export_matches_torch_reference_snippet_and_round_trips(mode, tmp_path):
  m, v = _small_model(mode)
  info = interop.export("tdls", m, v, str(tmp_path / "tdls.safetensors"))
  sd = interop.load_state_dict_file(info["weights"])
  verify = np.load(info["verify"])
  kinds = tdls.block_kinds(m.depths, m.deformable_stages, m.placement, m.mode)
  deformable = [(i, j) for i, st in enumerate(kinds) for j, k in enumerate(st) if k == "deformable"]
  assert deformable == ([] if mode == "swin" else [(2, 1), (3, 1)])
  # the layout: timm keys, DAT names, the reference points as a buffer
  assert "layers.2.blocks.0.attn.qkv.weight" in sd and "head_va.weight" in sd
  assert ("layers.2.blocks.1.attn.proj_q.weight" in sd) == (mode != "swin")
  assert ("layers.3.blocks.1.attn.conv_offset.2.weight" in sd) == (mode == "tdls")
  assert ("layers.2.blocks.1.attn.ref_points" in sd) == (mode in ("tdls", "rp"))
  if mode in ("tdls", "rp"):
    np.testing.assert_array_equal(sd["layers.2.blocks.1.attn.ref_points"],
                                  v["constants"]["backbone"]["layers_2"]["blocks_1"]["attn"]
                                  ["ref_points"])

  ref = RefTDLS(deformable, mode, m.offsets, m.offset_range, m.proj_hidden, m.proj_dim,
                m.tg_hidden, img_size=m.img_size, patch_size=m.patch_size,
                embed_dim=m.embed_dim, depths=m.depths, num_heads=m.num_heads,
                window_size=m.window_size).eval()
  ref.load_state_dict(_torch_sd(sd), strict=True)
  out = _run_ref(ref, verify)
  assert out.shape == (2, 2) and 0.01 < np.abs(verify["output"]).max() < 0.99, verify["output"]
  assert np.abs(verify["output"][0] - verify["output"][1]).max() > 1e-3      # input-dependent
  _close(verify["output"], out, f"{mode}: ours vs the torch reference")
  if mode == "tdls":       # the offsets matter (else Eqs. 2-3 would go untested here)
    with torch.no_grad():
      for i, j in deformable:
        ref.layers[i].blocks[j].attn.conv_offset[2].weight.zero_()
        ref.layers[i].blocks[j].attn.conv_offset[2].bias.zero_()
    assert np.abs(_run_ref(ref, verify) - verify["output"]).max() > 1e-3

  # the snippet (its own torch TDLS, TORCH_SOURCE) loads the file and reproduces the sample
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    exec(compile(info["snippet"], "<snippet>", "exec"), {})
  diff = float(re.search(r"max \|diff\|: (\S+)", buf.getvalue()).group(1))
  assert diff <= ULPS * tolerances.eps(np.float32), buf.getvalue()

  # import: the exact inverse; the task's state filled (momentum = imported, empty queue)
  _tree_equal(interop.from_torch_state_dict("tdls", sd, v), v)
  like = {**v, "momentum": {"params": {k: v["params"][k] for k in ("backbone", "proj")}},
          "queue": tdls.queue_init(16, m.proj_dim)}
  back = interop.from_torch_state_dict("tdls", sd, like)
  _tree_equal(back, jax.tree.map(np.asarray, like))
  part = interop.from_torch_state_dict("tdls", sd, like, partial=True)
  assert "queue" not in part                   # --partial: the fresh (empty) queue is kept
  _tree_equal(part["momentum"], like["momentum"])
  if mode == "swin":                           # a swin-mode export is a timm Swin + heads
    t = timm.models.swin_transformer.SwinTransformer(
        num_classes=0, **{k: SMALL[k] for k in ("img_size", "patch_size", "embed_dim", "depths",
                                                "num_heads", "window_size")})
    t.load_state_dict(_torch_sd({k: a for k, a in sd.items()
                                 if not k.startswith(("head_va.", "proj.", "tg."))}), strict=True)


# ------------------------------------------------------------------------------------------------
# ImageNet Swin-T


@pytest.fixture(scope="module")
def swin_t():
  """timm `swin_tiny_patch4_window7_224` (random init, no download) state dict (numpy, no
  buffers), the shapes of a full-size TDLS of mode tdls, and its block kinds."""
  torch.manual_seed(0)
  t = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
  sd = {k: a.detach().numpy().copy() for k, a in t.state_dict().items()
        if not swin_map._is_buffer(k)}
  m = tdls.TDLS(mode="tdls")
  like = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  return sd, like, tdls_map.block_kinds_of(like)


def test_imagenet_swin_t_into_tdls(swin_t):
  sd, like, kinds = swin_t
  deformable = sorted(k for k, kind in kinds.items() if kind == "deformable")
  assert deformable == [(2, 1), (2, 3), (2, 5), (3, 1)] and len(kinds) == 12
  loaded, rep = tdls_map.load_imagenet_swin(sd, like)
  flat = _flat(loaded)
  p = lambda i, j, rest: flat[f"params/backbone/layers_{i}/blocks_{j}/{rest}"]
  for (i, j), kind in kinds.items():
    t = f"layers.{i}.blocks.{j}."
    for n in ("norm1", "norm2"):
      np.testing.assert_array_equal(p(i, j, f"{n}/scale"), sd[t + f"{n}.weight"])
      np.testing.assert_array_equal(p(i, j, f"{n}/bias"), sd[t + f"{n}.bias"])
    for n in ("fc1", "fc2"):
      np.testing.assert_array_equal(p(i, j, f"mlp/{n}/kernel"), sd[t + f"mlp.{n}.weight"].T)
      np.testing.assert_array_equal(p(i, j, f"mlp/{n}/bias"), sd[t + f"mlp.{n}.bias"])
    qkv_w, qkv_b = sd[t + "attn.qkv.weight"], sd[t + "attn.qkv.bias"]
    c = qkv_w.shape[1]
    if kind == "window":
      np.testing.assert_array_equal(p(i, j, "attn/qkv/kernel"), qkv_w.T)
      np.testing.assert_array_equal(p(i, j, "attn/out/kernel"), sd[t + "attn.proj.weight"].T)
      np.testing.assert_array_equal(p(i, j, "relative_position_bias_table"),
                                    sd[t + "attn.relative_position_bias_table"])
      continue
    for r, n in enumerate("qkv"):            # timm's qkv rows: [W_q; W_k; W_v]
      np.testing.assert_array_equal(p(i, j, f"attn/attn/{n}/kernel"), qkv_w[r * c:(r + 1) * c].T)
      np.testing.assert_array_equal(p(i, j, f"attn/attn/{n}/bias"), qkv_b[r * c:(r + 1) * c])
    np.testing.assert_array_equal(p(i, j, "attn/attn/out/kernel"), sd[t + "attn.proj.weight"].T)
    np.testing.assert_array_equal(p(i, j, "attn/attn/out/bias"), sd[t + "attn.proj.bias"])
  # every other timm tensor (patch embedding, merges, final norm) through the export's table
  merged = traverse_util.unflatten_dict(
      {tuple(k.split("/")): flat.get(k, np.zeros(s.shape, s.dtype))
       for k, s in traverse_util.flatten_dict(dict(like), sep="/").items()})
  back = tdls_map.to_state_dict(merged)
  for k, a in sd.items():
    if not k.startswith(("layers.", "head.")):
      np.testing.assert_array_equal(back[k], a, err_msg=k)
  # what stays fresh, what is dropped
  fresh = set(rep["fresh"])
  want = {k for k in traverse_util.flatten_dict(dict(like), sep="/")
          if "/offset/" in k or k.startswith("constants/") or
          k.startswith(("params/head_va", "params/proj/", "params/tg/"))}
  assert fresh == want and len(rep["copied"]) + len(fresh) == len(
      traverse_util.flatten_dict(dict(like)))
  assert rep["qkv_split"] == [f"layers.{i}.blocks.{j}" for i, j in deformable]
  assert rep["dropped"] == sorted(["head.fc.weight", "head.fc.bias", *(
      f"layers.{i}.blocks.{j}.attn.relative_position_bias_table" for i, j in deformable)])
  assert rep["layout"] == "timm"

  # Microsoft layout: the same variables
  ms = swin_map.timm_to_microsoft(sd, img_size=224, window_size=7)
  assert "layers.0.downsample.reduction.weight" in ms and "head.weight" in ms
  ms_loaded, ms_rep = tdls_map.load_imagenet_swin({"model": ms}, like)
  _tree_equal(ms_loaded, loaded)
  assert ms_rep["layout"] == "microsoft" and ms_rep["fresh"] == rep["fresh"]
  assert "layers.0.blocks.1.attn_mask" in ms_rep["dropped"]
  bad = dict(ms, **{"layers.0.blocks.1.attn_mask": np.roll(ms["layers.0.blocks.1.attn_mask"], 1)})
  with pytest.raises(ValueError, match="attn_mask differs"):
    tdls_map.load_imagenet_swin(bad, like)

  # through the registry (`jaxaffect import --partial`), with the task's momentum copy
  like_task = {**like, "momentum": {"params": {k: like["params"][k] for k in ("backbone", "proj")}}}
  via = interop.from_torch_state_dict("tdls", ms, like_task, partial=True)
  _tree_equal({"params": via["params"]}, loaded)
  _tree_equal(via["momentum"], {"params": {"backbone": loaded["params"]["backbone"]}})
  with pytest.raises(KeyError, match="--partial"):
    interop.from_torch_state_dict("tdls", sd, like_task)
  # a checkpoint of other depths is refused, naming the blocks
  short = {k: a for k, a in sd.items() if not k.startswith("layers.2.blocks.5.")}
  with pytest.raises(KeyError, match=r"model only \[\(2, 5\)\]"):
    tdls_map.load_imagenet_swin(short, like)


def test_imagenet_path_swin_mode_equals_timm():
  """Mode "swin" at the small size: a timm Swin checkpoint (with its classifier) imported through
  the ImageNet path gives our embedding = timm's pooled feature (the path is a working Swin)."""
  torch.manual_seed(1)
  geo = {k: SMALL[k] for k in ("img_size", "patch_size", "embed_dim", "depths", "num_heads",
                               "window_size")}
  t = timm.models.swin_transformer.SwinTransformer(num_classes=5, **geo).eval()
  with torch.no_grad():                         # non-trivial norms
    for name, a in t.named_parameters():
      if "norm" in name:
        a.add_(0.1 * torch.randn_like(a))
  sd = {k: a.detach().numpy().copy() for k, a in t.state_dict().items()}
  m, v = _small_model("swin")
  loaded, rep = tdls_map.load_imagenet_swin(sd, v)
  assert rep["dropped"] == ["head.fc.bias", "head.fc.weight"] and not rep["qkv_split"]
  assert set(rep["fresh"]) == {k for k in _flat(v) if not k.startswith("params/backbone/")}
  params = {**v["params"], "backbone": loaded["params"]["backbone"]}
  x = np.random.default_rng(2).random((2, 32, 32, 3), dtype=np.float32)
  ours = jax.jit(lambda prm, a: m.apply({"params": prm}, a, method=tdls.TDLS.embed))(params, x)
  xt = (torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        - torch.tensor(tdls.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
            tdls.IMAGENET_STD).view(1, 3, 1, 1)
  with torch.no_grad():
    ref = t.forward_head(t.forward_features(xt), pre_logits=True).numpy()
  scale = float(np.abs(ref).max())
  assert scale > 0.1
  tolerances.assert_close_ulps(np.asarray(ours), ref, magnitude=scale, ulps=ULPS,
                               dtype=np.float32, err_msg="embed vs timm")
