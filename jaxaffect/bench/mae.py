"""`jaxaffect bench mae [--reference PATH]`: facebookresearch/mae as the reference, and the
equivalence check of our MAE and ViT-frames models against that checkout (outside CI).

    jaxaffect bench mae --config mae:pretrain_b --config.model.dtype=float32 --batch 8 \
        --reference /path/to/mae          # ViT-B/16 pretraining step: ours vs models_mae
    python -m jaxaffect.bench.mae --equivalence /path/to/mae [--img 224] [--batch 2]
        # export ours -> load_state_dict(strict=True) into models_mae / models_vit; max |diff| of
        # loss, pred, mask, logits and every parameter's gradient (one JSON line + a table)

The checkout is imported as it is (its `models_mae.py`, `models_vit.py`, `util/pos_embed.py`); it
was written for timm 0.3.2 and numpy < 1.24, so the loader shims the three breakages here, never in
its files: `Block(..., qk_scale=None)` (gone from timm's Block: `models_mae.Block` is replaced by a
subclass that drops the argument), `np.float` (used by `get_1d_sincos_pos_embed_from_grid`: set to
`float` while the model is built), and timm 1.0's `VisionTransformer.forward`, which passes
`attn_mask` to the overridden `forward_features` (models_vit is called as timm 0.3.2 did:
`head(forward_features(x))`). Masking noise is injected by replacing `torch.rand` while MAE's
`random_masking` draws its `(N, L)` noise.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from typing import Any

import numpy as np

from jaxaffect.bench.core import BenchModel, Reference
from jaxaffect.errors import UserError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------ loading the checkout


def _load_module(path: str, name: str):
  """`<path>/<name>.py` as a module named `<name>` (with `path` on sys.path for its `util`)."""
  file = os.path.join(path, f"{name}.py")
  if not os.path.isfile(file):
    raise UserError(f"--reference {path}: {name}.py not found (expected a checkout of "
                    "facebookresearch/mae)")
  if name in sys.modules:
    mod = sys.modules[name]
    if os.path.abspath(getattr(mod, "__file__", "")) != os.path.abspath(file):
      raise UserError(f"--reference {path}: another `{name}` is already imported "
                      f"({mod.__file__}); run in a fresh process")
    return mod
  cached = sys.modules.get("util")
  where = [os.path.abspath(p) for p in getattr(cached, "__path__", [])]
  if cached is not None and not any(w.startswith(os.path.abspath(path)) for w in where):
    raise UserError(f"--reference {path}: another top-level `util` package is already imported "
                    f"({cached!r}); run in a fresh process")
  sys.path.insert(0, os.path.abspath(path))
  try:
    spec = importlib.util.spec_from_file_location(name, file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
  except Exception:
    sys.modules.pop(name, None)
    raise
  finally:
    sys.path.pop(0)
  return mod


@contextlib.contextmanager
def _np_float():
  """`np.float` (removed in numpy 1.24) while MAE's sin-cos tables are computed."""
  had = "float" in np.__dict__
  if not had:
    np.float = float                       # type: ignore[attr-defined]
  try:
    yield
  finally:
    if not had:
      del np.float                         # type: ignore[attr-defined]


def official_modules(path: str):
  """(models_mae, models_vit) of a facebookresearch/mae checkout, shimmed for timm 1.0."""
  from timm.models import vision_transformer as tv
  models_mae = _load_module(path, "models_mae")
  if not getattr(models_mae, "_jaxaffect_shim", False):
    class Block(tv.Block):               # timm 0.3.2's Block took qk_scale (None = Dh^-0.5)
      def __init__(self, *args, qk_scale=None, **kwargs):
        if qk_scale is not None:
          raise UserError("models_mae: qk_scale other than None has no timm 1.0 counterpart")
        super().__init__(*args, **kwargs)
    models_mae.Block = Block
    models_mae._jaxaffect_shim = True
  return models_mae, _load_module(path, "models_vit")


