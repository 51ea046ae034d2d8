"""configs/mgct.py and the MGCT task in the trainer (issue 14, stage 2):

* the variants hold the paper's settings (recola / sewa / baseline), and every ablation switch of
  Tables VIII-XI is a `--config.model.X=...` override that builds and runs a train step;
* an evaluation writes the Fig. 11 picture (`eval/level_curves`: each level's predictions against
  the labels) to TensorBoard and as a PNG, and the picture draws the curves where the data says.
"""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from jaxaffect import config_loader
from jaxaffect.data import features as F
from jaxaffect.models import mgct, mgct_task
from jaxaffect.train import loop, mesh as mesh_lib

TOY = ["--config.model.channels=[8, 16, 16]", "--config.model.num_heads=2",
       "--config.data.sampler.window=32", "--config.data.sampler.stride=16",
       "--config.batch_size=4", "--config.optim.lr=0.001", "--config.task.ccl_clips=0"]


def test_variants_hold_the_paper_settings():
  r = config_loader.load("mgct:recola", [])
  assert (r.model.channels, r.model.group_size, r.model.num_levels, r.model.summarise) == \
      ((128, 256, 512), 4, 2, "max")
  assert (r.optim.name, r.optim.lr, r.batch_size) == ("adam", 1e-4, 64)
  assert r.task.level_weights == (1.2, 0.9, 0.6) and r.checkpoint.best_metric == "va/p_va"
  # N_c = 3 clips of 768 frames per sampled window (Eq. 11), γ = 0.1
  assert (r.data.sampler.window, r.task.ccl_clips, r.task.ccl_weight) == (3 * 768, 3, 0.1)
  assert r.data.source.features[0]["stream"] == "tdls"
  assert r.data.source.features[0]["dim"] == 768
  assert config_loader.load("mgct:sewa", []).data.sampler.window == 3 * 400
  assert config_loader.load("mgct:sewa,ccl=0", []).data.sampler.window == 400
  b = config_loader.load("mgct:baseline", [])
  assert (b.model.num_levels, b.model.depth, tuple(b.model.channels)) == (0, 4, (128,))
  assert (b.task.ccl_clips, b.data.sampler.window) == (0, 768)
  w = config_loader.load("mgct:recola,stream=vit_frames,dim=96,window=96", [])
  assert w.data.source.features[0]["stream"] == "vit_frames" and w.data.sampler.stride == 24
  assert w.data.sampler.window == 288
  assert w.data.source.features[0]["dim"] == 96
  # parameter counts at D_in 768 (the README's figures)
  assert mgct.param_count(mgct.MGCT(**_model_kw(r)), 768) == 3_191_430
  assert mgct.param_count(mgct.MGCT(**_model_kw(b)), 768) == 628_610


def _model_kw(c):
  return {k: v for k, v in dict(c.model).items() if k != "dtype"}


def _batch(shapes, seed=0):
  r = np.random.default_rng(seed)
  out = {}
  for k, s in shapes.items():
    if k.startswith("feat/") or k == "va":
      out[k] = r.uniform(-1, 1, s.shape).astype(np.float32)
    elif k in ("valid", "va_mask", "mask"):
      out[k] = np.ones(s.shape, s.dtype)
    else:
      out[k] = np.zeros(s.shape, s.dtype)
  out["valid"][1, 11:] = 0                 # a padded window tail
  out["va_mask"][1, 11:] = 0
  return out


