"""`jaxaffect.models.EST` ↔ official `DreamMr/EST` `resnet18_EST` keys (244 at the official size).

    Flax                                          torch (official)
    backbone/{stem,layer1-4}/…                    conv1, bn1, layer1-4.…  (torchvision, no prefix)
    aasfe/attn/{q,k,v} (+bias), aasfe/attn/out    attn.in_proj_weight/in_proj_bias, attn.out_proj
    aasfe/norm1                                   norm1
    constants/pos_enc/table (fixed sinusoid)      pos_enc.pos_enc.weight (requires_grad=False)
    encoder/layer_i/{attn,mlp/fc1,mlp/fc2,…}      transformer.encoder.layers.i.{self_attn,linear1,
                                                  linear2,norm1,norm2}
    encoder/norm                                  transformer.encoder.norm
    decoder/layer_i/{self_attn,cross_attn,…}      transformer.decoder.layers.i.{self_attn,
                                                  multihead_attn,linear1,linear2,norm1-3}
    decoder/norm                                  transformer.decoder.norm
    query_embed (1, d)                            query_embed.weight
    classifier/{fc0,fc1,out}                      classifier.{0,2,5.0}
    ssop/{fc0,bn0,fc1,bn1,out}                    per_branch.classifier.{0,1,3,4,6}
`nn.MultiheadAttention` packs `in_proj_weight = [Wq; Wk; Wv]` (3d, d). DataParallel checkpoints
(`module.` prefix) load as is. A baseline (`use_aasfe=False`) has no `attn`/`norm1`, a model
without SSOP no `per_branch`.

The verification sample (`interop.export`): `input` is the clip in the official layout
`(B, S, F, 3, H, W)`; the model is called with `per[b] = PERMUTATIONS_10[b % 10]` (7 snippets;
otherwise the identity rolled by b % 10), written out in the snippet; `output` is
`concat([logits, perm_logits], axis=1)` (`(B, C + P)`; logits only without SSOP).
"""
from __future__ import annotations

import jax
import numpy as np

from jaxaffect.interop.mapping import (ModelMapping, Rule, batchnorm, layernorm, linear, param,
                                       torch_decoder_layer, torch_encoder_layer, torch_load_expr,
                                       torch_mha)
from jaxaffect.interop.resnet import resnet_rules
from jaxaffect.models.est import PERMUTATIONS_10

RULES = (
    *resnet_rules("backbone", "", fc=False),
    *torch_mha("aasfe/attn", "attn"),
    *layernorm("aasfe/norm1", "norm1"),
    Rule(("constants/pos_enc/table",), "pos_enc.pos_enc.weight"),
    *param("query_embed", "query_embed.weight"),
    *torch_encoder_layer("encoder/layer_<i>", "transformer.encoder.layers.<i>"),
    *layernorm("encoder/norm", "transformer.encoder.norm"),
    *torch_decoder_layer("decoder/layer_<i>", "transformer.decoder.layers.<i>"),
    *layernorm("decoder/norm", "transformer.decoder.norm"),
    *linear("classifier/fc0", "classifier.0"),
    *linear("classifier/fc1", "classifier.2"),
    *linear("classifier/out", "classifier.5.0"),
    *linear("ssop/fc0", "per_branch.classifier.0"),
    *batchnorm("ssop/bn0", "per_branch.classifier.1"),
    *linear("ssop/fc1", "per_branch.classifier.3"),
    *batchnorm("ssop/bn1", "per_branch.classifier.4"),
    *linear("ssop/out", "per_branch.classifier.6"),
)

DEFAULT_IMAGE_SIZE = 224   # official training/test resolution (112 also runs: adaptive pooling)


def example_perms(batch: int, num_snippets: int) -> np.ndarray:
  """`(B, S)` int32, row b = row `b % 10` of the official permutation list (S = 7), else the
  identity rolled by `b % 10`."""
  if num_snippets == PERMUTATIONS_10.shape[1]:
    return PERMUTATIONS_10[np.arange(batch) % len(PERMUTATIONS_10)].astype(np.int32)
  return np.stack([np.roll(np.arange(num_snippets), i % 10)
                   for i in range(batch)]).astype(np.int32)


