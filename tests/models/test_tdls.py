"""TDLS (models/tdls.py, models/tdls_task.py; issue 14 items 3-4): Table IV modes, the Eq. 7
neighbour selection and L_TG against numpy / torch, the momentum encoder and the queue, and the
queue written through `jax.shard_map`: 8 devices give the queue, momentum copy and losses of 1."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import tdls as tdls_cfg
from jaxaffect import config_loader
from jaxaffect.models import tdls, tdls_task
from jaxaffect.nn import deformable as dla
from jaxaffect.train import hooks, loop, mesh as mesh_lib

SMALL = dict(img_size=32, patch_size=2, embed_dim=16, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4),
             window_size=4, proj_hidden=32, proj_dim=16, tg_hidden=16, offset_hidden=8)


def _batch(b=8, s=32, seed=0, videos=3):
  r = np.random.default_rng(seed)
  return {"image": r.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
          "view_2": r.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
          "landmarks": r.uniform(4, s - 4, (b, 68, 2)).astype(np.float32),
          "landmarks_2": r.uniform(4, s - 4, (b, 68, 2)).astype(np.float32),
          "va": r.uniform(-1, 1, (b, 2)).astype(np.float32),
          "va_mask": (r.uniform(size=b) > 0.2).astype(np.float32),
          "mask": np.ones(b, np.float32), "index": (np.arange(b) % videos).astype(np.int32),
          "frame": r.integers(0, 50, b).astype(np.int32)}


def _leaves(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in p): v
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("mode", tdls.MODES)
def test_modes_build_the_table_iv_variants(mode):
  m = tdls.TDLS(mode=mode, **SMALL)
  b = _batch()
  v = m.init(jax.random.PRNGKey(0), jnp.asarray(b["image"] / 255.0), landmarks=b["landmarks"])
  names = set(_leaves(v["params"]))
  offsets = [n for n in names if "/offset/" in n]
  deform = [n for n in names if "/attn/attn/q/" in n]
  if mode == "swin":
    assert not deform and "constants" not in v
  else:
    # stage 3 (layers_2) and 4 (layers_3): block 1 of each is deformable (alternating)
    assert {n.split("/attn/")[0] for n in deform} == {"backbone/layers_2/blocks_1",
                                                     "backbone/layers_3/blocks_1"}
    assert bool(offsets) == (mode == "tdls")
    if mode != "fl":
      pts = v["constants"]["backbone"]["layers_2"]["blocks_1"]["attn"]["ref_points"]
      assert pts.shape == (16, 2)            # N_r = the stage-3 area (4 x 4 at 32 px, patch 2)
  out = m.apply(v, jnp.asarray(b["image"] / 255.0), landmarks=b["landmarks"])
  assert out["va"].shape == (8, 2) and out["embed"].shape == (8, 128)
  np.testing.assert_allclose(np.linalg.norm(out["proj"], axis=-1), 1.0, rtol=1e-5)
  assert np.all(np.abs(out["va"]) < 1)


def test_placement_all_and_kinds():
  assert tdls.block_kinds((2, 2, 6, 2), (2, 3), "alternate", "tdls") == (
      ("window",) * 2, ("window",) * 2, ("window", "deformable") * 3, ("window", "deformable"))
  assert tdls.block_kinds((2, 2, 6, 2), (2, 3), "all", "rp")[2] == ("deformable",) * 6
  assert tdls.block_kinds((2, 2, 6, 2), (2, 3), "all", "swin")[3] == ("window",) * 2


def test_fl_reads_each_images_landmarks_rp_does_not():
  b = _batch()
  x = jnp.asarray(b["image"] / 255.0)
  other = b["landmarks"][::-1].copy()
  for mode, changes in (("fl", True), ("rp", False)):
    m = tdls.TDLS(mode=mode, **SMALL)
    v = m.init(jax.random.PRNGKey(0), x, landmarks=b["landmarks"])
    y1 = m.apply(v, x, landmarks=b["landmarks"])["va"]
    y2 = m.apply(v, x, landmarks=other)["va"]
    assert (not np.allclose(y1, y2)) == changes, mode
  with pytest.raises(Exception, match="needs each image's landmarks"):
    m = tdls.TDLS(mode="fl", **SMALL)
    m.init(jax.random.PRNGKey(0), x)


def test_landmarks_to_points_is_the_pixel_centre_convention():
  # pixel centre j of a W-wide image sits at grid x = 2 (j + 0.5) / W - 1 (align_corners=False)
  p = tdls.landmarks_to_points(jnp.asarray([[[0.0, 31.0], [15.5, 15.5]]]), 32)
  np.testing.assert_allclose(p, [[[-1 + 1 / 32, 1 - 1 / 32], [0.0, 0.0]]], atol=1e-7)


def _queue(q=12, p=4, seed=1, count=10):
  r = np.random.default_rng(seed)
  return {"keys": jnp.asarray(r.normal(size=(q, p)), jnp.float32),
          "va": jnp.asarray(r.uniform(-1, 1, (q, 2)), jnp.float32),
          "va_mask": jnp.asarray((r.uniform(size=q) > 0.25).astype(np.float32)),
          "video": jnp.asarray(r.integers(0, 3, q), jnp.int32),
          "time": jnp.asarray(r.permutation(q), jnp.float32),
          "ptr": jnp.asarray(count % q, jnp.int32), "count": jnp.asarray(count, jnp.int32)}


def _numpy_neighbours(query, queue, k, how):
  out = []
  for i in range(len(query["video"])):
    cand = []
    for j in range(int(queue["count"])):
      if queue["va_mask"][j] <= 0:
        continue
      if how == "time":
        if queue["video"][j] != query["video"][i]:
          continue
        d = abs(float(queue["time"][j]) - float(query["time"][i]))
      else:
        d = float(np.linalg.norm(np.asarray(queue["va"][j]) - np.asarray(query["va"][i])))
      cand.append((d, j))
    out.append(sorted(cand)[:k])
  return out


@pytest.mark.parametrize("how", tdls.NEIGHBOURS)
def test_neighbour_selection_matches_brute_force(how):
  queue = _queue()
  r = np.random.default_rng(5)
  query = {"video": jnp.asarray([0, 1, 2, 0, 3], jnp.int32),
           "time": jnp.asarray(r.uniform(0, 12, 5), jnp.float32),
           "va": jnp.asarray(r.uniform(-1, 1, (5, 2)), jnp.float32)}
  k = 3
  idx, valid = tdls.select_neighbours(query, queue, k, how)
  ref = _numpy_neighbours(query, {k_: np.asarray(v) for k_, v in queue.items()}, k, how)
  for i, want in enumerate(ref):
    got = [int(j) for j, ok in zip(idx[i], valid[i]) if ok]
    assert sorted(got) == sorted(j for _, j in want), (i, got, want)
  if how == "time":
    assert not bool(valid[4].any())                # video 3 is not in the queue
  assert int(valid.sum()) > 0


def test_tg_loss_matches_torch_forward_and_gradients():
  """Eq. 7's L_TG = masked mean of (MLP([a''; c]) − |ΔVA|)², against torch autograd."""
  m = tdls.TDLS(**SMALL)
  b = _batch()
  v = m.init(jax.random.PRNGKey(0), jnp.asarray(b["image"] / 255.0))
  params = v["params"]
  queue = _queue(q=20, p=SMALL["proj_dim"], count=20)
  r = np.random.default_rng(3)
  a = r.normal(size=(6, SMALL["proj_dim"])).astype(np.float32)
  query = {"video": jnp.asarray([0, 1, 2, 0, 1, 7], jnp.int32),
           "time": jnp.asarray(r.uniform(0, 20, 6), jnp.float32),
           "va": jnp.asarray(r.uniform(-1, 1, (6, 2)), jnp.float32),
           "va_mask": jnp.asarray([1, 1, 0, 1, 1, 1], jnp.float32)}
  k = 4

  def f(tg, a_):
    p = dict(params, tg=tg)
    return tdls.tg_loss(m, p, a_, query, queue, k=k)[0]
  loss, (g_tg, g_a) = jax.value_and_grad(f, argnums=(0, 1))(params["tg"], jnp.asarray(a))
  # torch: the same selection rule written with torch ops, the MLP as nn.Linear layers
  idx, valid = tdls.select_neighbours(query, queue, k, "time")
  idx, valid = torch.as_tensor(np.asarray(idx)), torch.as_tensor(np.asarray(valid))
  fc1 = torch.nn.Linear(2 * SMALL["proj_dim"], SMALL["tg_hidden"])
  fc2 = torch.nn.Linear(SMALL["tg_hidden"], 2)
  with torch.no_grad():
    for t, n in ((fc1, "fc1"), (fc2, "fc2")):
      t.weight.copy_(torch.as_tensor(np.asarray(params["tg"][n]["kernel"]).T))
      t.bias.copy_(torch.as_tensor(np.asarray(params["tg"][n]["bias"])))
  ta = torch.as_tensor(a, dtype=torch.float32).requires_grad_()
  keys = torch.as_tensor(np.asarray(queue["keys"]))[idx]
  qva = torch.as_tensor(np.asarray(queue["va"]))[idx]
  va = torch.as_tensor(np.asarray(query["va"]))
  x = torch.cat([ta[:, None].expand(-1, k, -1), keys], -1)
  pred = fc2(torch.relu(fc1(x)))
  w = valid.float() * torch.as_tensor(np.asarray(query["va_mask"]))[:, None]
  err = ((pred - (va[:, None] - qva).abs()) ** 2).mean(-1)
  tl = (err * w).sum() / w.sum()
  tl.backward()
  np.testing.assert_allclose(float(loss), float(tl), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g_a), ta.grad.numpy(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g_tg["fc1"]["kernel"]), fc1.weight.grad.numpy().T,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g_tg["fc2"]["bias"]), fc2.bias.grad.numpy(),
                             rtol=1e-4, atol=1e-6)
  assert float(w.sum()) >= 6


