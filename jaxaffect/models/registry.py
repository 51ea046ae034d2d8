"""Models are found by convention, not listed: `config.model_name = "x"` is the module
`jaxaffect.models.x` (or, with a dot, any importable module path such as `mylab.models.x`: a
model outside this package needs no edit here). The module exposes

  Model                      the Flax module class, built as `Model(**config.model)` (dtype strings
                             become jnp dtypes);
  make_task(module, cfg)     optional: the task object for `config.task` (default: the task class
                             of `jaxaffect.models.tasks` whose `NAME` is `config.task.name`);
  torch_mapping()            optional: its `interop.ModelMapping` (export / import of PyTorch
                             weights in the official layout);
  bench_model()              optional: its `bench.BenchModel` (`jaxaffect bench x`).

`available()` lists the models of this package (modules with a `Model`).
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from types import ModuleType

import jax.numpy as jnp
import ml_collections

from jaxaffect.errors import UserError
from jaxaffect.models import tasks


def module_path(name: str) -> str:
  return name if "." in name else f"jaxaffect.models.{name}"


def available(attr: str = "Model") -> list[str]:
  """Model names of this package whose module has `attr` (`Model`, `torch_mapping`, ...)."""
  names = []
  for info in pkgutil.iter_modules([os.path.dirname(__file__)]):
    if info.name in ("registry", "tasks") or info.name.startswith("_"):
      continue
    if hasattr(importlib.import_module(f"jaxaffect.models.{info.name}"), attr):
      names.append(info.name)
  return sorted(names)


def model_module(name: str) -> ModuleType:
  """The module of model `name` (see the module docstring)."""
  path = module_path(str(name))
  try:
    mod = importlib.import_module(path)
  except ModuleNotFoundError as e:
    if e.name and path.startswith(e.name):       # the model's own module is missing, not a dep
      raise UserError(f"model {name!r} (config.model_name): no module {path!r} (models here: "
                      f"{available()}; a model elsewhere is named by its module path)") from None
    raise
  if not hasattr(mod, "Model"):
    raise UserError(f"model {name!r} (config.model_name): module {path!r} has no `Model` (the "
                    f"Flax module class a model module exposes)")
  return mod


def build_module(config: ml_collections.ConfigDict):
  cls = model_module(config.model_name).Model
  kwargs = dict(config.model)
  for k in ("dtype", "param_dtype"):
    if isinstance(kwargs.get(k), str):
      try:
        kwargs[k] = jnp.dtype(kwargs[k])
      except TypeError:
        raise UserError(f"config.model.{k}={kwargs[k]!r}: not a dtype (float32, bfloat16, "
                        f"float16)") from None
  try:
    return cls(**kwargs)
  except TypeError as e:                         # a config field the module does not take
    raise UserError(f"config.model of {config.model_name!r}: {e}") from None


def build_task(config: ml_collections.ConfigDict):
  module = build_module(config)
  mod = model_module(config.model_name)
  make_task = getattr(mod, "make_task", None)    # optional hook of a model module
  if make_task is not None:
    return make_task(module, config.task)
  cls = tasks.by_name(config.task.name)
  kwargs = {k: v for k, v in dict(config.task).items() if k != "name"}
  try:
    return cls(module=module, **kwargs)
  except TypeError as e:                         # a missing or unknown config.task field
    raise UserError(f"config.task of {config.task.name!r}: {e}") from None


def torch_mapping(name: str):
  """The `interop.ModelMapping` of model `name` (its module's `torch_mapping()`)."""
  fn = getattr(model_module(name), "torch_mapping", None)
  if fn is None:
    raise UserError(f"model {name!r} has no PyTorch mapping (its module defines no "
                    f"`torch_mapping()`); models with one: {available('torch_mapping')}")
  return fn()


def bench_model(name: str):
  """The `bench.BenchModel` of model `name` (its module's `bench_model()`)."""
  fn = getattr(model_module(name), "bench_model", None)
  if fn is None:
    raise UserError(f"jaxaffect bench: model {name!r} has no benchmark (its module defines no "
                    f"`bench_model()`); models with one: {available('bench_model')}")
  return fn()
