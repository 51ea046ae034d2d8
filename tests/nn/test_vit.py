"""jaxaffect.nn.vit.ViT == timm `VisionTransformer` (same config, loaded with our exported weights):
forward and gradients w.r.t. the input and every parameter, both pooling modes and both position
tables; scanned == looped; MAE's 2-D sin-cos table (an independent transcription of
facebookresearch/mae `get_2d_sincos_pos_embed`); drop path; bfloat16 compute; parameter counts of
ViT-B/16, L/16, H/14 (shapes only); `interpolate_pos_embed` == torch `F.interpolate(bicubic)`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from jaxaffect.interop import vit as vit_map
from jaxaffect.nn import vit
from tests import tolerances
from tests.interop.torch_refs import jit, load_numpy_state_dict, random_variables

IMG, PATCH, DIM, DEPTH, HEADS, CLASSES = 32, 8, 64, 3, 4, 5
SMALL = dict(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS)

# float32 JAX vs float32 PyTorch (other kernels, other summation orders, fused SDPA attention):
# each tensor is compared at ULPS eps32 of its largest |value| (the scale its rounding noise grows
# with through LayerNorm and softmax, tests/tolerances.py). Measured (this machine, -s prints it):
# forward ≤ 4.2, input gradient ≤ 4.9, parameter gradients ≤ 7.9 eps32 of the tensor's largest
# value (the k part of qkv's bias gradient is 0 in theory, softmax being shift-invariant: its
# noise is measured against the q/v parts of the same tensor). 32 allowed (4x). The subtlest
# wrong choice measured, LayerNorm eps 1e-5 instead of 1e-6, is 35 (forward) / 52 (d input)
# eps32 off; heads innermost, swapped q/k, tanh GELU or a missing term are orders larger.
ULPS = 32


def _randn(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _shapes(model, x):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x))


def _variables(model, seed):
  """Random values (non-trivial outputs); a fixed sin-cos table keeps its real values."""
  shapes = _shapes(model, jnp.zeros((1, IMG, IMG, 3)))
  v = random_variables({"params": shapes["params"]}, seed=seed)
  if "constants" in shapes:
    v["constants"] = {"pos_embed": jnp.asarray(
        vit.sincos_2d_pos_embed(DIM, IMG // PATCH)[None])}
  return v


def _timm(model, sd, sincos):
  t = VisionTransformer(**vit_map.timm_kwargs(model))
  load_numpy_state_dict(t, sd)                                     # strict: every key mapped
  if sincos:                                                       # MAE: requires_grad=False
    t.pos_embed.requires_grad_(False)
  return t.eval()


def _close(actual, expected, err, ulps=ULPS, dtype=np.float32):
  """`ulps` eps(dtype) of the tensor's largest |value|; returns (max abs diff, as ulps)."""
  expected = np.asarray(expected, np.float64)
  scale = float(np.abs(expected).max(initial=0.0))
  tolerances.assert_close_ulps(np.asarray(actual, np.float64), expected, magnitude=scale,
                               ulps=ulps, dtype=dtype, err_msg=err)
  diff = float(np.abs(np.asarray(actual, np.float64) - expected).max(initial=0.0))
  return diff, diff / (tolerances.eps(dtype) * max(scale, 1e-300))


def _value_and_grads(model, variables, x, w, train=False, rngs=None, **kw):
  @jit
  def f(params, x):
    def loss(params, x):
      y = model.apply({**variables, "params": params}, x, train=train, rngs=rngs, **kw)
      return jnp.sum(y * w), y
    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
  (_, y), (gp, gx) = f(variables["params"], x)
  return y, gp, gx