def test_task_momentum_and_queue_after_update():
  m = tdls.TDLS(**SMALL)
  t = tdls_task.TDLSTask(module=m, outputs=("va",), input="image", queue_size=16,
                         num_neighbours=3, momentum=0.9)
  b = _batch()
  params, extra = t.init(jax.random.PRNGKey(0), b)
  assert set(extra) == {"constants", "momentum", "queue"}
  assert set(extra["momentum"]["params"]) == {"backbone", "proj"}
  loss, (out, ne) = t.loss(params, extra, b, jax.random.PRNGKey(1))
  assert float(out["tg_pairs"]) == 0 and float(out["loss_tg"]) == 0   # empty queue
  new_params = jax.tree.map(lambda p: p + 1.0, params)
  ne = t.after_update(ne, new_params, out, b, 0)
  got = _leaves(ne["momentum"]["params"])
  want = _leaves({k: jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, extra["momentum"]["params"][k],
                                  new_params[k]) for k in ("backbone", "proj")})
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)
  q = ne["queue"]
  assert int(q["count"]) == 8 and int(q["ptr"]) == 8
  np.testing.assert_allclose(q["keys"][:8], out["keys"], rtol=1e-6)
  # keys are the momentum model's view-2 representations (before this update)
  ref = m.apply({"params": extra["momentum"]["params"], "constants": extra["constants"]},
                jnp.asarray(b["view_2"] / 255.0), method=tdls.TDLS.keys)
  np.testing.assert_allclose(out["keys"], ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(q["video"][:8], b["index"])
  np.testing.assert_array_equal(q["va_mask"][:8], b["va_mask"])
  loss2, (out2, _) = t.loss(params, ne, b, jax.random.PRNGKey(1))
  assert float(out2["tg_pairs"]) > 0 and float(out2["loss_tg"]) > 0
  np.testing.assert_allclose(float(loss2), float(out2["loss_va"]) + 0.1 * float(out2["loss_tg"]),
                             rtol=1e-6)


def test_queue_push_sharded_equals_plain_push():
  mesh = mesh_lib.make_mesh(data=4, fsdp=2)
  q0 = tdls.queue_init(20, 3)
  r = np.random.default_rng(0)
  rows = {"keys": r.normal(size=(8, 3)).astype(np.float32),
          "video": r.integers(0, 9, 8).astype(np.int32),
          "time": r.uniform(size=8).astype(np.float32)}
  want = hooks.fields_push(hooks.fields_push(q0, rows), rows)
  with jax.set_mesh(mesh):
    g = mesh_lib.global_batch_from_local(rows, mesh)
    f = jax.jit(lambda q, x: hooks.queue_push_sharded(hooks.queue_push_sharded(q, x), x))
    got = f(q0, g)
    assert "all-gather" in f.lower(q0, g).compile().as_text()
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


TOY = ["--config.data.image_size=32", "--config.model.patch_size=2", "--config.model.embed_dim=16",
       "--config.model.depths=[1, 1, 2, 2]", "--config.model.num_heads=[1, 2, 2, 4]",
       "--config.model.offset_hidden=8", "--config.model.proj_hidden=32",
       "--config.model.proj_dim=16", "--config.model.tg_hidden=16", "--config.batch_size=8",
       "--config.task.queue_size=16", "--config.task.num_neighbours=4",
       "--config.task.momentum=0.9", "--config.optim.warmup_epochs=0"]


def _run(mesh, steps=3):
  config = config_loader.load("tdls:smoke,shards=/nowhere", TOY)
  s = loop.build(config, mesh=mesh, sources=loop.spec_sources(config))
  init_rng, step_rng = loop._rngs(config)
  losses = []
  with jax.set_mesh(mesh):
    state = s.init_fn(init_rng)
    for i in range(steps):
      b = _batch(seed=i)           # the stand-in batch has no labels: the real fields here
      state, m = s.train_step(state, mesh_lib.global_batch_from_local(b, mesh), step_rng)
      losses.append(loop.compute_metrics(m))
  return mesh_lib.to_host(state), losses


def test_eight_devices_give_the_queue_and_loss_of_one():
  s8, l8 = _run(mesh_lib.make_mesh(data=8))
  s1, l1 = _run(mesh_lib.make_mesh(data=1, devices=jax.devices()[:1]))
  for a, b in zip(l8, l1):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=2e-5)
    np.testing.assert_allclose(a["loss_tg"], b["loss_tg"], rtol=2e-5, atol=1e-7)
  assert l1[-1]["tg_pairs"] > 0
  q8, q1 = s8["extra"]["queue"], s1["extra"]["queue"]
  for k in ("video", "time", "va", "va_mask", "ptr", "count"):
    np.testing.assert_array_equal(q8[k], q1[k], err_msg=k)
  np.testing.assert_allclose(q8["keys"], q1["keys"], rtol=1e-4, atol=1e-5)
  # the momentum copy: Adam divides by sqrt(v), so an element whose true gradient is ~0 (the key
  # bias of softmax attention, dead ReLU units) moves by up to ±lr on float noise that differs
  # between 1 and 8 devices: at most lr · (1 − m) · steps = 3e-4 here (measured 6.5e-5 on 1 of
  # 16,384 elements); all other elements agree to float32 rounding
  mom8, diffs = _leaves(s8["extra"]["momentum"]), []
  for k, v in _leaves(s1["extra"]["momentum"]).items():
    np.testing.assert_allclose(mom8[k], v, rtol=0, atol=3e-4, err_msg=k)
    diffs.append(np.abs(np.asarray(mom8[k]) - np.asarray(v)).ravel())
  diffs = np.concatenate(diffs)
  assert np.mean(diffs > 1e-6) < 1e-3, np.mean(diffs > 1e-6)


