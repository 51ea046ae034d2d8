"""One config loader for every command (`train`, `import`, `demo`, `bench`).

  load("former_dfer:dfew,fold=2", ["--config.model.width=32", "--config.data.sampler.hflip=false"])

`spec` is `configs/<file>.py[:arg]`, a path, or the short `<file>[:arg]`. Overrides are
`--config.a.b=value` (or `--config.a.b value`): the value is parsed by the field's current type
(bool: true/false/1/0/yes/no; int; float; str as given); lists, tuples, dicts and None take a
JSON (or Python literal) value that replaces the whole field, e.g.
`--config.data.source.features='[{"name": "mae", "kind": "npy", "path": "/f", "dim": 768}]'`.
A misspelt key, a value of the wrong type or a bad `:arg` is a `UserError` naming the key.
`--config.data.source.name=NAME` (or `--config.data.source=NAME`; the same for `sampler`) switches a
part of the data config: its sub-config is rebuilt with the new part's fields (jaxaffect/data/
parts.py), keeping the values of the fields both parts have; later overrides set the new fields.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from typing import Any

import ml_collections

from jaxaffect.data import parts
from jaxaffect.errors import UserError


def _configs_dir() -> str:
  import configs
  return os.path.dirname(os.path.abspath(configs.__file__))


def resolve_config_path(spec: str) -> str:
  """`configs/former_dfer.py:dfew`, an absolute path, or the short `former_dfer:dfew`."""
  path, sep, arg = spec.partition(":")
  if not os.path.exists(path):
    cand = os.path.join(_configs_dir(), os.path.basename(path))
    if not cand.endswith(".py"):
      cand += ".py"
    if os.path.exists(cand):
      path = cand
    else:
      known = sorted(f[:-3] for f in os.listdir(_configs_dir())
                     if f.endswith(".py") and not f.startswith("_") and f != "common.py")
      raise UserError(f"config file {path!r} not found (nor {cand!r}); configs: {known}")
  return path + (sep + arg if sep else "")


def split_overrides(argv: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
  """(`[(key, value)]` of `--config.key=value` / `--config.key value`, the other arguments)."""
  pairs, rest, i = [], [], 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config."):
      key, eq, value = a[len("--config."):].partition("=")
      if not eq:
        if i + 1 >= len(argv):
          raise UserError(f"{a}: expected {a}=VALUE")
        value, i = argv[i + 1], i + 1
      pairs.append((key, value))
    else:
      rest.append(a)
    i += 1
  return pairs, rest


def _parse_value(key: str, old: Any, value: str) -> Any:
  if isinstance(old, bool):
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
      return True
    if v in ("0", "false", "no", "off"):
      return False
    raise UserError(f"--config.{key}={value}: expected true or false")
  if isinstance(old, (int, float)):
    try:
      return type(old)(value) if isinstance(old, float) or "." not in value else int(value)
    except ValueError:
      raise UserError(f"--config.{key}={value}: expected {type(old).__name__} "
                      f"(now {old!r})") from None
  if isinstance(old, str):
    return value
  try:
    new = json.loads(value)
  except json.JSONDecodeError:
    try:
      new = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      raise UserError(f"--config.{key}={value}: expected a JSON value (the field holds "
                      f"{type(old).__name__} {old!r})") from None
  if isinstance(old, tuple) and isinstance(new, list):      # tuple fields stay tuples, deeply
    new = _tuples(new)
  return new


def _tuples(x: Any) -> Any:
  return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def apply_overrides(config: ml_collections.ConfigDict, pairs, where: str = "config"):
  for key, value in pairs:
    *parents, last = key.split(".")
    node, path = config, "config"
    for p in parents + [last]:
      fields = list(node.keys()) if hasattr(node, "keys") else []
      if p not in fields:
        raise UserError(f"--config.{key}: {path} has no field {p!r}{_hint(node, path, p)} "
                        f"({where})")
      if p != last:
        node, path = node[p], f"{path}.{p}"
    part = _part_switch(parents, last)
    if part:                                   # data.source / data.sampler switched by name
      group = node if last == "name" else node[last]
      holder = config.data
      with holder.ignore_type():
        holder[part] = parts.switch(part, group, value)
      continue
    old = node[last]
    if isinstance(old, ml_collections.ConfigDict):
      raise UserError(f"--config.{key}: a group of fields; set its fields ({sorted(old.keys())})")
    new = _parse_value(key, old, value)
    try:
      node[last] = new
    except (TypeError, ValueError) as e:
      raise UserError(f"--config.{key}={value}: {e}") from None
  return config


def _hint(node, path: str, p: str) -> str:
  """` (did you mean ...?)`: the sub-group that has the field (the data config's parts:
  `data.source.shards` -> `data.source.shards`), a close field name here, or the data part that would
  have it (`data.source.name=shards` first)."""
  fields = [str(f) for f in node.keys()] if hasattr(node, "keys") else []
  for f in fields:
    sub = node[f]
    if isinstance(sub, ml_collections.ConfigDict) and p in sub.keys():
      return f" (did you mean {path}.{f}.{p}?)"
  close = difflib.get_close_matches(p, fields, n=1)
  if close:
    return f" (did you mean {path}.{close[0]}?)"
  kind = path.rsplit(".", 1)[-1] if path.startswith("config.data.") else (
      "" if path != "config.data" else None)
  for k in ([kind] if kind in parts.KINDS else list(parts.KINDS) if kind is None else []):
    owners = [n for n in parts.names(k) if p in parts.lookup(k, n).FIELDS]
    if owners:
      return (f" (a field of data.{k} {owners}: switch with --config.data.{k}.name="
              f"{owners[0]} before setting it)")
  return ""


def _part_switch(parents: list[str], last: str) -> str:
  """'source' / 'sampler' when the key names a data part (`data.source.name` or `data.source`)."""
  if parents == ["data"] and last in parts.KINDS:
    return last
  if len(parents) == 2 and parents[0] == "data" and parents[1] in parts.KINDS and last == "name":
    return parents[1]
  return ""


def load(spec: str, overrides: list[str] | list[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
  """The config of `spec` with the overrides applied (locked: no new keys)."""
  path, _, arg = resolve_config_path(spec).partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  mod_spec = importlib.util.spec_from_file_location(f"_jaxaffect_config_{name}", path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  try:
    config = module.get_config(arg or None)
  except (ValueError, KeyError) as e:
    raise UserError(f"--config {spec}: {e}") from None
  pairs = list(overrides)
  if pairs and isinstance(pairs[0], str):
    pairs, rest = split_overrides(pairs)
    if rest:
      raise UserError(f"unrecognised arguments {rest} (overrides are --config.a.b=value)")
  apply_overrides(config, pairs, spec)
  config.lock()
  return config