@pytest.mark.parametrize("pool,pos", [("avg", "sincos"), ("token", "learn")])
def test_matches_timm_forward_and_grads(pool, pos):
  model = vit.ViT(**SMALL, num_classes=CLASSES, global_pool=pool, pos_embed=pos)
  variables = _variables(model, seed=0)
  sd = vit_map.to_timm(variables)
  assert ("norm.weight" in sd) == (pool == "token") and ("fc_norm.weight" in sd) == (pool == "avg")
  tmodel = _timm(model, sd, pos == "sincos")
  x = np.random.default_rng(1).random((2, IMG, IMG, 3), dtype=np.float32)
  w = _randn(2, CLASSES, seed=2)
  y, gp, gx = _value_and_grads(model, variables, x, w)

  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  yt = tmodel(xt)
  (yt * torch.from_numpy(w)).sum().backward()
  assert np.abs(np.asarray(y)).max() > 0.1                        # non-trivial logits
  report = {"forward": _close(y, yt.detach().numpy(), "logits"),
            "d input": _close(gx, xt.grad.numpy().transpose(0, 2, 3, 1), "d input")}
  gsd = vit_map.to_timm({"params": gp})
  n = 0
  for name, p in tmodel.named_parameters():
    if not p.requires_grad:
      continue
    assert p.grad is not None and name in gsd, name
    report[name] = _close(gsd[name], p.grad.numpy(), f"grad {name}")
    n += 1
  assert n == 4 + 12 * DEPTH + 4 - (pos == "sincos")     # + norm or fc_norm, head
  worst = max((v for k, v in report.items() if k not in ("forward", "d input")),
              key=lambda t: t[1])
  print(f"\n{pool}/{pos}: forward max|diff| {report['forward'][0]:.3g} "
        f"({report['forward'][1]:.3g} ulps of max), d input {report['d input'][0]:.3g} "
        f"({report['d input'][1]:.3g}), worst param grad {worst[0]:.3g} ({worst[1]:.3g})")


