"""Bilinear sampling with the semantics of torch `grid_sample` (issue 14 item 1): the sampler of
DAT's and TDLS's deformable attention, in plain jnp (no host callbacks, no custom calls), so it
jits, vmaps and shards like any other jnp code.

  grid_sample(x, grid, *, align_corners, form="gather", vjp="custom")

is `torch.nn.functional.grid_sample(x_nchw, grid, mode="bilinear", padding_mode="zeros",
align_corners=align_corners)` with `x` channels-last `(B, H, W, C)` and `grid` `(B, Ho, Wo, 2)` in
torch's normalised (x, y) order (x along W, y along H), output `(B, Ho, Wo, C)`.

Semantics (as torch's CPU kernels, `aten/src/ATen/native/cpu/GridSamplerKernel.cpp`):

* Unnormalisation, per axis of `size` pixels (W for x, H for y):
  align_corners=True:  `i = (g + 1) · (size - 1) / 2`   (-1 -> pixel 0, +1 -> pixel size-1);
  align_corners=False: `i = (g + 1) · size / 2 - 0.5`   (-1 -> the left edge -0.5 of pixel 0,
  +1 -> the right edge size-0.5 of the last pixel). Written as torch writes it (`(g+1)·s [-0.5]`,
  `s` = (size-1)/2 or size/2) so that the rounding of `i` is torch's.
* Bilinear: `x0 = floor(i)`, `f = i - x0`; the four taps (x0|x0+1, y0|y0+1) get weights
  `(1-fx)(1-fy), fx(1-fy), (1-fx)fy, fx·fy`.
* Zeros padding: a tap outside `[0, size-1]` contributes zero (its weight is kept, its value is
  0), so a point partly outside the map mixes bilinearly with zeros, and a point more than one
  pixel outside gives exactly 0 (gradient 0 w.r.t. both `x` and `grid`).
* Integer pixel centres (`i` exactly an integer) and borders: `floor(i) = i`, so `f = 0` and the
  value is exactly the pixel. The gradient w.r.t. the grid there is the FLOOR convention, as torch:
  the one-sided difference towards the next pixel, `d out / d i = x[i+1] - x[i]` (not the average
  of both sides, not zero). At g = +1 with align_corners=True, `i = size-1`: the next tap is out,
  so `d out / d i = 0 - x[size-1]` (torch gives the same). `d out / d g = d out / d i · s`.
  The gradient w.r.t. `x` is the transpose of the weights (each tap's weight times the cotangent).

Forms (equal up to float rounding; both tested against torch in forward and both gradients):

* `form="gather"`: the four taps are gathered from `x` flattened to `(B, H·W, C)` with
  `jnp.take_along_axis` at clipped indices, multiplied by their weights masked by validity and
  summed. Cost O(B·Ho·Wo·C). `vjp="custom"` (the default) uses a `jax.custom_vjp`: the backward
  w.r.t. `x` is ONE scatter-add of the four weighted taps (`.at[].add` of `(B, 4·Ho·Wo, C)`), the
  backward w.r.t. the grid is formed from the four re-gathered tap values dotted with the
  cotangent; only `x` and `grid` are kept for the backward. `vjp="autodiff"` is plain JAX autodiff
  of the same forward. `jaxaffect bench sampling` compares the two (README: the figures).
* `form="matmul"`: separable tent weights written as one-hot matrices, `wx (B, P, W)` =
  `(1-fx)·onehot(x0) + fx·onehot(x0+1)` and `wy (B, P, H)` likewise (P = Ho·Wo; a one-hot of an
  index outside the map is all zeros: that is the zeros padding), the bilinear weight matrix
  `M = wy ⊗ wx` `(B, P, H·W)` and `out = M @ x` as einsums: batched matmuls that run on the MXU on
  TPU. Cost O(B·P·H·W·C) (fine at the stage-3/4 map sizes 14×14 and 7×7 of a 224 Swin-T), memory
  O(B·P·H·W) for M. Plain autodiff (its backward is matmuls too: `dx = Mᵀ g`, `dM = g xᵀ`). The
  one-hot is built from `floor`, never from a tent `relu(1-|i-j|)` whose derivative at integer `i`
  would be 0 instead of torch's floor convention.

Which to use (`jaxaffect bench sampling`, batch 32 images, 2-core CPU shared with other jobs
(load 11-13): absolute ms varied ~2x between runs, the README has a table): at the stage-3/4
sizes the matmul form is the fastest fwd+bwd (1.0-2.8x torch at stage 3, 4.1-6.7x at stage 4 over
five runs) with the least memory (45 / 16 MiB vs 93 / 47 for gather); the gather forward is the
fastest forward. The gather form's custom_vjp needs ~9 % less memory than autodiff (93.2 vs
102.0 MiB at stage 3, 46.6 vs 51.0 at stage 4) and its fwd+bwd is faster: autodiff / custom =
1.30x (stage 3) and 1.35x (stage 4), medians of 21 back-to-back pairs. Its x-gradient is one
scatter-add instead of autodiff's four (four measured 1.4x slower than one); the gather backward
is dominated by XLA:CPU's scatter (~20-40 ms at stage 3). Forward-mode (`jax.jvp`, `jacfwd`) is
not defined for a custom_vjp: use `vjp="autodiff"` or the matmul form there.

Dtypes: coordinates and weights are always computed in float32 (a bf16 grid is upcast: bf16 has
too few mantissa bits to place a point to better than ~1/16 pixel on a 14-pixel map); the gather
form sums the taps in float32; the matmul form casts M to `x.dtype` and accumulates in float32
(`preferred_element_type`). The output has `x.dtype`, the grid's gradient `grid.dtype`.
NaN grid values give a NaN output (as torch's vectorised kernel only for some positions; not
a supported input).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

FORMS = ("gather", "matmul")
VJPS = ("custom", "autodiff")


def _check(x, grid, align_corners, form, vjp) -> None:
  if not isinstance(align_corners, bool):
    raise ValueError(f"grid_sample: align_corners must be True or False, got {align_corners!r}")
  if form not in FORMS:
    raise ValueError(f"grid_sample: form={form!r}, expected one of {FORMS}")
  if vjp not in VJPS:
    raise ValueError(f"grid_sample: vjp={vjp!r}, expected one of {VJPS}")
  if getattr(x, "ndim", None) != 4:
    raise ValueError(f"grid_sample: x must be (B, H, W, C) channels-last, got shape "
                     f"{getattr(x, 'shape', None)}")
  if getattr(grid, "ndim", None) != 4 or grid.shape[-1] != 2:
    raise ValueError(f"grid_sample: grid must be (B, Ho, Wo, 2) in (x, y) order, got shape "
                     f"{getattr(grid, 'shape', None)}")
  if grid.shape[0] != x.shape[0]:
    raise ValueError(f"grid_sample: batch of grid {grid.shape} != batch of x {x.shape}")
  if x.shape[1] < 1 or x.shape[2] < 1:
    raise ValueError(f"grid_sample: empty map, x shape {x.shape}")
  for name, a in (("x", x), ("grid", grid)):
    if not jnp.issubdtype(a.dtype, jnp.floating):
      raise ValueError(f"grid_sample: {name} must be floating point, got {a.dtype}")


def _unnormalise(g, size: int, align_corners: bool):
  """Pixel coordinate of normalised `g` (float32), as torch's CPU kernel computes it."""
  if align_corners:
    return (g + 1.0) * jnp.float32((size - 1) / 2)
  return (g + 1.0) * jnp.float32(size / 2) - jnp.float32(0.5)


