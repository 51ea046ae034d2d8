"""`jaxaffect.models.ABAWTCN` ↔ the ABAW6 team's (`upczww/abaw6`, `model/model.py` `Model`) keys;
162 keys for the EXPR/VA/AU models.

    Flax                                           torch (official)
    temporal/block_<i>/conv1/{weight_v,weight_g,bias}   temporal.network.<i>.conv1.*  AND  .net.0.*
    temporal/block_<i>/conv2/…                          temporal.network.<i>.conv2.*  AND  .net.4.*
      weight_v (K,I,O) ↔ (O,I,K); weight_g (1,1,O) ↔ (O,1,1); bias (O,)
    temporal/block_<i>/relu1/weight (PReLU (1,))        temporal.network.<i>.relu1.weight ≡ .net.2.weight
    temporal/block_<i>/relu2/weight                     temporal.network.<i>.relu2.weight ≡ .net.6.weight
    temporal/block_<i>/relu/weight                      temporal.network.<i>.relu.weight
    temporal/block_<i>/downsample/{kernel,bias}         temporal.network.<i>.downsample.*  (plain conv)
    proj/{kernel (1,I,O), bias}                         encoder.conv1.*  (Conv1d 1×1)
    encoder/layer_<j>/{attn/{q,k,v,out},mlp/fc1,mlp/fc2,norm1,norm2}
                                                        encoder.transformer_encoder.layers.<j>.
                                                        {self_attn.in_proj_weight/in_proj_bias,
                                                        self_attn.out_proj, linear1, linear2,
                                                        norm1, norm2}
    <h>/{fc0, bn, out}                                  <h>.{0, 1, 2}  (BN running stats +
                                                        num_batches_tracked)

The old `torch.nn.utils.weight_norm` registers each conv twice (`conv1` is `net.0`, `conv2` is
`net.4`; likewise the PReLUs `relu1` = `net.2`, `relu2` = `net.6`), so the official state dict holds
every such tensor under both names. Export writes both (identical arrays); import accepts either
name and, when both are present, requires them to be equal (an error names both keys otherwise).

Several streams (ABAW5's VA model, `temporal = nn.ModuleDict()` keyed by modality):
`temporal_<stream>/block_<i>` ↔ `temporal.<stream>.network.<i>`. Heads: one output `head`
(ABAW6), several `head_<output>` (our multi-task extension, no official counterpart), split VA
`vhead`/`ahead` (ABAW5). ABAW5's VA model calls its `TransEncoder` `decoder`: exports with split VA
heads write `decoder.*` (the ABAW5 layout), all others `encoder.*` (ABAW6); import accepts both.

Verification sample (`interop.export`): `input` = N(0,1) features `(B, T, D)` in the official
layout (T = 300 frames by default; one stream), or `input_<stream>` per stream; `output` = the
eval-mode outputs flattened as the official `(B·T, n)` head output, outputs concatenated in
`module.outputs` order (split VA: [vhead, ahead]).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

from jaxaffect.interop.mapping import (ModelMapping, Rule, batchnorm, conv1d, linear, param,
                                       torch_encoder_layer, torch_load_expr)

HEADS = "head|head_va|head_expr|head_au|vhead|ahead"
STREAM = "[A-Za-z0-9_]+"


def _tcn_rules(jp: str, tp: str) -> list[Rule]:
  """One TemporalConvNet: Flax `jp/block_<i>` ↔ torch `tp.network.<i>` (canonical names only;
  the `net.*` aliases are added/checked by the hooks below)."""
  b, t = f"{jp}/block_<i>", f"{tp}.network.<i>"
  rules = [Rule((f"params/{b}/<c:conv[12]>/{leaf}",), f"{t}.<c>.{leaf}", tr)
           for leaf, tr in (("weight_v", "conv1d"), ("weight_g", "conv1d"), ("bias", "same"))]
  rules += conv1d(f"{b}/downsample", f"{t}.downsample")
  rules += param(f"{b}/<r:relu[12]?>/weight", f"{t}.<r>.weight")
  return rules


RULES = (
    *_tcn_rules("temporal", "temporal"),
    *_tcn_rules(f"temporal_<s:{STREAM}>", "temporal.<s>"),
    *conv1d("proj", "encoder.conv1"),
    *torch_encoder_layer("encoder/layer_<j>", "encoder.transformer_encoder.layers.<j>"),
    *linear(f"<h:{HEADS}>/fc0", "<h>.0"),
    *batchnorm(f"<h:{HEADS}>/bn", "<h>.1"),
    *linear(f"<h:{HEADS}>/out", "<h>.2"),
)

# canonical name → its alias inside the block's `net` Sequential
ALIASES = {"conv1": "net.0", "conv2": "net.4", "relu1": "net.2", "relu2": "net.6"}
_CANON = re.compile(rf"^(temporal(?:\.{STREAM})?\.network\.\d+)\.(conv1|conv2|relu1|relu2)\.(\w+)$")
_ALIAS = re.compile(rf"^(temporal(?:\.{STREAM})?\.network\.\d+)\.net\.([0-9]+)\.(\w+)$")
_ALIAS_TO_CANON = {v.split(".")[1]: k for k, v in ALIASES.items()}


def add_aliases(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Export hook: every `…network.<i>.{conv1,conv2,relu1,relu2}.*` also as `…net.{0,4,2,6}.*`
  (the same array), and the ABAW5 transformer name `decoder` when the model has `vhead`."""
  out = dict(sd)
  for k, v in sd.items():
    m = _CANON.match(k)
    if m:
      out[f"{m.group(1)}.{ALIASES[m.group(2)]}.{m.group(3)}"] = v
  if any(k.startswith("vhead.") for k in out):
    out = {("decoder." + k[len("encoder."):] if k.startswith("encoder.") else k): v
           for k, v in out.items()}
  return out


