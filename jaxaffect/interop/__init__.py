"""PyTorch export and import, one mapping table per model.

    sd = to_torch_state_dict("former_dfer", variables)            # official key names, numpy
    variables = from_torch_state_dict("former_dfer", sd, like)    # accepts `module.` prefixes
    info = export("former_dfer", module, variables, "out/model.safetensors")
    print(info["snippet"])                                        # how to check it in PyTorch

Adding a model: write `jaxaffect/interop/<model>.py` with a `MAPPING = ModelMapping(...)` and
return it from the model module's `torch_mapping()` (models/registry.py). torch is optional (dev extra): safetensors export and import of numpy/
safetensors state dicts work without it; `.pth` files need it.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from jaxaffect.errors import UserError
from jaxaffect.interop.mapping import (ModelMapping, Rule, format_of_path,
                                       from_torch, sniff_format, strip_prefix, to_torch)

FORMATS = ("safetensors", "pth")


def get_mapping(model_name: str) -> ModelMapping:
  """The PyTorch mapping of a model: its model module's `torch_mapping()` (`models/registry.py`,
  found by convention; no table here)."""
  from jaxaffect.models import registry
  return registry.torch_mapping(model_name)


def to_torch_state_dict(model_name: str, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Flax variables (`params` + `batch_stats`) → official PyTorch `state_dict` (numpy, float32;
  BatchNorm `num_batches_tracked` = 0)."""
  mapping = get_mapping(model_name)
  return _after_export(mapping, _to_torch(mapping, variables, model_name))


def from_torch_state_dict(model_name: str, state_dict: Mapping[str, Any],
                          like_variables: Mapping[str, Any] | None = None, *,
                          partial: bool = False) -> dict[str, Any]:
  """Official PyTorch `state_dict` (tensors or numpy; `module.` prefix accepted) → Flax variables.
  With `like_variables` (e.g. `module.init(...)` or `jax.eval_shape` of it) keys and shapes are
  checked and dtypes taken from it. `partial`: only the variables the state dict has (see
  `mapping.from_torch`)."""
  mapping = get_mapping(model_name)
  if mapping.before_import is not None:
    state_dict = mapping.before_import(state_dict)
  if mapping.from_state_dict is not None:
    return mapping.from_state_dict(state_dict, like_variables, partial)
  return from_torch(mapping.rules, state_dict, like_variables, where=model_name, partial=partial)


def _to_torch(mapping: ModelMapping, variables, model_name: str) -> dict[str, np.ndarray]:
  """The rule table, or the mapping's own `to_state_dict` (layouts a table cannot express)."""
  if mapping.to_state_dict is not None:
    return mapping.to_state_dict(variables)
  return to_torch(mapping.rules, variables, where=model_name)


def _after_export(mapping: ModelMapping, sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A mapping's optional `after_export(sd)` hook (e.g. ABAW's duplicate weight-norm names)."""
  return mapping.after_export(sd) if mapping.after_export is not None else sd


def load_state_dict_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Read a safetensors file (numpy, no torch needed) or a PyTorch checkpoint (torch,
  `weights_only=True`), recognised by its content whatever its name (`.pth.tar`, `.bin`, ...);
  unwraps `{"state_dict": …}` / `{"model": …}` checkpoints."""
  path = str(path)
  if not os.path.isfile(path):
    raise UserError(f"--weights {path}: no such file")
  fmt = sniff_format(path)
  if fmt == "safetensors":
    from safetensors.numpy import load_file
    try:
      return dict(load_file(path))
    except Exception as e:         # truncated / corrupt file (e.g. an interrupted download)
      raise UserError(f"{path}: cannot read the safetensors file ({type(e).__name__}: {e}); "
                      f"is it complete?") from None
  try:
    import torch
  except ImportError as e:   # pragma: no cover - torch is a dev extra
    raise ImportError(f"reading {path} needs torch (pip install torch)") from e
  try:
    with open(path, "rb") as f:    # a file object: torch would dispatch on a .safetensors name
      obj = torch.load(f, map_location="cpu", weights_only=True)
  except Exception as e:           # truncated zip, unpickling error, non-tensor objects
    raise UserError(f"{path}: cannot read the PyTorch file ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); is it complete?") from None
  for k in ("state_dict", "model"):
    if isinstance(obj, dict) and k in obj and isinstance(obj[k], dict):
      obj = obj[k]
  if not isinstance(obj, Mapping):
    raise UserError(f"{path}: a PyTorch file holding {type(obj).__name__}, not a state dict")
  return {k: v.detach().cpu().numpy() for k, v in obj.items()}