def official_mae(path: str, module, **kw):
  """`models_mae.MaskedAutoencoderViT` with the shape of our `MAE` module (LN eps 1e-6)."""
  import functools
  import torch
  from jaxaffect.interop import mae as mae_map
  models_mae, _ = official_modules(path)
  with _np_float():
    return models_mae.MaskedAutoencoderViT(
        **{**mae_map.mae_kwargs(module), **kw},
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))


def official_vit(path: str, module, num_classes: int):
  """`models_vit.VisionTransformer(global_pool=True)` with the shape of our `ViTFrames`."""
  import functools
  import torch
  _, models_vit = official_modules(path)
  return models_vit.VisionTransformer(
      global_pool=True, img_size=module.img_size, patch_size=module.patch_size,
      embed_dim=module.embed_dim, depth=module.depth, num_heads=module.num_heads,
      mlp_ratio=module.mlp_ratio, qkv_bias=True, num_classes=num_classes, drop_path_rate=0.0,
      norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))


def vit_forward(model, x):
  """models_vit as timm 0.3.2 ran it (timm 1.0's forward passes attn_mask to forward_features)."""
  return model.head(model.forward_features(x))


@contextlib.contextmanager
def injected_noise(noise):
  """MAE's `random_masking` draws `torch.rand(N, L)`: return `noise` for that one shape."""
  import torch
  rand, shape = torch.rand, tuple(noise.shape)

  def fake(*size, **kw):
    dims = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
    return noise.clone() if tuple(int(d) for d in dims) == shape else rand(*size, **kw)
  torch.rand = fake
  try:
    yield
  finally:
    torch.rand = rand


def normalise_nchw(x01: np.ndarray):
  """(B, H, W, 3) pixels in [0, 1] → MAE's normalised (B, 3, H, W) torch tensor."""
  import torch
  x = (np.asarray(x01, np.float32) - np.float32(MEAN)) / np.float32(STD)
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


# ------------------------------------------------------------------------------------ the bench


def mae_sources(config, n: int):
  """Random uint8 images (one-frame videos; no labels are used) of the configured size."""
  from jaxaffect.data import pipeline
  s = config.data.image_size
  rng = np.random.default_rng(config.seed)
  src = pipeline.InMemoryVideos(rng.integers(0, 256, (n, 1, s, s, 3), np.uint8),
                                np.zeros((n,), np.int32), "bench-random-images")
  return src, src


def _reference(path: str, config) -> Reference:
  """The official `models_mae.MaskedAutoencoderViT` of the config's shape, trained with its own
  loss (`forward(imgs, mask_ratio)[0]`) on the same uint8 batch, normalised as MAE's loader."""
  import torch
  m = config.model
  if str(m.dtype) != "float32":
    raise UserError(f"bench mae --reference: the official model runs float32 on CPU; the config "
                    f"computes in {m.dtype} (add --config.model.dtype=float32)")
  from jaxaffect.models.mae import MAE
  module = MAE(**{k: v for k, v in m.items() if k != "dtype"})
  torch.manual_seed(config.seed)
  model = official_mae(path, module)
  ratio = float(m.mask_ratio)

  class Step(torch.nn.Module):             # forward → (loss, pred, mask), as engine_pretrain
    def __init__(self):
      super().__init__()
      self.mae = model

    def forward(self, imgs):
      return self.mae(imgs, mask_ratio=ratio)

  def to_inputs(batch):
    x = np.asarray(batch["image"])
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return (normalise_nchw(x),)

  return Reference("official MAE models_mae (PyTorch)", Step(), to_inputs,
                   loss_fn=lambda out, labels: out[0])


MAE_BENCH = BenchModel("mae", "mae:pretrain_b", reference=_reference, sources=mae_sources,
                       input_key="image", unit="images")


# ------------------------------------------------------------------ equivalence with the checkout


def _perturbed(tree, seed: int, scale: float = 0.02):
  """Every leaf + N(0, scale²): MAE's init has zero biases and unit LayerNorms, which would leave
  those paths untested."""
  import jax
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [np.asarray(a, np.float32)
                                      + rng.normal(0, scale, np.shape(a)).astype(np.float32)
                                      for a in leaves])


