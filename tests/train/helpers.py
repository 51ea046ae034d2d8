"""Tiny configurations shared by the trainer tests."""
from __future__ import annotations

import numpy as np

from configs import former_dfer
from jaxaffect.data import parts, pipeline


def tiny_config(**overrides):
  """Former-DFER at width 8 on 32 px clips of 4×2 frames, SGD (so gradient scale errors show)."""
  c = former_dfer.get_config("smoke")
  c.model.width = 8
  c.data.image_size = 32
  c.data.source.video_frames = 10
  c.data.sampler.num_segments = 4
  c.data.sampler.duration = 2
  c.data.source.num_train = 32
  c.data.source.num_eval = 12
  c.batch_size = 8
  c.num_epochs = 2
  c.optim.name = "sgd"
  c.optim.lr = 0.002              # small: float reduction-order noise stays below 1e-5 over 3 steps
  c.optim.momentum = 0.9
  c.optim.schedule = "constant"
  c.optim.warmup_epochs = 0
  c.log_every_steps = 1
  c.checkpoint.async_save = False
  return set_fields(c, overrides)


def set_fields(c, overrides: dict):
  """`{"a.b": value}` set in config `c`; `data.source` / `data.sampler` given a name switch that
  part of the data config (as `--config.data.source.name=...` does)."""
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    if path == ["data"] and last in parts.KINDS:
      c.data[last] = parts.switch(last, c.data[last], v)
      continue
    for p in path:
      node = node[p]
    node[last] = v
  return c


def random_sources(config, seed=0):
  """Random uint8 videos (fast; shapes from the config) as train/eval sources."""
  rng = np.random.default_rng(seed)
  d = config.data
  def make(n, name):
    frames = rng.integers(0, 256, (n, d.source.video_frames, d.image_size, d.image_size, 3), np.uint8)
    labels = rng.integers(0, config.model.num_classes, (n,)).astype(np.int32)
    return pipeline.InMemoryVideos(frames, labels, name)
  return make(d.source.num_train, "rand-train"), make(d.source.num_eval, "rand-eval")