# Tables VIII (group size), IX (summary), X (levels, with their widths and weights), XI (summarise
# twice, no guidance): every switch in some case, combined to keep the compiles few
SWITCHES = {
    "g2_avg_twice": ["--config.model.group_size=2", "--config.model.summarise=avg",
                     "--config.model.summarise_twice=true"],
    "concat_no_guidance": ["--config.model.summarise=concat", "--config.model.guidance=false"],
    "L1_g8": ["--config.model.num_levels=1", "--config.model.channels=[8, 16]",
              "--config.model.group_size=8"],
    "L3_mse": ["--config.model.num_levels=3", "--config.model.channels=[8, 8, 8, 8]",
               "--config.model.group_size=2", "--config.task.level_weights=[1.2, 0.9, 0.6, 0.3]",
               "--config.task.level_loss=mse"],
}


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_table_switches_are_overrides_that_train(switch):
  config = config_loader.load("mgct:smoke,features=/nowhere", TOY + SWITCHES[switch])
  mesh = mesh_lib.make_mesh(1, 1, devices=jax.devices()[:1])
  s = loop.build(config, mesh=mesh, sources=loop.spec_sources(config))
  init_rng, step_rng = loop._rngs(config)
  with jax.set_mesh(mesh):
    state = s.init_fn(init_rng)
    p0 = mesh_lib.to_host(state["params"])
    state, m = s.train_step(state, mesh_lib.global_batch_from_local(_batch(s.batch_shapes), mesh),
                            step_rng)
  loss = float(mesh_lib.to_host(m).compute()["loss"])
  p1 = mesh_lib.to_host(state["params"])
  assert np.isfinite(loss) and loss > 0
  nl = config.model.num_levels
  assert sorted(k for k in p1 if k.startswith("head_")) == [f"head_{l}" for l in range(nl + 1)]
  assert ("up_1" in p1) == config.model.guidance
  if config.model.summarise == "concat":
    assert p1["down_1"]["kernel"].shape[0] == config.model.group_size * config.model.channels[0]
  moved = {k: float(np.max(np.abs(a - b))) for k, a, b in zip(
      _paths(p0), jax.tree.leaves(p0), jax.tree.leaves(p1))}
  # every parameter moves except the attention key biases (no gradient: softmax ignores them)
  assert all(v > 0 for k, v in moved.items() if not k.endswith("k/bias")), \
      [k for k, v in moved.items() if v == 0]


