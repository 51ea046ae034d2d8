"""TDLS + MGCT learn (issue 14 item 8), on synthetic face videos with held-out identities, at CPU
size: the session's `frame_encoder` shards (1,008 + 140 held-out videos x 48 frames, 64 px).

Chain: `tdls:smoke` (Swin 24/48/96/192, deformable blocks in stages 3-4, L_VA + 0.1 L_TG with the
momentum encoder and queue) on single frames -> `python -m data_prep features` (its 192-d pooled
features, stream `tdls`) -> `mgct:smoke` (MGCT 16/32/64, clips of 16 frames, 3 clips per video,
L_MGCT + 0.1 L_CCL). Thresholds (the issue's): TDLS held-out P_VA >= 0.80; MGCT held-out CCC >=
0.85 on valence and on arousal. Reported beside them, on the same features and steps: MGCT without
L_CCL (`ccl=0`), a 4-layer frame transformer (the `baseline` variant: Tables I/II's TE, here over
TDLS rather than plain Swin features), and the flicker of each (mean |frame-to-frame change| of
the predictions against that of the labels).
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np
import pytest

from data_prep import cli as prep_cli
from jaxaffect import config_loader
from jaxaffect.data import pipeline
from jaxaffect.models import tdls
from jaxaffect.train import loop

RUN = ["--config.checkpoint.async_save=false"]
SMALL_TE = ["--config.model.channels=[16]", "--config.model.num_heads=2",
            "--config.data.sampler.window=16", "--config.data.sampler.stride=8",
            "--config.data.source.eval_select=test", "--config.optim.lr=0.001",
            "--config.batch_size=32", "--config.log_every_steps=25"]


def _flicker(workdir: str) -> tuple[float, float]:
  """(predictions, labels): mean |x_t − x_{t−1}| over consecutive labelled frames of the
  held-out windows, valence and arousal pooled."""
  config, s, variables, _ = loop.restore_state(workdir)
  _, ev = pipeline.build_sources(config.data)
  params = variables["params"]
  extra = {k: v for k, v in variables.items() if k != "params"}
  fwd = jax.jit(lambda b: s.task.forward(params, extra, b)["va"])
  dp, dy = [], []
  for batch in pipeline.eval_batches(ev, config.data, 32):
    p = np.asarray(fwd({k: v for k, v in batch.items()}))
    y, m = batch["va"], batch["va_mask"] * batch["valid"] * batch["mask"][:, None]
    ok = (m[:, 1:] > 0) & (m[:, :-1] > 0)
    dp.append(np.abs(np.diff(p, axis=1))[ok])
    dy.append(np.abs(np.diff(y, axis=1))[ok])
  return float(np.concatenate(dp).mean()), float(np.concatenate(dy).mean())


@pytest.fixture(scope="module")
def chain(frame_encoder, tmp_path_factory):
  root = tmp_path_factory.mktemp("tdls_chain")
  shards = frame_encoder["shards"]
  t0 = time.time()
  cfg = config_loader.load(f"tdls:smoke,shards={shards}", RUN)
  tdls_wd = str(root / "tdls")
  tdls_metrics = loop.train(cfg, tdls_wd)
  assert "preempted" not in tdls_metrics
  t1 = time.time()
  feats = str(root / "feats")
  assert prep_cli.main(["features", "--shards", shards, "--checkpoint", tdls_wd, "--out", feats,
                        "--quiet"]) == 0
  t2 = time.time()
  spec = f"features={feats},stream=tdls,dim={cfg.model.embed_dim * 8}"
  runs = {}
  for name, arg, extra in (("mgct", "smoke", []), ("mgct_no_ccl", "smoke,ccl=0", []),
                           ("frame_te", "baseline", SMALL_TE)):
    c = config_loader.load(f"mgct:{arg},{spec}", RUN + extra)
    if name != "mgct":
      c.unlock()
      c.num_steps = runs["mgct"]["steps"]      # equal steps
      c.lock()
    wd = str(root / name)
    ts = time.time()
    ev = loop.train(c, wd)
    steps = max(int(x) for x in os.listdir(os.path.join(wd, "checkpoints")) if x.isdigit())
    runs[name] = {"metrics": ev, "workdir": wd, "steps": steps, "seconds": time.time() - ts,
                  "flicker": _flicker(wd)}
  return {"tdls": tdls_metrics, "tdls_workdir": tdls_wd, "tdls_config": cfg, "runs": runs,
          "seconds": {"tdls": t1 - t0, "features": t2 - t1}}


def test_tdls_then_mgct_reach_the_issue_thresholds_on_held_out_identities(chain):
  t = chain["tdls"]
  runs = chain["runs"]
  lines = [f"TDLS (tdls:smoke, {chain['seconds']['tdls']:.0f} s): held-out P_VA {t['va/p_va']:.3f} "
           f"(V {t['va/ccc_valence']:.3f}, A {t['va/ccc_arousal']:.3f}); features "
           f"{chain['seconds']['features']:.0f} s"]
  for name, r in runs.items():
    m, (fp, fy) = r["metrics"], r["flicker"]
    lines.append(f"{name:12s} {r['steps']} steps {r['seconds']:.0f} s: CCC V "
                 f"{m['va/ccc_valence']:.3f} A {m['va/ccc_arousal']:.3f}; flicker {fp:.4f} "
                 f"(labels {fy:.4f}, ratio {fp / fy:.2f})")
  print("\n" + "\n".join(lines))
  assert t["va/p_va"] >= 0.80, lines
  m = runs["mgct"]["metrics"]
  assert m["va/ccc_valence"] >= 0.85 and m["va/ccc_arousal"] >= 0.85, lines
  for r in runs.values():
    assert np.isfinite(r["flicker"]).all() and r["flicker"][1] > 0


# Measured at CI size (tdls:smoke, 372 steps, held-out frames, stage-3 points, 64-px crops):
# mean distance from each sampling point to the nearest true landmark of its face, reference
# points p 5.09 px, deformed points p + Δp 9.79 px with the paper's offsets (trailing ReLU:
# every offset >= 0, so points can only move right / down) and 10.54 px with signed offsets
# (tanh x 2 map pixels; held-out P_VA 0.894 vs 0.902 paper). At stage 4 (2x2 map, 32 px per map
# pixel) 14.3 px (paper) and 44.9 px (signed) against 7.5 px. Nothing in L_VA or L_TG rewards
# landmark proximity: the offsets serve the VA loss, and on these faces the expression cues
# (brows, mouth) move with the pose that the reference template already follows. Kept strict: an
# offset network that does move points onto landmarks turns this into an XPASS.
OFFSETS_REASON = ("deformed points end farther from the true landmarks than the reference points "
                  "at CI size (paper offsets: 9.79 px vs 5.09 px at stage 3; see the comment)")


@pytest.mark.xfail(strict=True, reason=OFFSETS_REASON)
def test_offsets_move_the_points_towards_the_landmarks(chain):
  config, s, variables, _ = loop.restore_state(chain["tdls_workdir"])
  m = s.task.module
  data = config.data
  data.unlock()
  data.sampler.landmarks = True
  data.lock()
  _, ev = pipeline.build_sources(data)
  clip = pipeline.make_clip(data, train=False)
  xs = [clip(ev[i]) for i in range(0, len(ev), max(1, len(ev) // 256))][:256]
  img = np.stack([x["image"] for x in xs]).astype(np.float32) / 255.0
  size = img.shape[1]
  lm = 2 * (np.stack([x["landmarks"] for x in xs]) + 0.5) / size - 1     # image-normalised
  v = {k: val for k, val in variables.items() if k not in ("momentum", "queue")}
  _, inter = m.apply(v, img, mutable=["intermediates"])

  def dist(points):                                   # mean px distance to the nearest landmark
    d = np.linalg.norm(points[:, :, None] - lm[:, None], axis=-1).min(-1)
    return float(d.mean() * size / 2)
  blk = inter["intermediates"]["backbone"]["layers_2"]["blocks_1"]["attn"]
  deformed = np.asarray(blk["sampling_points"][0])
  ref = np.asarray(v["constants"]["backbone"]["layers_2"]["blocks_1"]["attn"]["ref_points"])
  d_def, d_ref = dist(deformed), dist(np.broadcast_to(ref, deformed.shape))
  print(f"\nstage 3: reference {d_ref:.2f} px, deformed {d_def:.2f} px from the nearest landmark")
  assert d_def < d_ref, (d_def, d_ref)