def _coords(grid, h: int, w: int, align_corners: bool):
  """Per point (B, P): floor corners (float32), fractions, and the d i / d g scales."""
  g = grid.reshape(grid.shape[0], -1, 2).astype(jnp.float32)
  ix = _unnormalise(g[..., 0], w, align_corners)
  iy = _unnormalise(g[..., 1], h, align_corners)
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  return x0, y0, ix - x0, iy - y0


def _scales(h: int, w: int, align_corners: bool):
  return ((w - 1) / 2, (h - 1) / 2) if align_corners else (w / 2, h / 2)


def _taps(x0, y0, fx, fy, h: int, w: int):
  """The four taps nw, ne, sw, se: flat indices (clipped into the map), bilinear weights and
  validity masks, each (B, P)."""
  out = []
  for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
    xi, yi = x0 + dx, y0 + dy
    valid = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
    xc = jnp.clip(xi, 0, w - 1).astype(jnp.int32)
    yc = jnp.clip(yi, 0, h - 1).astype(jnp.int32)
    wx = fx if dx else 1.0 - fx
    wy = fy if dy else 1.0 - fy
    out.append((yc * w + xc, wx * wy, valid))
  return out


def _gather(xf, idx):
  """xf (B, N, C), idx (B, P) -> (B, P, C)."""
  return jnp.take_along_axis(xf, idx[..., None], axis=1, mode="clip")