def resolve_format(path: str | os.PathLike, fmt: str | None = None) -> str:
  """The export format: `fmt`, else the extension's (`.safetensors` / `.pth`, `.pt`, `.pth.tar`,
  `.tar`, `.bin`, `.ckpt`), else safetensors. An extension that contradicts `fmt` is an error
  (a `.pth.tar` holding safetensors bytes cannot be read by `torch.load`)."""
  by_name = format_of_path(str(path))
  if fmt is not None and fmt not in FORMATS:
    raise UserError(f"fmt={fmt!r} (--format): expected one of {FORMATS}")
  if fmt is not None and by_name is not None and by_name != fmt:
    raise UserError(f"--out {path}: the extension says {by_name}, --format says {fmt}; name the "
                    f"file {'.safetensors' if fmt == 'safetensors' else '.pth'} or drop --format")
  return fmt or by_name or "safetensors"


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike,
                    fmt: str = "safetensors") -> None:
  if fmt == "safetensors":
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(path))
  elif fmt == "pth":
    try:
      import torch
    except ImportError as e:
      raise ImportError("fmt='pth' needs torch; use fmt='safetensors' without it") from e
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, str(path))
  else:
    raise ValueError(f"fmt={fmt!r}: expected one of {FORMATS}")


def _umask_mode() -> int:
  """The mode a plain `open(..., "w")` would give a new file (0666 minus the umask)."""
  mask = os.umask(0)
  os.umask(mask)
  return 0o666 & ~mask


def verify_path(out_path: str | os.PathLike) -> Path:
  """`model.safetensors` → `model.safetensors.verify.npz` (the whole name: exports of one stem in
  two formats keep their own verification samples)."""
  p = Path(out_path)
  return p.with_name(p.name + ".verify.npz")


@functools.partial(jax.jit, static_argnums=0)
def _apply_eval(module, variables, x):
  return module.apply(variables, x, train=False)


def export(model_name: str, module, variables: Mapping[str, Any], out_path: str | os.PathLike,
           fmt: str | None = None, seed: int = 0, batch: int = 2,
           input_shape: tuple[int, int] | None = None) -> dict[str, Any]:
  """Write the weights in the official PyTorch layout plus a verification sample.

  `<out>.verify.npz` holds `input` (a random batch in the official torch layout, e.g.
  `(B,16,3,112,112)` for Former-DFER; a dict of arrays is stored as `input_<key>`) and `output`
  (this model's eval-mode outputs for it).
  Returns `{"weights", "verify", "format", "num_tensors", "num_params", "snippet"}`; `snippet` is
  Python code that loads the export into the official PyTorch model and compares outputs.
  `input_shape=(H, W)` overrides the image size inferred from the variables.
  """
  fmt = resolve_format(out_path, fmt)
  mapping = get_mapping(model_name)
  variables = {k: v for k, v in dict(variables).items()
               if k in ("params", "batch_stats", "constants")}
  sd = _after_export(mapping, _to_torch(mapping, variables, model_name))
  out_path = Path(out_path)
  try:
    out_path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"--out {out_path}: cannot create {out_path.parent} ({e.strerror or e})") \
        from None
  vpath = verify_path(out_path)
  x_torch, x_flax = mapping.example_input(module, variables, batch, np.random.default_rng(seed),
                                          input_shape)
  if mapping.run_eval is not None:
    y = mapping.run_eval(module, variables, x_flax)
  else:
    y = _apply_eval(module, variables, x_flax)
  y = np.asarray(jax.device_get(y), np.float32)
  # Write to temporary names first: a failure never leaves a half-written export behind.
  tmp_w, tmp_v = out_path.with_name(out_path.name + ".tmp"), vpath.with_name(vpath.name + ".tmp")
  try:
    save_state_dict(sd, tmp_w, fmt)
    with open(tmp_v, "wb") as f:
      # a dict input (several feature streams) is stored as `input_<name>` arrays
      inputs = ({f"input_{k}": np.asarray(v) for k, v in x_torch.items()}
                if isinstance(x_torch, Mapping) else {"input": x_torch})
      np.savez(f, **inputs, output=y, model_name=np.array(model_name))
    for p in (tmp_w, tmp_v):         # safetensors writes 0600: give the usual mode of new files
      os.chmod(p, _umask_mode())
    os.replace(tmp_w, out_path)
    os.replace(tmp_v, vpath)
  finally:
    for p in (tmp_w, tmp_v):
      p.unlink(missing_ok=True)
  from jaxaffect import flops
  num_params = flops.num_params(variables["params"])
  return {"weights": str(out_path), "verify": str(vpath), "format": fmt,
          "num_tensors": len(sd), "num_params": num_params,
          "snippet": mapping.snippet(str(out_path), str(vpath), module)}


__all__ = ["FORMATS", "ModelMapping", "Rule", "export", "format_of_path",
           "from_torch_state_dict", "get_mapping", "load_state_dict_file", "resolve_format",
           "sniff_format", "save_state_dict", "strip_prefix",
           "to_torch_state_dict", "verify_path"]
