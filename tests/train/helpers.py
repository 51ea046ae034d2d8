"""Tiny configurations shared by the trainer tests."""
from __future__ import annotations

import numpy as np

from configs import former_dfer
from jaxaffect.data import pipeline


def tiny_config(**overrides):
  """Former-DFER at width 8 on 32 px clips of 4×2 frames, SGD (so gradient scale errors show)."""
  c = former_dfer.get_config("smoke")
  c.model.width = 8
  c.data.image_size = 32
  c.data.video_frames = 10
  c.data.num_segments = 4
  c.data.duration = 2
  c.data.num_train = 32
  c.data.num_eval = 12
  c.batch_size = 8
  c.num_epochs = 2
  c.optim.name = "sgd"
  c.optim.lr = 0.002              # small: float reduction-order noise stays below 1e-5 over 3 steps
  c.optim.momentum = 0.9
  c.optim.schedule = "constant"
  c.optim.warmup_epochs = 0
  c.log_every_steps = 1
  c.checkpoint.async_save = False
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def random_sources(config, seed=0):
  """Random uint8 videos (fast; shapes from the config) as train/eval sources."""
  rng = np.random.default_rng(seed)
  d = config.data
  def make(n, name):
    frames = rng.integers(0, 256, (n, d.video_frames, d.image_size, d.image_size, 3), np.uint8)
    labels = rng.integers(0, config.model.num_classes, (n,)).astype(np.int32)
    return pipeline.InMemoryVideos(frames, labels, name)
  return make(d.num_train, "rand-train"), make(d.num_eval, "rand-eval")