def _diff(ours, ref) -> dict[str, float]:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  d = float(np.abs(ours - ref).max(initial=0.0))
  scale = float(np.abs(ref).max(initial=0.0))
  return {"max_abs": d, "ref_max": scale, "rel": d / max(scale, 1e-30)}


def _grad_report(ours_sd: dict, model) -> dict[str, Any]:
  """Per-tensor |Δ| of our gradients (in the torch layout) vs `p.grad`; every trained torch
  parameter must have ours (and no other)."""
  trained = {k: p for k, p in model.named_parameters() if p.requires_grad}
  if set(trained) != set(ours_sd):
    raise AssertionError(f"gradient keys differ: torch only {sorted(set(trained) - set(ours_sd))}"
                         f", ours only {sorted(set(ours_sd) - set(trained))}")
  per = {k: _diff(ours_sd[k], trained[k].grad.numpy()) for k in trained}
  worst = max(per, key=lambda k: per[k]["rel"])
  return {"tensors": len(per), "max_abs": max(v["max_abs"] for v in per.values()),
          "max_rel": per[worst]["rel"], "worst": worst, "worst_detail": per[worst]}


def mae_equivalence(path: str, img: int = 224, batch: int = 2, norm_pix_loss: bool = True,
                    seed: int = 0) -> dict[str, Any]:
  """Our MAE ViT-B/16 (MAE's init, perturbed) exported → `models_mae.mae_vit_base_patch16(
  norm_pix_loss=…)` strict load; the same images and masking noise; loss, pred, mask and the
  gradient of every trained parameter compared (float32 both)."""
  import jax
  import jax.numpy as jnp
  import torch
  from jaxaffect.interop import mae as mae_map
  from jaxaffect.interop.mapping import to_torch
  from jaxaffect.models import mae as mae_lib
  models_mae, _ = official_modules(path)
  module = mae_lib.MAE(img_size=img, norm_pix_loss=norm_pix_loss)
  rng = np.random.default_rng(seed)
  x = rng.random((batch, img, img, 3), dtype=np.float32)
  noise = rng.random((batch, (img // 16) ** 2), dtype=np.float32)
  v = mae_lib.init_variables(module, jax.random.key(seed), jnp.zeros((1, img, img, 3)))
  v = {"params": _perturbed(v["params"], seed), "constants": jax.device_get(v["constants"])}
  with _np_float():
    model = models_mae.mae_vit_base_patch16(norm_pix_loss=norm_pix_loss, img_size=img)
  sd = mae_map.to_state_dict(v)
  model.load_state_dict({k: torch.from_numpy(a) for k, a in sd.items()}, strict=True)

  @jax.jit
  def ours(params, x, noise):
    def loss(params):
      out = module.apply({"params": params, "constants": v["constants"]}, x, noise=noise)
      return mae_lib.masked_patch_loss(out["pred"], out["target"], out["mask"]), out
    return jax.value_and_grad(loss, has_aux=True)(params)
  (loss, out), grads = ours(v["params"], x, noise)
  g_sd = to_torch(mae_map.RULES, {"params": mae_lib.to_looped(grads),
                                  "constants": v["constants"]}, where="mae grads")
  g_sd = {k: a for k, a in g_sd.items() if "pos_embed" not in k}          # constants
  model.train()
  with injected_noise(torch.from_numpy(noise)):
    t_loss, t_pred, t_mask = model(normalise_nchw(x), mask_ratio=module.mask_ratio)
  t_loss.backward()
  return {"model": f"mae_vit_base_patch16(norm_pix_loss={norm_pix_loss})", "img": img,
          "batch": batch, "loss": float(loss), "torch_loss": float(t_loss),
          "loss_diff": _diff(loss, t_loss.item()), "pred": _diff(out["pred"], t_pred.detach()),
          "mask_equal": bool(np.array_equal(np.asarray(out["mask"]), t_mask.numpy())),
          "masked_per_image": int(t_mask[0].sum()), "grads": _grad_report(g_sd, model)}


def vit_equivalence(path: str, img: int = 224, batch: int = 2, num_classes: int = 8,
                    seed: int = 0) -> dict[str, Any]:
  """Our `ViTFrames` ViT-B/16 with an EXPR head (learned table) exported in MAE's fine-tuned layout
  → `models_vit.vit_base_patch16(global_pool=True, num_classes)` strict load; logits, the
  cross-entropy and the gradient of every parameter (eval mode: no drop path)."""
  import jax
  import jax.numpy as jnp
  import torch
  from jaxaffect.interop import vit_frames as vf_map
  from jaxaffect.models.vit_frames import ViTFrames
  _, models_vit = official_modules(path)
  module = ViTFrames(outputs=("expr",), num_expr=num_classes, img_size=img, pos_embed="learn",
                     drop_path_rate=0.0)
  rng = np.random.default_rng(seed)
  x = rng.random((batch, img, img, 3), dtype=np.float32)
  labels = rng.integers(0, num_classes, batch)
  v = module.init(jax.random.key(seed), jnp.zeros((1, img, img, 3)), train=False)
  v = {"params": _perturbed(v["params"], seed)}
  model = models_vit.vit_base_patch16(global_pool=True, num_classes=num_classes, img_size=img,
                                      drop_path_rate=0.0)
  model.load_state_dict({k: torch.from_numpy(a) for k, a in vf_map.to_mae_state_dict(v).items()},
                        strict=True)

  @jax.jit
  def ours(params):
    def loss(params):
      logits = module.apply({"params": params}, x, train=False)["expr"]
      lp = jax.nn.log_softmax(logits)
      return -jnp.mean(jnp.take_along_axis(lp, jnp.asarray(labels)[:, None], 1)), logits
    return jax.value_and_grad(loss, has_aux=True)(params)
  (loss, logits), grads = ours(v["params"])
  g_sd = vf_map.to_mae_state_dict({"params": grads})
  model.eval()
  t_logits = vit_forward(model, normalise_nchw(x))
  t_loss = torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(labels))
  t_loss.backward()
  return {"model": f"vit_base_patch16(global_pool=True, num_classes={num_classes})", "img": img,
          "batch": batch, "loss": float(loss), "loss_diff": _diff(loss, t_loss.item()),
          "logits": _diff(logits, t_logits.detach()), "grads": _grad_report(g_sd, model)}


def main(argv: list[str]) -> int:
  import argparse
  import json
  p = argparse.ArgumentParser(prog="python -m jaxaffect.bench.mae")
  p.add_argument("--equivalence", required=True, metavar="MAE_CHECKOUT")
  p.add_argument("--img", type=int, default=224)
  p.add_argument("--batch", type=int, default=2)
  a = p.parse_args(argv)
  import jax
  jax.config.update("jax_default_matmul_precision", "highest")
  results = [mae_equivalence(a.equivalence, a.img, a.batch, npl) for npl in (True, False)]
  results.append(vit_equivalence(a.equivalence, a.img, a.batch))
  for r in results:
    g = r["grads"]
    head = {k: r[k] for k in ("loss_diff", "pred", "logits", "mask_equal") if k in r}
    print(f"{r['model']} @ {r['img']} px, batch {r['batch']}: loss {r['loss']:.6f}", file=sys.stderr)
    for k, d in head.items():
      print(f"  {k}: {d}", file=sys.stderr)
    print(f"  grads of {g['tensors']} tensors: max |diff| {g['max_abs']:.3g}, worst relative "
          f"{g['max_rel']:.3g} ({g['worst']}: {g['worst_detail']})", file=sys.stderr)
  print(json.dumps(results))
  return 0


if __name__ == "__main__":              # python -m jaxaffect.bench.mae --equivalence PATH
  sys.exit(main(sys.argv[1:]))
