"""MAE pretraining (`models/mae.py`) == an independent PyTorch MAE written here from the paper and
the conventions of facebookresearch/mae (timm `PatchEmbed` and `Block` as building blocks; the
masking, unshuffle, patchify and losses written another way: scatter instead of gather, `unfold`
instead of a reshape), loaded with our exported weights: forward, loss (with and without
norm_pix_loss), the mean-of-visible baseline, and gradients w.r.t. the input and every parameter.
Also: masking == torch argsort, exact mask ratio, patchify order, the parameter count of MAE
ViT-B/16, export -> strict torch load -> import, scanned == looped, the task and its sheet."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from jaxaffect.interop import mae as mae_map
from jaxaffect.models import mae, mae_task
from jaxaffect.nn import vit
from tests import tolerances
from tests.interop.torch_refs import jit, load_numpy_state_dict, random_variables

IMG, PATCH, DIM, DEPTH, HEADS, DDIM, DDEPTH, DHEADS = 32, 8, 64, 2, 4, 32, 2, 4
SMALL = dict(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
             decoder_embed_dim=DDIM, decoder_depth=DDEPTH, decoder_num_heads=DHEADS)
L = (IMG // PATCH) ** 2
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# float32 JAX vs float32 PyTorch: each tensor at ULPS eps32 of its largest |value| (as
# tests/nn/test_vit.py, whose measurements this mirrors); the measured figures are printed (-s).
ULPS = 32


# ------------------------------------------------------------------------------------------------
# The independent torch MAE


class TorchMAE(torch.nn.Module):
  """MAE from the paper (Sec. 3) with MAE's module names; timm blocks, LayerNorm eps 1e-6."""

  def __init__(self, img, p, d, depth, heads, dd, ddepth, dheads, norm_pix, mask_ratio=0.75):
    super().__init__()
    norm = functools.partial(torch.nn.LayerNorm, eps=1e-6)
    self.p, self.norm_pix, self.mask_ratio = p, norm_pix, mask_ratio
    self.patch_embed = PatchEmbed(img, p, 3, d)
    n = self.patch_embed.num_patches
    self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, d))
    self.pos_embed = torch.nn.Parameter(torch.zeros(1, n + 1, d), requires_grad=False)
    self.blocks = torch.nn.ModuleList([Block(d, heads, 4.0, qkv_bias=True, norm_layer=norm)
                                       for _ in range(depth)])
    self.norm = norm(d)
    self.decoder_embed = torch.nn.Linear(d, dd)
    self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, dd))
    self.decoder_pos_embed = torch.nn.Parameter(torch.zeros(1, n + 1, dd), requires_grad=False)
    self.decoder_blocks = torch.nn.ModuleList([Block(dd, dheads, 4.0, qkv_bias=True,
                                                     norm_layer=norm) for _ in range(ddepth)])
    self.decoder_norm = norm(dd)
    self.decoder_pred = torch.nn.Linear(dd, p * p * 3)

  def patches(self, imgs):
    """(N, 3, H, W) → (N, L, p·p·3): unfold rows then columns; each patch (row, col, channel)."""
    u = imgs.unfold(2, self.p, self.p).unfold(3, self.p, self.p)   # N, C, h, w, p(row), p(col)
    n, c, h, w = u.shape[:4]
    return u.permute(0, 2, 3, 4, 5, 1).reshape(n, h * w, self.p * self.p * c)

  def forward(self, x01, noise):
    x = (x01 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    n, length = noise.shape
    keep = int(length * (1 - self.mask_ratio))
    order = torch.argsort(noise, dim=1)
    kept = order[:, :keep]
    mask = torch.ones(n, length).scatter(1, kept, 0.0)              # 1 = removed
    t = self.patch_embed(x) + self.pos_embed[:, 1:]
    t = torch.gather(t, 1, kept[:, :, None].expand(-1, -1, t.shape[-1]))
    cls = (self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1)
    t = torch.cat([cls, t], dim=1)
    for b in self.blocks:
      t = b(t)
    t = self.decoder_embed(self.norm(t))
    full = self.mask_token.expand(n, length, -1)                     # put the visible ones back
    full = full.scatter(1, kept[:, :, None].expand(-1, -1, full.shape[-1]), t[:, 1:])
    y = torch.cat([t[:, :1], full], dim=1) + self.decoder_pos_embed
    for b in self.decoder_blocks:
      y = b(y)
    pred = self.decoder_pred(self.decoder_norm(y))[:, 1:]
    target = self.patches(x)
    raw = target
    if self.norm_pix:
      target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True)
                                                           + 1e-6) ** 0.5
    per = ((pred - target) ** 2).mean(-1)
    loss = (per * mask).sum() / mask.sum()
    vis = (1 - mask)[:, :, None]
    colour = (raw * vis).sum((1, 2)) / (vis.sum((1, 2)) * raw.shape[-1])
    base = torch.zeros_like(target) if self.norm_pix else colour[:, None, None].expand_as(raw)
    base_loss = ((((base - target) ** 2).mean(-1)) * mask).sum() / mask.sum()
    return loss, pred, mask, order.argsort(1), base_loss


