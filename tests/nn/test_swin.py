"""jaxaffect.nn.swin.SwinTransformer == timm `swin_tiny_patch4_window7_224` (pretrained=False, built
here) loaded with our exported weights: logits, every stage's output and the gradients w.r.t. the
input and every parameter (random cotangent), at 224 and at 112 (timm's odd last merge) with batch
1; the relative position index and shifted-window masks == timm's buffers (224, 160 with padded
windows, 112); PatchMerging's order == timm's == Microsoft's (transcribed here); Microsoft-layout
state dicts (written here from timm's keys by the documented renames, buffers from a transcription
of Microsoft's code) import and export exactly, timm's own `checkpoint_filter_fn` agrees; strict
key errors; 28,288,354 parameters; the block-kind hook."""
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch

from jaxaffect.errors import UserError
from jaxaffect.interop import swin as swin_map
from jaxaffect.nn import swin
from tests import tolerances
from tests.interop.torch_refs import jit, random_variables

# float32 JAX vs float32 timm: each tensor at ULPS eps32 of its largest |value| (as test_vit.py).
# Measured on this machine (-s prints it): see the docstring of test_matches_timm.
ULPS = 32
# A table entry's gradient sums up to 49·nW upstream logit gradients that nearly cancel (softmax
# rows sum to zero), each carrying the backward pass's own rounding noise: compared against
# Σ|terms| (`_table_magnitude`) at twice the budget.
TABLE_ULPS = 64


def _keep_bias_grads(tmodel):
  """Make each timm WindowAttention keep the gradient of its (1, heads, N, N) relative bias (the
  sum over windows of d loss / d logits), for the magnitude of the table gradients."""
  kept = {}
  for name, mod in tmodel.named_modules():
    if isinstance(mod, timm.models.swin_transformer.WindowAttention):
      def patched(mod=mod, name=name, orig=mod._get_rel_pos_bias):
        b = orig()
        b.retain_grad()
        kept[name] = b
        return b
      mod._get_rel_pos_bias = patched
  return kept


def _table_magnitude(bias):
  """The rounding scale of a table gradient: the largest Σ |d loss / d bias[h, i, j]| over the
  (i, j) pairs that gather one table entry. Softmax gradients sum to zero along each row, so the
  entries cancel: the result is far smaller than the terms its rounding noise grows with."""
  g = np.abs(bias.grad.numpy()[0])                                  # (heads, N, N)
  n = g.shape[-1]
  w = int(round(np.sqrt(n)))
  idx = swin.relative_position_index((w, w)).reshape(-1)
  acc = np.zeros(((2 * w - 1) ** 2, g.shape[0]))
  np.add.at(acc, idx, g.reshape(g.shape[0], -1).T)
  return float(acc.max())


def _close(actual, expected, err, ulps=ULPS, magnitude=None):
  expected = np.asarray(expected, np.float64)
  scale = float(np.abs(expected).max(initial=0.0)) if magnitude is None else magnitude
  tolerances.assert_close_ulps(np.asarray(actual, np.float64), expected, magnitude=scale,
                               ulps=ulps, dtype=np.float32, err_msg=err)
  diff = float(np.abs(np.asarray(actual, np.float64) - expected).max(initial=0.0))
  return diff / (tolerances.eps(np.float32) * max(scale, 1e-300))


def _shapes(model, size):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def _timm(size, sd=None, **kw):
  t = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=size, **kw)
  if sd is not None:
    t.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
  return t.eval()


