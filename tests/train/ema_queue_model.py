"""A model module (models/registry.py convention) whose task keeps a momentum copy of its
parameters and a feature queue in `extra`, through `after_update` (train/hooks.py). Named by its
module path, `config.model_name = "tests.train.ema_queue_model"`, so no file of jaxaffect lists it."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxaffect.models import tasks
from jaxaffect.models.former_dfer import FormerDFER as Model  # noqa: F401  (the convention)
from jaxaffect.train import hooks

MOMENTUM = 0.9
QUEUE = 20


@dataclasses.dataclass(frozen=True)
class EMAQueueTask(tasks.ClipClassificationTask):
  """Clip classification + `ema` (momentum copy of params) + `queue` (the last QUEUE logits of the
  global batches, with their labels)."""

  def init(self, rng, batch):
    params, extra = super().init(rng, batch)
    extra = dict(extra, ema={"params": jax.tree.map(jnp.copy, params)},
                 queue={"q": hooks.queue_init(QUEUE, self.num_classes)})
    return params, extra

  def loss(self, params, extra, batch, rng):
    model_extra = {k: v for k, v in extra.items() if k not in ("ema", "queue")}
    loss, (out, new_extra) = super().loss(params, model_extra, batch, rng)
    return loss, (out, {**new_extra, "ema": extra["ema"], "queue": extra["queue"]})

  def predict(self, params, extra, batch):
    return super().predict(params, {k: v for k, v in extra.items()
                                    if k not in ("ema", "queue")}, batch)

  def after_update(self, extra, params, outputs, batch, step):
    return dict(extra, ema={"params": hooks.ema_update(extra["ema"]["params"], params, MOMENTUM)},
                queue={"q": hooks.queue_push(extra["queue"]["q"], outputs["logits"],
                                             batch["label"])})


def make_task(module, task_config):
  return EMAQueueTask(module=module, num_classes=task_config.num_classes)


def torch_mapping():
  from jaxaffect.interop import former_dfer
  return former_dfer.MAPPING
