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


if __name__ == "__main__":              # python -m jaxaffect.bench.mae --equivalence PATH
  from jaxaffect.bench import mae_equivalence
  sys.exit(mae_equivalence.main(sys.argv[1:]))
