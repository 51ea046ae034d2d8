"""Generic Flax ↔ PyTorch state-dict mapping: a model is a table of `Rule`s.

A rule pairs templates of flattened Flax keys (`"<collection>/<module path>/<leaf>"`, e.g.
`params/cs_former/stem/conv1/kernel`) with a template of a torch `state_dict` key and a `Transform`.
Templates hold placeholders `<name>` (digits) or `<name:regex>`; the same placeholders fill the
other side, so one table serves export and import:

    Rule(("params/layer<s>/block_<b>/<c:conv[12]>/kernel",), "layer<s>.<b>.<c>.weight", "conv2d")

Layout transforms (PyTorch → Flax conventions, reference_impls.md §6): Linear `(out,in)` ↔ kernel
`(in,out)`; Conv2d OIHW ↔ HWIO; Conv1d `(O,I,K)` ↔ `(K,I,O)`; `torch.nn.MultiheadAttention`
`in_proj_weight = [Wq; Wk; Wv]` ↔ three Dense kernels (many-to-one rules).
BatchNorm `num_batches_tracked` (no Flax counterpart) is written as 0 next to every
`running_mean` on export and ignored on import.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import traverse_util

# ----------------------------------------------------------------------------------------------
# Transforms


@dataclasses.dataclass(frozen=True)
class Transform:
  """`to_torch(list of Flax arrays) -> torch array`; `from_torch(torch array, n) -> n arrays`."""
  to_torch: Callable[[list[np.ndarray]], np.ndarray]
  from_torch: Callable[[np.ndarray, int], list[np.ndarray]]


def _one(f):
  return lambda parts: f(parts[0])


TRANSFORMS: dict[str, Transform] = {
    "same": Transform(_one(lambda a: a), lambda t, n: [t]),
    "linear": Transform(_one(lambda a: a.T), lambda t, n: [t.T]),                # (in,out)↔(out,in)
    "conv2d": Transform(_one(lambda a: a.transpose(3, 2, 0, 1)),                    # HWIO → OIHW
                        lambda t, n: [t.transpose(2, 3, 1, 0)]),
    "conv1d": Transform(_one(lambda a: a.transpose(2, 1, 0)),                       # KIO → OIK
                        lambda t, n: [t.transpose(2, 1, 0)]),
    # Several Dense kernels stacked on torch's output axis (MHA in_proj_weight = [Wq; Wk; Wv]).
    "stack_linear": Transform(lambda parts: np.concatenate([p.T for p in parts], axis=0),
                              lambda t, n: [p.T for p in np.split(t, n, axis=0)]),
    "stack_bias": Transform(lambda parts: np.concatenate(parts, axis=0),
                            lambda t, n: list(np.split(t, n, axis=0))),
}

# ----------------------------------------------------------------------------------------------
# Templates

_PLACEHOLDER = re.compile(r"<(\w+)(?::([^>]+))?>")


def _placeholder_regexes(*templates: str) -> dict[str, str]:
  """Placeholder → regex, from every template of a rule (`<c:conv[12]>` defines `c` once)."""
  out: dict[str, str] = {}
  for t in templates:
    for m in _PLACEHOLDER.finditer(t):
      if m.group(2):
        out[m.group(1)] = m.group(2)
  return out


def _compile(template: str, regexes: Mapping[str, str]) -> re.Pattern:
  out, pos, seen = [], 0, set()
  for m in _PLACEHOLDER.finditer(template):
    out.append(re.escape(template[pos:m.start()]))
    name = m.group(1)
    rx = m.group(2) or regexes.get(name, r"[0-9]+")
    out.append(f"(?P={name})" if name in seen else f"(?P<{name}>{rx})")
    seen.add(name)
    pos = m.end()
  out.append(re.escape(template[pos:]))
  return re.compile("".join(out))


def _fill(template: str, groups: Mapping[str, str]) -> str:
  return _PLACEHOLDER.sub(lambda m: groups[m.group(1)], template)


@dataclasses.dataclass(frozen=True)
class Rule:
  jax: tuple[str, ...]
  torch: str
  transform: str = "same"

  def __post_init__(self):
    if self.transform not in TRANSFORMS:
      raise ValueError(f"unknown transform {self.transform!r}; known {sorted(TRANSFORMS)}")


# Rule builders: `jp` is a Flax module path ("cs_former/stem/conv1"), `tp` a torch module path.

def _j(*parts: str) -> str:
  return "/".join(p for p in parts if p)


def param(jp: str, tp: str) -> list[Rule]:
  """A bare parameter (`self.param(...)` ↔ `nn.Parameter`), e.g. a positional embedding."""
  return [Rule((_j("params", jp),), tp)]


def linear(jp: str, tp: str) -> list[Rule]:
  return [Rule((_j("params", jp, "kernel"),), f"{tp}.weight", "linear"),
          Rule((_j("params", jp, "bias"),), f"{tp}.bias")]


def conv2d(jp: str, tp: str) -> list[Rule]:
  return [Rule((_j("params", jp, "kernel"),), f"{tp}.weight", "conv2d"),
          Rule((_j("params", jp, "bias"),), f"{tp}.bias")]


def conv1d(jp: str, tp: str) -> list[Rule]:
  return [Rule((_j("params", jp, "kernel"),), f"{tp}.weight", "conv1d"),
          Rule((_j("params", jp, "bias"),), f"{tp}.bias")]


def layernorm(jp: str, tp: str) -> list[Rule]:
  return [Rule((_j("params", jp, "scale"),), f"{tp}.weight"),
          Rule((_j("params", jp, "bias"),), f"{tp}.bias")]


def batchnorm(jp: str, tp: str) -> list[Rule]:
  return [*layernorm(jp, tp),
          Rule((_j("batch_stats", jp, "mean"),), f"{tp}.running_mean"),
          Rule((_j("batch_stats", jp, "var"),), f"{tp}.running_var")]


def torch_mha(jp: str, tp: str) -> list[Rule]:
  """`jaxaffect.nn.MultiHeadAttention(qkv_layout="separate")` ↔ `torch.nn.MultiheadAttention`
  (`in_proj_weight`/`in_proj_bias` packing q, k, v; `out_proj`)."""
  qkv = ("q", "k", "v")
  return [Rule(tuple(_j("params", jp, n, "kernel") for n in qkv), f"{tp}.in_proj_weight",
               "stack_linear"),
          Rule(tuple(_j("params", jp, n, "bias") for n in qkv), f"{tp}.in_proj_bias",
               "stack_bias"),
          *linear(_j(jp, "out"), f"{tp}.out_proj")]


def torch_encoder_layer(jp: str, tp: str) -> list[Rule]:
  """`TransformerEncoderLayer(qkv_layout="separate", qkv_bias=True)` ↔
  `torch.nn.TransformerEncoderLayer` (`self_attn`, `linear1/2`, `norm1/2`)."""
  return [*torch_mha(_j(jp, "attn"), f"{tp}.self_attn"),
          *linear(_j(jp, "mlp/fc1"), f"{tp}.linear1"), *linear(_j(jp, "mlp/fc2"), f"{tp}.linear2"),
          *layernorm(_j(jp, "norm1"), f"{tp}.norm1"), *layernorm(_j(jp, "norm2"), f"{tp}.norm2")]


def torch_decoder_layer(jp: str, tp: str) -> list[Rule]:
  """`TransformerDecoderLayer` ↔ `torch.nn.TransformerDecoderLayer` (`self_attn`,
  `multihead_attn`, `linear1/2`, `norm1/2/3`)."""
  return [*torch_mha(_j(jp, "self_attn"), f"{tp}.self_attn"),
          *torch_mha(_j(jp, "cross_attn"), f"{tp}.multihead_attn"),
          *linear(_j(jp, "mlp/fc1"), f"{tp}.linear1"), *linear(_j(jp, "mlp/fc2"), f"{tp}.linear2"),
          *layernorm(_j(jp, "norm1"), f"{tp}.norm1"), *layernorm(_j(jp, "norm2"), f"{tp}.norm2"),
          *layernorm(_j(jp, "norm3"), f"{tp}.norm3")]


# ----------------------------------------------------------------------------------------------
# Conversion


def flatten_variables(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """`{"params": {...}, "batch_stats": {...}}` → `{"params/a/b/kernel": np.ndarray}` (host copy).
  Arrays must be fully addressable (gather sharded arrays first in multi-process runs)."""
  flat = traverse_util.flatten_dict(jax.device_get(dict(variables)), sep="/")
  return {k: np.asarray(v) for k, v in flat.items()}


def _to_numpy(v: Any) -> np.ndarray:
  if hasattr(v, "detach"):   # torch.Tensor, without importing torch
    v = v.detach().cpu()
    if str(v.dtype) == "torch.bfloat16":
      v = v.float()
    v = v.numpy()
  return np.asarray(v)


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
  """Remove a `module.` (DataParallel/DDP) prefix if every key carries it."""
  keys = list(state_dict)
  if keys and all(k.startswith(prefix) for k in keys):
    return {k[len(prefix):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def to_torch(rules: Sequence[Rule], variables: Mapping[str, Any], *,
             num_batches_tracked: int = 0, float_dtype: Any = np.float32,
             where: str = "") -> dict[str, np.ndarray]:
  """Flax variables → torch-layout `state_dict` of numpy arrays; floating arrays (incl. bfloat16)
  are cast to `float_dtype` (None keeps them), integer arrays keep their dtype."""
  flat = flatten_variables(variables)
  out: dict[str, np.ndarray] = {}
  used: set[str] = set()
  for rule in rules:
    first = _compile(rule.jax[0], _placeholder_regexes(*rule.jax, rule.torch))
    for key in sorted(flat):
      m = first.fullmatch(key)
      if m is None or key in used:
        continue
      groups = m.groupdict()
      keys = [_fill(t, groups) for t in rule.jax]
      missing = [k for k in keys if k not in flat]
      if missing:
        raise KeyError(f"{where}: {key} needs {missing} (rule {rule.torch}), not in the variables")
      tkey = _fill(rule.torch, groups)
      if tkey in out:
        raise KeyError(f"{where}: two Flax entries map to torch key {tkey!r}")
      parts = [flat[k] if flat[k].dtype.kind in "iub" or float_dtype is None
               else flat[k].astype(float_dtype) for k in keys]
      out[tkey] = np.ascontiguousarray(TRANSFORMS[rule.transform].to_torch(parts))
      used.update(keys)
  left = sorted(set(flat) - used)
  if left:
    raise KeyError(f"{where}: no torch mapping for Flax variables {left[:10]}"
                   f"{' …' if len(left) > 10 else ''}")
  for k in [k for k in out if k.endswith(".running_mean")]:
    out[k[:-len("running_mean")] + "num_batches_tracked"] = np.array(num_batches_tracked,
                                                                      np.int64)
  return out


def from_torch(rules: Sequence[Rule], state_dict: Mapping[str, Any],
               like_variables: Mapping[str, Any] | None = None, *,
               where: str = "", partial: bool = False) -> dict[str, Any]:
  """torch `state_dict` (tensors or arrays; `module.` prefix accepted) → nested Flax variables.

  With `like_variables`, the key set and every shape must match it exactly and arrays take its
  dtypes; otherwise the structure comes from the state dict alone (float32).
  `partial=True` (a pretrained backbone, e.g. EST's FER+ ResNet-18): torch keys without a rule are
  ignored and model variables the state dict lacks are simply not returned (shapes of those
  present are still checked); at least one variable must match.
  """
  sd = {k: _to_numpy(v) for k, v in strip_prefix(state_dict).items()}
  compiled = [(_compile(r.torch, _placeholder_regexes(*r.jax, r.torch)), r) for r in rules]
  flat: dict[str, np.ndarray] = {}
  unmatched = []
  for tkey, arr in sd.items():
    if tkey.endswith(".num_batches_tracked") and \
        tkey[:-len("num_batches_tracked")] + "running_mean" in sd:
      continue
    for pat, rule in compiled:
      m = pat.fullmatch(tkey)
      if m is None:
        continue
      keys = [_fill(t, m.groupdict()) for t in rule.jax]
      parts = TRANSFORMS[rule.transform].from_torch(arr, len(keys))
      for k, p in zip(keys, parts):
        flat[k] = p
      break
    else:
      unmatched.append(tkey)
  if unmatched and not partial:
    raise KeyError(f"{where}: unexpected torch keys (no rule): {sorted(unmatched)[:10]}")
  if like_variables is not None:   # arrays or jax.ShapeDtypeStructs (jax.eval_shape of init)
    like = traverse_util.flatten_dict(
        {c: v for c, v in dict(like_variables).items()
         if c in ("params", "batch_stats", "constants")},
        sep="/")
    missing, extra = sorted(set(like) - set(flat)), sorted(set(flat) - set(like))
    if partial:
      if extra:
        raise KeyError(f"{where}: state dict keys map to variables the model does not have: "
                       f"{extra[:10]}")
      if not flat:
        raise KeyError(f"{where}: no key of the state dict matches the model "
                       f"(first keys: {sorted(sd)[:5]})")
      like = {k: v for k, v in like.items() if k in flat}
    elif missing or extra:
      raise KeyError(f"{where}: state dict does not match the model: missing {missing[:10]}, "
                     f"unexpected {extra[:10]}")
    for k, ref in like.items():
      if flat[k].shape != ref.shape:
        raise ValueError(f"{where}: {k} has shape {flat[k].shape} in the state dict, "
                         f"{ref.shape} in the model")
      flat[k] = flat[k].astype(np.dtype(ref.dtype))
  else:
    flat = {k: v.astype(np.float32) for k, v in flat.items()}
  nested = traverse_util.unflatten_dict({tuple(k.split("/")): jax.numpy.asarray(v)
                                         for k, v in flat.items()})
  return nested


# ----------------------------------------------------------------------------------------------
# Per-model description


@dataclasses.dataclass(frozen=True)
class ModelMapping:
  """Everything `jaxaffect.interop` needs to know about one model.

  rules: the key table (see `Rule`).
  example_input: `(module, variables, batch, rng, input_shape) -> (x_torch, x_flax)` numpy arrays,
    the same values in the official PyTorch layout and in ours.
  snippet: `(weights_path, verify_path, module) -> str`, Python code that loads the export into
    the official PyTorch model and compares it with the verification sample.
  run_eval: `(module, variables, x_flax) -> outputs` in evaluation mode (default
    `module.apply(variables, x, train=False)`).
  after_export / before_import: optional state-dict hooks around the one-to-one rule table, for
    layouts a rule cannot express (the ABAW team's state dict holds each weight-normed conv under
    two names: `after_export` adds the second, `before_import` checks the copies and folds them).
  to_state_dict / from_state_dict: optional replacements of `to_torch(rules, variables)` /
    `from_torch(rules, sd, like, partial=)` for variable layouts a static table cannot express
    (a scanned ViT's stacked blocks, a position table that is a constant or a parameter):
    `to_state_dict(variables) -> sd`, `from_state_dict(sd, like_variables, partial) -> variables`.
  """
  name: str
  rules: tuple[Rule, ...]
  example_input: Callable[..., tuple[np.ndarray, np.ndarray]]
  snippet: Callable[[str, str, Any], str]
  run_eval: Callable[..., Any] | None = None
  description: str = ""
  after_export: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None = None
  before_import: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
  to_state_dict: Callable[[Mapping[str, Any]], dict[str, np.ndarray]] | None = None
  from_state_dict: Callable[..., dict[str, Any]] | None = None


# ------------------------------------------------------------------------------------------------
# File formats: chosen by extension on export (a contradiction is an error), read by content.

TORCH_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)


def format_of_path(path: str) -> str | None:
  """'pth' / 'safetensors' from the file name's extension, None when it says neither."""
  name = str(path).lower()
  if name.endswith(SAFETENSORS_SUFFIXES):
    return "safetensors"
  if name.endswith(TORCH_SUFFIXES):
    return "pth"
  return None


def sniff_format(path: str) -> str:
  """'safetensors' or 'pth' from the file's first bytes (not its name): a torch zip archive
  (`PK\\x03\\x04`) or a legacy torch pickle (`\\x80` protocol byte); safetensors = an 8-byte
  little-endian header length followed by a JSON object. Anything else is a `UserError`."""
  from jaxaffect.errors import UserError
  try:
    with open(path, "rb") as f:
      head = f.read(16)
      size = f.seek(0, 2)
  except OSError as e:
    raise UserError(f"{path}: cannot read weights ({e.strerror or e})") from None
  if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
    return "pth"
  if len(head) >= 9:
    n = int.from_bytes(head[:8], "little")
    if head[8:9] == b"{" and 8 + n <= size:
      return "safetensors"
  raise UserError(f"{path}: neither a safetensors file nor a PyTorch checkpoint (first bytes "
                  f"{head[:10]!r})")


def torch_load_expr(weights: str) -> str:
  """The Python expression that reads an exported file in a snippet (by its format)."""
  fmt = format_of_path(weights)
  if fmt is None and os.path.isfile(weights):      # a name that says neither: read the content
    fmt = sniff_format(weights)
  return f'torch.load("{weights}")' if fmt == "pth" else f'load_file("{weights}")'
