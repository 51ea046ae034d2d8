"""vit_frames (issue 13 items 4 and 6): the fine-tuning ViT with per-frame heads.

* FSDP: (data 2, fsdp 4) on 8 simulated devices gives the parameters and losses of 1 device after 3
  AdamW steps (layer decay, label smoothing, drop path: the finetune_expr recipe at toy size), and
  parameters + optimizer state per device are <= 1/3 of replicated;
* the parameter paths of an MAE pretraining encoder (`encoder`, global_pool token, sin-cos table)
  line up with the fine-tune model's under the config's `init_from.keep`;
* the export equals timm's VisionTransformer + Linear heads (scanned encoder), and imports back;
* label smoothing equals torch `CrossEntropyLoss(label_smoothing=, ignore_index=-1)`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from jaxaffect import config_loader, interop
from jaxaffect.bench.plan import _tree_bytes
from jaxaffect.models import abaw_tcn, vit_frames
from jaxaffect.nn import vit as vit_lib
from jaxaffect.nn.vit import ViT
from jaxaffect.train import init_from, loop, mesh as mesh_lib
from tests import tolerances as tol

TOY = ["--config.data.image_size=16", "--config.model.patch_size=4", "--config.model.embed_dim=32",
       "--config.model.depth=2", "--config.model.num_heads=2", "--config.batch_size=8",
       "--config.model.outputs=[\"va\", \"expr\", \"au\"]", "--config.optim.warmup_epochs=0",
       "--config.optim.lr=0.001"]


def _config(variant="finetune_expr", extra=()):
  return config_loader.load(f"vit_frames:{variant},shards=/nowhere", TOY + list(extra))


def _batches(config, n, seed=0):
  r = np.random.default_rng(seed)
  b, s, a = config.batch_size, config.data.image_size, config.model.num_au
  for _ in range(n):
    yield {"image": r.integers(0, 256, (b, s, s, 3)).astype(np.uint8),
           "mask": np.ones(b, np.float32),
           "va": r.uniform(-1, 1, (b, 2)).astype(np.float32), "va_mask": np.ones(b, np.float32),
           "expr": r.integers(0, 8, b).astype(np.int32),
           "expr_mask": (r.random(b) > 0.2).astype(np.float32),
           "au": r.integers(0, 2, (b, a)).astype(np.float32), "au_mask": np.ones((b, a), np.float32)}


def _run(config, mesh, steps=3):
  s = loop.build(config, mesh=mesh, sources=loop.spec_sources(config))
  init_rng, step_rng = loop._rngs(config)
  losses = []
  with jax.set_mesh(mesh):
    state = s.init_fn(init_rng)
    for batch in _batches(config, steps):
      state, m = s.train_step(state, mesh_lib.global_batch_from_local(batch, mesh), step_rng)
      losses.append(float(mesh_lib.to_host(m).compute()["loss"]))
  return mesh_lib.to_host(state), losses, s


def test_fsdp_2x4_equals_one_device_and_shards_the_state():
  assert jax.device_count() == 8
  c1 = _config()
  state1, losses1, _ = _run(c1, mesh_lib.make_mesh(1, 1, devices=jax.devices()[:1]))
  c8 = _config(extra=["--config.mesh.data=2", "--config.mesh.fsdp=4"])
  state8, losses8, s8 = _run(c8, mesh_lib.make_mesh(2, 4))
  # every kernel (patch embed, qkv, out, fc1, fc2, heads) and its AdamW moments are sharded
  specs = {mesh_lib._path_str(p): sh.spec
           for p, sh in jax.tree_util.tree_leaves_with_path(s8.state_shardings)}
  kernels = [k for k in specs if k.endswith("kernel")]
  assert len(kernels) == 3 * (2 * 4 + 1 + 3)          # params, mu, nu x (2 blocks x 4 + patch + 3 heads)
  assert all("fsdp" in str(specs[k]) for k in kernels), [k for k in kernels if "fsdp" not in str(specs[k])]
  assert all(specs[k] == jax.sharding.PartitionSpec() for k in specs
             if k.endswith(("bias", "scale")))
  # same losses and parameters; float32 rounding of a different reduction order, through 3 AdamW
  # steps (an update is lr x m/sqrt(v): rounding of g moves it by a few eps of lr)
  tol.assert_close_ulps(losses8, losses1, magnitude=np.abs(losses1), ulps=64,
                        err_msg="losses")
  assert losses1[0] != losses1[-1]
  worst = 0.0
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state1["params"]),
                          jax.tree.leaves(state8["params"])):
    mag = np.abs(np.asarray(a)).max() + 3 * 1e-3
    tol.assert_close_ulps(np.asarray(b), np.asarray(a), magnitude=mag, ulps=256,
                          err_msg=jax.tree_util.keystr(path))
    worst = max(worst, float(np.abs(np.asarray(b) - np.asarray(a)).max() / mag / tol.eps()))
  print(f"FSDP 2x4 vs 1 device: losses {losses1} vs {losses8}; worst parameter diff "
        f"{worst:.1f} eps of its scale")
  # bytes per device of parameters + AdamW state: <= 1/3 of replicated at fsdp 4
  st = s8.abstract_state
  per_dev = (_tree_bytes(st["params"], s8.state_shardings["params"])
             + _tree_bytes(st["opt_state"], s8.state_shardings["opt_state"]))
  repl = _tree_bytes(st["params"]) + _tree_bytes(st["opt_state"])
  print(f"params+opt bytes per device at fsdp 4: {per_dev} of {repl} replicated "
        f"({per_dev / repl:.3f})")
  assert per_dev <= repl / 3


def _pretend_pretraining_variables(c, scan=None):
  """What an MAE pretraining checkpoint holds: encoder = ViT(global_pool token, sin-cos) named
  `encoder` (with its final `norm`), plus decoder parameters the fine-tune does not have."""
  m = c.model
  enc = ViT(img_size=m.img_size, patch_size=m.patch_size, embed_dim=m.embed_dim, depth=m.depth,
            num_heads=m.num_heads, global_pool="token", pos_embed="sincos",
            scan=m.scan if scan is None else scan)
  x = jnp.zeros((1, m.img_size, m.img_size, 3))
  v = jax.jit(lambda: enc.init(jax.random.key(3), x))()
  return {"params": {"encoder": v["params"], "decoder_embed": {"kernel": np.ones((4, 4))},
                     "mask_token": np.zeros((1, 1, 4))},
          "constants": {"encoder": v["constants"]}}


@pytest.mark.parametrize("variant", ["finetune_expr", "b16"])
@pytest.mark.parametrize("other_layout", [False, True])
def test_mae_pretraining_encoder_paths_line_up_with_init_from_keep(variant, other_layout):
  """Every encoder variable loads, also when the pretraining run used the other block layout
  (`mae:abaw6` / `pretrain_*` scan their blocks, `finetune_expr` loops them for layer decay)."""
  c = config_loader.load(f"vit_frames:{variant},shards=/nowhere,init=/some/pretrain_run", TOY)
  assert c.init_from.workdir == "/some/pretrain_run"
  fine_scan = bool(c.model.scan)
  loaded = _pretend_pretraining_variables(c, scan=fine_scan != other_layout)
  module = vit_frames.ViTFrames(**{k: v for k, v in c.model.items() if k != "dtype"})
  x = jnp.zeros((1, c.data.image_size, c.data.image_size, 3))
  fresh = jax.device_get(jax.jit(lambda: module.init(jax.random.key(0), x, train=False))())
  merged, rep = init_from.merge(fresh, loaded, keep=tuple(c.init_from.keep))
  flat = traverse_util.flatten_dict(merged, sep="/")
  src = traverse_util.flatten_dict(loaded, sep="/")
  enc_fresh = [k for k in traverse_util.flatten_dict(fresh, sep="/") if "/encoder/" in f"/{k}"
               and "fc_norm" not in k]
  assert sorted(rep["loaded"]) == sorted(enc_fresh)   # every encoder variable but fc_norm
  assert not rep["shape_mismatch"]
  assert sorted(rep["absent"]) == sorted(["params/encoder/fc_norm/bias", "params/encoder/fc_norm/scale",
                                          *[f"params/heads_{o}/{p}" for o in ("va", "expr", "au")
                                            for p in ("bias", "kernel")]])
  assert set(rep["unused"]) == {"params/encoder/norm/bias", "params/encoder/norm/scale",
                                "params/decoder_embed/kernel", "params/mask_token"}
  assert bool(rep["relayout"]) == other_layout
  if other_layout:                 # compare in the fine-tune's layout
    enc = loaded["params"]["encoder"]
    enc = vit_lib.to_looped(enc) if not fine_scan else vit_lib.to_scanned(enc, c.model.depth)
    src = traverse_util.flatten_dict({"params": {**loaded["params"], "encoder": enc},
                                      "constants": loaded["constants"]}, sep="/")
  for k in rep["loaded"]:
    np.testing.assert_array_equal(flat[k], src[k])


def test_export_equals_timm_and_imports_back(tmp_path):
  import timm.models.vision_transformer as tvit
  c = _config("b16", ["--config.model.dtype=float32"])
  module = vit_frames.ViTFrames(**{k: v for k, v in c.model.items() if k != "dtype"})
  assert module.scan
  s = c.data.image_size
  x = np.random.default_rng(0).random((2, s, s, 3), dtype=np.float32)
  v = jax.device_get(jax.jit(lambda: module.init(jax.random.key(0), x, train=False))())
  v["params"] = jax.tree.map(lambda a: a + 0.05 * np.random.default_rng(1).standard_normal(
      a.shape).astype(np.float32), v["params"])     # heads away from their 2e-5 init
  sd = interop.to_torch_state_dict("vit_frames", v)
  tm = tvit.VisionTransformer(img_size=s, patch_size=c.model.patch_size,
                              embed_dim=c.model.embed_dim, depth=c.model.depth,
                              num_heads=c.model.num_heads, num_classes=0, global_pool="avg").eval()
  tm.load_state_dict({k: torch.from_numpy(a) for k, a in sd.items() if "_head." not in k})
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2))
  mean, std = torch.tensor(vit_frames.IMAGENET_MEAN), torch.tensor(vit_frames.IMAGENET_STD)
  with torch.no_grad():
    f = tm((xt - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    logits = torch.nn.functional.linear(f, torch.from_numpy(sd["expr_head.weight"]),
                                        torch.from_numpy(sd["expr_head.bias"])).numpy()
  out = module.apply(v, x, train=False)
  emb = module.apply(v, x, method="embed")
  assert emb.shape == (2, c.model.embed_dim)
  # LayerNorm'd features (|f| ~ 1): rounding of two float32 implementations
  tol.assert_close_ulps(np.asarray(emb), f.numpy(), magnitude=np.abs(f.numpy()).max(), ulps=512)
  tol.assert_close_ulps(np.asarray(out["expr"]), logits, magnitude=np.abs(logits).max() + 1,
                        ulps=2048)
  back = interop.from_torch_state_dict("vit_frames", sd, v)
  for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(v["params"]),
                       jax.tree.leaves(back["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(p))


def test_label_smoothing_equals_torch():
  r = np.random.default_rng(0)
  logits = r.standard_normal((10, 8)).astype(np.float32) * 3
  labels = r.integers(0, 8, 10).astype(np.int32)
  labels[3] = -1
  mask = np.ones(10, np.float32)
  for eps in (0.0, 0.1):
    ours = float(abaw_tcn.expr_ce_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask),
                                       eps))
    ref = float(torch.nn.CrossEntropyLoss(ignore_index=-1, label_smoothing=eps)(
        torch.from_numpy(logits), torch.from_numpy(labels.astype(np.int64))))
    tol.assert_close_ulps(ours, ref, magnitude=np.abs(logits).max() + abs(ref), ulps=16,
                          dtype=np.float32)
