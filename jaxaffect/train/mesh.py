"""Device mesh with axes (`data`, `fsdp`) and the shardings of batches and state."""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxaffect.errors import UserError

MESH_AXES = ("data", "fsdp")
# Batches are split over every mesh axis: FSDP is data parallel too, it only shards state as well.
BATCH_SPEC = P(MESH_AXES)


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 2-D mesh (`data`, `fsdp`); -1 on one axis takes the remaining devices.

  Axis types are `Auto` (the SPMD partitioner places the collectives); the step still runs under
  `jax.set_mesh(mesh)`, which is required for meshes made with `jax.make_mesh`'s Explicit default.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if data == -1 and fsdp == -1:
    raise UserError("mesh: at most one of data/fsdp may be -1")
  if data == -1:
    if n % fsdp:
      raise UserError(f"mesh: {n} devices are not divisible by fsdp={fsdp}")
    data = n // fsdp
  if fsdp == -1:
    if n % data:
      raise UserError(f"mesh: {n} devices are not divisible by data={data}")
    fsdp = n // data
  if data * fsdp != n:
    raise UserError(f"mesh: data={data} x fsdp={fsdp} != {n} devices")
  return jax.make_mesh((data, fsdp), MESH_AXES, axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, BATCH_SPEC)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _path_str(path) -> str:
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(k))
  return "/".join(parts)


def fsdp_spec(shape: Sequence[int], axis_size: int, min_size: int = 2**14) -> P:
  """Shard the largest dimension divisible by the `fsdp` axis size (big_vision's `fsdp` tactic)."""
  if axis_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  order = sorted(range(len(shape)), key=lambda i: -shape[i])
  for i in order:
    if shape[i] % axis_size == 0:
      spec = [None] * len(shape)
      spec[i] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Sequence[tuple[str, str]]) -> Any:
  """NamedSharding for every leaf of `abstract_state` from regex rules on its path.

  Rules are `(regex, tactic)` pairs, first match wins; tactics: `replicate`, `fsdp` (arrays of at least
  2**14 elements) or `fsdp:N` (at least N elements). FSDP is a rule set over the same step function,
  not a second code path.
  """
  compiled = [(re.compile(rx), tactic) for rx, tactic in rules]
  fsdp_size = mesh.shape["fsdp"]

  def one(path, leaf):
    name = _path_str(path)
    shape = getattr(leaf, "shape", ())
    for rx, tactic in compiled:
      if rx.search(name):
        if tactic == "replicate":
          return NamedSharding(mesh, P())
        if tactic == "fsdp" or tactic.startswith("fsdp:"):
          min_size = int(tactic.split(":", 1)[1]) if ":" in tactic else 2**14
          return NamedSharding(mesh, fsdp_spec(shape, fsdp_size, min_size))
        raise UserError(f"sharding rule {rx.pattern!r}: unknown tactic {tactic!r} "
                        "(expected 'replicate', 'fsdp' or 'fsdp:MIN_ELEMENTS')")
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(one, abstract_state)


def global_batch_from_local(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-process rows → global `jax.Array`s sharded over the batch axes (any number of hosts)."""
  sh = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in local.items()}


def host_value(x):
  """A global array's value on this host: works for arrays spanning other processes' devices."""
  if not isinstance(x, jax.Array):
    return x
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def to_host(tree):
  return jax.tree.map(host_value, tree)
