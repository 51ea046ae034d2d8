"""facebookresearch/mae checkpoints in, both layouts out (issue 13 item 7, import/export part).

State dicts in MAE's key layout come from INDEPENDENT torch modules (the paper-written `TorchMAE`
of tests/models/test_mae.py; timm `VisionTransformer` for the encoder-only pretraining checkpoint
and for the fine-tuned one, whose keys are MAE's `models_vit` keys), saved as `{'model': sd}` .pth
as MAE saves them, read by `interop.load_state_dict_file` and imported: strict key coverage (the
errors name the missing / unexpected keys), forward equality with the torch module that wrote the
file, the position-table resize against torch `F.interpolate(mode='bicubic',
align_corners=False)` (MAE `interpolate_pos_embed`), the fixed sin-cos tables regenerated (warned
when the checkpoint's table was not sin-cos), export back to MAE's layouts, and `jaxaffect import`
end to end. Toy sizes (32 px, patch 8)."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from jaxaffect import interop
from jaxaffect.errors import UserError
from jaxaffect.interop import mae as mae_map
from jaxaffect.interop import vit_frames as vf_map
from jaxaffect.models import mae
from jaxaffect.models.vit_frames import ViTFrames
from jaxaffect.nn import vit
from tests import tolerances
from tests.models.test_mae import (DDEPTH, DDIM, DEPTH, DHEADS, DIM, HEADS, IMG, MEAN, PATCH,
                                   SMALL, STD, TorchMAE)

G = IMG // PATCH
L = G * G


def _save(tmp_path, sd, name="ckpt.pth"):
  path = tmp_path / name
  torch.save({"model": {k: (v if torch.is_tensor(v) else torch.from_numpy(np.asarray(v)))
                        for k, v in sd.items()}}, path)                 # MAE's container
  return str(path)


def _torch_mae(seed=0, img=IMG, norm_pix=True):
  torch.manual_seed(seed)
  t = TorchMAE(img, PATCH, DIM, DEPTH, HEADS, DDIM, DDEPTH, DHEADS, norm_pix)
  g = img // PATCH
  with torch.no_grad():                      # MAE's fixed tables; random everything else
    t.pos_embed.copy_(torch.from_numpy(vit.sincos_2d_pos_embed(DIM, g)[None]))
    t.decoder_pos_embed.copy_(torch.from_numpy(vit.sincos_2d_pos_embed(DDIM, g)[None]))
    for name, p in t.named_parameters():
      if p.requires_grad:
        p.add_(0.05 * torch.randn_like(p))
  return t.eval()


def _mae_like(model):
  return jax.eval_shape(lambda: model.init({"params": jax.random.key(0),
                                            "masking": jax.random.key(1)},
                                           jnp.zeros((1, IMG, IMG, 3))))


def _vit_timm(seed=0, img=IMG, num_classes=8, pool="avg"):
  torch.manual_seed(seed)
  t = VisionTransformer(img_size=img, patch_size=PATCH, embed_dim=DIM, depth=DEPTH,
                        num_heads=HEADS, num_classes=num_classes, global_pool=pool)
  with torch.no_grad():
    for p in t.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return t.eval()


def _nchw(x01):
  x = (x01 - np.float32(MEAN)) / np.float32(STD)
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _close(ours, ref, ulps=256, what=""):
  ref = np.asarray(ref, np.float64)
  tolerances.assert_close_ulps(np.asarray(ours, np.float64), ref, magnitude=np.abs(ref).max(),
                               ulps=ulps, dtype=np.float32, err_msg=what)


# ---------------------------------------------------------------------------- pretraining (MAE)


def test_full_pretraining_checkpoint_imports_strictly_and_runs_as_the_torch_mae(tmp_path):
  """A full pretraining checkpoint (encoder + decoder, MAE's `{'model': sd}`) → `mae` strictly:
  pred and loss equal the torch MAE that wrote it with the same noise; export back is the same
  state dict."""
  t = _torch_mae()
  sd = {k: v.detach().clone() for k, v in t.state_dict().items()}
  path = _save(tmp_path, sd)
  model = mae.MAE(**SMALL, norm_pix_loss=True)
  variables = interop.from_torch_state_dict("mae", interop.load_state_dict_file(path),
                                            _mae_like(model))
  rng = np.random.default_rng(0)
  x = rng.random((2, IMG, IMG, 3), dtype=np.float32)
  noise = rng.random((2, L), dtype=np.float32)
  out = jax.jit(lambda v: model.apply(v, x, noise=noise))(variables)
  with torch.no_grad():
    t_loss, t_pred, t_mask, _, _ = t(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                                     torch.from_numpy(noise))
  np.testing.assert_array_equal(np.asarray(out["mask"]), t_mask.numpy())
  _close(out["pred"], t_pred.numpy(), what="pred")
  loss = mae.masked_patch_loss(out["pred"], out["target"], out["mask"])
  np.testing.assert_allclose(float(loss), float(t_loss), rtol=1e-5)
  back = mae_map.to_state_dict(variables)
  assert set(back) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k].numpy(), err_msg=k)


def test_missing_and_unexpected_keys_are_named(tmp_path):
  t = _torch_mae()
  like = _mae_like(mae.MAE(**SMALL))
  sd = {k: v for k, v in t.state_dict().items() if k != "decoder_blocks.1.mlp.fc2.weight"}
  with pytest.raises(KeyError, match=r"missing \['params/decoder_blocks_1/mlp/fc2/kernel'\]"):
    interop.from_torch_state_dict("mae", sd, like)
  sd = {**t.state_dict(), "decoder_extra.weight": torch.zeros(3)}
  with pytest.raises(KeyError, match="unexpected torch keys .*decoder_extra.weight"):
    interop.from_torch_state_dict("mae", sd, like)


def test_encoder_only_pretraining_checkpoint(tmp_path):
  """MAE's released `mae_pretrain_vit_base.pth` layout (encoder + norm; no decoder, no
  mask_token): strict import into `mae` names the decoder keys it lacks; `partial` imports the
  encoder, whose class-token feature equals timm's VisionTransformer(global_pool='token') loaded
  strictly from the same file; `encoder_state_dict` exports that layout back."""
  t = _vit_timm(num_classes=0, pool="token")
  with torch.no_grad():                      # MAE's fixed table (requires_grad=False there)
    t.pos_embed.copy_(torch.from_numpy(vit.sincos_2d_pos_embed(DIM, G)[None]))
  sd = {k: v.detach().clone() for k, v in t.state_dict().items()}
  assert "norm.weight" in sd and not any(k.startswith("decoder") for k in sd)
  path = _save(tmp_path, sd)
  loaded = interop.load_state_dict_file(path)
  model = mae.MAE(**SMALL)
  like = _mae_like(model)
  with pytest.raises(KeyError, match="missing .*params/decoder_"):
    interop.from_torch_state_dict("mae", loaded, like)
  enc = interop.from_torch_state_dict("mae", loaded, like, partial=True)
  assert set(enc["params"]) == {"encoder"} and set(enc["constants"]) == {"encoder"}
  x = np.random.default_rng(1).random((2, IMG, IMG, 3), dtype=np.float32)
  encoder = vit.ViT(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                    num_classes=0, global_pool="token", pos_embed="sincos")
  ours = encoder.apply({"params": enc["params"]["encoder"],
                        "constants": enc["constants"]["encoder"]}, _nchw(x).numpy()
                       .transpose(0, 2, 3, 1))
  with torch.no_grad():
    ref = t(_nchw(x)).numpy()
  _close(ours, ref, what="cls feature")
  full = {"params": {**jax.tree.map(np.zeros_like, like["params"]), **enc["params"]},
          "constants": {**jax.tree.map(np.zeros_like, like["constants"]), **enc["constants"]}}
  back = mae_map.encoder_state_dict(full)
  assert set(back) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k].numpy(), err_msg=k)


def test_sincos_tables_of_another_grid_are_regenerated_and_checked():
  """A 48-px pretraining checkpoint (6×6 grid) into a 32-px MAE: both fixed tables are the 4×4
  sin-cos tables (no warning: the checkpoint's were sin-cos); a checkpoint whose table is not
  sin-cos (a trained one) is replaced too, with a warning that names it."""
  t = _torch_mae(img=48)
  sd = {k: v.detach().clone() for k, v in t.state_dict().items()}
  like = _mae_like(mae.MAE(**SMALL))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    v = interop.from_torch_state_dict("mae", sd, like)
  np.testing.assert_array_equal(v["constants"]["encoder"]["pos_embed"][0],
                                vit.sincos_2d_pos_embed(DIM, G))
  np.testing.assert_array_equal(v["constants"]["decoder_pos_embed"][0],
                                vit.sincos_2d_pos_embed(DDIM, G))
  sd["pos_embed"] = sd["pos_embed"] + 0.01
  with pytest.warns(UserWarning, match=r"pos_embed: .*not a fixed sin-cos table"):
    v = interop.from_torch_state_dict("mae", sd, like)
  np.testing.assert_array_equal(v["constants"]["encoder"]["pos_embed"][0],
                                vit.sincos_2d_pos_embed(DIM, G))


# --------------------------------------------------------------------------- fine-tuned (ViT)


def _frames(pos="learn", num_expr=8, img=IMG):
  return ViTFrames(outputs=("expr",), num_expr=num_expr, img_size=img, patch_size=PATCH,
                   embed_dim=DIM, depth=DEPTH, num_heads=HEADS, pos_embed=pos,
                   drop_path_rate=0.0)


def _frames_like(model):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, IMG, IMG, 3)),
                                           train=False))


def test_finetuned_checkpoint_imports_strictly_and_exports_back(tmp_path):
  """MAE's fine-tuned layout (`models_vit.VisionTransformer(global_pool=True)` = timm's keys with
  fc_norm + head; here written by timm's VisionTransformer(global_pool='avg')) → `vit_frames`
  with a learned table: the EXPR logits equal timm's; `to_mae_state_dict` gives the file back."""
  t = _vit_timm(num_classes=8)
  sd = {k: v.detach().clone() for k, v in t.state_dict().items()}
  assert {"fc_norm.weight", "head.weight"} <= set(sd) and "norm.weight" not in sd
  path = _save(tmp_path, sd)
  model = _frames()
  v = interop.from_torch_state_dict("vit_frames", interop.load_state_dict_file(path),
                                    _frames_like(model))
  x = np.random.default_rng(2).random((2, IMG, IMG, 3), dtype=np.float32)
  ours = model.apply(v, x, train=False)["expr"]
  with torch.no_grad():
    ref = t(_nchw(x)).numpy()
  _close(ours, ref, ulps=512, what="expr logits")
  back = vf_map.to_mae_state_dict(v)
  assert set(back) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k].numpy(), err_msg=k)
  t2 = _vit_timm(seed=5, num_classes=8)
  t2.load_state_dict({k: torch.from_numpy(a) for k, a in back.items()}, strict=True)


