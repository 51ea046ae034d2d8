"""ABAWTCN vs an independent torch model (TCN chomp stack + torch.nn.TransformerEncoder + Linear-
BN-Linear heads, `tests/interop/torch_abaw_ref.py`) with the same weights through the export
mapping: eval and train mode (BatchNorm batch statistics and running-stat updates), forward and
gradients; one stream (ABAW6), six-way streams with split VA heads (ABAW5 layout), multi-task.
Losses vs torch transcriptions of the published formulas; the ABAW6 EXPR parameter count."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxaffect import flops, interop
from jaxaffect.models import abaw_tcn
from tests import tolerances
from tests.interop import torch_abaw_ref as tref
from tests.interop.torch_refs import (assert_close, assert_grads_match, jit, load_numpy_state_dict,
                                      random_variables)

SMALL = dict(kernel_size=3, d_model=32, num_heads=4, num_layers=2, dim_feedforward=48)

# Two float32 programs (torch, or the same model on another batch shape / padding) differ by
# rounding in proportion to the size of the values compared: measured ≤ 8 eps32 of the largest
# value of the reference tensor (or of the largest gradient, for gradients that a train-mode
# BatchNorm makes ~0 and for the PReLU slopes' long sums). The absolute floor is NOISE_ULPS eps32
# of that scale, on top of each comparison's rtol: fixed floors (1e-6 absolute, 1e-6·scale) were
# within 1.2-2.5x of that noise. A padding frame that leaks into a real one, or a wrong mask in a
# BatchNorm, changes the values by orders of magnitude more.
NOISE_ULPS = 64


def _atol(ref_or_scale) -> float:
  """NOISE_ULPS eps32 of the largest |value| of `ref_or_scale` (a tensor, a tree, or a scale)."""
  leaves = jax.tree_util.tree_leaves(ref_or_scale)
  return float(tolerances.rounding_atol(max(float(np.abs(np.asarray(x)).max(initial=0.0))
                                            for x in leaves), ulps=NOISE_ULPS, dtype=np.float32))


def _randn(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _variables(module, feats, seed):
  shapes = jax.eval_shape(lambda f: module.init(jax.random.key(0), f, train=False), feats)
  v = random_variables(shapes, seed=seed)
  rng = np.random.default_rng(seed + 1)
  # weight-norm gains ≠ ‖v‖ and PReLU slopes ≠ 0.25 (random_variables leaves them N(0,1))
  fix = lambda path, x: (rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
                         if "weight_g" in jax.tree_util.keystr(path) else
                         rng.uniform(0.05, 0.5, x.shape).astype(np.float32)
                         if "relu" in jax.tree_util.keystr(path) else x)
  return jax.tree_util.tree_map_with_path(fix, v)


def _torch_model(module, input_dims, sd):
  streams = [(n, input_dims[n], ch) for n, ch in module.streams]
  heads = []
  for o, names in module.head_names().items():
    n = module.output_dims()[o] // len(names)
    heads += [(h, n) for h in names]
  ref = tref.TorchABAW(streams, heads, k=module.kernel_size, d=module.d_model,
                       nheads=module.num_heads, layers=module.num_layers,
                       ff=module.dim_feedforward, dropout=0.0,
                       encoder_name="decoder" if any(h == "vhead" for h, _ in heads) else "encoder")
  load_numpy_state_dict(ref, sd)
  return ref


CASES = {
    "abaw6_expr": (dict(streams=(("mae", (24, 16, 12)),), outputs=("expr",), **SMALL),
                   {"mae": 20}),
    "abaw5_va_split": (dict(streams=(("wav", (16, 8)), ("arcface", (12, 12, 8)),
                                     ("emotion", (10, 6))), outputs=("va",), va_heads="split",
                            **SMALL), {"wav": 14, "arcface": 12, "emotion": 9}),
    "multitask": (dict(streams={"a": [16, 8], "b": [12, 8]}, outputs=["va", "expr", "au"],
                       num_expr_classes=7, **SMALL), {"a": 11, "b": 13}),
}


def _pad_like_window_indices(feats, lengths):
  """Frames at or after each row's length replaced by its last real frame (as
  `samplers.window_indices` pads a tail window); a row of length 0 (a padding row of the last eval
  batch) keeps its random content. Returns (features, valid (B, T) bool)."""
  t = next(iter(feats.values())).shape[1]
  valid = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
  out = {}
  for n, x in feats.items():
    x = x.copy()
    for i, length in enumerate(lengths):
      if 0 < length < t:
        x[i, length:] = x[i, length - 1]
    out[n] = x
  return out, valid


TORCH_CASES = [(c, False) for c in sorted(CASES)] + [("abaw6_expr", True), ("abaw5_va_split", True)]


@pytest.mark.parametrize("case,padded", TORCH_CASES)
@pytest.mark.parametrize("train", [False, True])
def test_model_matches_torch_reference(case, padded, train):
  """padded: rows of lengths (7, 13, 0, 10) in T = 13 with `frame_mask = valid` vs torch with
  `src_key_padding_mask = ~valid` (and, in train mode, heads/BatchNorm on the valid frames)."""
  kw, dims = CASES[case]
  module = abaw_tcn.ABAWTCN(**kw)
  t = 13
  lengths = (7, 13, 0, 10) if padded else (t, t, t)
  b = len(lengths)
  feats = {n: _randn(b, t, d, seed=i) for i, (n, d) in enumerate(sorted(dims.items()))}
  feats, valid = _pad_like_window_indices(feats, lengths)
  fm = jnp.asarray(valid, jnp.float32) if padded else None
  variables = _variables(module, feats, seed=5)
  sd = interop.to_torch_state_dict("abaw_tcn", variables)
  ref = _torch_model(module, dims, sd)
  ref.train(train)
  n_out = sum(module.output_dims().values())
  w = _randn(b, t, n_out, seed=9) * valid[..., None]      # loss on real frames only

  def loss(params, feats):
    if train:
      out, new = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, feats,
                              train=True, frame_mask=fm, mutable=["batch_stats"])
    else:
      out, new = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, feats,
                              train=False, frame_mask=fm), {}
    y = jnp.concatenate([out[o] for o in module.outputs], axis=-1)
    return jnp.sum(y * w), (y, new)
  (_, (y, new)), (gp, gf) = jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      variables["params"], feats)
  ft = {n: torch.from_numpy(x).requires_grad_(True) for n, x in feats.items()}
  yt = ref(ft, torch.from_numpy(valid) if padded else None)
  sel = valid.reshape(-1)
  (yt[sel] * torch.from_numpy(w.reshape(b * t, -1)[sel])).sum().backward()
  y = np.asarray(y).reshape(b * t, -1)
  assert np.all(np.isfinite(y))
  rows = sel if train else np.ones_like(sel)       # torch train heads see valid frames only
  assert_close(y[rows], yt.detach().numpy()[rows], err="forward")
  for n in feats:
    assert_close(gf[n], ft[n].grad.numpy(), err=f"d {n}")
    assert np.all(np.asarray(gf[n])[~valid] == 0)   # padding frames cannot reach real outputs
  g_sd = interop.to_torch_state_dict("abaw_tcn", {"params": gp,
                                                  "batch_stats": variables["batch_stats"]})
  # In train mode BatchNorm cancels any per-channel constant before it (fc0.bias, the last
  # norm2.bias): those gradients are 0 up to rounding; compare them against the largest gradient.
  gmax = max(float(p.grad.abs().max()) for p in ref.parameters())
  n = assert_grads_match(ref, g_sd, atol_abs=_atol(gmax) if train else 0.0)
  assert n == len(list(ref.parameters()))
  if train:   # running statistics after one step (torch momentum 0.1, unbiased variance)
    new_sd = interop.to_torch_state_dict("abaw_tcn", {"params": variables["params"], **new})
    tsd = ref.state_dict()
    keys = [k for k in tsd if k.endswith("running_mean") or k.endswith("running_var")]
    assert keys
    for k in keys:
      assert_close(new_sd[k], tsd[k].numpy(), err=k)


@pytest.mark.parametrize("case", ["abaw6_expr", "abaw5_va_split"])
@pytest.mark.parametrize("train", [False, True])
def test_padded_window_equals_truncated_window(case, train):
  """The official inference runs the tail window truncated (`upczww/abaw6` `VA/test.py`) and its
  training keeps full windows only, so padding must be invisible: real frames of a padded window
  (frame_mask = valid) give the same outputs, running statistics and gradients (of a loss on real
  frames) as the truncated window; padding frames get zero gradient; a padding row (no valid
  frame) stays finite and attends to all its keys. Train mode with dropout 0: BatchNorm batch
  statistics couple the rows, so all real rows share one length there."""
  kw, dims = CASES[case]
  module = abaw_tcn.ABAWTCN(**kw)
  t = 16
  lengths = (11, 11, 0) if train else (9, 5, 0)
  b = len(lengths)
  feats = {n: _randn(b, t, d, seed=10 + i) for i, (n, d) in enumerate(sorted(dims.items()))}
  feats, valid = _pad_like_window_indices(feats, lengths)
  variables = _variables(module, feats, seed=7)
  n_out = sum(module.output_dims().values())
  w = _randn(b, t, n_out, seed=11)
  mut = ["batch_stats"] if train else False

  def run(params, f, fm, wt):
    out, new = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, f,
                            train=train, frame_mask=fm, mutable=mut) if train else (
        module.apply({"params": params, "batch_stats": variables["batch_stats"]}, f,
                     train=False, frame_mask=fm), {})
    y = jnp.concatenate([out[o] for o in module.outputs], axis=-1)
    return jnp.sum(y * wt), (y, new)
  grad = jit(jax.value_and_grad(run, argnums=(0, 1), has_aux=True))
  fm = jnp.asarray(valid, jnp.float32)
  (_, (y, new)), (gp, gf) = grad(variables["params"], feats, fm, w * valid[..., None])
  leaves = jax.tree_util.tree_leaves((y, new, gp, gf))
  assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
  for n in feats:
    assert np.all(np.asarray(gf[n])[~valid] == 0)
  # a loss over every frame, padding row included: still finite everywhere
  (_, _), g_all = grad(variables["params"], feats, fm, w)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(g_all))
  y = np.asarray(y)
  flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(x)
                       for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  if train:            # the real rows truncated to their common length, one batch
    n = lengths[0]
    real = [i for i, length in enumerate(lengths) if length]
    f_tr = {k: x[real, :n] for k, x in feats.items()}
    (_, (y_tr, new_tr)), (gp_tr, gf_tr) = grad(variables["params"], f_tr, None, w[real, :n])
    np.testing.assert_allclose(y[real, :n], np.asarray(y_tr), rtol=1e-5, atol=_atol(y_tr))
    for k in feats:
      np.testing.assert_allclose(np.asarray(gf[k])[real, :n], np.asarray(gf_tr[k]), rtol=1e-4,
                                 atol=_atol(gf_tr[k]), err_msg=k)
    a, r = flat(new), flat(new_tr)
    assert a.keys() == r.keys() and a
    for k in a:
      np.testing.assert_allclose(a[k], r[k], rtol=1e-5, atol=_atol(r[k]), err_msg=k)
    gp_ref = gp_tr
  else:                # each real row truncated and run alone; parameter gradients add up
    gp_ref = None
    for i, n in enumerate(lengths):
      if not n:
        continue
      f_tr = {k: x[i:i + 1, :n] for k, x in feats.items()}
      (_, (y_tr, _)), (gp_i, gf_tr) = grad(variables["params"], f_tr, None, w[i:i + 1, :n])
      np.testing.assert_allclose(y[i, :n], np.asarray(y_tr)[0], rtol=1e-5, atol=_atol(y_tr))
      for k in feats:
        np.testing.assert_allclose(np.asarray(gf[k])[i, :n], np.asarray(gf_tr[k])[0],
                                   rtol=1e-4, atol=_atol(gf_tr[k]), err_msg=k)
      gp_ref = gp_i if gp_ref is None else jax.tree_util.tree_map(jnp.add, gp_ref, gp_i)
    # the padding row attends to all its keys: as if it were run without a mask
    pad_row = lengths.index(0)
    y_row, _ = run(variables["params"], {k: x[pad_row:pad_row + 1] for k, x in feats.items()},
                   None, w[:1])[1]
    np.testing.assert_allclose(y[pad_row], np.asarray(y_row)[0], rtol=1e-5, atol=_atol(y_row))
  a, r = flat(gp), flat(gp_ref)
  assert a.keys() == r.keys()
  atol = _atol(r)   # relative to the largest gradient: train-mode BN makes some of them ~0
  for k in a:
    np.testing.assert_allclose(a[k], r[k], rtol=1e-4, atol=atol, err_msg=k)


def test_frame_mask_batchnorm_uses_only_valid_frames():
  """All-valid mask == no mask (torch); a partial mask == torch BatchNorm1d on the valid rows."""
  bn = abaw_tcn.MaskedBatchNorm()
  x = _randn(3, 7, 5, seed=1) * 2 + 1
  v = bn.init(jax.random.key(0), x, use_running_average=False)
  run = lambda m: bn.apply(v, x, use_running_average=False, mask=m, mutable=["batch_stats"])
  y0, s0 = run(None)
  y1, s1 = run(jnp.ones((3, 7)))
  np.testing.assert_allclose(np.asarray(y0), np.asarray(y1), rtol=1e-6, atol=1e-6)
  mask = np.ones((3, 7), np.float32)
  mask[0, 5:] = 0
  mask[2, :3] = 0
  y2, s2 = run(jnp.asarray(mask))
  tb = torch.nn.BatchNorm1d(5).train()
  valid = mask.reshape(-1) > 0
  yt = tb(torch.from_numpy(x.reshape(-1, 5)[valid])).detach().numpy()
  assert_close(np.asarray(y2).reshape(-1, 5)[valid], yt, err="masked BN")
  assert_close(s2["batch_stats"]["mean"], tb.running_mean.numpy(), err="running mean")
  assert_close(s2["batch_stats"]["var"], tb.running_var.numpy(), err="running var")
  tb0 = torch.nn.BatchNorm1d(5).train()
  tb0(torch.from_numpy(x.reshape(-1, 5)))
  assert_close(s0["batch_stats"]["var"], tb0.running_var.numpy(), err="running var (all)")
  _, s3 = run(jnp.zeros((3, 7)))           # no valid frame: running stats unchanged
  np.testing.assert_array_equal(np.asarray(s3["batch_stats"]["var"]), np.ones(5))
  # through the model: frame_mask reaches every head's BatchNorm
  module = abaw_tcn.ABAWTCN(streams=(("f", (8,)),), outputs=("va", "au"), **SMALL)
  feats = {"f": _randn(2, 6, 8, seed=3)}
  mv = module.init(jax.random.key(1), feats, train=False)
  fm = jnp.asarray(np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], np.float32))
  full = lambda m: module.apply(mv, feats, train=True, frame_mask=m,
                                mutable=["batch_stats", "intermediates"],
                                capture_intermediates=lambda mdl, _: mdl.name == "fc0")
  (o_none, st_none), (o_ones, st_ones) = full(None), full(jnp.ones((2, 6)))
  for o in ("va", "au"):
    np.testing.assert_allclose(np.asarray(o_none[o]), np.asarray(o_ones[o]), rtol=1e-6, atol=1e-6)
  _, st = full(fm)
  for h in ("head_va", "head_au"):
    hid = np.asarray(st["intermediates"][h]["fc0"]["__call__"][0]).reshape(-1, 16)
    hid_none = np.asarray(st_none["intermediates"][h]["fc0"]["__call__"][0]).reshape(-1, 16)
    valid = np.asarray(fm).reshape(-1) > 0
    np.testing.assert_allclose(np.asarray(st["batch_stats"][h]["bn"]["mean"]),
                               0.1 * hid[valid].mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(st_none["batch_stats"][h]["bn"]["mean"]),
                               0.1 * hid_none.mean(0), rtol=1e-4, atol=1e-6)
    assert np.abs(hid[valid].mean(0) - hid.mean(0)).max() > 1e-3
  with pytest.raises(ValueError, match="frame_mask"):
    module.apply(mv, feats, train=True, frame_mask=jnp.ones((2, 5)), mutable=["batch_stats"])


def test_va_ccc_loss_matches_torch_transcription():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(4, 30, 2)).astype(np.float32) * 0.5
  target = (0.6 * pred + 0.3 * rng.normal(size=pred.shape) + 0.1).astype(np.float32)
  mask = (rng.random((4, 30)) > 0.3).astype(np.float32)
  (loss, ccc), g = jax.value_and_grad(
      lambda p: abaw_tcn.va_ccc_loss(p, jnp.asarray(target), jnp.asarray(mask)),
      has_aux=True)(jnp.asarray(pred))
  pt = torch.from_numpy(pred).requires_grad_(True)
  lt, ct = tref.va_ccc_loss_torch(pt, torch.from_numpy(target), torch.from_numpy(mask > 0))
  lt.backward()
  assert_close(loss, lt.detach().numpy(), rtol=1e-5, err="loss")
  assert_close(ccc, ct.detach().numpy(), rtol=1e-5, err="ccc")
  assert_close(g, pt.grad.numpy(), rtol=1e-4, err="d pred")
  assert np.all(np.asarray(g)[mask == 0] == 0)
  # ddof=0 is Lin's CCC: 2 cov / (var_x + var_y + (mx − my)²) (population moments)
  _, c0 = abaw_tcn.va_ccc_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask), ddof=0)
  x, y = pred[mask > 0, 0].astype(np.float64), target[mask > 0, 0].astype(np.float64)
  lin = 2 * np.mean((x - x.mean()) * (y - y.mean())) / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
  np.testing.assert_allclose(float(c0[0]), lin, rtol=1e-5)
  assert abs(float(c0[0]) - float(ccc[0])) > 1e-5      # ddof matters (official: 1)
  # no valid frame: loss 0 and finite zero gradient, CCC undefined (NaN)
  (l0, c), g0 = jax.value_and_grad(lambda p: abaw_tcn.va_ccc_loss(
      p, jnp.asarray(target), jnp.zeros((4, 30))), has_aux=True)(jnp.asarray(pred))
  assert float(l0) == 0.0 and np.all(np.isnan(np.asarray(c))) and np.all(np.asarray(g0) == 0)


def test_expr_ce_loss_matches_torch_ignore_index():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 20, 8)).astype(np.float32)
  labels = rng.integers(0, 8, (3, 20))
  labels[rng.random((3, 20)) < 0.3] = -1
  mask = (labels >= 0).astype(np.float32)
  loss, g = jax.value_and_grad(abaw_tcn.expr_ce_loss)(jnp.asarray(logits), jnp.asarray(labels),
                                                      jnp.asarray(mask))
  lt = torch.from_numpy(logits).requires_grad_(True)
  tl = torch.nn.CrossEntropyLoss(ignore_index=-1)(lt.reshape(-1, 8),
                                                  torch.from_numpy(labels.reshape(-1)))
  tl.backward()
  assert_close(loss, tl.detach().numpy(), rtol=1e-5, err="loss")
  assert_close(g, lt.grad.numpy(), rtol=1e-4, err="grad")
  # label −1 is ignored even if the mask says 1; mask 0 drops valid labels too
  l2 = abaw_tcn.expr_ce_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.ones((3, 20)))
  np.testing.assert_allclose(float(l2), float(loss), rtol=1e-6)
  m3 = mask.copy()
  m3[0] = 0
  sel = (labels.reshape(-1) >= 0) & (m3.reshape(-1) > 0)
  t3 = torch.nn.functional.cross_entropy(torch.from_numpy(logits.reshape(-1, 8)[sel]),
                                         torch.from_numpy(labels.reshape(-1)[sel]))
  np.testing.assert_allclose(float(abaw_tcn.expr_ce_loss(jnp.asarray(logits), jnp.asarray(labels),
                                                         jnp.asarray(m3))), float(t3), rtol=1e-5)
  assert float(abaw_tcn.expr_ce_loss(jnp.asarray(logits), jnp.asarray(labels),
                                     jnp.zeros((3, 20)))) == 0.0


def test_au_bce_loss_drops_rows_with_any_invalid_unit():
  rng = np.random.default_rng(2)
  logits = (2 * rng.normal(size=(2, 25, 12))).astype(np.float32)
  labels = rng.integers(0, 2, (2, 25, 12))
  bad = rng.random((2, 25)) < 0.3
  labels[bad, rng.integers(0, 12, bad.sum())] = -1
  mask = (labels != -1).astype(np.float32)
  loss, g = jax.value_and_grad(abaw_tcn.au_bce_loss)(jnp.asarray(logits), jnp.asarray(labels),
                                                     jnp.asarray(mask))
  lt = torch.from_numpy(logits).requires_grad_(True)
  lab = torch.from_numpy(labels.reshape(-1, 12))
  keep = ~(lab == -1).any(dim=1)                    # the official row selection
  tl = torch.nn.BCEWithLogitsLoss()(lt.reshape(-1, 12)[keep], lab[keep].float())
  tl.backward()
  assert_close(loss, tl.detach().numpy(), rtol=1e-5, err="loss")
  assert_close(g, lt.grad.numpy(), rtol=1e-4, err="grad")
  m2 = mask.copy()
  m2[0, 0, 3] = 0                                   # one unit masked drops the whole row
  keep2 = keep.clone()
  keep2[0] = False
  t2 = torch.nn.BCEWithLogitsLoss()(torch.from_numpy(logits.reshape(-1, 12))[keep2],
                                    lab[keep2].float())
  np.testing.assert_allclose(float(abaw_tcn.au_bce_loss(jnp.asarray(logits), jnp.asarray(labels),
                                                        jnp.asarray(m2))), float(t2), rtol=1e-5)


def test_abaw6_expr_parameter_count_and_macs():
  size = abaw_tcn.abaw6_expr_size(seq_len=300)
  assert size["params"] == 20_512_913                # official EXPR Model (torch parameters())
  m = abaw_tcn.ABAWTCN(streams=(("a", (8, 6)), ("b", (5,))), outputs=("va", "expr"),
                       va_heads="split", **SMALL)
  t = 11
  feats = {"a": jax.ShapeDtypeStruct((2, t, 7), jnp.float32),
           "b": jax.ShapeDtypeStruct((2, t, 5), jnp.float32)}
  shapes = jax.eval_shape(lambda f: m.init(jax.random.key(0), f, train=False), feats)
  counted = flops.count_macs(lambda v, f: m.apply(v, f, train=False), shapes, feats)["total"]
  ours = abaw_tcn.forward_macs_per_frame(m, t, {"a": 7, "b": 5})["total"] * 2 * t
  assert counted == ours


def test_bad_configuration_errors():
  feats = {"x": np.zeros((1, 4, 6), np.float32)}
  with pytest.raises(ValueError, match="outputs"):
    abaw_tcn.ABAWTCN(streams=(("x", (4,)),), outputs=("valence",), **SMALL).init(
        jax.random.key(0), feats)
  with pytest.raises(ValueError, match="missing"):          # a UserError (one line in the CLI)
    abaw_tcn.ABAWTCN(streams=(("y", (4,)),), **SMALL).init(jax.random.key(0), feats)
  with pytest.raises(ValueError, match="identifier"):
    abaw_tcn.ABAWTCN(streams=(("a.b", (4,)),), **SMALL)
  with pytest.raises(ValueError, match="va_heads"):
    abaw_tcn.ABAWTCN(streams=(("x", (4,)),), outputs=("va",), va_heads="both", **SMALL).init(
        jax.random.key(0), feats)
