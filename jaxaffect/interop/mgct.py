"""`jaxaffect.models.MGCT` ↔ the state-dict layout of `TorchMGCT`, the independent PyTorch MGCT
written from the equations in tests/models/test_mgct.py. TDLS + MGCT (Li, Meng, Hu, Dong) has no
public code, so there is no official layout: this one is that module's (a `torch.nn` port a reader
would write: `nn.Linear`, `nn.TransformerEncoder` of post-norm `nn.TransformerEncoderLayer`s in
`nn.ModuleList`s indexed by level).

    Flax                                         torch (TorchMGCT)
    proj_in/{kernel, bias}                       proj_in.{weight, bias}
    enc_<l>/layer_<j>/attn/{q,k,v}/{kernel,bias} encs.<l>.layers.<j>.self_attn.in_proj_{weight,bias}
    enc_<l>/layer_<j>/attn/out                   encs.<l>.layers.<j>.self_attn.out_proj
    enc_<l>/layer_<j>/mlp/fc1, mlp/fc2           encs.<l>.layers.<j>.linear1, linear2
    enc_<l>/layer_<j>/norm1, norm2               encs.<l>.layers.<j>.norm1, norm2
    down_<l> (l ≥ 1)                             downs.<l>   (downs.0 is an nn.Identity)
    up_<l>   (l ≥ 1; absent with guidance=False) ups.<l>     (ups.0 is an nn.Identity)
    head_<l>                                     heads.<l>
Linear kernels (in, out) ↔ weights (out, in); q/k/v are packed as `[Wq; Wk; Wv]`.

Verification sample (`interop.export`): `input` = N(0,1) features `(B, T, D_in)` (T = 64 by
default), every frame real; `output` = the eval-mode final prediction `va (B, T, 2)` (level 0 after
the top-down additions), which `TorchMGCT(...)(x, valid)[0][:, :T]` reproduces.
"""
from __future__ import annotations

import jax
import numpy as np

from jaxaffect.interop.mapping import ModelMapping, linear, torch_encoder_layer, torch_load_expr

RULES = (
    *linear("proj_in", "proj_in"),
    *torch_encoder_layer("enc_<l>/layer_<j>", "encs.<l>.layers.<j>"),
    *linear("down_<l>", "downs.<l>"),
    *linear("up_<l>", "ups.<l>"),
    *linear("head_<l>", "heads.<l>"),
)

DEFAULT_SEQ_LEN = 64


def input_dim(variables) -> int:
  return int(np.shape(variables["params"]["proj_in"]["kernel"])[0])


def _example_input(module, variables, batch, rng, input_shape=None):
  """N(0,1) features `(B, T, D_in)`, the same array for both sides; `input_shape=(T,)`."""
  t = int(input_shape[0]) if input_shape else DEFAULT_SEQ_LEN
  x = rng.standard_normal((batch, t, input_dim(variables)), dtype=np.float32)
  return x, x


def _run_eval(module, variables, x):
  return jax.jit(lambda v, a: module.apply(v, a, train=False)["va"])(variables, x)


def _snippet(weights: str, verify: str, module) -> str:
  load = torch_load_expr(weights)
  return f'''# Run from the root of a jaxaffect checkout (torch, safetensors): MGCT has no official code;
# the torch layout is tests/models/test_mgct.py's TorchMGCT.
import sys; sys.path.insert(0, ".")
import numpy as np, torch
from safetensors.torch import load_file
from tests.models.test_mgct import TorchMGCT
ref = np.load("{verify}")   # input (B,T,D_in) features; output (B,T,2) eval-mode level-0 prediction
model = TorchMGCT(ref["input"].shape[-1], {tuple(module.channels)}, {module.group_size}, \
{module.num_levels}, "{module.summarise}", {module.guidance}, {module.summarise_twice}, \
{module.depth}, {module.num_heads}, {module.mlp_ratio}).eval()
model.load_state_dict({load}, strict=True)
x = torch.from_numpy(ref["input"])
with torch.no_grad():
  out = model(x, torch.ones(x.shape[:2], dtype=torch.bool))[0][:, :x.shape[1]].numpy()
print("max |diff|:", np.abs(out - ref["output"]).max())
'''


MAPPING = ModelMapping(
    name="mgct", rules=RULES, example_input=_example_input, snippet=_snippet, run_eval=_run_eval,
    description="MGCT ↔ TorchMGCT of tests/models/test_mgct.py (no official code; input "
                "(B,T,D_in) features, output the level-0 VA prediction)")