def test_finetuned_checkpoint_of_other_classes_needs_partial():
  """ImageNet's 1000-class head (here 10) does not fit the 8-class EXPR head: refused, naming
  head.weight; with partial the encoder and fc_norm come in and the head is left out."""
  t = _vit_timm(num_classes=10)
  sd = {k: v.detach() for k, v in t.state_dict().items()}
  like = _frames_like(_frames())
  with pytest.raises(KeyError, match=r"head.weight has shape \(10, 64\).*EXPR head \(8, 64\)"):
    interop.from_torch_state_dict("vit_frames", sd, like)
  v = interop.from_torch_state_dict("vit_frames", sd, like, partial=True)
  assert "heads_expr" not in v["params"]
  np.testing.assert_array_equal(v["params"]["encoder"]["fc_norm"]["scale"],
                                sd["fc_norm.weight"].numpy())


def test_pretraining_checkpoint_into_vit_frames():
  """An encoder-only or full pretraining checkpoint into the fine-tuning model: strict import names
  fc_norm (missing) or the decoder keys (unexpected); partial takes the encoder, drops `norm`
  (MAE's fine-tuning deletes it when pooling) and leaves fc_norm and the head to the init."""
  t = _torch_mae()
  full = {k: v.detach() for k, v in t.state_dict().items()}
  enc_only = {k: v for k, v in full.items()
              if not k.startswith("decoder") and k != "mask_token"}
  like = _frames_like(_frames(pos="sincos"))
  with pytest.raises(KeyError, match="missing .*encoder/fc_norm"):
    interop.from_torch_state_dict("vit_frames", enc_only, like)
  with pytest.raises(KeyError, match="unexpected torch keys .*decoder_"):
    interop.from_torch_state_dict("vit_frames", full, like)
  for sd in (enc_only, full):
    v = interop.from_torch_state_dict("vit_frames", sd, like, partial=True)
    enc = v["params"]["encoder"]
    assert "fc_norm" not in enc and "norm" not in enc and "heads_expr" not in v["params"]
    np.testing.assert_array_equal(enc["blocks_1"]["mlp"]["fc1"]["kernel"],
                                  full["blocks.1.mlp.fc1.weight"].numpy().T)
    np.testing.assert_array_equal(v["constants"]["encoder"]["pos_embed"],
                                  full["pos_embed"].numpy())


