"""The ABAW6 system learns on the CPU (issue 13 items 8b, 8c): MAE pretraining (`mae:smoke`, the
session fixture `mae_smoke`) -> fine-tuning of its encoder (`vit_frames:smoke,init=<run>`, the
recipe of `vit_frames:finetune_expr` / `mae:finetune_expr` at smoke size) -> pooled features
(`python -m data_prep features`, stream `vit_frames`) -> the TCN + Transformer (`abaw_tcn:smoke`).
Held-out = the eval split of other generator seeds: identities the pretraining never saw.

8b, the point of pretraining: with few labels (70 training videos, 10 per expression, 8 frames
each; 4 frames per video per epoch, 150 steps of 64), the fine-tune from the MAE init must beat
the same fine-tune from random init on held-out EXPR macro-F1 (all 1,120 frames of 140 held-out
videos) by MARGIN = 0.05 absolute. The margin was fixed before any fine-tune ran: about one
binomial standard error of an accuracy near 0.5 on 140 independent held-out videos
(sqrt(0.25 / 140) = 0.042), so a smaller gain is within the noise of one held-out set.
MEASURED (2 shared cores, load ~10; runs before this test was written): it does NOT hold at
this scale, so the test is `xfail(strict=True)` with the figures, never a weaker threshold:
  70 videos, 150 steps, lr 1e-3          MAE init 0.346, random init 0.423  (margin -0.077)
  the same, layer decay 0.75             MAE init 0.352
  the same, linear probe (frozen encoder) MAE init 0.199, random init 0.189  (chance 0.14)
  all 1,008 videos x 48 frames of 8c, 300 steps, heads expr+va+au (6,720 held-out frames):
                                         MAE init 0.683, random init 0.751  (margin -0.068)
The linear probe says why: the smoke MAE (held-out masked-patch loss 0.42 of the baseline: it
does learn to reconstruct) barely encodes the expression (+0.01 macro-F1 over random features);
on 32 px faces of 4 x 4 patches with 75 % masking, 4 visible patches reconstruct the face layout
(hair, skin, background, pose: most of the pixel variance), not the mouth / brow shapes the
expressions differ by; as an init it is worse than random at equal steps in both regimes.
It is the pretraining budget: the same MAE trained 3x longer (360 epochs, 2,160 steps, 288 s
on the loaded machine instead of ~110; held-out loss ratio 0.303 instead of 0.424) gives
  70 videos, 150 steps, lr 1e-3          MAE init 0.474, random init 0.423  (margin +0.051)
  the same, linear probe                 MAE init 0.229, random init 0.189  (+0.040)
i.e. the threshold is met, by 0.001: too close to call robust, and the longer pretraining would
add ~3 min to CI, so `mae:smoke` keeps 120 epochs and this test stays xfail (strict: it fails
loudly the day the 120-epoch MAE init clears the margin).

8c, the ABAW6 chain: the MAE-init fine-tune (EXPR head only, as ABAW6; `vit_frames:smoke`, 600
steps) on the data of the existing chain (the `frame_encoder` fixture's shards: 1,008 + 140
held-out videos x 48 frames, read at 32 px), then its pooled features of every frame through
`abaw_tcn:smoke,stream=vit_frames,dim=96` must reach CCC >= 0.80 on valence and arousal and EXPR
macro-F1 >= 0.80 on the held-out videos, as the frame_resnet chain does
(tests/test_abaw_pipeline.py). MEASURED (scripts equal to this test, 2 shared cores, load ~10;
ViT figures on all 6,720 held-out frames, TCN on the held-out videos):
  ViT heads     steps  ViT EXPR F1 (VA CCC)   TCN: CCC V / A, EXPR F1, AU F1   ViT, feats, TCN s
  expr          600    0.872                  0.944 / 0.915, 0.893, 0.870      161, 37, 89
  expr+va+au    600    0.898 (0.924 / 0.925)  0.942 / 0.943, 0.916, 0.878      218, 49, 100
  expr+va+au    300    0.683 (0.856 / 0.806)  0.899 / 0.848, 0.786, 0.793      107, 38, 123
So the EXPR-only features carry valence and arousal (the ABAW6 recipe needs no VA head here);
300 steps leave the ViT under-trained (hence 40 epochs in `vit_frames:smoke`). This test (first
row) reproduced those figures to 4 digits: ViT 110 s, features 29 s, TCN 87 s (226 s in all, load
~10), after the `mae_smoke` (~110-170 s) and `frame_encoder` (~200 s) fixtures it shares.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

MARGIN = 0.05            # 8b: MAE-init minus random-init held-out EXPR macro-F1 (fixed a priori)
THRESHOLDS = {"ccc_valence": 0.80, "ccc_arousal": 0.80, "expr_macro_f1": 0.80}   # 8c


def _finetune(shards: str, workdir: str, *, init: str = "", heads: str = "expr", sampler=None,
              **top):
  """`vit_frames:smoke` (the encoder of `mae:smoke`) on `shards`, from `init` (an MAE run);
  `sampler` replaces config.data.sampler, `top` sets top-level config fields."""
  from configs import vit_frames
  from jaxaffect.train import loop
  arg = f"smoke,shards={shards},heads={heads}" + (f",init={init}" if init else "")
  cfg = vit_frames.get_config(arg)
  cfg.unlock()
  cfg.checkpoint.async_save = False
  if sampler is not None:
    cfg.data.sampler = sampler
  for k, v in top.items():
    cfg[k] = v
  t = time.time()
  m = loop.train(cfg, workdir)
  return m, time.time() - t


def _check_init(workdir: str) -> None:
  """The fine-tune started from the MAE encoder: every encoder leaf loaded but the fresh fc_norm,
  nothing else loaded, no shape mismatch (init_from's report). Reported with `pytest.fail`, not an
  AssertionError, so that a broken init fails 8b even though 8b is an expected failure (its
  xfail only expects the margin's AssertionError)."""
  r = json.load(open(os.path.join(workdir, "init_from.json")))
  problems = []
  if r["source"]["model_name"] != "mae" or r["shape_mismatch"]:
    problems.append(f"source {r['source']}, shape mismatches {r['shape_mismatch']}")
  if len(r["loaded"]) <= 20 or not all(k.startswith(("params/encoder/", "constants/encoder/"))
                                       for k in r["loaded"]):
    problems.append(f"loaded {r['loaded']}")
  if not all(k.startswith(("params/encoder/fc_norm/", "params/heads_")) for k in r["absent"]):
    problems.append(f"absent {r['absent']}")
  if problems:
    pytest.fail("init_from did not load the MAE encoder: " + "; ".join(problems))


@pytest.fixture(scope="module")
def few_labels(tmp_path_factory):
  """70 labelled training videos (the first 70 identities of the MAE's 400 unlabelled ones, 10 per
  expression) + 140 held-out videos (eval generator seeds; the MAE evaluated on 64 of them, never
  trained on any), 8 frames at 32 px."""
  from jaxaffect import demo
  from jaxaffect.data import parts
  d = ml_collections.ConfigDict(dict(image_size=32, source=parts.source_config(
      "synthetic", video_frames=8, num_train=70, num_eval=140, pose=0.3)))
  return demo.prep_synthetic(d, str(tmp_path_factory.mktemp("few_labels") / "shards"))["out"]


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "measured: the smoke MAE's features barely carry the expression (linear probe 0.199 vs 0.189 "
    "random); fine-tuned, MAE init 0.346 vs random 0.423 held-out EXPR macro-F1; 3x longer "
    "pretraining: 0.474 (module docstring)"))
