"""jaxaffect.nn.attention vs PyTorch: the Former-DFER encoder (packed `to_qkv`, heads outermost,
pre-norm, tanh GELU) vs a torch module written from the official equations, and the separate-qkv
layout vs `torch.nn.MultiheadAttention` / `TransformerEncoderLayer` / `TransformerDecoderLayer`
(sequence-first). Forward and gradients w.r.t. inputs and every parameter."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxaffect.interop import former_dfer as fd_map
from jaxaffect.interop import mapping
from jaxaffect.nn import attention
from tests.interop.torch_refs import (Transformer, assert_close, assert_grads_match, jit,
                                      load_numpy_state_dict, random_variables)

B, L, S, D = 2, 7, 5, 32


def _randn(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _jax_value_and_grads(module, variables, inputs, w, **kw):
  """value, d/d params, d/d inputs of sum(module(*inputs) * w)."""
  def loss(params, *inputs):
    y = module.apply({"params": params}, *inputs, **kw)
    return jnp.sum(y * w), y
  argnums = tuple(range(len(inputs) + 1))
  (_, y), grads = jit(jax.value_and_grad(loss, argnums=argnums, has_aux=True))(
      variables["params"], *inputs)
  return y, grads[0], grads[1:]


def _init_shapes(module, *inputs, **kw):
  return jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs, **kw))


def test_former_dfer_encoder_matches_torch_equations():
  depth, heads, dim_head, mlp = 2, 4, 12, 48      # inner 48 ≠ dim 32: to_out really projects
  enc = attention.TransformerEncoder(depth, heads, mlp, dim_head, norm_first=True,
                                     activation="gelu_tanh", qkv_layout="packed", qkv_bias=False)
  x = _randn(B, L, D, seed=1)
  w = _randn(B, L, D, seed=2)
  variables = random_variables(_init_shapes(enc, x), seed=3)
  rules = fd_map.encoder_rules("", "t")
  sd = mapping.to_torch(rules, variables)
  ref = torch.nn.Module()
  ref.t = Transformer(D, depth, heads, dim_head, mlp)
  load_numpy_state_dict(ref, sd)                                   # strict: all keys mapped

  y, gp, (gx,) = _jax_value_and_grads(enc, variables, (x,), w)
  xt = torch.from_numpy(x).requires_grad_(True)
  yt = ref.t(xt)
  (yt * torch.from_numpy(w)).sum().backward()
  assert_close(y, yt.detach().numpy(), err="forward")
  assert_close(gx, xt.grad.numpy(), err="d input")
  n = assert_grads_match(ref, mapping.to_torch(rules, {"params": gp}))
  assert n == 11 * depth


def test_packed_qkv_layout_is_chunk_then_heads_outermost():
  """Direct check of the layout: output columns [q | k | v], each `(h d)`: head 1 of q reads
  columns Dh:2Dh of the qkv kernel. Zeroing exactly those must only change head 1."""
  heads, dh = 4, 8
  attn = attention.MultiHeadAttention(heads, dh, qkv_layout="packed")
  x = _randn(1, L, D, seed=4)
  v = random_variables(_init_shapes(attn, x), seed=5)
  out_w = np.asarray(v["params"]["out"]["kernel"])
  base = attn.apply(v, x, mutable=["intermediates"])[1]["intermediates"]["attention_weights"][0]
  k2 = np.array(v["params"]["qkv"]["kernel"])
  k2[:, dh:2 * dh] = 0.0          # q of head 1 → uniform attention in head 1 only
  v2 = {"params": {**v["params"], "qkv": {"kernel": k2}}}
  w2 = attn.apply(v2, x, mutable=["intermediates"])[1]["intermediates"]["attention_weights"][0]
  changed = np.abs(np.asarray(w2) - np.asarray(base)).max(axis=(0, 2, 3))
  assert changed[1] > 1e-3 and np.all(changed[[0, 2, 3]] == 0)
  np.testing.assert_allclose(np.asarray(w2)[0, 1], np.full((L, L), 1 / L), rtol=1e-6)
  assert out_w.shape == (heads * dh, D)


@pytest.mark.parametrize("cross,masked", [(False, False), (True, False), (False, True)])
def test_separate_qkv_matches_torch_multihead_attention(cross, masked):
  heads = 4
  attn = attention.MultiHeadAttention(heads, qkv_layout="separate", qkv_bias=True)
  x = _randn(B, L, D, seed=6)
  ctx = _randn(B, S, D, seed=7) if cross else None
  inputs = (x, ctx) if cross else (x,)
  mask = None
  if masked:   # causal mask; torch bool attn_mask uses True = NOT allowed
    mask = np.tril(np.ones((L, L), bool))
  w = _randn(B, L, D, seed=8)
  variables = random_variables(_init_shapes(attn, *inputs), seed=9)
  rules = mapping.torch_mha("", "mha")
  ref = torch.nn.Module()
  ref.mha = torch.nn.MultiheadAttention(D, heads, dropout=0.0)     # sequence-first
  load_numpy_state_dict(ref, mapping.to_torch(rules, variables))

  y, gp, gin = _jax_value_and_grads(attn, variables, inputs, w, mask=mask)
  xt = torch.from_numpy(x.transpose(1, 0, 2).copy()).requires_grad_(True)
  ct = torch.from_numpy(ctx.transpose(1, 0, 2).copy()).requires_grad_(True) if cross else xt
  yt, _ = ref.mha(xt, ct, ct, need_weights=False,
                  attn_mask=None if mask is None else torch.from_numpy(~mask))
  (yt * torch.from_numpy(w.transpose(1, 0, 2).copy())).sum().backward()
  assert_close(y, yt.detach().numpy().transpose(1, 0, 2), err="forward")
  assert_close(gin[0], xt.grad.numpy().transpose(1, 0, 2), err="d query")
  if cross:
    assert_close(gin[1], ct.grad.numpy().transpose(1, 0, 2), err="d context")
  assert assert_grads_match(ref, mapping.to_torch(rules, {"params": gp})) == 4


@pytest.mark.parametrize("norm_first,activation", [(False, "relu"), (True, "gelu")])
def test_encoder_layer_matches_torch_transformer_encoder_layer(norm_first, activation):
  heads, mlp = 4, 48
  layer = attention.TransformerEncoderLayer(heads, mlp, norm_first=norm_first,
                                            activation=activation, qkv_layout="separate",
                                            qkv_bias=True)
  x = _randn(B, L, D, seed=10)
  w = _randn(B, L, D, seed=11)
  variables = random_variables(_init_shapes(layer, x), seed=12)
  rules = mapping.torch_encoder_layer("", "layer")
  ref = torch.nn.Module()
  ref.layer = torch.nn.TransformerEncoderLayer(D, heads, mlp, dropout=0.0, activation=activation,
                                               norm_first=norm_first)
  load_numpy_state_dict(ref, mapping.to_torch(rules, variables))
  y, gp, (gx,) = _jax_value_and_grads(layer, variables, (x,), w)
  xt = torch.from_numpy(x.transpose(1, 0, 2).copy()).requires_grad_(True)
  yt = ref.layer(xt)
  (yt * torch.from_numpy(w.transpose(1, 0, 2).copy())).sum().backward()
  assert_close(y, yt.detach().numpy().transpose(1, 0, 2), err="forward")
  assert_close(gx, xt.grad.numpy().transpose(1, 0, 2), err="d input")
  assert assert_grads_match(ref, mapping.to_torch(rules, {"params": gp})) == 12


def test_decoder_matches_torch_transformer_decoder():
  """Post-norm decoder layer + final LayerNorm (DETR/EST) vs torch.nn.TransformerDecoder."""
  heads, mlp, layers = 4, 48, 1
  dec = attention.TransformerDecoder(layers, heads, mlp, activation="relu", final_norm=True)
  tgt, mem = _randn(B, 3, D, seed=13), _randn(B, S, D, seed=14)
  w = _randn(B, 3, D, seed=15)
  variables = random_variables(_init_shapes(dec, tgt, mem), seed=16)
  rules = [*mapping.torch_decoder_layer("layer_<i>", "dec.layers.<i>"),
           *mapping.layernorm("norm", "dec.norm")]
  ref = torch.nn.Module()
  ref.dec = torch.nn.TransformerDecoder(
      torch.nn.TransformerDecoderLayer(D, heads, mlp, dropout=0.0), layers,
      norm=torch.nn.LayerNorm(D))
  load_numpy_state_dict(ref, mapping.to_torch(rules, variables))
  y, gp, (gt, gm) = _jax_value_and_grads(dec, variables, (tgt, mem), w)
  tt = torch.from_numpy(tgt.transpose(1, 0, 2).copy()).requires_grad_(True)
  mt = torch.from_numpy(mem.transpose(1, 0, 2).copy()).requires_grad_(True)
  yt = ref.dec(tt, mt)
  (yt * torch.from_numpy(w.transpose(1, 0, 2).copy())).sum().backward()
  assert_close(y, yt.detach().numpy().transpose(1, 0, 2), err="forward")
  assert_close(gt, tt.grad.numpy().transpose(1, 0, 2), err="d tgt")
  assert_close(gm, mt.grad.numpy().transpose(1, 0, 2), err="d memory")
  assert assert_grads_match(ref, mapping.to_torch(rules, {"params": gp})) == 18 * layers + 2


def test_attention_dropout_is_unbiased_and_only_in_training():
  """Inverted dropout on the attention weights: E[output] = deterministic output (the output is
  linear in the weights), outputs vary with the rng, and `deterministic=True` ignores it."""
  attn = attention.MultiHeadAttention(2, qkv_layout="packed", attn_dropout=0.5)
  x = _randn(1, 4, 8, seed=17)
  v = random_variables(_init_shapes(attn, x), seed=18)
  det = attn.apply(v, x, deterministic=True)
  run = jit(jax.vmap(lambda k: attn.apply(v, x, deterministic=False, rngs={"dropout": k})))
  outs = np.asarray(run(jax.random.split(jax.random.key(0), 4000)))
  assert np.abs(outs[0] - outs[1]).max() > 1e-3
  se = outs.std(0) / np.sqrt(len(outs))
  assert np.all(np.abs(outs.mean(0) - np.asarray(det)) < 5 * se + 1e-6)
  np.testing.assert_array_equal(attn.apply(v, x, deterministic=True), det)


def test_packed_layout_rejects_cross_attention():
  attn = attention.MultiHeadAttention(2, qkv_layout="packed")
  with pytest.raises(ValueError, match="self-attention only"):
    attn.init(jax.random.key(0), jnp.zeros((1, 3, 8)), jnp.zeros((1, 4, 8)))
