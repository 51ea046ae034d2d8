"""`jaxaffect predict` on an Aff-Wild2-style layout (per-frame `.npy` features with gaps, annotation
txt files): one submission line per frame with the dataset's 1-based names, the frames an ABAW
example file lists (trailing no-face frames filled), undefined metrics on unlabelled data, errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

EXPR8 = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
AU12 = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
T = {"trA": 20, "trB": 18, "trC": 16, "vaA": 13, "vaB": 11}


def _txt(path, header, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join([header, *rows]) + "\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny ABAW TCN trained for two steps on the layout (the model's quality is irrelevant)."""
  from configs import abaw_tcn
  from jaxaffect.train import loop
  root = tmp_path_factory.mktemp("predict")
  r = np.random.default_rng(0)
  for vid, t in T.items():
    split = "Train_Set" if vid.startswith("tr") else "Validation_Set"
    _txt(str(root / "ann" / "VA_Estimation_Challenge" / split / f"{vid}.txt"), "valence,arousal",
         [f"{a:.3f},{b:.3f}" for a, b in r.uniform(-1, 1, (t, 2))])
    _txt(str(root / "ann" / "EXPR_Classification_Challenge" / split / f"{vid}.txt"), EXPR8,
         [str(e) for e in r.integers(0, 8, t)])
    _txt(str(root / "ann" / "AU_Detection_Challenge" / split / f"{vid}.txt"), AU12,
         [",".join(map(str, a)) for a in r.integers(0, 2, (t, 12))])
    os.makedirs(root / "feats" / vid)
    for i in range(1, t + 1):
      if vid == "vaA" and i in (4, 5):             # frames without a face: no feature file
        continue
      np.save(root / "feats" / vid / f"{i:05d}.npy", r.normal(size=(1, 6)).astype(np.float32))
  c = abaw_tcn.get_config("smoke")
  c.unlock()
  c.data.source.features = [{"name": "frame", "kind": "npy", "path": str(root / "feats"), "dim": 6}]
  c.data.source.labels = str(root / "ann")
  c.data.source.eval_select = "val"
  c.data.expr_vocab = ""
  c.data.sampler.window, c.data.sampler.stride = 8, 4
  c.model.streams = (("frame", (8, 8)),)
  c.model.num_expr_classes = 8
  c.model.d_model, c.model.num_layers, c.model.dim_feedforward = 16, 1, 16
  c.batch_size = 8
  c.num_steps = 2
  c.checkpoint.async_save = False
  wd = str(root / "run")
  loop.train(c, wd)
  return {"root": root, "wd": wd}


def _lines(out, task):
  return open(os.path.join(out, task, "predictions.txt")).read().splitlines()


def test_one_line_per_frame_with_aff_wild2_names_and_metrics(run, tmp_path):
  from jaxaffect import predict
  s = predict.run(run["wd"], str(tmp_path), plot=1, progress=False)
  assert s["videos"] == 2 and s["frames"] == 13 + 11 and s["no_face_frames"] == 2
  for task in ("va", "expr", "au"):
    lines = _lines(str(tmp_path), task)
    assert len(lines) == 1 + 24
    locs = [l.split(",")[0] for l in lines[1:]]
    assert locs == [f"vaA/{i:05d}.jpg" for i in range(1, 14)] + [
        f"vaB/{i:05d}.jpg" for i in range(1, 12)]                  # 1-based, no-face frames kept
  assert _lines(str(tmp_path), "expr")[0] == "image_location," + EXPR8
  assert _lines(str(tmp_path), "au")[0] == "image_location," + AU12
  m = s["metrics"]
  assert m["va_frames"] == m["expr_frames"] == m["au_frames"] == 24
  for k in ("ccc_valence", "ccc_arousal", "expr_macro_f1", "au_f1"):
    assert m[k] is not None and np.isfinite(m[k]), k
  # The metrics are the protocol functions on the written predictions (EXPR: 8 classes).
  from jaxaffect import metrics as jm
  from jaxaffect.data import features
  vids = list(features.iter_videos(s_cfg(run), "val"))
  pred = np.array([int(l.split(",")[1]) for l in _lines(str(tmp_path), "expr")[1:]])
  true = np.concatenate([v.labels["expr"] for v in vids])
  assert m["expr_macro_f1"] == pytest.approx(jm.macro_f1(true, pred, num_classes=8))
  assert os.path.getsize(s["per_video"][0]["plot"]) > 10_000
  with open(os.path.join(tmp_path, "metrics.json")) as f:
    assert json.load(f)["metrics"] == m