def _paths(tree):
  return ["/".join(str(getattr(k, "key", k)) for k in p)
          for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


# ------------------------------------------------------------------------------ Fig. 11 picture


def _red_rows(img):
  """Rows (y) of pixels of level 0's colour (#d62728), and their count."""
  red = np.array([0xD6, 0x27, 0x28])
  near = np.all(np.abs(img.astype(int) - red) <= 40, axis=-1)
  return np.nonzero(near)[0]


def test_level_curves_image_draws_each_curve_where_the_data_says():
  n, t, g = 1, 32, 4
  labels = np.zeros((n, t, 2), np.float32)
  lmask = np.ones((n, t), np.float32)
  coarse = [np.zeros((n, t // g, 2), np.float32), np.zeros((n, t // g ** 2, 2), np.float32)]
  masks = [np.ones((n, t), np.float32), np.ones((n, t // g), np.float32),
           np.ones((n, t // g ** 2), np.float32)]

  def draw(level0, level0_mask=1.0):
    lv = [np.full((n, t, 2), level0, np.float32)] + coarse
    ms = [masks[0] * level0_mask] + masks[1:]
    return mgct_task.level_curves_image(lv, ms, labels, lmask, g)
  up, down, hidden = draw(0.6), draw(-0.6), draw(0.6, 0.0)
  assert up.ndim == 3 and up.shape[-1] == 3 and up.dtype == np.uint8
  r_up, r_down = _red_rows(up), _red_rows(down)
  assert len(r_up) > 200 and len(r_down) > 200      # a line across both panels (+ the legend)
  # the level-0 line sits higher (smaller y) for +0.6 than for -0.6: by ~0.57 of a panel's height
  # (the legend's red sample stays put, hence the medians)
  assert np.median(r_down) - np.median(r_up) > 0.2 * up.shape[0]
  assert len(_red_rows(hidden)) < 60                 # masked out: only the legend's sample
  # the labels are drawn in black: a label curve adds dark pixels
  dark = lambda im: int(np.sum(np.all(im < 40, axis=-1)))
  labels[:] = 0.5
  assert dark(draw(-0.6)) > dark(down) + 200


def _videos(n, t, d, seed):
  r = np.random.default_rng(seed)
  out = []
  for i in range(n):
    va = np.tanh(np.cumsum(r.normal(0, 0.2, (t, 2)), 0)).astype(np.float32)
    labels = F._empty_labels(t, 12)
    labels["va"], labels["va_mask"] = va, np.ones(t, np.float32)
    x = (va @ r.standard_normal((2, d)) + r.normal(0, 0.3, (t, d))).astype(np.float32)
    out.append(F.VideoFeatures(f"v{i}", {"frame_resnet": x}, np.ones(t, bool), np.arange(t),
                               np.arange(t, dtype=np.float32) / 25, labels))
  return out


def test_an_evaluation_writes_the_level_curves_png(tmp_path):
  config = config_loader.load(
      "mgct:smoke,features=/nowhere,dim=6",
      TOY + ["--config.num_steps=2", "--config.eval_every_steps=2", "--config.log_every_steps=1",
             "--config.checkpoint.async_save=false", "--config.batch_size=8"])
  w = config.data.sampler.window
  sources = (F.FeatureWindows(_videos(4, 80, 6, 0), w, 16, "toy-train"),
             F.FeatureWindows(_videos(2, 80, 6, 1), w, w, "toy-eval"))
  ev = loop.train(config, str(tmp_path / "run"), sources=sources)
  assert np.isfinite(ev["va/p_va"])
  assert ev["curve_level_0"].shape == (2, 32, 2) and ev["curve_level_2"].shape == (2, 2, 2)
  assert list(ev["curve_start"]) == [0, 32]           # the first two windows of video 0
  png = tmp_path / "run" / "tensorboard" / "images" / "eval_level_curves_00000002.png"
  assert png.is_file() and os.path.getsize(png) > 1000
  from PIL import Image
  img = np.asarray(Image.open(png).convert("RGB"))
  assert img.shape[0] > 200 and len(_red_rows(img)) > 200


def test_cross_clip_loss_trains_on_the_clips_of_each_window():
  """`ccl_clips = N_c`: each window is cut into N_c clips, MGCT runs on each clip alone, and the
  loss is Eq. 12's L_MGCT + γ L_CCL with a main clip per window drawn from the step's key."""
  import jax
  import jax.numpy as jnp
  from jaxaffect.errors import UserError
  m = mgct.MGCT(channels=(8, 16, 16), num_heads=2)
  t = mgct_task.MGCTTask(module=m, outputs=("va",), input="features", ccl_clips=3,
                         ccl_weight=0.1)
  r = np.random.default_rng(0)
  b, nc, tc = 2, 3, 16
  batch = {"feat/x": r.normal(size=(b, nc * tc, 6)).astype(np.float32),
           "valid": np.ones((b, nc * tc), np.float32), "mask": np.ones(b, np.float32),
           "va": r.uniform(-1, 1, (b, nc * tc, 2)).astype(np.float32),
           "va_mask": np.ones((b, nc * tc), np.float32)}
  params, extra = t.init(jax.random.PRNGKey(0), batch)
  pred = t.predict(params, extra, batch)
  clips = batch["feat/x"].reshape(b * nc, tc, 6)
  alone = m.apply({"params": params}, clips)["va"].reshape(b, nc * tc, 2)
  np.testing.assert_allclose(pred["va"], alone, rtol=1e-5, atol=1e-6)
  rng = jax.random.PRNGKey(7)
  loss, (out, _) = t.loss(params, extra, batch, rng)
  _, m_rng = jax.random.split(rng)
  main = jax.random.randint(m_rng, (b,), 0, nc)
  l_mgct, _ = mgct.mgct_loss(pred, batch["va"], batch["va_mask"], group_size=4)
  l_ccl = mgct.cross_clip_loss(alone.reshape(b, nc, tc, 2), jnp.ones((b, nc, tc)), main)
  np.testing.assert_allclose(float(out["loss_ccl"]), float(l_ccl), rtol=1e-5)
  np.testing.assert_allclose(float(loss), float(l_mgct) + 0.1 * float(l_ccl), rtol=1e-5)
  assert float(l_ccl) > 0
  bad = dict(batch, **{k: v[:, :40] for k, v in batch.items() if k not in ("mask",)})
  with pytest.raises(UserError, match="must split into 3 clips"):
    t.predict(params, extra, bad)
