"""`jaxaffect.models.mae.MAE` ↔ facebookresearch/mae `models_mae.MaskedAutoencoderViT` state dict
(the pretraining checkpoints hold it under `checkpoint['model']`, which `jaxaffect import` unwraps).

    Flax (looped layout)                          torch (MAE)
    params/encoder/…, constants/encoder/pos_embed  cls_token, pos_embed, patch_embed.proj,
                                                  blocks.i.*, norm   (timm keys: interop.vit)
    params/mask_token (1, 1, Dd)                  mask_token
    params/decoder_embed                          decoder_embed  (Linear D → Dd)
    constants/decoder_pos_embed                   decoder_pos_embed  (requires_grad=False)
    params/decoder_blocks_i/{norm1,attn/qkv,attn/out,norm2,mlp/fc1,mlp/fc2}
                                                  decoder_blocks.i.{norm1,attn.qkv,attn.proj,norm2,
                                                  mlp.fc1,mlp.fc2}
    params/decoder_norm, decoder_pred             decoder_norm, decoder_pred
Scanned models (`encoder/blocks`, `decoder_blocks`) go through the looped layout. A checkpoint of
another image size gets the sin-cos tables of the model's grid (they are fixed functions of it;
`interop.vit.sincos_for_grid` warns when the checkpoint's table was not sin-cos).

facebookresearch/mae checkpoints: a full pretraining checkpoint (with the decoder) imports strictly;
the released encoder-only `mae_pretrain_vit_base.pth` (timm keys + `norm`) with `--partial`
(decoder and mask_token from the init). `export_official` writes `{'model': sd}` .pth files in
MAE's three layouts (pretrain, encoder, fine-tuned `vit_frames`) with a verification sample
(`python -m jaxaffect.interop.mae --checkpoint WORKDIR --out F.pth --layout ...`). Equality with
the checkout itself (loss, pred, mask, all gradients): `python -m jaxaffect.bench.mae
--equivalence PATH`.
Verification sample: `input_imgs` (B, 3, H, W) pixels in [0, 1] (MAE's model takes them after
`Normalize(ImageNet mean, std)`), `input_noise` (B, L) the masking noise, `output` = `pred`.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from jaxaffect.errors import UserError
from jaxaffect.interop import vit as vit_interop
from jaxaffect.interop.mapping import (ModelMapping, Rule, from_torch, layernorm, linear, param,
                                       strip_prefix, to_torch, torch_load_expr)
from jaxaffect.models import mae as mae_lib
from jaxaffect.nn import vit as vit_lib


def decoder_rules() -> list[Rule]:
  blk, tblk = f"{mae_lib.DEC_PREFIX}<i>", "decoder_blocks.<i>"
  return [*param("mask_token", "mask_token"),
          Rule(("constants/decoder_pos_embed",), "decoder_pos_embed"),
          *linear("decoder_embed", "decoder_embed"),
          *layernorm(f"{blk}/norm1", f"{tblk}.norm1"),
          *linear(f"{blk}/attn/qkv", f"{tblk}.attn.qkv"),
          *linear(f"{blk}/attn/out", f"{tblk}.attn.proj"),
          *layernorm(f"{blk}/norm2", f"{tblk}.norm2"),
          *linear(f"{blk}/mlp/fc1", f"{tblk}.mlp.fc1"),
          *linear(f"{blk}/mlp/fc2", f"{tblk}.mlp.fc2"),
          *layernorm("decoder_norm", "decoder_norm"),
          *linear("decoder_pred", "decoder_pred")]


RULES = (*vit_interop.vit_rules("encoder", "", "sincos"), *decoder_rules())


def module_grid(table) -> tuple[int, int]:
  """The (square) patch grid of a `(1, 1 + g·g, D)` position table."""
  side = int(round(np.sqrt(table.shape[1] - 1)))
  return side, side


def encoder_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The encoder alone in MAE's released pretraining layout (`mae_pretrain_vit_base.pth`: timm
  `VisionTransformer` keys cls_token, pos_embed, patch_embed.proj, blocks.i, norm; no decoder and
  no mask_token), which timm `VisionTransformer(global_pool='token', num_classes=0)` loads
  strictly and `models_vit` fine-tuning loads with strict=False (`norm` unused, fc_norm + head
  fresh)."""
  v = _keep(variables)
  enc = {"params": {"encoder": v["params"]["encoder"]}}
  if "encoder" in v.get("constants", {}):
    enc["constants"] = {"encoder": v["constants"]["encoder"]}
  return vit_interop.to_timm(enc, jp="encoder")


def save_official(state_dict: Mapping[str, Any], path: str) -> None:
  """`torch.save({'model': state_dict}, path)`: the container of MAE's checkpoints (what
  `main_finetune.py` reads as `checkpoint['model']`; `jaxaffect import` unwraps it)."""
  import torch
  torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}},
             str(path))


def _keep(variables):
  return {k: v for k, v in dict(variables).items() if k in ("params", "constants")}


