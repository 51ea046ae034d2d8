"""Model and task registry: config → (flax module, task). Adding a paper adds one entry here."""
from __future__ import annotations

import importlib

import jax.numpy as jnp
import ml_collections

from jaxaffect.errors import UserError
from jaxaffect.models import tasks

# name -> (module path, class name)
MODELS = {
    "former_dfer": ("jaxaffect.models.former_dfer", "FormerDFER"),
    "est": ("jaxaffect.models.est", "EST"),
    "frame_resnet": ("jaxaffect.models.baselines", "FrameResNet"),
    "abaw_tcn": ("jaxaffect.models.abaw_tcn", "ABAWTCN"),
}
TASKS = {
    "clip_classification": tasks.ClipClassificationTask,
    "snippet_order": tasks.SnippetOrderTask,
    "frame_labels": tasks.FrameLabelsTask,
}


def build_module(config: ml_collections.ConfigDict):
  if config.model_name not in MODELS:
    raise UserError(f"config.model_name={config.model_name!r}: known models {sorted(MODELS)}")
  mod_path, cls_name = MODELS[config.model_name]
  cls = getattr(importlib.import_module(mod_path), cls_name)
  kwargs = dict(config.model)
  for k in ("dtype", "param_dtype"):
    if isinstance(kwargs.get(k), str):
      kwargs[k] = jnp.dtype(kwargs[k])
  return cls(**kwargs)


def build_task(config: ml_collections.ConfigDict):
  module = build_module(config)
  name = config.task.name
  if name not in TASKS:
    raise UserError(f"config.task.name={name!r}: known tasks {sorted(TASKS)}")
  kwargs = {k: v for k, v in dict(config.task).items() if k != "name"}
  return TASKS[name](module=module, **kwargs)
