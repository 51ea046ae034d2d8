"""Convert variables between the looped and the scanned layout of a stack of identical layers.

Looped (`TransformerEncoder(scan=False)`): one subtree per layer, `{prefix}0`, `{prefix}1`, …
Scanned (`scan=True`, `nn.scan` with `variable_axes={"params": 0}`): one subtree `stacked` whose
leaves are the looped leaves stacked along a new leading axis (layer i at index i).

PyTorch key tables (`jaxaffect.interop`) are written for the looped layout: import to looped then
`stack_layers`; export after `unstack_layers`. Both work on any collection (`params`, or a whole
variables dict when each collection is converted), keep every other key as it is, and are exact
(stacking and indexing copy values).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxaffect.errors import UserError
from jaxaffect.nn.attention import LAYER_PREFIX, SCAN_NAME


def _at(tree: Mapping[str, Any], path: Sequence[str], fn) -> dict[str, Any]:
  """A copy of `tree` with the subtree at `path` replaced by `fn(subtree)`."""
  if not path:
    return fn(tree)
  head, *rest = path
  if head not in tree:
    raise UserError(f"no {head!r} in the variables (keys: {sorted(tree)})")
  return {**tree, head: _at(tree[head], rest, fn)}


def stack_layers(params: Mapping[str, Any], n: int, *, prefix: str = LAYER_PREFIX,
                 stacked: str = SCAN_NAME, path: Sequence[str] = ()) -> dict[str, Any]:
  """Looped → scanned: `{prefix}0 … {prefix}{n-1}` (at `path` in `params`) → `stacked`."""
  def convert(tree):
    names = [f"{prefix}{i}" for i in range(n)]
    missing = [k for k in names if k not in tree]
    if missing or f"{prefix}{n}" in tree or stacked in tree:
      raise UserError(f"stack_layers: expected {prefix}0…{prefix}{n - 1} and no {stacked!r}; "
                      f"got keys {sorted(tree)}")
    layers = [tree[k] for k in names]
    if any(jax.tree.structure(t) != jax.tree.structure(layers[0]) for t in layers):
      raise UserError("stack_layers: the layers do not have identical variable trees")
    rest = {k: v for k, v in tree.items() if k not in names}
    return {**rest, stacked: jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
  return _at(params, path, convert)


def unstack_layers(params: Mapping[str, Any], n: int | None = None, *,
                   prefix: str = LAYER_PREFIX, stacked: str = SCAN_NAME,
                   path: Sequence[str] = ()) -> dict[str, Any]:
  """Scanned → looped: `stacked` (at `path`) → `{prefix}0 … {prefix}{n-1}`; `n` defaults to (and
  must equal) the leading axis."""
  def convert(tree):
    if stacked not in tree:
      raise UserError(f"unstack_layers: no {stacked!r} in keys {sorted(tree)}")
    sizes = {x.shape[0] for x in jax.tree.leaves(tree[stacked])}
    if len(sizes) != 1 or (n is not None and sizes != {n}):
      raise UserError(f"unstack_layers: leading axes {sorted(sizes)}, expected {n}")
    count = sizes.pop()
    rest = {k: v for k, v in tree.items() if k != stacked}
    clash = [k for k in rest if k.startswith(prefix)]
    if clash:
      raise UserError(f"unstack_layers: keys {clash} already use the prefix {prefix!r}")
    layers = {f"{prefix}{i}": jax.tree.map(lambda x, i=i: x[i], tree[stacked])
              for i in range(count)}
    return {**rest, **layers}
  return _at(params, path, convert)