def to_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  v = _keep(variables)
  v["params"] = mae_lib.to_looped(v["params"])
  return to_torch(RULES, v, where="mae")


def _looped_shapes(params: Mapping[str, Any]) -> dict[str, Any]:
  """Shapes of the looped layout from a (possibly scanned) params tree of shapes or arrays."""
  def unstack(tree, prefix, stacked):
    if stacked not in tree:
      return dict(tree)
    blocks = tree[stacked]
    depth = jax.tree.leaves(blocks)[0].shape[0]
    one = jax.tree.map(lambda s: jax.ShapeDtypeStruct(tuple(s.shape[1:]), s.dtype), dict(blocks))
    return {**{k: v for k, v in tree.items() if k != stacked},
            **{f"{prefix}{i}": one for i in range(depth)}}
  out = unstack(params, mae_lib.DEC_PREFIX, mae_lib.DEC_SCAN)
  out["encoder"] = unstack(out["encoder"], vit_lib.BLOCK_PREFIX, vit_lib.SCAN_BLOCKS)
  return out


def from_state_dict(state_dict: Mapping[str, Any], like: Mapping[str, Any] | None,
                    partial: bool = False) -> dict[str, Any]:
  if like is None:
    raise KeyError("mae: import needs the model's variables (like_variables)")
  sd = dict(strip_prefix(state_dict))
  like = _keep(like)
  consts = like.get("constants", {})
  for key, table in (("pos_embed", consts.get("encoder", {}).get("pos_embed")),
                     ("decoder_pos_embed", consts.get("decoder_pos_embed"))):
    if key in sd and table is not None and tuple(np.shape(sd[key])) != tuple(table.shape):
      sd[key] = vit_interop.sincos_for_grid(sd[key], table.shape[-1], module_grid(table), key)
  params = like["params"]
  enc_scanned = vit_lib.is_scanned(params["encoder"])
  dec_scanned = mae_lib.DEC_SCAN in params
  looped_like = {**like, "params": _looped_shapes(params)}
  out = from_torch(RULES, sd, looped_like, where="mae", partial=partial)
  p = out.get("params", {})
  if enc_scanned and "encoder" in p:
    depth = jax.tree.leaves(params["encoder"][vit_lib.SCAN_BLOCKS])[0].shape[0]
    p["encoder"] = vit_lib.to_scanned(p["encoder"], depth)
  if dec_scanned and f"{mae_lib.DEC_PREFIX}0" in p:
    from jaxaffect.nn import scan_utils
    depth = jax.tree.leaves(params[mae_lib.DEC_SCAN])[0].shape[0]
    out["params"] = scan_utils.stack_layers(p, depth, prefix=mae_lib.DEC_PREFIX,
                                            stacked=mae_lib.DEC_SCAN)
  return out