# ------------------------------------------------------------------------------------------------


def _close(actual, expected, err, ulps=ULPS):
  expected = np.asarray(expected, np.float64)
  scale = float(np.abs(expected).max(initial=0.0))
  tolerances.assert_close_ulps(np.asarray(actual, np.float64), expected, magnitude=scale,
                               ulps=ulps, dtype=np.float32, err_msg=err)
  diff = float(np.abs(np.asarray(actual, np.float64) - expected).max(initial=0.0))
  return diff, diff / (tolerances.eps(np.float32) * max(scale, 1e-300))


def _variables(model, seed=0):
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0),
                                              "masking": jax.random.key(1)},
                                             jnp.zeros((1, IMG, IMG, 3))))
  v = random_variables({"params": shapes["params"]}, seed=seed)
  v["params"] = jax.tree.map(lambda a: a * 0.5 if a.ndim == 3 else a, v["params"])   # tokens
  v["constants"] = {"encoder": {"pos_embed": jnp.asarray(vit.sincos_2d_pos_embed(DIM, 4)[None])},
                    "decoder_pos_embed": jnp.asarray(vit.sincos_2d_pos_embed(DDIM, 4)[None])}
  return v


def _torch(model, variables, norm_pix):
  t = TorchMAE(IMG, PATCH, DIM, DEPTH, HEADS, DDIM, DDEPTH, DHEADS, norm_pix)
  load_numpy_state_dict(t, mae_map.to_state_dict(variables))          # strict: every key
  return t.eval()


def _jax_loss(model, variables):
  @jit
  def f(params, x, noise):
    def loss(params, x):
      out = model.apply({**variables, "params": params}, x, noise=noise, train=True)
      base = mae.mean_baseline_pred(out["image"], out["mask"], PATCH, model.norm_pix_loss)
      return mae.masked_patch_loss(out["pred"], out["target"], out["mask"]), (
          out, mae.masked_patch_loss(base, out["target"], out["mask"]))
    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
  return f


