"""Learning is proven: the demo (synthetic videos → data_prep shards → grain → Former-DFER smoke on
the CPU) reaches UAR >= 0.90 on held-out clips (other generator seeds: unseen identities), and writes
everything it promises."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jaxaffect import cli, demo


@pytest.mark.slow
def test_demo_learns_and_writes_its_outputs(tmp_path):
  wd = str(tmp_path / "demo")
  summary = demo.run(wd, cli.resolve_config_path("former_dfer:smoke"), [])
  assert summary["uar"] >= 0.90, summary
  assert summary["war"] >= 0.90, summary
  assert summary["num_heldout_videos"] == 140
  # It went through the preprocessing job: shards + manifest with both splits, every frame a face.
  m = json.load(open(os.path.join(summary["shards"], "manifest.json")))
  assert summary["prep_frames"] == m["totals"]["frames"] == (1344 + 140) * 24
  assert m["splits"]["test"]["videos"] == 140 and m["totals"]["skipped"] == 0
  assert m["splits"]["train"]["face_found"] == 1344 * 24
  with open(os.path.join(wd, "demo_summary.json")) as f:
    assert json.load(f) == summary
  for key in ("export_path", "confusion_matrix_png", "checkpoint"):
    assert os.path.exists(summary[key]), key
  assert os.path.exists(summary["verify_path"])
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(summary["tensorboard"]))
  # The exported weights, imported back, reproduce the outputs stored in the verification sample.
  from jaxaffect import interop
  from jaxaffect.train import loop
  config, s, variables, _ = loop.restore_state(wd)
  back = interop.from_torch_state_dict("former_dfer", interop.load_state_dict_file(
      summary["export_path"]), variables)
  ver = np.load(summary["verify_path"])
  x = np.transpose(ver["input"], (0, 1, 3, 4, 2))          # torch (B,T,C,H,W) -> ours (B,T,H,W,C)
  out = s.task.module.apply(back, x, train=False)
  np.testing.assert_allclose(np.asarray(out), ver["output"], atol=1e-4, rtol=1e-4)
