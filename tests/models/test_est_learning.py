"""EST learns (issue 4, item 6), with the official recipe at CPU size: a ResNet-18 trained on face
frames (the smoke frame encoder of the conftest fixture, standing in for the FER+ ResNet-18 of the
official code) is exported in the torchvision layout, imported into EST's backbone with
`import --partial`, and EST (`est:smoke`, AA-SFE + SSOP, Eq. 7) is trained end to end on the
synthetic shards; held-out clips (unseen identities) are classified with UAR >= 0.90.

The snippet-order head is held to what this data allows, not to 0.90: the order of the seven
snippets must be read from content, and the smoothest ordering of the model's own (detached)
snippet features picks the right permutation for only 84-87 % of the clips (an expression plateau
and Neutral clips carry little order); the SSOP head, an MLP over the concatenated snippets, reaches
~0.65 even when trained for 200 epochs on frozen features (see the issue note). Here it must beat
chance (0.10) clearly.
"""
from __future__ import annotations

import os

import numpy as np
import pytest


@pytest.mark.slow
def test_est_learns_from_a_pretrained_frame_encoder(tmp_path, frame_encoder):
  from configs import est as est_cfg
  from jaxaffect import interop
  from jaxaffect.train import loop
  cfg, s, variables, _ = loop.restore_state(frame_encoder["workdir"])
  weights = str(tmp_path / "frame_resnet.safetensors")
  interop.export("frame_resnet", s.task.module, variables, weights, input_shape=(64, 64))

  c = est_cfg.get_config(f"smoke,shards={frame_encoder['shards']}")
  c.unlock()
  c.checkpoint.async_save = False
  assert (c.model.width, c.data.image_size) == (cfg.model.width, cfg.data.image_size)
  wd = str(tmp_path / "est")
  loop.import_weights(c, wd, weights, partial=True)       # trunk from the frame encoder, rest fresh
  m = loop.train(c, wd)
  print("est:smoke held-out:", {k: v for k, v in m.items() if np.ndim(v) == 0})
  assert m["uar"] >= 0.90 and m["war"] >= 0.90, m
  assert m["ssop_accuracy"] >= 0.18, m                    # chance 0.10 ± 0.025 (140 clips)
  final = loop.evaluate_workdir(wd)                        # re-evaluated from the checkpoint
  np.testing.assert_allclose(final["uar"], m["uar"], atol=1e-6)
  assert os.path.isdir(os.path.join(wd, "tensorboard"))