@pytest.mark.parametrize("norm_pix", [False, True])
def test_whole_pretraining_model_matches_torch_forward_losses_and_grads(norm_pix):
  model = mae.MAE(**SMALL, norm_pix_loss=norm_pix)
  variables = _variables(model)
  tmodel = _torch(model, variables, norm_pix)
  rng = np.random.default_rng(1)
  x = rng.random((3, IMG, IMG, 3), dtype=np.float32)
  noise = rng.random((3, L), dtype=np.float32)
  (loss, (out, base)), (gp, gx) = _jax_loss(model, variables)(variables["params"], x, noise)

  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  tl, tpred, tmask, trestore, tbase = tmodel(xt, torch.from_numpy(noise))
  tl.backward()
  np.testing.assert_array_equal(np.asarray(out["mask"]), tmask.numpy())
  np.testing.assert_array_equal(np.asarray(out["ids_restore"]), trestore.numpy())
  assert float(loss) > 0.1
  rep = {"pred": _close(out["pred"], tpred.detach().numpy(), "pred"),
         "loss": _close(loss, tl.item(), "loss"),
         "baseline": _close(base, tbase.item(), "baseline loss"),
         "d input": _close(gx, xt.grad.numpy().transpose(0, 2, 3, 1), "d input")}
  gsd = mae_map.to_state_dict({"params": gp, "constants": variables["constants"]})
  n = 0
  for name, p in tmodel.named_parameters():
    if not p.requires_grad:
      continue
    assert p.grad is not None, name
    rep[name] = _close(gsd[name], p.grad.numpy(), f"grad {name}")
    n += 1
  assert n == len(gsd) - 2                               # every parameter but the two tables
  worst = max((v for k, v in rep.items() if k not in ("pred", "loss", "baseline", "d input")),
              key=lambda t: t[1])
  print(f"\nnorm_pix={norm_pix}: pred {rep['pred'][0]:.3g} ({rep['pred'][1]:.3g} ulps of max), "
        f"loss {rep['loss'][0]:.3g} ({rep['loss'][1]:.3g}), baseline {rep['baseline'][0]:.3g}, "
        f"d input {rep['d input'][0]:.3g} ({rep['d input'][1]:.3g}), worst param grad "
        f"{worst[0]:.3g} ({worst[1]:.3g}) over {n} tensors")


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9, 0.0])
def test_masking_equals_torch_argsort_and_keeps_exactly_the_ratio(ratio):
  noise = np.random.default_rng(2).random((5, 49), dtype=np.float32)
  ids_keep, mask, restore = jax.jit(mae.random_masking, static_argnums=1)(noise, ratio)
  keep = int(49 * (1 - ratio))
  shuffle = torch.argsort(torch.from_numpy(noise), dim=1)
  np.testing.assert_array_equal(np.asarray(ids_keep), shuffle[:, :keep].numpy())
  np.testing.assert_array_equal(np.asarray(restore), torch.argsort(shuffle, dim=1).numpy())
  ref = torch.ones(5, 49)
  ref[:, :keep] = 0
  ref = torch.gather(ref, 1, torch.argsort(shuffle, dim=1))              # MAE's construction
  np.testing.assert_array_equal(np.asarray(mask), ref.numpy())
  np.testing.assert_array_equal(np.asarray(mask).sum(1), np.full(5, 49 - keep))


def test_patchify_order_is_nhwpqc_and_round_trips():
  p, h, w = 4, 3, 2
  imgs = np.random.default_rng(3).random((2, h * p, w * p, 3)).astype(np.float32)
  out = np.asarray(mae.patchify(jnp.asarray(imgs), p))
  hand = np.zeros((2, h * w, p * p * 3), np.float32)
  for b in range(2):
    for i in range(h):
      for j in range(w):
        for q in range(p):
          for r in range(p):
            for c in range(3):
              hand[b, i * w + j, (q * p + r) * 3 + c] = imgs[b, i * p + q, j * p + r, c]
  np.testing.assert_array_equal(out, hand)
  np.testing.assert_array_equal(np.asarray(mae.unpatchify(jnp.asarray(out), p, h, w)), imgs)
  # MAE's own form on NCHW: reshape (N, 3, h, p, w, p), einsum nchpwq->nhwpqc
  t = torch.from_numpy(imgs.transpose(0, 3, 1, 2).copy()).reshape(2, 3, h, p, w, p)
  ref = torch.einsum("nchpwq->nhwpqc", t).reshape(2, h * w, p * p * 3)
  np.testing.assert_array_equal(out, ref.numpy())


def test_parameter_count_of_mae_vit_b16():
  model = mae.MAE()                                     # ViT-B/16, 224 px, decoder 512 x 8
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0),
                                              "masking": jax.random.key(1)},
                                             jnp.zeros((1, 224, 224, 3))))
  n = mae.num_values(shapes)
  # MAE's `sum(p.numel() for p in model.parameters())` counts the two frozen sin-cos tables
  # (197 x 768 + 197 x 512); here they are constants.
  assert n == {"params": 111_655_680, "constants": 252_160, "total": 111_907_840}
  t = TorchMAE(224, 16, 768, 12, 12, 512, 8, 16, True).to("meta")
  assert sum(p.numel() for p in t.parameters()) == 111_907_840