def test_mae_init_beats_random_init_on_held_out_expressions_with_few_labels(mae_smoke, few_labels,
                                                                            tmp_path):
  from jaxaffect.data import parts
  over = dict(num_steps=150, eval_every_steps=150, sampler=parts.sampler_config(
      "frame_views", crop="", hflip=True, landmarks=False, frames_per_video=4))
  got = {}
  for name, init in (("mae", mae_smoke["workdir"]), ("random", "")):
    m, sec = _finetune(few_labels, str(tmp_path / name), init=init, **over)
    got[name] = float(m["expr/macro_f1"])
    print(f"\n8b {name} init: held-out EXPR macro-F1 {got[name]:.4f} (uar {m['expr/uar']:.4f}, "
          f"war {m['expr/war']:.4f}), {sec:.1f} s")
  _check_init(os.path.join(tmp_path, "mae"))
  print(f"8b margin (MAE - random): {got['mae'] - got['random']:+.4f} (required >= {MARGIN})")
  assert got["mae"] - got["random"] >= MARGIN, got


@pytest.mark.slow
def test_abaw6_chain_mae_finetuned_vit_features_to_tcn_reach_abaw_thresholds(mae_smoke,
                                                                             frame_encoder,
                                                                             tmp_path):
  from configs import abaw_tcn
  from jaxaffect.train import loop

  # 1. The ABAW6 fine-tune of the MAE encoder on the chain's shards (48 frames, 64 px, read at
  #    32): the EXPR head only, as ABAW6; valence / arousal / AUs are learnt by the TCN alone.
  shards = frame_encoder["shards"]
  vm, sec = _finetune(shards, str(tmp_path / "vit"), init=mae_smoke["workdir"],
                      heads="expr", eval_every_steps=600)   # 40 epochs x 15 steps
  print(f"\nvit_frames:smoke (MAE init, EXPR head) held-out frames, {sec:.1f} s:",
        json.dumps({k: round(float(v), 4) for k, v in vm.items() if np.ndim(v) == 0}))
  _check_init(str(tmp_path / "vit"))

  # 2. Its pooled features of every frame (a subprocess, as users run it): stream `vit_frames`.
  feats = str(tmp_path / "features")
  t = time.time()
  subprocess.run([sys.executable, "-m", "data_prep", "features", "--shards", shards,
                  "--checkpoint", str(tmp_path / "vit"), "--out", feats, "--select", "all",
                  "--quiet"], check=True)
  man = json.load(open(os.path.join(feats, "manifest.json")))
  assert man["totals"]["frames"] == (1008 + 140) * 48, man["totals"]
  job = json.load(open(os.path.join(feats, "feature_job.json")))["recipe"]
  assert (job["stream"], job["dim"], job["model"]["model_name"]) == ("vit_frames", 96,
                                                                     "vit_frames"), job
  print(f"data_prep features: {time.time() - t:.1f} s")

  # 3. The TCN + Transformer on windows of the `vit_frames` stream.
  scfg = abaw_tcn.get_config(f"smoke,features={feats},stream=vit_frames,dim=96")
  scfg.unlock()
  scfg.checkpoint.async_save = False
  t = time.time()
  sm = loop.train(scfg, str(tmp_path / "seq"))
  got = {"ccc_valence": sm["va/ccc_valence"], "ccc_arousal": sm["va/ccc_arousal"],
         "expr_macro_f1": sm["expr/macro_f1"], "au_f1": sm["au/f1"]}
  print(f"abaw_tcn:smoke on vit_frames features, held-out videos ({time.time() - t:.1f} s):",
        json.dumps({k: round(float(v), 4) for k, v in got.items()}))
  for k, thr in THRESHOLDS.items():
    assert got[k] >= thr, (k, got)