def _np(v: Any) -> np.ndarray:
  if hasattr(v, "detach"):
    v = v.detach().cpu().float().numpy() if str(v.dtype) == "torch.bfloat16" else \
        v.detach().cpu().numpy()
  return np.asarray(v)


def resolve_aliases(sd: Mapping[str, Any], where: str = "abaw_tcn") -> dict[str, Any]:
  """Import hook: fold each `…net.{0,2,4,6}.*` key into its canonical name, checking that both
  copies agree when both are present; `decoder.*` (ABAW5) → `encoder.*`. A `module.` prefix on
  every key is removed first."""
  keys = list(sd)
  if keys and all(k.startswith("module.") for k in keys):
    sd = {k[len("module."):]: v for k, v in sd.items()}
  out: dict[str, Any] = {}
  aliases: list[tuple[str, str]] = []
  for k, v in sd.items():
    m = _ALIAS.match(k)
    if m and m.group(2) in _ALIAS_TO_CANON:
      aliases.append((k, f"{m.group(1)}.{_ALIAS_TO_CANON[m.group(2)]}.{m.group(3)}"))
    else:
      out[k] = v
  for alias, canon in aliases:
    if canon in out:
      a, c = _np(sd[alias]), _np(out[canon])
      if a.shape != c.shape or not np.array_equal(a, c):
        diff = (float(np.max(np.abs(a.astype(np.float64) - c.astype(np.float64))))
                if a.shape == c.shape else f"shapes {a.shape} vs {c.shape}")
        raise ValueError(f"{where}: {alias!r} and {canon!r} are the same torch module (weight_norm "
                         f"registers it twice) but the state dict holds different tensors "
                         f"(max |diff| {diff})")
    else:
      out[canon] = sd[alias]
  has_enc = any(k.startswith("encoder.") for k in out)
  has_dec = any(k.startswith("decoder.") for k in out)
  if has_dec and has_enc:
    raise KeyError(f"{where}: the state dict has both `encoder.*` and `decoder.*` keys; expected "
                   "one transformer (ABAW6 `encoder`, ABAW5 `decoder`)")
  if has_dec:
    out = {("encoder." + k[len("decoder."):] if k.startswith("decoder.") else k): v
           for k, v in out.items()}
  return out


# ------------------------------------------------------------------------- verification sample

DEFAULT_SEQ_LEN = 300   # official window


