"""MultiHeadAttention's additive `bias` (alone and with a boolean `mask`) vs torch
`F.scaled_dot_product_attention(attn_mask=float)`, forward and gradients w.r.t. the input, every
kernel and the bias; a Swin-style relative-position bias plus a shifted-window −100 mask."""
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from jaxaffect.nn import attention
from tests.interop.torch_refs import assert_close, jit, random_variables

WIN, HEADS, DH, D = 3, 4, 8, 24          # 3×3 windows: N = 9 tokens per window
N = WIN * WIN


def _randn(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def swin_relative_position_index(win: int) -> np.ndarray:
  """Swin's `relative_position_index` (N, N) into a ((2w-1)², H) table."""
  coords = np.stack(np.meshgrid(np.arange(win), np.arange(win), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (win - 1)
  return rel[..., 0] * (2 * win - 1) + rel[..., 1]


def shifted_window_mask(n_windows: int) -> np.ndarray:
  """(nW, N, N) 0/−100 like Swin's `attn_mask`: tokens of different regions may not attend."""
  rng = np.random.default_rng(7)
  regions = rng.integers(0, 3, size=(n_windows, N))
  regions[0] = 0                                      # one window without a shift boundary
  return np.where(regions[:, :, None] == regions[:, None, :], 0.0, -100.0).astype(np.float32)


def _torch_attention(x, qkv_k, out_k, out_b, bias, keep):
  """Packed-qkv attention from the JAX kernels (no copies of layout code): `x @ qkv`, chunk(3),
  `(h d)`, SDPA with a float mask = bias where kept, −inf elsewhere (math backend)."""
  b, n, _ = x.shape
  q, k, v = (x @ qkv_k).chunk(3, dim=-1)
  heads = lambda t: t.reshape(b, n, HEADS, DH).transpose(1, 2)
  attn_mask = bias if keep is None else bias.masked_fill(~keep, float("-inf"))
  with sdpa_kernel(SDPBackend.MATH):
    o = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=attn_mask)
  return o.transpose(1, 2).reshape(b, n, HEADS * DH) @ out_k + out_b


def _compare(bias_parts, keep, seed):
  """bias = sum of `bias_parts` (numpy arrays broadcasting to (B, H, N, N)); gradients w.r.t. x,
  kernels and every bias part. Returns the max abs differences."""
  nw = 4
  attn = attention.MultiHeadAttention(HEADS, DH, qkv_layout="packed", qkv_bias=False)
  x = _randn(nw, N, D, seed=seed)
  w = _randn(nw, N, D, seed=seed + 1)
  params = random_variables(jax.eval_shape(lambda: attn.init(jax.random.key(0), x)),
                            seed=seed + 2)["params"]
  mask = None if keep is None else jnp.asarray(keep)

  def loss(p, x, parts):
    y = attn.apply({"params": p}, x, bias=sum(parts), mask=mask)
    return jnp.sum(y * w), y
  (_, y), (gp, gx, gb) = jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
      params, x, [jnp.asarray(b) for b in bias_parts])

  t = lambda a: torch.tensor(np.asarray(a), requires_grad=True)
  xt, qkv_k, out_k, out_b = t(x), t(params["qkv"]["kernel"]), t(params["out"]["kernel"]), t(
      params["out"]["bias"])
  parts_t = [t(b) for b in bias_parts]
  keep_t = None if keep is None else torch.from_numpy(keep)
  yt = _torch_attention(xt, qkv_k, out_k, out_b, sum(parts_t), keep_t)
  (yt * torch.from_numpy(w)).sum().backward()
  pairs = [("forward", y, yt.detach()), ("d x", gx, xt.grad),
           ("d qkv", gp["qkv"]["kernel"], qkv_k.grad), ("d out", gp["out"]["kernel"], out_k.grad),
           ("d out bias", gp["out"]["bias"], out_b.grad)]
  pairs += [(f"d bias[{i}]", g, bt.grad) for i, (g, bt) in enumerate(zip(gb, parts_t))]
  diffs = {}
  for name, a, r in pairs:
    assert_close(a, r.numpy(), err=name)
    diffs[name] = float(np.abs(np.asarray(a) - r.numpy()).max())
  return diffs


def test_relative_position_bias_matches_torch_sdpa():
  table = _randn((2 * WIN - 1) ** 2, HEADS, seed=11)
  rel = table[swin_relative_position_index(WIN).reshape(-1)].reshape(N, N, HEADS)
  rel = np.ascontiguousarray(rel.transpose(2, 0, 1))[None]          # (1, H, N, N)
  d = _compare([rel], None, seed=20)
  assert d["d bias[0]"] < 1e-4


def test_relative_bias_plus_shift_mask_plus_boolean_mask_match_torch():
  """Swin's shifted windows: bias = relative-position bias (1, H, N, N) + −100 mask (nW, 1, N, N);
  and a boolean key mask (nW, 1, 1, N) that removes keys entirely (True = may attend)."""
  rel = _randn(1, HEADS, N, N, seed=12)
  shift = shifted_window_mask(4)[:, None]
  keep = np.ones((4, 1, 1, N), bool)
  keep[1, ..., 6:] = False
  keep[3, ..., :2] = False
  _compare([rel, shift], keep, seed=30)


def test_bias_none_and_zero_bias_equal_no_bias():
  attn = attention.MultiHeadAttention(HEADS, DH)
  x = _randn(2, N, D, seed=3)
  v = attn.init(jax.random.key(0), x)
  y0 = attn.apply(v, x)
  np.testing.assert_array_equal(np.asarray(attn.apply(v, x, bias=None)), np.asarray(y0))
  np.testing.assert_allclose(np.asarray(attn.apply(v, x, bias=jnp.zeros((1, 1, N, N)))),
                             np.asarray(y0), rtol=1e-6, atol=1e-6)


def test_encoder_layer_and_encoder_pass_bias_to_attention():
  """The same bias reaches every layer: encoder(bias) == layers applied one by one with it."""
  enc = attention.TransformerEncoder(2, HEADS, 32, DH)
  x = _randn(2, N, D, seed=4)
  bias = jnp.asarray(_randn(1, HEADS, N, N, seed=5))
  v = enc.init(jax.random.key(0), x)
  y = enc.apply(v, x, bias=bias)
  layer = attention.TransformerEncoderLayer(HEADS, 32, DH)
  h = x
  for i in range(2):
    h = layer.apply({"params": v["params"][f"layer_{i}"]}, h, bias=bias)
  np.testing.assert_allclose(np.asarray(y), np.asarray(h), rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(y) - np.asarray(enc.apply(v, x))).max() > 1e-3
