"""Learning paths trained a few steps through small fixtures in official layouts (not synthetic
videos): videos without a clip label, frames missing from `cropped_aligned`, -5 / -1 sentinels.

Synthetic videos always have a clip label; Aff-Wild2 videos never do. A frame encoder once trained
on nothing there (every per-frame mask multiplied by a "has a clip label" mask): these tests run
the real layout through `data_prep` and the trainer, and compare with the same data given a clip
label."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from configs import frame_resnet
from data_prep import cli as prep_cli
from jaxaffect.data import pipeline, schema
from jaxaffect.data import vocab as vocab_lib
from jaxaffect.models import tasks
from jaxaffect.train import loop
from tests.data_prep import fixtures_sources as fx
from tests.train.helpers import set_fields

# Label lines (line i = frame i + 1), with the ABAW sentinels on a few frames: VA -5, EXPR -1,
# AU -1 (a whole row, as the challenge files have them).
def VA(k, n):
  return [((k + i) % 5 / 5 - 0.4, (k * 3 + i) % 7 / 7 - 0.4) if i not in (1, 8) else (-5, -5)
          for i in range(n)]


def EXPR(k, n):
  return [(k + i) % 8 if i % 5 != 2 else -1 for i in range(n)]


def AU(k, n):
  return [[(k + i + u) % 2 for u in range(12)] if i % 6 != 4 else [-1] * 12 for i in range(n)]


def _write(root, folder, split, vid, header, rows):
  body = "".join(",".join(str(v) for v in (r if isinstance(r, (list, tuple)) else [r])) + "\n"
                 for r in rows)
  fx.write_text(str(root / "annotations" / folder / split / f"{vid}.txt"), header + "\n" + body)


def affwild2_layout(tmp_path, n_frames: int = 12):
  """Aff-Wild2 (ABAW5/6 names): 3 train + 2 validation videos with VA, EXPR and AU files, crops in
  `cropped_aligned/<video>/00001.jpg` with gaps (frame 3 missing), no clip labels anywhere."""
  root = tmp_path / "ABAW"
  videos = {"Train_Set": ["1-30-1280x720", "video2", "30-30-1920x1080_left"],
            "Validation_Set": ["118-30-640x480", "video10_1"]}
  k = 0
  for split, vids in videos.items():
    for vid in vids:
      _write(root, "VA_Estimation_Challenge", split, vid, "valence,arousal", VA(k, n_frames))
      _write(root, "EXPR_Classification_Challenge", split, vid,
             ",".join(vocab_lib.names("abaw8")), EXPR(k, n_frames))
      _write(root, "AU_Detection_Challenge", split, vid, ",".join(vocab_lib.AU12), AU(k, n_frames))
      for i in range(1, n_frames + 1):
        if i != 3:
          fx.write_jpeg(str(root / "cropped_aligned" / vid / f"{i:05d}.jpg"), fx.image(k, i, 32))
      k += 1
  return root


def _toy_frame_config(shards: str, **over):
  c = frame_resnet.get_config(f"affwild2,shards={shards}")
  c.unlock()
  c.model.width = 4
  c.data.image_size = 16
  c.data.sampler.crop = ""
  c.data.sampler.color_jitter = 0.0
  c.batch_size = 8
  c.num_steps = 3
  c.log_every_steps = 1
  c.eval_every_steps = 3
  c.optim.warmup_epochs = 0
  c.checkpoint.async_save = False
  return set_fields(c, over)


@pytest.fixture(scope="module")
def affwild2_shards(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("aw2")
  root = affwild2_layout(tmp)
  out = tmp / "shards"
  assert prep_cli.main(["affwild2", "--src", str(root), "--out", str(out), "--size", "16",
                        "--quiet"]) == 0
  return str(out)


def _train_log(workdir):
  with open(os.path.join(workdir, "tensorboard", "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_frame_encoder_learns_from_affwild2_videos_without_clip_label(affwild2_shards, tmp_path):
  """Issue 10, bug 1: `frame_resnet:affwild2` on Aff-Wild2 shards had loss 0 at every step and
  nan / 0 metrics, because the example mask was "has a clip label"."""
  src = pipeline.ShardRecords(affwild2_shards, "train")
  assert all(src[i]["label"] == -1 for i in range(len(src)))       # the layout has none
  ex = pipeline.make_clip(_toy_frame_config(affwild2_shards).data, train=False)(src[0])
  assert ex["mask"] == 1 and ex["label_mask"] == 0                  # a real, clip-unlabelled example
  assert ex["va_mask"].sum() + ex["expr_mask"].sum() + ex["au_mask"].sum() > 0

  cfg = _toy_frame_config(affwild2_shards)
  wd = str(tmp_path / "run")
  ev = loop.train(cfg, wd)
  train_rows = [r for r in _train_log(wd) if "train/loss" in r]
  assert len(train_rows) == 3
  for r in train_rows:
    for k in ("train/loss", "train/loss_va", "train/loss_expr", "train/loss_au"):
      assert np.isfinite(r[k]) and r[k] > 0, (k, r)
  # Evaluation counts every labelled validation frame: CCC and F1 are defined (finite).
  for k in ("va/ccc_valence", "va/ccc_arousal", "expr/macro_f1", "au/f1", "loss"):
    assert np.isfinite(ev[k]), (k, ev)
  assert ev["loss"] > 0


def test_frame_encoder_training_is_the_same_with_or_without_clip_labels(affwild2_shards, tmp_path):
  """The per-frame learning path does not depend on clip labels: the same shards with a clip label
  added to every video give identical losses step by step (so the synthetic learning test, whose
  videos have clip labels, also proves learning on sources without them)."""
  labelled = tmp_path / "labelled"
  labelled.mkdir()
  man = json.loads(open(os.path.join(affwild2_shards, "manifest.json")).read())
  files = sorted({r["file"] for r in man["records"]})
  for name in files:                        # rewrite each record with clip label 2 (dfew7)
    recs = []
    with open(os.path.join(affwild2_shards, name), "rb") as f:
      for r in man["records"]:
        if r["file"] == name:
          rec = schema.decode(schema.read_record_at(f, r["offset"]))
          rec.label, rec.vocab = 2, "dfew7"
          recs.append(schema.encode(rec))
    offsets = []
    with open(labelled / name, "wb") as f:
      for data in recs:
        offsets.append(f.tell())
        f.write(schema.frame_record(data))
    for r, off in zip([r for r in man["records"] if r["file"] == name], offsets):
      r["offset"] = off
    for sp in man["splits"].values():
      for sh in sp["shards"]:
        if sh["file"] == name:
          sh["bytes"] = os.path.getsize(labelled / name)
  (labelled / "manifest.json").write_text(json.dumps(man))
  runs = {}
  for tag, shards in (("none", affwild2_shards), ("labelled", str(labelled))):
    src = pipeline.ShardRecords(shards, "train")
    assert {int(src[i]["label"]) for i in range(len(src))} == ({-1} if tag == "none" else {2})
    wd = str(tmp_path / tag)
    loop.train(_toy_frame_config(shards, **{"num_steps": 2, "eval_every_steps": 100}), wd)
    runs[tag] = [r["train/loss"] for r in _train_log(wd) if "train/loss" in r]
  assert len(runs["none"]) == 2 and all(v > 0 for v in runs["none"])
  np.testing.assert_allclose(runs["none"], runs["labelled"], rtol=1e-6)


def test_clip_tasks_count_only_clip_labelled_real_examples():
  """`mask` (real example) and `label_mask` (has a clip label) combine for clip losses only."""
  b = {"mask": np.array([1, 1, 0, 1], np.float32), "label_mask": np.array([1, 0, 1, 1], np.float32)}
  np.testing.assert_array_equal(tasks.clip_mask(b), [1, 0, 0, 1])
  np.testing.assert_array_equal(tasks.clip_mask({"mask": b["mask"]}), b["mask"])