def test_learned_table_of_another_grid_is_resized_as_torch_bicubic(tmp_path):
  """A fine-tuned checkpoint at 48 px (6×6) into a 32-px model with a learned table: the class row
  kept, the patch grid resized exactly as MAE's `interpolate_pos_embed` (torch
  `F.interpolate(mode='bicubic', align_corners=False)`); the logits then equal timm's 32-px model
  holding that torch-resized table."""
  t48 = _vit_timm(img=48, num_classes=8)
  sd = {k: v.detach().clone() for k, v in t48.state_dict().items()}
  pe = sd["pos_embed"]
  grid = pe[:, 1:].reshape(1, 6, 6, DIM).permute(0, 3, 1, 2)
  grid = torch.nn.functional.interpolate(grid, size=(G, G), mode="bicubic", align_corners=False)
  ref_pe = torch.cat([pe[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
  path = _save(tmp_path, sd)
  model = _frames()
  v = interop.from_torch_state_dict("vit_frames", interop.load_state_dict_file(path),
                                    _frames_like(model))
  got = np.asarray(v["params"]["encoder"]["pos_embed"])
  np.testing.assert_array_equal(got[:, :1], pe[:, :1].numpy())
  _close(got, ref_pe.numpy(), ulps=16, what="bicubic pos_embed")
  t32 = _vit_timm(img=IMG, num_classes=8)
  t32.load_state_dict({**sd, "pos_embed": ref_pe}, strict=True)
  x = np.random.default_rng(3).random((2, IMG, IMG, 3), dtype=np.float32)
  with torch.no_grad():
    ref = t32(_nchw(x)).numpy()
  _close(model.apply(v, x, train=False)["expr"], ref, ulps=512, what="logits at 32 px")


# ------------------------------------------------------------------------ `jaxaffect import`


def test_cli_import_of_an_official_checkpoint(tmp_path, capsys):
  """`jaxaffect import --weights ckpt.pth` (MAE's `{'model': sd}`) into the mae:smoke config:
  the step-0 checkpoint restores to the file's values."""
  from jaxaffect import cli
  from jaxaffect.train import loop
  torch.manual_seed(0)
  c = dict(img=32, p=8, d=96, depth=4, heads=4, dd=64, ddepth=2, dheads=4)
  t = TorchMAE(*c.values(), norm_pix=True)
  with torch.no_grad():
    t.pos_embed.copy_(torch.from_numpy(vit.sincos_2d_pos_embed(96, 4)[None]))
    t.decoder_pos_embed.copy_(torch.from_numpy(vit.sincos_2d_pos_embed(64, 4)[None]))
  sd = {k: v.detach().clone() for k, v in t.state_dict().items()}
  path = _save(tmp_path, sd)
  wd = str(tmp_path / "run")
  assert cli.main(["import", "--weights", path, "--config", f"mae:smoke,shards={tmp_path}/no_shards",
                   "--workdir", wd]) == 0
  assert "imported" in capsys.readouterr().out
  _, _, variables, step = loop.restore_state(wd, 0)
  assert step == 0
  back = mae_map.to_state_dict(variables)
  assert set(back) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k].numpy(), err_msg=k)


# ------------------------------------------------------------------------------- export back


def test_export_official_layouts_load_strictly_and_match_their_samples(tmp_path):
  """`export_official` writes MAE's `{'model': sd}` in the three layouts; each loads strictly into
  an independent torch module (TorchMAE; timm token-pool encoder; timm avg-pool + head) which
  reproduces the verification sample written next to it."""
  t = _torch_mae()
  sd = {k: v.detach().clone() for k, v in t.state_dict().items()}
  model = mae.MAE(**SMALL, norm_pix_loss=True)
  v = interop.from_torch_state_dict("mae", sd, _mae_like(model))
  for layout in ("pretrain", "encoder"):
    path = str(tmp_path / f"{layout}.pth")
    info = mae_map.export_official(layout, model, v, path)
    got = torch.load(path)["model"]
    ref = np.load(info["verify"])
    x01 = torch.from_numpy(ref["input"])
    if layout == "pretrain":
      t2 = TorchMAE(IMG, PATCH, DIM, DEPTH, HEADS, DDIM, DDEPTH, DHEADS, True).eval()
      t2.load_state_dict(got, strict=True)
      with torch.no_grad():
        pred = t2(x01, torch.from_numpy(ref["input_noise"]))[1].numpy()
    else:
      t2 = _vit_timm(seed=7, num_classes=0, pool="token")
      t2.load_state_dict(got, strict=True)
      with torch.no_grad():
        pred = t2(_nchw(ref["input"].transpose(0, 2, 3, 1))).numpy()
    assert len(got) == info["num_tensors"]
    _close(ref["output"], pred, what=layout)
  ft = _frames()
  tf = _vit_timm(num_classes=8)
  vf = interop.from_torch_state_dict("vit_frames", tf.state_dict(), _frames_like(ft))
  info = mae_map.export_official("finetune", ft, vf, str(tmp_path / "ft.pth"))
  ref = np.load(info["verify"])
  t2 = _vit_timm(seed=8, num_classes=8)
  t2.load_state_dict(torch.load(info["weights"])["model"], strict=True)
  with torch.no_grad():
    logits = t2(_nchw(ref["input"].transpose(0, 2, 3, 1))).numpy()
  _close(ref["output"], logits, ulps=512, what="finetune")
  with pytest.raises(UserError, match="exports an mae model"):
    mae_map.export_official("encoder", ft, vf, str(tmp_path / "x.pth"))