def s_cfg(run):
  from jaxaffect.train import checkpoint as ckpt_lib
  config, _ = ckpt_lib.read_config(os.path.join(run["wd"], "checkpoints"))
  return config.data


def test_test_set_frames_from_an_example_file_and_undefined_metrics(run, tmp_path):
  from jaxaffect import cli
  ex = tmp_path / "example.txt"
  listed = [f"vaB/{i:05d}.jpg" for i in range(1, 14)] + [f"vaA/{i:05d}.jpg" for i in range(1, 14)]
  ex.write_text("image_location,valence,arousal\n" + "\n".join(f"{l},0,0" for l in listed) + "\n")
  out = str(tmp_path / "out")
  # The test set: no labels (labels=''), every video of the stream (select all).
  assert cli.main(["predict", "--workdir", run["wd"], "--out", out, "--labels", "",
                   "--select", "all", "--frames-from", str(ex), "--plot", "0"]) == 0
  s = json.load(open(os.path.join(out, "metrics.json")))
  lines = _lines(out, "va")
  assert [l.split(",")[0] for l in lines[1:]] == listed                 # exactly, in file order
  rows = {l.split(",")[0]: l.split(",", 1)[1] for l in lines[1:]}
  # vaB has 11 frames: the 2 listed beyond them repeat the last frame's prediction.
  assert rows["vaB/00012.jpg"] == rows["vaB/00013.jpg"] == rows["vaB/00011.jpg"]
  pv = {v["video"]: v for v in s["per_video"]}
  assert pv["vaB"]["listed_frames_filled"] == 2 and pv["vaA"]["listed_frames_filled"] == 0
  assert pv["trA"].get("not_listed")                     # in the data, not in the example file
  assert s["submission_lines"]["va"] == 26
  for k in ("ccc_valence", "p_va", "expr_macro_f1", "au_f1"):
    assert s["metrics"][k] is None, k                    # nothing labelled: undefined, not 0
  bad = tmp_path / "bad.txt"
  bad.write_text("image_location,valence,arousal\nvaZ/00001.jpg,0,0\n")
  from jaxaffect import predict
  with pytest.raises(ValueError, match="vaZ"):
    predict.run(run["wd"], str(tmp_path / "o2"), labels="", select="all", frames_from=str(bad),
                plot=0, progress=False)
  bad.write_text("image_location,valence,arousal\nvaA/first.jpg,0,0\n")
  with pytest.raises(ValueError, match="bad.txt:2"):
    predict.read_frame_list(str(bad))


def test_failures_leave_no_output_folder(run, tmp_path):
  """Issue 10 review: a bad --select left an empty --out; a truncated feature file mid-way left
  the plots already written; --frames-from / --stream mistakes printed tracebacks."""
  from jaxaffect import cli, predict
  from jaxaffect.errors import UserError
  out = tmp_path / "p"
  with pytest.raises(UserError, match="select"):
    predict.run(run["wd"], str(out), select="nosplit")
  with pytest.raises(UserError, match="--frames-from .*no such file"):
    predict.run(run["wd"], str(out), frames_from=str(tmp_path / "none.txt"))
  feats = tmp_path / "feats"
  import shutil
  shutil.copytree(run["root"] / "feats", feats)
  last = sorted(feats.iterdir())[-1]                      # the last video: earlier ones are done
  victim = sorted(last.iterdir())[0]
  victim.write_bytes(victim.read_bytes()[:40])
  with pytest.raises(UserError, match=r"cannot read .*\.npy"):
    predict.run(run["wd"], str(out), select="all", stream_paths={"frame": str(feats)})
  assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["feats"]
  assert cli.main(["predict", "--workdir", run["wd"], "--out", str(out), "--stream",
                   "frame"]) == 2
  assert not out.exists()
