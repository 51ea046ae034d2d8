"""Learning is proven for the ABAW path, end to end on the CPU (issue 5):

synthetic face videos → `data_prep` shards → the frame encoder (`frame_resnet:smoke`, ResNet-18 on
single frames, the three tasks) → `python -m data_prep features` (its pooled features as a stream,
aligned to the frames) → the TCN + Transformer (`abaw_tcn:smoke`, windows 32 / 16) → held-out
videos (other generator seeds: unseen identities) reach CCC >= 0.80 on valence and arousal, EXPR
macro-F1 >= 0.80 and AU mean F1 >= 0.80, both in the trainer's evaluation (non-overlapping windows)
and in `jaxaffect predict` (overlapping windows merged), which also writes the ABAW submission files
(one line per frame of every video) and the valence/arousal plots.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

THRESHOLDS = {"ccc_valence": 0.80, "ccc_arousal": 0.80, "expr_macro_f1": 0.80, "au_f1": 0.80}


@pytest.mark.slow
def test_abaw_sequence_model_learns_from_frame_encoder_features(tmp_path, frame_encoder):
  from configs import abaw_tcn
  from jaxaffect import cli
  from jaxaffect.train import loop

  # 1. Shards of synthetic videos (48 frames, 64 px) and the frame encoder (conftest fixture).
  shards, fm = frame_encoder["shards"], frame_encoder["metrics"]
  print("frame_resnet:smoke held-out frames:", {k: v for k, v in fm.items() if np.ndim(v) == 0})
  assert fm["expr/macro_f1"] >= 0.8 and fm["va/p_va"] >= 0.8, fm   # single held-out frames

  # 2. Per-frame features of every frame of both splits (a subprocess, as users run it).
  feats = str(tmp_path / "features")
  subprocess.run([sys.executable, "-m", "data_prep", "features", "--shards", shards,
                  "--checkpoint", frame_encoder["workdir"], "--out", feats, "--select", "all",
                  "--quiet"], check=True)           # stream named after the model: frame_resnet
  man = json.load(open(os.path.join(feats, "manifest.json")))
  assert man["totals"]["frames"] == (1008 + 140) * 48, man["totals"]

  # 3. The sequence model on windows of the feature stream.
  scfg = abaw_tcn.get_config(f"smoke,features={feats}")
  scfg.unlock()
  scfg.checkpoint.async_save = False
  wd = str(tmp_path / "seq")
  sm = loop.train(scfg, wd)
  got = {"ccc_valence": sm["va/ccc_valence"], "ccc_arousal": sm["va/ccc_arousal"],
         "expr_macro_f1": sm["expr/macro_f1"], "au_f1": sm["au/f1"]}
  print("abaw_tcn:smoke held-out (trainer):", json.dumps(got))
  for k, thr in THRESHOLDS.items():
    assert got[k] >= thr, (k, got)

  # 4. `jaxaffect predict`: whole videos, windows 32 / 16 merged, submission files, plots.
  out = str(tmp_path / "predict")
  assert cli.main(["predict", "--workdir", wd, "--out", out, "--plot", "2"]) == 0
  summary = json.load(open(os.path.join(out, "metrics.json")))
  print("jaxaffect predict held-out:", json.dumps(summary["metrics"]))
  assert summary["videos"] == 140 and summary["frames"] == 140 * 48
  for k, thr in THRESHOLDS.items():
    assert summary["metrics"][k] >= thr, (k, summary["metrics"])
  # The merged whole-video evaluation agrees with the trainer's (different windowing only).
  assert abs(summary["metrics"]["ccc_valence"] - got["ccc_valence"]) < 0.05
  for task, header in (("va", "image_location,valence,arousal"),
                       ("expr", "image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,"
                                "Surprise"),
                       ("au", "image_location,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,"
                              "AU25,AU26")):
    lines = open(os.path.join(out, task, "predictions.txt")).read().splitlines()
    assert lines[0] == header
    assert len(lines) == 1 + 140 * 48
    locs = [l.split(",", 1)[0] for l in lines[1:]]
    assert len(set(locs)) == len(locs)
  va = np.array([[float(x) for x in l.split(",")[1:]] for l in
                 open(os.path.join(out, "va", "predictions.txt")).read().splitlines()[1:]])
  assert np.all(np.abs(va) <= 1.0) and va.std(0).min() > 0.05
  pngs = [p for p in os.listdir(out) if p.startswith("va_") and p.endswith(".png")]
  assert len(pngs) == 2 and all(os.path.getsize(os.path.join(out, p)) > 10_000 for p in pngs)