def test_config_reads_the_template_of_the_shards(tmp_path):
  import json
  (tmp_path / "manifest.json").write_text(json.dumps({
      "template": {"split": "train", "frames": 10, "keypoints7": [[15.5, 31.5]] * 7},
      "recipe": {"stages": {"none": {"size": 64}}}}))
  kp, src = tdls_cfg.template_keypoints(str(tmp_path))
  assert kp == ((0.25, 0.5),) * 7 and src.startswith("manifest")
  c = tdls_cfg.get_config(f"smoke,shards={tmp_path}")
  assert c.model.keypoints == kp
  assert tdls_cfg.template_keypoints(str(tmp_path / "none")) == (None, "default")
  pts = dla.landmark_reference_points(kp, sigma=1.0, num_points=16, seed=0)
  # image-normalised: u = 0.25 -> -0.5, v = 0.5 -> 0
  assert np.all(np.abs(np.asarray(pts) - [-0.5, 0.0]).max(-1) < 0.3)


@pytest.mark.parametrize("mode", ("tdls", "fl"))
def test_evaluation_draws_fig8_sampling_points(mode):
  """Fig. 8 at evaluation: grid, reference (or landmark) and deformed points on the first frames;
  the deformed column's dots sit where the block's sown `sampling_points` say."""
  from jaxaffect import plots
  m = tdls.TDLS(mode=mode, **SMALL)
  t = tdls_task.TDLSTask(module=m, outputs=("va",), input="image", queue_size=16,
                         num_neighbours=3, num_fig8=3)
  b = _batch()
  params, extra = t.init(jax.random.PRNGKey(0), b)
  out = t.predict(params, extra, b)
  # the points are the block's own: stage 3 (layers_2), block 1
  _, inter = m.apply({"params": params, **{k: v for k, v in extra.items()
                                           if k not in tdls_task.STATE}},
                     jnp.asarray(b["image"] / 255.0), landmarks=b["landmarks"] if mode == "fl"
                     else None, mutable=["intermediates"])
  want = inter["intermediates"]["backbone"]["layers_2"]["blocks_1"]["attn"]["sampling_points"][0]
  np.testing.assert_allclose(out["fig8_points"], want, rtol=1e-6)
  if mode == "fl":
    np.testing.assert_allclose(out["fig8_ref"], tdls.landmarks_to_points(b["landmarks"], 32))
  coll = t.eval_metrics.single_from_model_output(**t.metric_inputs(out, b))
  metrics = loop.compute_metrics(coll)          # the trainer's flattening (`_fig8` -> bare keys)
  sheet = t.eval_images(metrics, None)["eval/sampling_points"]
  assert sheet.dtype == np.uint8 and sheet.ndim == 3
  # 3 rows of 32 px faces at scale 6 (192 // 32), 3 columns
  assert sheet.shape[0] > 3 * 32 * 6 and sheet.shape[1] > 3 * 32 * 6
  colour = np.asarray(plots.POINT_COLORS[2], np.uint8)
  assert np.all(sheet == colour, axis=-1).sum() > 10       # deformed-point dots are drawn
  assert tdls_task.TDLSTask(module=tdls.TDLS(mode="swin", **SMALL), outputs=("va",),
                            input="image").eval_metrics is not None