def _gather_forward(x, grid, align_corners: bool):
  b, h, w, c = x.shape
  x0, y0, fx, fy = _coords(grid, h, w, align_corners)
  xf = x.reshape(b, h * w, c)
  acc = None
  for idx, wt, valid in _taps(x0, y0, fx, fy, h, w):
    term = _gather(xf, idx).astype(jnp.float32) * jnp.where(valid, wt, 0.0)[..., None]
    acc = term if acc is None else acc + term
  return acc.astype(x.dtype).reshape(b, *grid.shape[1:3], c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _gather_custom(x, grid, align_corners, precision):
  return _gather_forward(x, grid, align_corners)


def _gather_custom_fwd(x, grid, align_corners, precision):
  return _gather_forward(x, grid, align_corners), (x, grid)


def _gather_custom_bwd(align_corners, precision, res, g):
  x, grid = res
  b, h, w, c = x.shape
  x0, y0, fx, fy = _coords(grid, h, w, align_corners)
  xf = x.reshape(b, h * w, c)
  gf = g.reshape(b, -1, c).astype(jnp.float32)
  taps = _taps(x0, y0, fx, fy, h, w)
  # d out / d x: one scatter-add of the four weighted cotangents
  idx = jnp.concatenate([t[0] for t in taps], axis=1)                       # (B, 4P)
  wts = jnp.concatenate([jnp.where(v, wt, 0.0) for _, wt, v in taps], axis=1)
  upd = jnp.concatenate([gf] * 4, axis=1) * wts[..., None]
  # per example, vmapped over the batch: a scatter with a batching dimension, which keeps an
  # explicitly batch-sharded x (under `jax.set_mesh`) sharded without collectives
  dx = jax.vmap(lambda z, i, u: z.at[i].add(u, mode="drop"))(
      jnp.zeros_like(xf, dtype=jnp.float32), idx, upd)
  dx = dx.astype(x.dtype).reshape(x.shape)
  # d out / d grid: the tap differences (taps outside are 0) formed in one elementwise pass
  # (the gathers fuse into it, as in the forward), then dotted with the cotangent over C (a dot:
  # on XLA:CPU a row reduction of gathered values measured 2-4x slower)
  nw, ne, sw, se = (jnp.where(v[..., None], _gather(xf, i).astype(jnp.float32), 0.0)
                    for i, _, v in taps)
  tx = (ne - nw) * (1.0 - fy)[..., None] + (se - sw) * fy[..., None]
  ty = (sw - nw) * (1.0 - fx)[..., None] + (se - ne) * fx[..., None]
  d = jnp.einsum("bpkc,bpc->bpk", jnp.stack([tx, ty], axis=2), gf,
                 precision=precision)                                            # (B, P, 2)
  sx, sy = _scales(h, w, align_corners)
  dgrid = d * jnp.asarray([sx, sy], jnp.float32)
  return dx, dgrid.reshape(grid.shape).astype(grid.dtype)


_gather_custom.defvjp(_gather_custom_fwd, _gather_custom_bwd)


def _onehot_weights(i0, f, size: int, dtype):
  """(1-f)·onehot(i0) + f·onehot(i0+1), (B, P, size); rows of out-of-range indices are zero."""
  ar = jnp.arange(size, dtype=jnp.float32)
  return (jnp.where(ar == i0[..., None], 1.0 - f[..., None], 0.0)
          + jnp.where(ar == i0[..., None] + 1.0, f[..., None], 0.0)).astype(dtype)


def _matmul_forward(x, grid, align_corners: bool, precision):
  b, h, w, c = x.shape
  x0, y0, fx, fy = _coords(grid, h, w, align_corners)
  wx = _onehot_weights(x0, fx, w, jnp.float32)                             # (B, P, W)
  wy = _onehot_weights(y0, fy, h, jnp.float32)                             # (B, P, H)
  m = jnp.einsum("bph,bpw->bphw", wy, wx).reshape(b, -1, h * w).astype(x.dtype)
  out = jnp.einsum("bpk,bkc->bpc", m, x.reshape(b, h * w, c),
                   preferred_element_type=jnp.float32, precision=precision)
  return out.astype(x.dtype).reshape(b, *grid.shape[1:3], c)


def grid_sample(x: Any, grid: Any, *, align_corners: bool, form: str = "gather",
                vjp: str = "custom", precision: Any = None) -> jax.Array:
  """Bilinear `torch.nn.functional.grid_sample` (padding_mode='zeros'), channels-last.

  Args:
    x: (B, H, W, C) feature map.
    grid: (B, Ho, Wo, 2) sampling points, normalised to [-1, 1] in torch's (x, y) order; values
      outside [-1, 1] sample the zero padding.
    align_corners: torch's flag (see the module docstring for both unnormalisations).
    form: "gather" (four gathered taps) or "matmul" (one-hot weight matrices, einsums).
    vjp: for the gather form, "custom" (a custom_vjp: one scatter-add for x, tap differences for
      the grid) or "autodiff" (JAX's own transpose of the forward). The matmul form always uses
      autodiff (its backward is matmuls).
    precision: `lax.Precision` of the einsums (the matmul form's M @ x and its backward; the
      gather form's custom backward dot over C); None = JAX's default (on TPU, f32 operands are
      then multiplied in bf16 passes: pass "highest" where f32 fidelity matters).

  Returns:
    (B, Ho, Wo, C) in x.dtype.
  """
  _check(x, grid, align_corners, form, vjp)
  if form == "matmul":
    return _matmul_forward(x, grid, align_corners, precision)
  if vjp == "custom":
    return _gather_custom(x, grid, align_corners, precision)
  return _gather_forward(x, grid, align_corners)