def _example_input(module, variables, batch, rng, input_shape=None):
  """Uniform [0,1) pixels; torch layout `(B, S, F, 3, H, W)`; ours `((B, S·F, H, W, 3), perm)`."""
  s, f = module.num_snippets, module.frames_per_snippet
  h, w = input_shape or (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
  x = rng.random((batch, s, f, h, w, 3), dtype=np.float32)
  x_torch = np.ascontiguousarray(x.transpose(0, 1, 2, 5, 3, 4))
  return x_torch, (x.reshape(batch, s * f, h, w, 3), example_perms(batch, s))


def _run_eval(module, variables, x_flax):
  video, perm = x_flax
  out = jax.jit(lambda v, x, p: module.apply(v, x, p, train=False))(variables, video, perm)
  parts = [np.asarray(out["logits"], np.float32)]
  if "perm_logits" in out:
    parts.append(np.asarray(out["perm_logits"], np.float32))
  return np.concatenate(parts, axis=1)


def is_official_config(module) -> bool:
  return (module.num_classes, module.num_snippets, module.frames_per_snippet, module.d_model,
          module.num_heads, module.num_encoder_layers, module.num_decoder_layers,
          module.dim_feedforward, module.num_permutations, module.use_aasfe, module.use_ssop,
          module.width, tuple(module.classifier_dims), tuple(module.ssop_dims)) == (
              7, 7, 5, 512, 4, 3, 3, 2048, 10, True, True, 64, (128, 64), (2048, 512))


def _snippet(weights: str, verify: str, module) -> str:
  load = torch_load_expr(weights)
  note = "" if is_official_config(module) else (
      "# NOTE: this export is not the official configuration (resnet18_EST(clips=7,\n"
      "# img_num_per_clip=5, d_model=512, nhead=4, encoder_nums=3, decoder_nums=3,\n"
      "# per_classes=10) with AA-SFE, SSOP and 7 classes): edit the torch model to match.\n")
  c = module.num_classes
  ssop = module.use_ssop
  b_note = "ref['output'][:, :%d] are the class logits%s" % (
      c, f", [:, {c}:] the permutation logits" if ssop else "")
  compare = ("out = np.concatenate([logits.numpy(), perm_logits.numpy()], axis=1)" if ssop
             else "out = logits.numpy()")
  return f'''# Run from the root of a DreamMr/EST checkout (torch, einops, safetensors).
{note}import sys; sys.path.insert(0, ".")   # the checkout root, also when this is a saved script
import numpy as np, torch
from safetensors.torch import load_file
torch.Tensor.cuda = lambda self, *a, **k: self   # PosEncoding.forward calls .cuda(): run on CPU
from models.Model import resnet18_EST
model = resnet18_EST(clips={module.num_snippets}, img_num_per_clip={module.frames_per_snippet}, \
d_model={module.d_model}, nhead={module.num_heads},
                     encoder_nums={module.num_encoder_layers}, \
decoder_nums={module.num_decoder_layers}, use_norm=True,
                     per_classes={module.num_permutations}).eval()
model.load_state_dict({load}, strict=True)
ref = np.load("{verify}")   # input: (B,S,F,3,H,W) pixels in [0,1]; {b_note}
b = ref["input"].shape[0]
rows = np.array({example_perms(10, module.num_snippets).tolist()})
per = torch.from_numpy(rows[np.arange(b) % len(rows)]).long()   # position i holds snippet per[b, i]
with torch.no_grad():
  logits, perm_logits = model(torch.from_numpy(ref["input"]), per)
{compare}
print("max |logit diff|:", np.abs(out - ref["output"]).max())
'''


MAPPING = ModelMapping(
    name="est", rules=RULES, example_input=_example_input, snippet=_snippet, run_eval=_run_eval,
    description="EST ↔ DreamMr/EST resnet18_EST (input (B,7,5,3,H,W) + per (B,7))")