def _example_input(module, variables, batch, rng, input_shape=None):
  gh, gw = module.grid_size
  h, w = input_shape or (gh * module.patch_size, gw * module.patch_size)
  x = rng.random((batch, h, w, 3), dtype=np.float32)
  noise = rng.random((batch, (h // module.patch_size) * (w // module.patch_size)),
                     dtype=np.float32)
  return ({"imgs": np.ascontiguousarray(x.transpose(0, 3, 1, 2)), "noise": noise},
          {"imgs": x, "noise": noise})


def _run_eval(module, variables, x):
  out = jax.jit(lambda v, a, n: module.apply(v, a, noise=n, train=False))(
      _keep(variables), x["imgs"], x["noise"])
  return np.asarray(out["pred"], np.float32)


def mae_kwargs(module) -> dict[str, Any]:
  """The `MaskedAutoencoderViT(**kwargs)` of a model (plus norm_layer eps 1e-6 in the snippet)."""
  return dict(img_size=module.img_size, patch_size=module.patch_size,
              embed_dim=module.embed_dim, depth=module.depth, num_heads=module.num_heads,
              decoder_embed_dim=module.decoder_embed_dim, decoder_depth=module.decoder_depth,
              decoder_num_heads=module.decoder_num_heads, mlp_ratio=module.mlp_ratio,
              norm_pix_loss=module.norm_pix_loss)


def _snippet(weights: str, verify: str, module) -> str:
  load = torch_load_expr(weights)
  norm = ("imgs = (imgs - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / "
          "torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)" if module.normalize else "pass")
  return f'''# with a facebookresearch/mae checkout on sys.path (its models_mae.py)
import functools, numpy as np, torch
from safetensors.torch import load_file
import models_mae
model = models_mae.MaskedAutoencoderViT(
    **{mae_kwargs(module)!r},
    norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)).eval()
model.load_state_dict({load}, strict=True)
ref = np.load("{verify}")
imgs, noise = torch.from_numpy(ref["input_imgs"]), torch.from_numpy(ref["input_noise"])
{norm}
rand = torch.rand
torch.rand = lambda *a, **k: noise        # MAE draws its masking noise with torch.rand(N, L)
try:
  with torch.no_grad():
    loss, pred, mask = model(imgs, mask_ratio={module.mask_ratio!r})
finally:
  torch.rand = rand
print("max |diff|:", np.abs(pred.numpy() - ref["output"]).max())
'''


MAPPING = ModelMapping(
    name="mae", rules=RULES, example_input=_example_input, snippet=_snippet, run_eval=_run_eval,
    to_state_dict=to_state_dict, from_state_dict=from_state_dict,
    description="MAE ↔ facebookresearch/mae MaskedAutoencoderViT (pretraining keys; input "
                "(B,3,H,W) in [0,1] + masking noise (B,L); output pred (B,L,p*p*3))")


# ------------------------------------------------------------------------------------------------
# facebookresearch/mae checkpoints out: `{'model': sd}` .pth + a verification sample

LAYOUTS = ("pretrain", "encoder", "finetune")


def export_official(layout: str, module, variables: Mapping[str, Any], out_path: str, *,
                    seed: int = 0, batch: int = 2) -> dict[str, Any]:
  """Write `torch.save({'model': sd}, out_path)` in one of MAE's checkpoint layouts, and
  `<out_path>.verify.npz` (`input` (B, 3, H, W) pixels in [0, 1], `output` ours):

    pretrain  an `mae` model, every key (`models_mae.MaskedAutoencoderViT`, strict); the sample
              has `input_noise` (B, L) and `output` = pred (B, L, p·p·3)
    encoder   an `mae` model's encoder (MAE's released `mae_pretrain_vit_base.pth`: timm
              `VisionTransformer(global_pool='token', num_classes=0)` loads it strictly);
              `output` = the class token after `norm` (B, D)
    finetune  a `vit_frames` model with the one head `expr` (`mae_finetuned_vit_base.pth`:
              `models_vit.VisionTransformer(global_pool=True, num_classes=num_expr)`); `output` =
              the EXPR logits
  The MAE model and timm's take ImageNet-normalised input (normalise `input` first). Returns
  {"weights", "verify", "layout", "num_tensors"}."""
  import os

  import jax.numpy as jnp
  if layout not in LAYOUTS:
    raise UserError(f"layout={layout!r}: expected one of {LAYOUTS}")
  v = _keep(variables)
  rng = np.random.default_rng(seed)
  if layout == "finetune":
    from jaxaffect.interop import vit_frames as vf_map
    sd = vf_map.to_mae_state_dict(v)
    x = rng.random((batch, module.img_size, module.img_size, 3), dtype=np.float32)
    out = {"output": np.asarray(jax.jit(lambda v, a: module.apply(v, a, train=False)["expr"])(
        v, x), np.float32)}
  else:
    if not isinstance(module, mae_lib.MAE):
      raise UserError(f"layout={layout!r} exports an mae model; got {type(module).__name__}")
    x_t, x = _example_input(module, v, batch, rng)
    x = x["imgs"]
    if layout == "pretrain":
      sd = to_state_dict(v)
      out = {"input_noise": x_t["noise"], "output": _run_eval(module, v, x_t | {"imgs": x})}
    else:
      sd = encoder_state_dict(v)

      def cls_feature(v, a):
        def f(mdl, a):
          enc = mdl.encoder
          t = enc.encode(enc.add_cls(enc.embed(mdl.preprocess(a))), train=False)
          return enc.final_norm(t)[:, 0]
        return module.apply(v, a, method=f)
      out = {"output": np.asarray(jax.jit(cls_feature)(v, jnp.asarray(x)), np.float32)}
  tmp = out_path + ".tmp"
  try:
    save_official(sd, tmp)
    with open(out_path + ".verify.npz.tmp", "wb") as f:
      np.savez(f, input=np.ascontiguousarray(x.transpose(0, 3, 1, 2)), **out)
    os.replace(tmp, out_path)
    os.replace(out_path + ".verify.npz.tmp", out_path + ".verify.npz")
  finally:
    for p in (tmp, out_path + ".verify.npz.tmp"):
      if os.path.exists(p):
        os.unlink(p)
  return {"weights": out_path, "verify": out_path + ".verify.npz", "layout": layout,
          "num_tensors": len(sd)}


def main(argv: list[str] | None = None) -> int:
  """`python -m jaxaffect.interop.mae --checkpoint WORKDIR --out FILE.pth --layout L [--step N]`:
  a checkpoint of an mae / vit_frames run in one of MAE's layouts (`export_official`)."""
  import argparse
  p = argparse.ArgumentParser(prog="python -m jaxaffect.interop.mae")
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--layout", choices=LAYOUTS, required=True)
  p.add_argument("--step", type=int, default=None)
  a = p.parse_args(argv)
  from jaxaffect.train import loop
  _, s, variables, step = loop.restore_state(a.checkpoint, a.step)
  info = export_official(a.layout, s.task.module, variables, a.out)
  print(f"exported step {step} as MAE's {a.layout} layout: {info}")
  return 0


if __name__ == "__main__":
  import sys
  sys.exit(main())