def stream_input_dims(module, variables: Mapping[str, Any]) -> dict[str, int]:
  """Per-stream input width from the first TCN conv (`weight_v (K, I, O)`)."""
  params = variables["params"]
  out = {}
  for name, _ in module.streams:
    tcn = params["temporal" if len(module.streams) == 1 else f"temporal_{name}"]
    out[name] = int(np.shape(tcn["block_0"]["conv1"]["weight_v"])[1])
  return out


def _example_input(module, variables, batch, rng, input_shape=None):
  """N(0,1) features; torch: `(B, T, D)` (one stream, as the official `forward`) or a dict;
  ours: `{stream: (B, T, D)}`. `input_shape=(T,)` sets the window (default 300)."""
  t = int(input_shape[0]) if input_shape else DEFAULT_SEQ_LEN
  dims = stream_input_dims(module, variables)
  feats = {n: rng.standard_normal((batch, t, d), dtype=np.float32) for n, d in dims.items()}
  x_torch = next(iter(feats.values())) if len(feats) == 1 else feats
  return x_torch, feats


def flat_outputs(module, out: Mapping[str, Any]) -> np.ndarray:
  """`{output: (B, T, n)}` → `(B·T, Σ n)` in `module.outputs` order (the official head layout)."""
  parts = [np.asarray(out[o], np.float32) for o in module.outputs]
  y = np.concatenate(parts, axis=-1)
  return y.reshape(-1, y.shape[-1])


def _run_eval(module, variables, feats):
  out = jax.jit(lambda v, f: module.apply(v, f, train=False))(variables, feats)
  return flat_outputs(module, out)


def is_official_config(module) -> bool:
  """The ABAW6 `Model` (EXPR/VA/AU differ by head size only)."""
  return (module.streams == (("mae", (768, 256, 128)),) and len(module.outputs) == 1
          and module.va_heads == "joint" and module.kernel_size == 5
          and module.tcn_activation == "prelu" and module.d_model == 512
          and module.num_heads == 4 and module.num_layers == 8 and module.dim_feedforward == 512
          and (module.head_hidden or 256) == 256
          and (module.outputs[0] != "expr" or module.num_expr_classes == 8))


_TASK_DIR = {"va": "VA", "expr": "EXPR", "au": "AU"}


def _snippet(weights: str, verify: str, module) -> str:
  load = torch_load_expr(weights)
  task = _TASK_DIR.get(module.outputs[0], "EXPR")
  note = "" if is_official_config(module) else (
      "# NOTE: this export is not the official ABAW6 configuration (one 768-d stream, TCN\n"
      "# [768,256,128] k=5 PReLU, d 512, 8 layers, 4 heads, FF 512, one head): edit the torch\n"
      "# model (or, for several streams and split VA heads, use upczww/abaw5 VA/model) to match.\n")
  return f'''# Run from the {task}/ folder of an upczww/abaw6 checkout (torch, safetensors).
{note}import sys, types; sys.path.insert(0, ".")
for name in ("munch", "yaml"):   # imported at module level by model/model.py, unused here
  sys.modules.setdefault(name, types.ModuleType(name))
sys.modules["munch"].DefaultMunch = object
import numpy as np, torch
from types import SimpleNamespace as NS
from safetensors.torch import load_file
from model.model import Model
cfg = NS(Model=NS(kernel_size={module.kernel_size}, num_head={module.num_heads}, \
num_layer={module.num_layers}, out_dim={module.d_model}),
         Solver=NS(dropout={module.dropout}))
model = Model(cfg).eval()
model.load_state_dict({load}, strict=True)
ref = np.load("{verify}")   # input (B,T,D) features; output (B*T, n) eval-mode head outputs
with torch.no_grad():
  out = model(torch.from_numpy(ref["input"])).numpy()
print("max |diff|:", np.abs(out - ref["output"]).max())
'''


MAPPING = ModelMapping(
    name="abaw_tcn", rules=RULES, example_input=_example_input, snippet=_snippet,
    run_eval=_run_eval, after_export=add_aliases, before_import=resolve_aliases,
    description="ABAWTCN ↔ upczww/abaw6 Model (input (B,T,768) features; ABAW5 multi-stream VA "
                "layout for several streams)")