@pytest.mark.parametrize("size", [224, 112])
def test_matches_timm(size):
  """Forward (logits + the 4 stage maps) and gradients of Σ logits·w w.r.t. the input and all 173
  parameters. 112: timm builds stage 4 for 3×3 (7 // 2) but PatchMerging pads 7×7 to a 4×4 map,
  so its blocks use 3×3 windows on the map zero-padded to 6×6; ours does the same.
  Measured (eps32 of each tensor's largest |value|; tables: of Σ|terms|), 224 / 112: logits
  7.3 / 9.7, stages ≤ 8.4 / 8.1, d input 12.3 / 15.8, parameter gradients ≤ 20.7 / 9.4, tables
  ≤ 43.6 / 43.7. 32 and 64 allowed; a transposed relative index or a mask on the wrong windows is
  off by O(1) of the scale (~10^6 eps32)."""
  t0 = time.perf_counter()
  model = swin.swin_t(img_size=size, num_classes=1000)
  variables = random_variables(_shapes(model, size), seed=0)
  sd = swin_map.to_timm(variables)
  tmodel = _timm(size, sd)
  x = np.random.default_rng(1).random((1, size, size, 3), dtype=np.float32)
  w = np.random.default_rng(2).normal(size=(1, 1000)).astype(np.float32)

  @jit
  def run(params, x):
    def loss(params, x):
      y, feats = model.apply({"params": params}, x, return_features=True)
      return jnp.sum(y * w), (y, feats)
    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
  (_, (y, feats)), (gp, gx) = run(variables["params"], x)

  biases = _keep_bias_grads(tmodel)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  final, inter = tmodel.forward_intermediates(xt)
  yt = tmodel.forward_head(final)
  (yt * torch.from_numpy(w)).sum().backward()
  assert np.abs(np.asarray(y)).max() > 0.5
  report = {"logits": _close(y, yt.detach().numpy(), "logits")}
  shapes = [(size // 4, 96), (size // 8, 192), (size // 16, 384), (-(-size // 32), 768)]
  for i, (f, ft, (hw, c)) in enumerate(zip(feats, inter, shapes)):
    assert f.shape == (1, hw, hw, c)
    report[f"stage {i + 1}"] = _close(f, ft.detach().numpy().transpose(0, 2, 3, 1), f"stage {i}")
  report["d input"] = _close(gx, xt.grad.numpy().transpose(0, 2, 3, 1), "d input")
  gsd = swin_map.to_timm({"params": gp})
  worst, n = {}, 0
  for name, p in tmodel.named_parameters():
    table = name.endswith(swin.TABLE)
    if table:
      u = _close(gsd[name], p.grad.numpy(), f"grad {name}",
                 magnitude=_table_magnitude(biases[name[:-len(swin.TABLE) - 1]]),
                 ulps=TABLE_ULPS)
    else:
      u = _close(gsd[name], p.grad.numpy(), f"grad {name}")
    kind = "table" if table else "param"
    worst[kind] = max(worst.get(kind, ("", 0.0)), (name, u), key=lambda t: t[1])
    n += 1
  assert n == len(gsd) == 173
  print(f"\n{size}: " + ", ".join(f"{k} {v:.3g}" for k, v in report.items()) +
        f", worst param grad {worst['param'][1]:.3g} ({worst['param'][0]}), worst table grad "
        f"{worst['table'][1]:.3g} ({worst['table'][0]}; of its Σ|terms|) eps32 of each "
        f"tensor's max; "
        f"{time.perf_counter() - t0:.1f} s")


@pytest.mark.parametrize("size", [224, 160, 112])
def test_index_masks_and_windows_equal_timm_buffers(size):
  """Each block's window, shift, relative_position_index and attn_mask == timm's (160: stages 1-3
  pad 40/20/10 to multiples of 7 with shifted masks over the padded map)."""
  tmodel = _timm(size)
  geom = swin.block_geometry(size, 4, 7, (2, 2, 6, 2))
  for i, stage in enumerate(tmodel.layers):
    for j, blk in enumerate(stage.blocks):
      res, win, sh = geom[i][j]
      assert (tuple(blk.input_resolution), tuple(blk.window_size), tuple(blk.shift_size)) == \
          (res, win, sh), (i, j)
      np.testing.assert_array_equal(swin.relative_position_index(win),
                                    blk.attn.relative_position_index.numpy())
      mask = swin.shifted_window_mask(res, win, sh)
      if blk.attn_mask is None:
        assert mask is None, (i, j)
      else:
        np.testing.assert_array_equal(mask, blk.attn_mask.numpy())
  if size == 224:   # the -100 mask is there, and where Swin puts it: 3 shifted blocks + 2
    kinds = [(i, j) for i, s in enumerate(geom) for j, g in enumerate(s) if any(g[2])]
    assert kinds == [(0, 1), (1, 1), (2, 1), (2, 3), (2, 5)]
    m = swin.shifted_window_mask((56, 56), (7, 7), (3, 3))
    assert m.shape == (64, 49, 49) and set(np.unique(m)) == {-100.0, 0.0}
    assert not m[0].any() and m[-1].min() == -100.0     # interior window free, corner window mixed


def _ms_patch_merge(x):
  """Microsoft PatchMerging.forward's concatenation (transcribed)."""
  x0, x1 = x[:, 0::2, 0::2, :], x[:, 1::2, 0::2, :]
  x2, x3 = x[:, 0::2, 1::2, :], x[:, 1::2, 1::2, :]
  return torch.cat([x0, x1, x2, x3], -1)


def test_patch_merging_order_is_timms_and_microsofts():
  x = torch.randn(2, 6, 8, 5)
  ours = np.asarray(swin.patch_merge_concat(jnp.asarray(x.numpy())))
  np.testing.assert_array_equal(ours, _ms_patch_merge(x).numpy())
  timm_pm = timm.models.swin_transformer.PatchMerging(5)
  timm_pm.norm = torch.nn.Identity()
  timm_pm.reduction = torch.nn.Identity()
  np.testing.assert_array_equal(ours, timm_pm(x).detach().numpy())
  # the other plausible reading (column offset fastest) is a different layout
  other = x.reshape(2, 3, 2, 4, 2, 5).permute(0, 1, 3, 2, 4, 5).flatten(3).numpy()
  assert not np.array_equal(ours, other)
  # odd maps: timm zero-pads (Microsoft refuses them)
  odd = torch.randn(1, 7, 7, 3)
  timm_pm = timm.models.swin_transformer.PatchMerging(3)
  timm_pm.norm, timm_pm.reduction = torch.nn.Identity(), torch.nn.Identity()
  np.testing.assert_array_equal(np.asarray(swin.patch_merge_concat(jnp.asarray(odd.numpy()))),
                                timm_pm(odd).detach().numpy())


# ------------------------------------------------------------------------------------------------
# Microsoft layout, written here independently from the Microsoft code's conventions


def _ms_relative_position_index(w):
  coords = torch.stack(torch.meshgrid([torch.arange(w), torch.arange(w)], indexing="ij"))
  flat = torch.flatten(coords, 1)
  rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
  rel[:, :, 0] += w - 1
  rel[:, :, 1] += w - 1
  rel[:, :, 0] *= 2 * w - 1
  return rel.sum(-1)


def _ms_attn_mask(res, w, s):
  img_mask = torch.zeros((1, res, res, 1))
  cnt = 0
  for h in (slice(0, -w), slice(-w, -s), slice(-s, None)):
    for v in (slice(0, -w), slice(-w, -s), slice(-s, None)):
      img_mask[:, h, v, :] = cnt
      cnt += 1
  win = img_mask.view(1, res // w, w, res // w, w, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w)
  m = win.unsqueeze(1) - win.unsqueeze(2)
  return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


def _timm_sd_to_microsoft(sd, depths=(2, 2, 6, 2), res0=56, window=7):
  """The documented renames: timm `layers.{i}.downsample` (start of stage i) → Microsoft
  `layers.{i-1}.downsample` (end of stage i-1); `head.fc` → `head`; plus Microsoft's persistent
  buffers (index everywhere, mask where the block shifts: odd block, resolution > window)."""
  out = {}
  for k, v in sd.items():
    for i in range(1, len(depths)):
      if k.startswith(f"layers.{i}.downsample."):
        k = k.replace(f"layers.{i}.downsample.", f"layers.{i - 1}.downsample.")
        break
    out[k.replace("head.fc.", "head.")] = torch.as_tensor(np.array(v))
  res = res0
  for i, d in enumerate(depths):
    w = min(window, res)
    for j in range(d):
      out[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = _ms_relative_position_index(w)
      if j % 2 == 1 and res > window:
        out[f"layers.{i}.blocks.{j}.attn_mask"] = _ms_attn_mask(res, w, window // 2)
    res //= 2
  return out


@pytest.fixture(scope="module")
def swin_t_224():
  model = swin.swin_t(num_classes=1000)
  like = _shapes(model, 224)
  return model, like, random_variables(like, seed=3)


def test_microsoft_layout_export_and_import(swin_t_224, tmp_path):
  _, like, variables = swin_t_224
  sd_timm = swin_map.to_timm(variables)
  ms = _timm_sd_to_microsoft(sd_timm)
  assert len(ms) == 190                                        # Microsoft Swin-T's key count
  ours = swin_map.to_microsoft(variables, img_size=224, window_size=7)
  assert sorted(ours) == sorted(ms)
  for k in ms:
    np.testing.assert_array_equal(ours[k], ms[k].numpy(), err_msg=k)
  # import: a released-style file {'model': sd}, layout detected; exact round trip
  path = tmp_path / "swin_tiny_patch4_window7_224.pth"
  torch.save({"model": ms}, path)
  back = swin_map.load_pretrained(str(path), like)
  jax.tree.map(np.testing.assert_array_equal, back["params"], variables["params"])
  assert swin_map.detect_layout(ms) == "microsoft" and swin_map.detect_layout(sd_timm) == "timm"
  back = swin_map.from_state_dict(sd_timm, like)                 # timm layout, same result
  jax.tree.map(np.testing.assert_array_equal, back["params"], variables["params"])
  # the registry mapping (for `jaxaffect export` / `import` of a model holding a Swin)
  m = swin_map.MAPPING
  back = m.from_state_dict({"model": ms}, like, False)
  jax.tree.map(np.testing.assert_array_equal, back["params"], variables["params"])
  assert m.to_state_dict(variables).keys() == sd_timm.keys()
  xt, xf = m.example_input(swin.swin_t(), variables, 2, np.random.default_rng(0), None)
  assert xt.shape == (2, 3, 224, 224) and xf.shape == (2, 224, 224, 3)
  compile(m.snippet("w.safetensors", "w.verify.npz", swin.swin_t()), "snippet", "exec")
  # timm's own converter reads our Microsoft export into timm's model: same tensors as to_timm
  tmodel = _timm(224)
  conv = timm.models.swin_transformer.checkpoint_filter_fn(
      {k: torch.from_numpy(np.array(v)) for k, v in ours.items()}, tmodel)
  tmodel.load_state_dict(conv, strict=True)
  for k, v in tmodel.state_dict().items():
    if k in sd_timm:
      np.testing.assert_array_equal(v.numpy(), sd_timm[k], err_msg=k)


def test_import_errors_name_the_keys(swin_t_224):
  _, like, variables = swin_t_224
  ms = {k: v.numpy() for k, v in _timm_sd_to_microsoft(swin_map.to_timm(variables)).items()}
  bad = dict(ms)
  del bad["layers.2.blocks.4.mlp.fc2.bias"]
  with pytest.raises(KeyError, match=r"missing \['params/layers_2/blocks_4/mlp/fc2/bias'\]"):
    swin_map.from_state_dict(bad, like)
  with pytest.raises(KeyError, match=r"unexpected torch keys.*layers\.1\.blocks\.0\.extra"):
    swin_map.from_state_dict({**ms, "layers.1.blocks.0.extra": np.zeros(1)}, like)
  bad = dict(ms)
  bad["layers.0.blocks.1.attn_mask"] = np.zeros_like(bad["layers.0.blocks.1.attn_mask"])
  with pytest.raises(UserError, match=r"layers\.0\.blocks\.1\.attn_mask differs"):
    swin_map.from_state_dict(bad, like)
  bad = {k: v for k, v in ms.items() if k != "layers.2.blocks.3.attn_mask"}
  with pytest.raises(UserError, match=r"missing \['layers\.2\.blocks\.3\.attn_mask'\]"):
    swin_map.from_state_dict(bad, like)
  with pytest.raises(UserError, match="img_size 160"):          # another geometry's buffers
    swin_map.from_state_dict(ms, like, img_size=160)
  # ImageNet weights into a model with another head: drop_head + partial
  model7 = swin.swin_t(num_classes=7)
  like7 = _shapes(model7, 224)
  with pytest.raises(ValueError, match="head"):
    swin_map.from_state_dict(ms, like7)
  got = swin_map.from_state_dict(ms, like7, partial=True, drop_head=True)
  assert "head" not in got["params"]
  np.testing.assert_array_equal(got["params"]["layers_3"]["downsample"]["reduction"]["kernel"],
                                variables["params"]["layers_3"]["downsample"]["reduction"]["kernel"])


def test_parameter_count_equals_timm():
  model = swin.swin_t(num_classes=1000)
  n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(_shapes(model, 224)["params"]))
  with torch.device("meta"):
    t = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
  assert n == sum(p.numel() for p in t.parameters()) == 28_288_354


# ------------------------------------------------------------------------------------------------
# Options the TDLS model uses


class _Tagged(swin.SwinBlock):
  """A stand-in for the deformable kind: a window block that adds a parameter and the context."""

  @nn.compact
  def __call__(self, x, rate=0.0, *, deterministic=True, context=None):
    y = super().__call__(x, rate, deterministic=deterministic)
    return y + self.param("marker", jax.nn.initializers.ones, (1,)) * context


def test_block_kinds_hook_and_features():
  kw = dict(img_size=64, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
            num_classes=3)
  kinds = (("window",) * 2, ("window",) * 2, ("window", "tagged"), ("window", "tagged"))
  model = swin.SwinTransformer(**kw, block_kinds=kinds, block_types=(("tagged", _Tagged),))
  x = jnp.asarray(np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32))
  v = jit(lambda x: model.init(jax.random.key(0), x, context=0.0))(x)
  p = v["params"]
  assert "marker" in p["layers_2"]["blocks_1"] and "marker" not in p["layers_2"]["blocks_0"]
  assert "marker" in p["layers_3"]["blocks_1"] and "marker" not in p["layers_1"]["blocks_1"]
  run = jit(lambda v, x, c: model.apply(v, x, context=c, return_features=True))
  y0, f0 = run(v, x, 0.0)
  y1, f1 = run(v, x, 1.0)
  np.testing.assert_array_equal(f0[1], f1[1])                       # stages 1-2 untouched
  assert np.abs(np.asarray(f0[2]) - np.asarray(f1[2])).max() > 0.5  # context reached stage 3
  plain = swin.SwinTransformer(**kw)
  vp = {"params": jax.tree.map(lambda a: a, {**p})}
  for s in ("layers_2", "layers_3"):
    vp["params"][s] = {**p[s], "blocks_1": {k: a for k, a in p[s]["blocks_1"].items()
                                             if k != "marker"}}
  np.testing.assert_allclose(jit(plain.apply)(vp, x), y0, rtol=0, atol=1e-6)   # same block
  with pytest.raises(KeyError, match="marker"):                    # no torch table for it
    swin_map.to_timm(v)
  with pytest.raises(UserError, match=r"block kinds \['deformable'\] unknown"):
    swin.SwinTransformer(**kw, block_kinds=kinds[:2] + (("window", "deformable"),) * 2).init(
        jax.random.key(0), x)
  with pytest.raises(UserError, match="does not match depths"):
    swin.SwinTransformer(**kw, block_kinds=kinds[:3]).init(jax.random.key(0), x)
  with pytest.raises(UserError, match=r"expected \(B, 64, 64, C\)"):
    plain.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_drop_path_rates_and_train_mode():
  """timm's stagewise rates (linspace over all 12 blocks); train mode draws per-example masks from
  the rng, eval is deterministic."""
  rates = swin.drop_path_rates(0.2, 12)
  ref = timm.layers.calculate_drop_path_rates(0.2, [2, 2, 6, 2], stagewise=True)
  np.testing.assert_allclose(rates, [r for s in ref for r in s], rtol=0, atol=1e-7)
  model = swin.SwinTransformer(img_size=32, embed_dim=8, depths=(2, 2), num_heads=(1, 2),
                               num_classes=2, drop_path_rate=0.5)
  x = jnp.asarray(np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32))
  v = jit(lambda x: model.init(jax.random.key(0), x))(x)
  train = jit(lambda v, x, k: model.apply(v, x, train=True, rngs={"dropout": k}))
  a, b, c = train(v, x, jax.random.key(1)), train(v, x, jax.random.key(1)), \
      train(v, x, jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-4
  ev = jit(lambda v, x: model.apply(v, x))(v, x)
  plain = swin.SwinTransformer(img_size=32, embed_dim=8, depths=(2, 2), num_heads=(1, 2),
                               num_classes=2)
  np.testing.assert_array_equal(ev, jit(lambda v, x: plain.apply(v, x))(v, x))