@pytest.mark.parametrize("scan", [False, True])
def test_export_loads_strictly_into_torch_and_imports_back(scan):
  model = mae.MAE(**SMALL, scan=scan)
  v = _variables(model.clone(scan=False), seed=4)
  if scan:
    v = {"params": mae.to_scanned(v["params"], DEPTH, DDEPTH), "constants": v["constants"]}
  sd = mae_map.to_state_dict(v)
  t = TorchMAE(IMG, PATCH, DIM, DEPTH, HEADS, DDIM, DDEPTH, DHEADS, False)
  load_numpy_state_dict(t, sd)
  back = mae_map.from_state_dict({k: p.detach() for k, p in t.state_dict().items()},
                                 jax.eval_shape(lambda: v))
  jax.tree.map(np.testing.assert_array_equal, back, v)
  # an official pretraining checkpoint holds {'model': state_dict}; export + verify sample work
  import os
  import tempfile

  from jaxaffect import interop
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "mae.pth")
    torch.save({"model": {k: torch.from_numpy(np.array(a)) for k, a in sd.items()}}, path)
    again = mae_map.from_state_dict(interop.load_state_dict_file(path), v)
    jax.tree.map(np.testing.assert_array_equal, again, v)
    info = interop.export("mae", model, v, os.path.join(d, "out.safetensors"))
    ref = np.load(info["verify"])
    with torch.no_grad():
      _, pred, *_ = t(torch.from_numpy(ref["input_imgs"]), torch.from_numpy(ref["input_noise"]))
    _close(ref["output"], pred.numpy(), "verification sample")


def test_scanned_equals_looped_and_init_is_maes():
  model = mae.MAE(**SMALL, norm_pix_loss=True)
  v = mae.init_variables(model, jax.random.key(0), jnp.zeros((2, IMG, IMG, 3)))
  p = v["params"]
  for name in ("decoder_embed", "decoder_pred"):
    k = np.asarray(p[name]["kernel"])
    bound = np.sqrt(6.0 / sum(k.shape))
    assert 0.9 * bound < np.abs(k).max() <= bound and not np.asarray(p[name]["bias"]).any()
  qkv = np.asarray(p["decoder_blocks_0"]["attn"]["qkv"]["kernel"])
  bound = np.sqrt(6.0 / (DDIM + 3 * DDIM))     # xavier on (D, 3D); torch's default would be 0.82x
  assert 0.9 * bound < np.abs(qkv).max() <= bound
  assert not np.asarray(p["encoder"]["blocks_1"]["mlp"]["fc1"]["bias"]).any()
  assert 0.01 < np.asarray(p["mask_token"]).std() < 0.04
  x = np.random.default_rng(5).random((2, IMG, IMG, 3), dtype=np.float32)
  noise = np.random.default_rng(6).random((2, L), dtype=np.float32)
  looped = jit(lambda v: model.apply(v, x, noise=noise))(v)
  sv = {**v, "params": mae.to_scanned(p, DEPTH, DDEPTH)}
  scanned = jit(lambda v: model.clone(scan=True, remat_policy="full").apply(v, x, noise=noise))(sv)
  _close(scanned["pred"], looped["pred"], "scanned pred", ulps=16)
  jax.tree.map(np.testing.assert_array_equal, mae.to_looped(sv["params"]), p)


def test_task_loss_metrics_and_reconstruction_sheet():
  model = mae.MAE(**SMALL, norm_pix_loss=True)
  task = mae_task.MAEPretrainTask(module=model, num_samples=3)
  img = np.random.default_rng(7).integers(0, 256, (4, IMG, IMG, 3), dtype=np.uint8)
  batch = {"image": img, "mask": np.array([1, 1, 1, 0], np.float32)}
  params, extra = task.init(jax.random.key(0), batch)
  assert set(extra) == {"constants"}
  loss, (res, _) = jax.jit(task.loss)(params, extra, batch, jax.random.key(1))
  out = model.apply({"params": params, **extra}, img, train=True,
                    rngs={"masking": jax.random.split(jax.random.key(1))[0]})
  ref = mae.masked_patch_loss(out["pred"], out["target"], out["mask"], batch["mask"])
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
  pred = jax.jit(task.predict)(params, extra, batch)
  m = task.eval_metrics.single_from_model_output(**task.metric_inputs(pred, batch))
  m = m.merge(task.eval_metrics.single_from_model_output(**task.metric_inputs(pred, batch)))
  vals = {}
  for k, v in m.compute().items():
    vals.update(v)
  np.testing.assert_allclose(vals["mean_baseline_loss"], (64 * 3 - 1) / (64 * 3), rtol=2e-2)
  np.testing.assert_allclose(vals["loss_ratio"], vals["loss"] / vals["mean_baseline_loss"],
                             rtol=1e-6)
  imgs = task.eval_images({k: np.asarray(v) for k, v in vals.items()}, {})
  sheet = imgs["eval/reconstruction"]
  assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
  assert sheet.shape[1] > 3 * sheet.shape[0] / 3                   # 3 rows x 4 columns
  assert task.progress_keys == ("loss_ratio",)