def test_features_and_mae_parts_match_timm():
  """`return_tokens` = timm forward_features; MAE's path (embed, keep tokens by index, add_cls,
  encode, final_norm) with every token kept equals it, and a subset runs."""
  model = vit.ViT(**SMALL, global_pool="token")
  variables = _variables(model, seed=3)
  tmodel = _timm(model, vit_map.to_timm(variables), True)
  x = np.random.default_rng(4).random((2, IMG, IMG, 3), dtype=np.float32)
  with torch.no_grad():
    ft = tmodel.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  tokens = jit(lambda v, x: model.apply(v, x, return_tokens=True))(variables, x)
  _close(tokens, ft, "tokens")

  def mae_encoder(mdl, x, keep):
    t = mdl.embed(x)
    t = jnp.take_along_axis(t, keep[:, :, None], axis=1)
    return mdl.final_norm(mdl.encode(mdl.add_cls(t)))
  run = jit(lambda v, x, keep: model.apply(v, x, keep, method=mae_encoder))
  n = (IMG // PATCH) ** 2
  everything = run(variables, x, jnp.tile(jnp.arange(n), (2, 1)))
  _close(everything, ft, "MAE path, all tokens")
  keep = jnp.asarray(np.stack([np.sort(np.random.default_rng(s).permutation(n)[:4])
                               for s in (5, 6)]))
  sub = run(variables, x, keep)
  assert sub.shape == (2, 5, DIM)
  # the visible tokens carry their own positions: timm on the same subset of tokens
  with torch.no_grad():
    t = tmodel.patch_embed(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    t = t + tmodel.pos_embed[:, 1:]
    t = torch.gather(t, 1, torch.from_numpy(np.array(keep))[:, :, None].expand(-1, -1, DIM))
    cls = (tmodel.cls_token + tmodel.pos_embed[:, :1]).expand(2, -1, -1)
    ref = tmodel.norm(tmodel.blocks(torch.cat([cls, t], 1))).numpy()
  _close(sub, ref, "MAE path, 4 visible tokens")


def test_scanned_equals_looped():
  """Same parameters (converted exactly) → same outputs and gradients (train mode, drop path
  off); scanned init has the stacked layout; export of the scanned model = export of the loop."""
  looped = vit.ViT(**SMALL, num_classes=CLASSES)
  scanned = vit.ViT(**SMALL, num_classes=CLASSES, scan=True, remat_policy="dots_saveable")
  variables = _variables(looped, seed=7)
  sv = {**variables, "params": vit.to_scanned(variables["params"], DEPTH)}
  shapes = _shapes(scanned, jnp.zeros((1, IMG, IMG, 3)))["params"]
  assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(np.shape, sv["params"])
  x = np.random.default_rng(8).random((2, IMG, IMG, 3), dtype=np.float32)
  w = _randn(2, CLASSES, seed=9)
  rngs = {"dropout": jax.random.key(0)}
  y1, gp1, gx1 = _value_and_grads(looped, variables, x, w, train=True, rngs=rngs)
  y2, gp2, gx2 = _value_and_grads(scanned, sv, x, w, train=True, rngs=rngs)
  # one program vs another (scan body, remat): summation orders may differ; 16 eps32 of scale
  _close(y2, y1, "scanned logits", ulps=16)
  _close(gx2, gx1, "scanned d input", ulps=16)
  jax.tree.map(lambda a, b: _close(a, b, "scanned grads", ulps=16),
               vit.to_looped(gp2, DEPTH), gp1)
  sd1, sd2 = vit_map.to_timm(variables), vit_map.to_timm(sv)
  assert sd1.keys() == sd2.keys()
  for k in sd1:
    np.testing.assert_array_equal(sd1[k], sd2[k], err_msg=k)
  back = vit_map.from_timm(sd1, _shapes(scanned, jnp.zeros((1, IMG, IMG, 3))))   # scanned like
  jax.tree.map(np.testing.assert_array_equal, back["params"], sv["params"])
  np.testing.assert_array_equal(back["constants"]["pos_embed"], sv["constants"]["pos_embed"])


def _mae_get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=False):
  """facebookresearch/mae util/pos_embed.py, transcribed (np.float → np.float64)."""
  grid_h = np.arange(grid_size, dtype=np.float32)
  grid_w = np.arange(grid_size, dtype=np.float32)
  grid = np.meshgrid(grid_w, grid_h)  # here w goes first
  grid = np.stack(grid, axis=0)
  grid = grid.reshape([2, 1, grid_size, grid_size])

  def from_grid_1d(dim, pos):
    omega = np.arange(dim // 2, dtype=np.float64)
    omega /= dim / 2.
    omega = 1. / 10000**omega
    pos = pos.reshape(-1)
    out = np.einsum('m,d->md', pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  emb_h = from_grid_1d(embed_dim // 2, grid[0])
  emb_w = from_grid_1d(embed_dim // 2, grid[1])
  pos_embed = np.concatenate([emb_h, emb_w], axis=1)
  if cls_token:
    pos_embed = np.concatenate([np.zeros([1, embed_dim]), pos_embed], axis=0)
  return pos_embed


def test_sincos_table_is_maes_with_the_column_first():
  for dim, g in [(64, 4), (768, 14), (32, 3)]:
    ours = vit.sincos_2d_pos_embed(dim, g)
    ref = torch.from_numpy(_mae_get_2d_sincos_pos_embed(dim, g, cls_token=True)).float().numpy()
    np.testing.assert_array_equal(ours, ref)                   # same float64 ops, then .float()
  # The quirk, stated directly: token (i, j) = row i, column j (row-major); the first half of the
  # channels depends on the column only, the second half on the row only.
  t = vit.sincos_2d_pos_embed(64, 4)[1:].reshape(4, 4, 64)
  assert np.all(t[:, :, :32] == t[:1, :, :32]) and np.all(t[:, :, 32:] == t[:, :1, 32:])
  assert not np.all(t[:, :, :32] == t[:, :1, :32])                # would hold with halves swapped
  np.testing.assert_array_equal(t[0, 2, :32], np.float32(vit.sincos_1d(32, np.array([2.0]))[0]))
  # The model's table is this one (row 0 = class position = zeros), in `constants`, no parameter.
  model = vit.ViT(**SMALL)
  v = model.init(jax.random.key(0), jnp.zeros((1, IMG, IMG, 3)))
  np.testing.assert_array_equal(v["constants"]["pos_embed"][0], vit.sincos_2d_pos_embed(DIM, 4))
  assert "pos_embed" not in v["params"]
  # a non-square grid: (gh, gw) rows and columns, the same rule
  r = vit.sincos_2d_pos_embed(16, (2, 3))[1:].reshape(2, 3, 16)
  np.testing.assert_array_equal(r[1, 2, :8], np.float32(vit.sincos_1d(8, np.array([2.0]))[0]))
  np.testing.assert_array_equal(r[1, 2, 8:], np.float32(vit.sincos_1d(8, np.array([1.0]))[0]))


def test_drop_path_rates_and_statistics():
  # timm: torch.linspace(0, rate, depth) in float32 (its vectorised kernel rounds some entries
  # differently from a float64 linspace: within 2 eps32 of the rate, no effect on a probability)
  for rate, depth in [(0.1, 12), (0.2, 24), (0.3, 7), (0.1, 1)]:
    np.testing.assert_allclose(vit.drop_path_rates(rate, depth),
                               timm.layers.calculate_drop_path_rates(rate, depth),
                               rtol=0, atol=2 * tolerances.eps(np.float32) * rate)
  x = jnp.ones((20000, 1, 1))
  y = np.asarray(vit.drop_path(x, 0.3, jax.random.key(0)))
  kept = y != 0
  se = np.sqrt(0.3 * 0.7 / y.size)
  assert abs(1 - kept.mean() - 0.3) < 5 * se
  np.testing.assert_allclose(y[kept], 1 / np.float32(0.7), rtol=1e-7)   # timm scale_by_keep


def test_drop_path_is_deterministic_given_rng_and_identity_at_eval():
  for scan in (False, True):
    model = vit.ViT(**SMALL, num_classes=CLASSES, drop_path_rate=0.5, scan=scan)
    plain = vit.ViT(**SMALL, num_classes=CLASSES, scan=scan)
    v = model.init(jax.random.key(0), jnp.zeros((1, IMG, IMG, 3)))
    x = np.random.default_rng(10).random((8, IMG, IMG, 3), dtype=np.float32)
    run = jit(lambda v, x, k: model.apply(v, x, train=True, return_tokens=True,
                                          rngs={"dropout": k}))
    a, b = run(v, x, jax.random.key(1)), run(v, x, jax.random.key(1))
    c = run(v, x, jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3
    ev = jit(lambda v, x: model.apply(v, x, train=False))(v, x)
    np.testing.assert_array_equal(ev, jit(lambda v, x: plain.apply(v, x))(v, x))
  # a separate rng stream on request
  model = vit.ViT(**SMALL, drop_path_rate=0.5, drop_path_rng="drop_path")
  v = model.init(jax.random.key(0), jnp.zeros((1, IMG, IMG, 3)))
  out = model.apply(v, x[:2], train=True, rngs={"drop_path": jax.random.key(3)})
  assert out.shape == (2, DIM)


def test_bfloat16_compute_is_close_to_float32():
  m32 = vit.ViT(**SMALL, num_classes=CLASSES, global_pool="token", pos_embed="learn")
  m16 = m32.clone(dtype=jnp.bfloat16)
  variables = _variables(m32, seed=11)
  x = np.random.default_rng(12).random((2, IMG, IMG, 3), dtype=np.float32)
  y32, y16 = jit(lambda v, x: (m32.apply(v, x), m16.apply(v, x)))(variables, x)
  assert y16.dtype == jnp.float32                                   # float32 logits
  assert all(a.dtype == jnp.float32                                 # and float32 parameters
             for a in jax.tree.leaves(_shapes(m16, jnp.zeros((1, IMG, IMG, 3)))["params"]))
  # bf16 rounding (eps 2^-7) of every matmul input through 3 blocks: measured ≤ 2.5 eps_bf16 of
  # the largest logit; 8 allowed; a wrong dtype path (e.g. softmax in bf16 without float32
  # accumulation, bf16 parameters) is not what this guards, a float32 result mislabelled is.
  d, u = _close(y16, y32, "bf16 vs f32 logits", ulps=8, dtype=jnp.bfloat16)
  print(f"\nbf16 vs f32: max|diff| {d:.3g} ({u:.3g} eps_bf16 of the largest logit)")


def _count(tree):
  return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(tree))


def _timm_count(name, **kw):
  with torch.device("meta"):
    m = timm.create_model(name, pretrained=False, num_classes=1000, **kw)  # vit_huge: 0 by default
  return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("preset,timm_name", [("vit_b16", "vit_base_patch16_224"),
                                              ("vit_l16", "vit_large_patch16_224"),
                                              ("vit_h14", "vit_huge_patch14_224")])
def test_parameter_counts_equal_timm(preset, timm_name):
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  for pool in ("token", "avg"):
    model = vit.vit(preset, num_classes=1000, global_pool=pool, pos_embed="learn", scan=True)
    n = _count(jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"])
    assert n == _timm_count(timm_name, global_pool=pool), (preset, pool)
    if preset == "vit_b16":
      assert n == 86_567_656
  # the fixed table is a constant, not a parameter
  model = vit.vit(preset, num_classes=1000, global_pool="token", scan=True)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  assert _count(shapes["params"]) + _count(shapes["constants"]) == n


@pytest.mark.parametrize("old,new", [(7, 10), (14, 16), (14, 7), ((3, 5), (4, 4))])
def test_interpolate_pos_embed_matches_torch_bicubic(old, new):
  oh, ow = (old, old) if isinstance(old, int) else old
  nh, nw = (new, new) if isinstance(new, int) else new
  pe = _randn(1, 1 + oh * ow, 16, seed=13)
  ours = vit_map.interpolate_pos_embed(pe, new, old_grid=None if isinstance(old, int) else old)
  grid = torch.from_numpy(pe[:, 1:]).reshape(1, oh, ow, 16).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(grid, size=(nh, nw), mode="bicubic",
                                        align_corners=False)
  ref = torch.cat([torch.from_numpy(pe[:, :1]), ref.permute(0, 2, 3, 1).flatten(1, 2)], 1).numpy()
  assert ours.shape == ref.shape == (1, 1 + nh * nw, 16)
  np.testing.assert_array_equal(ours[:, :1], pe[:, :1])
  # float64 (ours) vs float32 (torch) sums of 16 taps with Keys weights (Σ|w| ≤ 1.2 per axis):
  # 16 eps32 of the largest input value; an off-by-half-pixel grid or A = -0.5 is off by > 1e-2.
  d, u = _close(ours, ref, f"{old}->{new}", ulps=16)
  assert ours.dtype == np.float32


def test_from_timm_resizes_the_position_table():
  """A 48-px checkpoint (6×6 grid) into a 32-px model (4×4): learned table → bicubic resize;
  fixed sin-cos table → the 4×4 table."""
  big = vit.ViT(**{**SMALL, "img_size": 48}, pos_embed="learn")
  sd = vit_map.to_timm(_variables_for(big, 48))
  for pos in ("learn", "sincos"):
    small = vit.ViT(**SMALL, pos_embed=pos)
    like = _shapes(small, jnp.zeros((1, IMG, IMG, 3)))
    out = vit_map.from_timm(sd, like)
    if pos == "learn":
      np.testing.assert_array_equal(out["params"]["pos_embed"],
                                    vit_map.interpolate_pos_embed(sd["pos_embed"], 4))
    else:
      np.testing.assert_array_equal(out["constants"]["pos_embed"][0],
                                    vit.sincos_2d_pos_embed(DIM, 4))
    np.testing.assert_array_equal(out["params"]["blocks_1"]["attn"]["qkv"]["kernel"],
                                  sd["blocks.1.attn.qkv.weight"].T)


def _variables_for(model, img):
  shapes = _shapes(model, jnp.zeros((1, img, img, 3)))
  return random_variables({"params": shapes["params"]}, seed=14)


def test_mae_init_and_interop_mapping():
  model = vit.ViT(**SMALL, num_classes=CLASSES, scan=True)
  v = model.init(jax.random.key(0), jnp.zeros((1, IMG, IMG, 3)))
  p = vit.mae_init(v["params"], jax.random.key(1))
  k = np.asarray(p["blocks"]["attn"]["qkv"]["kernel"])
  bound = np.sqrt(6 / (DIM + 3 * DIM))
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound
  assert not np.any(np.asarray(p["blocks"]["mlp"]["fc1"]["bias"]))
  np.testing.assert_array_equal(p["blocks"]["norm1"]["scale"],
                                v["params"]["blocks"]["norm1"]["scale"])
  np.testing.assert_array_equal(p["head"]["kernel"], v["params"]["head"]["kernel"])
  assert "vit" in vit_map.MAPPING.name and "VisionTransformer" in vit_map._snippet(
      "w.safetensors", "w.npz", model)


@pytest.mark.parametrize("preset,timm_name", [("vit_b16", "vit_base_patch16_224"),
                                              ("vit_l16", "vit_large_patch16_224")])
def test_full_size_matches_timm_forward_and_grads(preset, timm_name):
  """Issue 13 item 3 at the real sizes: our ViT-B/16 and ViT-L/16 (224², MAE's fine-tuning head:
  average pool + fc_norm, 8 classes) == timm's `VisionTransformer` of the named model loaded with
  our exported weights (strict), logits and gradients w.r.t. the image and every parameter, one
  image. Same per-tensor ulps rule as the small test (noise grows with the tensor's magnitude).
  Measured here: B/16 forward 1.7e-6 (12.8 eps32 of the largest logit), d image 9.6, worst of 152
  parameter gradients 7.5; L/16 forward 1.2e-6 (4.6), d image 10.2, worst of 296 gradients 8.8."""
  model = vit.vit(preset, num_classes=8, global_pool="avg", pos_embed="learn", scan=True)
  x = np.random.default_rng(1).random((1, 224, 224, 3), dtype=np.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  variables = random_variables({"params": shapes["params"]}, seed=0)
  variables["params"]["pos_embed"] = 0.02 * _randn(*shapes["params"]["pos_embed"].shape, seed=3)
  sd = vit_map.to_timm(variables)
  t = VisionTransformer(**vit_map.timm_kwargs(model))
  ref = timm.create_model(timm_name, pretrained=False, num_classes=8, global_pool="avg")
  assert sorted(t.state_dict()) == sorted(ref.state_dict())       # the named timm model's keys
  assert all(t.state_dict()[k].shape == v.shape for k, v in ref.state_dict().items())
  del ref
  load_numpy_state_dict(t, sd)
  t.eval()
  w = _randn(1, 8, seed=2)
  y, gp, gx = _value_and_grads(model, variables, x, w)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  yt = t(xt)
  (yt * torch.from_numpy(w)).sum().backward()
  assert np.abs(np.asarray(y)).max() > 0.1
  report = {"forward": _close(y, yt.detach().numpy(), "logits"),
            "d input": _close(gx, xt.grad.numpy().transpose(0, 2, 3, 1), "d input")}
  gsd = vit_map.to_timm({"params": gp})
  for name, p in t.named_parameters():
    assert p.grad is not None and name in gsd, name
    report[name] = _close(gsd[name], p.grad.numpy(), f"grad {name}")
  worst = max((v for k, v in report.items() if k not in ("forward", "d input")),
              key=lambda t: t[1])
  print(f"\n{preset}: {len(report) - 2} parameter gradients; forward max|diff| "
        f"{report['forward'][0]:.3g} ({report['forward'][1]:.3g} ulps of max), d input "
        f"{report['d input'][0]:.3g} ({report['d input'][1]:.3g}), worst param grad "
        f"{worst[0]:.3g} ({worst[1]:.3g})")
