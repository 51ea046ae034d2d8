"""EST ↔ PyTorch: the official key layout, the AA-SFE attention and the encoder/decoder layers
against `torch.nn.MultiheadAttention` / `TransformerEncoderLayer` / `TransformerDecoderLayer`
(sequence-first, same weights through the EST mapping), and the whole model against
`tests/interop/torch_est_ref.TorchEST` loaded with our export (`load_state_dict(strict=True)`):
eval mode (both heads), train mode in float64 (BatchNorm batch statistics, every gradient)."""
import contextlib
import io
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from jaxaffect import interop
from jaxaffect.interop import est as est_map
from jaxaffect.interop import mapping
from jaxaffect.models import est
from jaxaffect.nn import attention
from tests.interop.torch_est_ref import TorchEST, to_torch_video
from tests import tolerances
from tests.interop.torch_refs import (assert_close, jit, linear_bias_term_scales,
                                      load_numpy_state_dict, random_variables)

RULES = est_map.MAPPING.rules
# A small EST: width 8 (d 64), 4 heads, 2+2 layers, FF 128, 7 snippets × 5 frames of 32×32.
SMALL = dict(width=8, d_model=64, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=128,
             classifier_dims=(32, 16), ssop_dims=(96, 48))


def test_mapping_is_found_through_the_model_module():
  """`interop.export` finds EST's mapping by convention (`jaxaffect.models.est.torch_mapping`)."""
  assert interop.get_mapping("est") is est_map.MAPPING


def _variables(model, seed=0):
  return random_variables(est.abstract_variables(model), seed)