def test_init_from_starts_the_momentum_copy_at_the_loaded_weights(tmp_path):
  """A stage that starts from another run (`init_from`, e.g. recola from affectnet, whose queue
  and momentum copy are not kept) must start its momentum encoder at the loaded weights."""
  src = config_loader.load("tdls:smoke,shards=/nowhere,tg=0", TOY + ["--config.seed=1"])
  s1 = loop.build(src, mesh=mesh_lib.make_mesh(data=1, devices=jax.devices()[:1]),
                  sources=loop.spec_sources(src))
  loaded = jax.device_get(s1.init_fn(jax.random.PRNGKey(3)))
  dst = config_loader.load("tdls:smoke,shards=/nowhere", TOY)
  s2 = loop.build(dst, mesh=mesh_lib.make_mesh(data=1, devices=jax.devices()[:1]),
                  sources=loop.spec_sources(dst))
  with jax.set_mesh(s2.mesh):
    fresh = s2.init_fn(jax.random.PRNGKey(0))
    merged = {**jax.device_get({"params": fresh["params"], **fresh["extra"]}),
              "params": loaded["params"]}
    state = jax.device_get(loop._with_variables(s2, fresh, merged))
  for k in tdls_task.MOMENTUM_PARTS:
    got, want = _leaves(state["extra"]["momentum"]["params"][k]), _leaves(loaded["params"][k])
    assert got.keys() == want.keys()
    for n in want:
      np.testing.assert_array_equal(got[n], want[n], err_msg=n)
  assert not np.allclose(_leaves(fresh["extra"]["momentum"]["params"]["proj"])["fc1/kernel"],
                         _leaves(loaded["params"]["proj"])["fc1/kernel"])