def _tree_equal(a, b):
  fa, fb = mapping.flatten_variables(a), mapping.flatten_variables(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _grads_match(ref: torch.nn.Module, grads_sd, term_scales=None, **tol) -> int:
  """Every trainable torch parameter's `.grad` equals the mapped Flax gradient; frozen ones (the PE
  table) have no Flax parameter. Returns the number of tensors compared."""
  n = 0
  for name, p in ref.named_parameters():
    if not p.requires_grad:
      assert name not in grads_sd, name
      continue
    assert p.grad is not None, f"torch parameter {name} received no gradient"
    assert_close(grads_sd[name], p.grad.numpy(), err=f"grad {name}",
                 scale=(term_scales or {}).get(name), **tol)
    n += 1
  return n


def test_keys_equal_official_layout():
  """244 keys with the official names and shapes (the torch reference's keys equal those of the
  official `resnet18_EST`, checked ad hoc outside the repository)."""
  model = est.EST()
  variables = _variables(model)
  sd = interop.to_torch_state_dict("est", variables)
  ref_sd = TorchEST().state_dict()
  assert sd.keys() == ref_sd.keys() and len(sd) == 244
  for k, v in ref_sd.items():
    assert sd[k].shape == tuple(v.shape), k
  assert sd["attn.in_proj_weight"].shape == (1536, 512)
  wk = np.asarray(variables["params"]["aasfe"]["attn"]["k"]["kernel"])
  np.testing.assert_array_equal(sd["attn.in_proj_weight"][512:1024], wk.T)    # [Wq; Wk; Wv]
  np.testing.assert_array_equal(
      sd["transformer.decoder.layers.2.multihead_attn.in_proj_bias"][1024:],
      variables["params"]["decoder"]["layer_2"]["cross_attn"]["v"]["bias"])
  np.testing.assert_array_equal(sd["pos_enc.pos_enc.weight"],
                                variables["constants"]["pos_enc"]["table"])
  assert sd["per_branch.classifier.4.num_batches_tracked"].dtype == np.int64
  assert sd["classifier.5.0.weight"].shape == (7, 64)
  assert sd["per_branch.classifier.0.weight"].shape == (2048, 3584)
  # The baseline has no attn/norm1/per_branch keys (import round trips: the export test).
  for aasfe, ssop in ((False, False), (True, False)):
    cfg = dict(SMALL, num_encoder_layers=3, num_decoder_layers=3, use_aasfe=aasfe, use_ssop=ssop)
    part = interop.to_torch_state_dict("est", _variables(est.EST(**cfg)))
    assert part.keys() == TorchEST(**cfg).state_dict().keys()
    assert part.keys() == {k for k in sd if not k.startswith(
        ("per_branch.",) if aasfe else ("attn.", "norm1.", "per_branch."))}


def _sd_small(model, seed):
  variables = _variables(model, seed)
  return variables, mapping.to_torch(RULES, variables)


def _vg(fn, params, *inputs, w):
  """value and gradients (params, inputs) of sum(fn(params, *inputs) * w)."""
  def loss(params, *inputs):
    y = fn(params, *inputs)
    return jnp.sum(y * w), y
  argnums = tuple(range(len(inputs) + 1))
  (_, y), g = jit(jax.value_and_grad(loss, argnums=argnums, has_aux=True))(params, *inputs)
  return y, g[0], g[1:]


def test_aasfe_matches_torch_multihead_attention():
  """AA-SFE (attention over the 5 frames of each snippet, residual + LayerNorm, cosine-weighted
  average) with the model's own weights == `nn.MultiheadAttention` (sequence-first) + `LayerNorm`
  + `F.cosine_similarity` + clamp, forward and gradients w.r.t. the frames and every weight."""
  model = est.EST(**SMALL, dropout=0.0)
  variables, sd = _sd_small(model, seed=1)
  ref = TorchEST(**SMALL, dropout=0.0)
  load_numpy_state_dict(ref, sd)
  rng = np.random.default_rng(2)
  n, f, d = 6, 5, 64
  x = rng.normal(size=(n, f, d)).astype(np.float32)
  w = rng.normal(size=(n, d)).astype(np.float32)
  sub = est.AASFE(num_heads=4, dropout=0.0)
  y, gp, (gx,) = _vg(lambda p, x: sub.apply({"params": p}, x, train=True),
                     variables["params"]["aasfe"], x, w=w)
  xt = torch.from_numpy(x.transpose(1, 0, 2).copy()).requires_grad_(True)    # (F, N, d)
  yt, wt = ref.aasfe(xt)
  (yt * torch.from_numpy(w)).sum().backward()
  wt = wt.detach().numpy()
  assert wt.min() > 1e-3 and wt.max() <= 1.0 + 1e-6                    # none clamped here
  assert_close(y, yt.detach().numpy(), err="snippets")
  assert_close(gx, xt.grad.numpy().transpose(1, 0, 2), err="d frames")
  rules = mapping.torch_mha("attn", "attn") + mapping.layernorm("norm1", "norm1")
  g_sd = mapping.to_torch(rules, {"params": gp})
  for name in ("attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
               "attn.out_proj.bias", "norm1.weight", "norm1.bias"):
    p = dict(ref.named_parameters())[name]
    assert_close(g_sd[name], p.grad.numpy(), err=name)


def test_encoder_and_decoder_layers_match_torch():
  """EST's encoder/decoder layers (post-norm, ReLU, separate q/k/v with biases) with the model's
  weights == the torch `TransformerEncoderLayer` / `TransformerDecoderLayer` of the reference
  (`nn.Transformer`, sequence-first), forward and gradients, dropout 0."""
  model = est.EST(**SMALL, dropout=0.0)
  variables, sd = _sd_small(model, seed=3)
  ref = TorchEST(**SMALL, dropout=0.0)
  load_numpy_state_dict(ref, sd)
  rng = np.random.default_rng(4)
  b, s, d = 3, 7, 64
  src = rng.normal(size=(b, s, d)).astype(np.float32)
  tgt = rng.normal(size=(b, 1, d)).astype(np.float32)
  w_enc = rng.normal(size=(b, s, d)).astype(np.float32)
  w_dec = rng.normal(size=(b, 1, d)).astype(np.float32)
  kw = dict(num_heads=4, mlp_dim=128, norm_first=False, activation="relu", qkv_bias=True)
  enc = attention.TransformerEncoderLayer(qkv_layout="separate", **kw)
  dec = attention.TransformerDecoderLayer(**kw)
  p = variables["params"]
  y_e, gp_e, (gx_e,) = _vg(lambda q, x: enc.apply({"params": q}, x), p["encoder"]["layer_1"],
                           src, w=w_enc)
  y_d, gp_d, (gt_d, gm_d) = _vg(lambda q, t, m: dec.apply({"params": q}, t, m),
                                p["decoder"]["layer_0"], tgt, src, w=w_dec)
  t_enc, t_dec = ref.transformer.encoder.layers[1], ref.transformer.decoder.layers[0]
  seq = lambda a: torch.from_numpy(a.transpose(1, 0, 2).copy()).requires_grad_(True)
  xs, xt, xm = seq(src), seq(tgt), seq(src)
  ye = t_enc(xs)
  yd = t_dec(xt, xm)
  (ye * seq(w_enc).detach()).sum().backward()
  (yd * seq(w_dec).detach()).sum().backward()
  back = lambda t: t.detach().numpy().transpose(1, 0, 2)
  assert_close(y_e, back(ye), err="encoder layer")
  assert_close(gx_e, back(xs.grad), err="encoder d input")
  assert_close(y_d, back(yd), err="decoder layer")
  assert_close(gt_d, back(xt.grad), err="decoder d tgt")
  assert_close(gm_d, back(xm.grad), err="decoder d memory")
  n = 0
  for sub_ref, rules, grads in (
      (t_enc, mapping.torch_encoder_layer("", ""), gp_e),
      (t_dec, mapping.torch_decoder_layer("", ""), gp_d)):
    g_sd = {k.lstrip("."): v for k, v in mapping.to_torch(rules, {"params": grads}).items()}
    for name, prm in sub_ref.named_parameters():
      assert_close(g_sd[name], prm.grad.numpy(), err=name)
      n += 1
  assert n == 12 + 18


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
  """Width-16 EST (d 128) at 32×32, B=2: export (weights + verification sample)."""
  model = est.EST(**dict(SMALL, width=16, d_model=128, dim_feedforward=256))
  variables = _variables(model, seed=5)
  out = tmp_path_factory.mktemp("export") / "est.safetensors"
  info = interop.export("est", model, variables, out, seed=6, batch=2, input_shape=(32, 32))
  return model, variables, info


def test_export_eval_matches_torch_reference(small_export):
  """Eval mode, both heads: the torch reference loaded (strict) from the written safetensors file
  reproduces the verification sample our model wrote, with non-identity `per` rows."""
  model, variables, info = small_export
  sd = load_file(info["weights"])
  assert sd.keys() == mapping.to_torch(RULES, variables).keys() and info["num_tensors"] == len(sd)
  assert info["num_params"] == est.num_params(variables["params"])
  ver = np.load(info["verify"])
  assert ver["input"].shape == (2, 7, 5, 3, 32, 32) and ver["output"].shape == (2, 7 + 10)
  ref = TorchEST(**dict(SMALL, width=16, d_model=128, dim_feedforward=256)).eval()
  load_numpy_state_dict(ref, sd)
  per = torch.from_numpy(est.PERMUTATIONS_10[:2].copy()).long()
  with torch.no_grad():
    logits, perm_logits = ref(torch.from_numpy(ver["input"]), per)
  ours = ver["output"]
  assert np.abs(ours).max() > 0.5
  assert_close(ours[:, :7], logits.numpy(), err="logits")          # measured max |Δ| ~1e-6
  assert_close(ours[:, 7:], perm_logits.numpy(), err="perm logits")
  # The permutation matters: identity positions change both heads.
  with torch.no_grad():
    l_id, p_id = ref(torch.from_numpy(ver["input"]), torch.arange(7).expand(2, 7))
  assert np.abs(l_id.numpy() - logits.numpy()).max() > 1e-3
  # Import of the written file gives the exported variables back.
  _tree_equal(interop.from_torch_state_dict("est", sd, like_variables=variables),
              jax.tree.map(np.asarray, variables))


def test_export_snippet_runs_against_a_stand_in_official_module(small_export, monkeypatch):
  """Execute the returned snippet with `models.Model.resnet18_EST` provided by the test."""
  _, _, info = small_export
  fake = types.ModuleType("models.Model")
  fake.resnet18_EST = lambda **kw: TorchEST(**dict(SMALL, width=16, d_model=128,
                                                   dim_feedforward=256))
  monkeypatch.setitem(sys.modules, "models", types.ModuleType("models"))
  monkeypatch.setitem(sys.modules, "models.Model", fake)
  monkeypatch.setattr(torch.Tensor, "cuda", torch.Tensor.cuda)       # restored after the test
  assert "NOTE: this export is not the official configuration" in info["snippet"]
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    exec(compile(info["snippet"], "<snippet>", "exec"), {})
  diff = float(buf.getvalue().strip().split(":")[-1])
  assert diff < 1e-4
  assert est_map.is_official_config(est.EST())
  assert not est_map.is_official_config(est.EST(use_ssop=False))


def test_train_mode_heads_grads_and_stats_match_torch_float64():
  """Train mode, dropout 0, B=2, width 8 at 32×32, shuffled positions: both heads, the gradient of
  `Σ logits·w1 + Σ perm_logits·w2` w.r.t. every parameter and the input clip, and the updated
  BatchNorm statistics (ResNet over all B·35 frames, SSOP BatchNorm1d over B). float64 on both
  sides (float32 ReLU boundary flips make elementwise gradient comparisons of deep ReLU nets
  meaningless, see test_former_dfer.py); the SSOP input is detached on both sides."""
  b, hw = 2, 32
  cfg = dict(SMALL, dropout=0.0, classifier_dropout=0.0)
  with jax.enable_x64(True):
    model = est.EST(**cfg, dtype=jnp.float64, param_dtype=jnp.float64)
    variables = jax.tree.map(lambda a: np.asarray(a, np.float64),
                             _variables(est.EST(**cfg), seed=7))
    rng = np.random.default_rng(8)
    x = rng.random((b, 35, hw, hw, 3))
    perm = est.PERMUTATIONS_10[[3, 6]]
    w1, w2 = rng.normal(size=(b, 7)), rng.normal(size=(b, 10))

    @jit
    def f(params, x):
      def loss(params, x):
        out, stats = model.apply({"params": params, "batch_stats": variables["batch_stats"],
                                  "constants": variables["constants"]}, x,
                                 perm, train=True, mutable=["batch_stats"],
                                 rngs={"dropout": jax.random.key(0)})
        return jnp.sum(out["logits"] * w1) + jnp.sum(out["perm_logits"] * w2), (out, stats)
      return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)

    (_, (out, stats)), (gp, gx) = f(variables["params"], x)
    assert out["logits"].dtype == jnp.float64
  ref = TorchEST(**cfg)
  load_numpy_state_dict(ref, mapping.to_torch(RULES, variables, float_dtype=None))
  ref = ref.double().train()
  xt = torch.from_numpy(to_torch_video(x, 7)).requires_grad_(True)
  with linear_bias_term_scales(ref) as term_scales:
    lt, pt = ref(xt, torch.from_numpy(perm).long())
    ((lt * torch.from_numpy(w1)).sum() + (pt * torch.from_numpy(w2)).sum()).backward()
  # Two float64 implementations: the results agree to ≤ 2.3e4·eps64 of each tensor's largest value
  # (measured; BatchNorm1d over B=2, LayerNorms and softmaxes amplify the rounding), so the
  # tolerance is 2^19·eps64 (1.2e-10) of that scale plus 1e-9 relative. For a Linear's bias the
  # scale also covers the terms its gradient sums (the largest Σ over the batch of |∂L/∂z|): those
  # of per_branch.classifier.{0,3} feed train-mode BatchNorm1d, are 0 in theory and pure rounding
  # noise of terms of size ~11 and ~1.1 in practice (measured 28 and 10 eps64 of that here;
  # -1.2e-13, 490 eps64, on an AMD EPYC: above the fixed atol 1e-13 this test had, far below
  # 2^19). A real error (a missing term, BatchNorm statistics over the wrong axis, a wrong
  # permutation) is orders of magnitude above 1e-10.
  tol = dict(rtol=1e-9, atol_frac=2 ** 19 * tolerances.eps(np.float64))
  assert_close(out["logits"], lt.detach().numpy(), err="logits", **tol)
  assert_close(out["perm_logits"], pt.detach().numpy(), err="perm logits", **tol)
  assert_close(gx, xt.grad.numpy().transpose(0, 1, 2, 4, 5, 3).reshape(x.shape), err="d input",
               **tol)
  grads_sd = mapping.to_torch(RULES, {"params": gp}, float_dtype=None)
  n = _grads_match(ref, grads_sd, term_scales, **tol)
  assert n == sum(p.requires_grad for p in ref.parameters()) == len(grads_sd) > 100
  assert "constants" not in stats                      # the PE table is read-only in training
  new_sd = mapping.to_torch(RULES, {"params": variables["params"], **stats,
                                    "constants": variables["constants"]}, float_dtype=None)
  checked = 0
  for k, v in ref.state_dict().items():
    if k.endswith(("running_mean", "running_var")):
      assert_close(new_sd[k], v.numpy(), err=k, **tol)
      checked += 1
  assert checked == 2 * (20 + 2)
  np.testing.assert_array_equal(new_sd["pos_enc.pos_enc.weight"],
                                ref.state_dict()["pos_enc.pos_enc.weight"].numpy())
