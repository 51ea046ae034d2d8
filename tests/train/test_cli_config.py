"""Configs and the command line: variants, overrides, typos, optimizer semantics, list files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import optax
import pytest
import torch

from configs import former_dfer
from jaxaffect import cli
from jaxaffect.data import pipeline
from jaxaffect.train import optim
from jaxaffect.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_variants_follow_the_official_code_and_the_paper():
  d = former_dfer.get_config("dfew")
  assert (d.optim.name, d.optim.lr, d.optim.momentum, d.optim.weight_decay) == ("sgd", 0.01, 0.9, 1e-4)
  assert (d.optim.schedule, d.optim.decay_epochs, d.optim.decay_factor) == ("step", 40, 0.1)
  assert (d.num_epochs, d.batch_size, d.data.image_size) == (100, 32, 112)
  assert (d.data.sampler.num_segments, d.data.sampler.duration) == (8, 2)
  assert (d.model.num_spatial_layers, d.model.num_temporal_layers) == (1, 3)
  p = former_dfer.get_config("paper")
  assert (p.model.num_spatial_layers, p.model.num_temporal_layers) == (3, 3)
  assert former_dfer.get_config("dfew,fold=3").data.source.train_list.endswith("DFEW_set_3_train.txt")
  with pytest.raises(ValueError, match="unknown variant"):
    former_dfer.get_config("dfw")


def test_config_is_locked_against_typos():
  c = former_dfer.get_config("smoke")
  with pytest.raises(AttributeError):
    c.optim.learning_rate = 0.1      # the field is `lr`


def test_cli_override_and_typo(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, "-m", "jaxaffect.cli", "train", "--config", "former_dfer:smoke",
                      "--workdir", str(tmp_path), "--config.optim.lerning_rate=0.1"],
                     capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
  assert r.returncode != 0
  assert "lerning_rate" in r.stderr + r.stdout
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_sgd_matches_torch_sgd_with_step_decay():
  """optax chain == torch.optim.SGD(momentum, weight_decay) + StepLR, step by step."""
  c = former_dfer.get_config("dfew").optim
  steps_per_epoch, total = 3, 30
  c.unlock()
  c.decay_epochs = 2                       # decay every 6 steps, to see several decays
  tx, sched = optim.make_optimizer(c, steps_per_epoch, total)
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(5, 4)).astype(np.float32)
  grads = rng.normal(size=(total, 5, 4)).astype(np.float32)
  p, st = {"w": w0}, tx.init({"w": w0})
  tw = torch.nn.Parameter(torch.tensor(w0))
  topt = torch.optim.SGD([tw], lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
  tsch = torch.optim.lr_scheduler.StepLR(topt, step_size=c.decay_epochs, gamma=c.decay_factor)
  for i in range(total):
    u, st = tx.update({"w": grads[i]}, st, p)
    p = optax.apply_updates(p, u)
    topt.zero_grad()
    tw.grad = torch.tensor(grads[i])
    topt.step()
    if (i + 1) % steps_per_epoch == 0:
      tsch.step()                          # StepLR is stepped once per epoch
    np.testing.assert_allclose(np.asarray(p["w"]), tw.detach().numpy(), rtol=1e-5, atol=1e-6)
  assert float(sched(0)) == pytest.approx(0.01)
  assert float(sched(6)) == pytest.approx(0.001)


def test_adam_coupled_weight_decay_matches_torch():
  c = former_dfer.get_config("smoke").optim
  c.unlock()
  c.schedule, c.weight_decay, c.warmup_epochs = "constant", 1e-2, 0
  tx, _ = optim.make_optimizer(c, 1, 10)
  rng = np.random.default_rng(1)
  w0 = rng.normal(size=(7,)).astype(np.float32)
  p, st = {"w": w0}, tx.init({"w": w0})
  tw = torch.nn.Parameter(torch.tensor(w0))
  topt = torch.optim.Adam([tw], lr=c.lr, weight_decay=c.weight_decay)
  for _ in range(10):
    g = rng.normal(size=(7,)).astype(np.float32)
    u, st = tx.update({"w": g}, st, p)
    p = optax.apply_updates(p, u)
    tw.grad = torch.tensor(g)
    topt.step()
  np.testing.assert_allclose(np.asarray(p["w"]), tw.detach().numpy(), rtol=1e-5, atol=1e-6)


def _write_list_fixture(root, n_videos=3, n_frames=12, size=20):
  from PIL import Image
  rng = np.random.default_rng(0)
  lines = []
  for v in range(n_videos):
    d = os.path.join(root, "DFEW_Face", f"{v + 1:05d}")
    os.makedirs(d)
    for f in range(1, n_frames + 1):       # 1.jpg ... 12.jpg: string order would put 10 before 2
      arr = np.full((size, size, 3), f * 20 % 256, np.uint8)
      Image.fromarray(arr).save(os.path.join(d, f"{f}.png"))
    lines.append(f"/home/user/datasets/DFEW_Face/{v + 1:05d} {n_frames} {rng.integers(7)}")
  path = os.path.join(root, "list.txt")
  with open(path, "w") as fh:
    fh.write("\n".join(lines) + "\n")
  return path


def test_list_file_source_reads_frames_in_numeric_order(tmp_path):
  path = _write_list_fixture(str(tmp_path))
  src = pipeline.ListFileVideos(path, root=os.path.join(str(tmp_path), "DFEW_Face"), image_size=20)
  assert len(src) == 3
  names = [os.path.basename(p) for p in src.frame_paths(0)]
  assert names[:3] == ["1.png", "2.png", "3.png"] and names[-1] == "12.png"
  clip = pipeline.VideoClip(num_segments=4, duration=2, image_size=20, train=False)(src[0])
  from jaxaffect.data import samplers
  idx = samplers.former_dfer_indices(12, num_segments=4, duration=2, train=False, rng=None)
  np.testing.assert_array_equal(clip["video"][:, 0, 0, 0], (idx + 1) * 20 % 256)


def test_list_file_errors_name_file_and_line(tmp_path):
  bad = tmp_path / "bad.txt"
  bad.write_text("/a/00001 10 3\n/a/00002 10\n")
  with pytest.raises(ValueError, match=r"bad.txt:2: expected"):
    pipeline.ListFileVideos(str(bad))
  bad.write_text("/a/00001 10 9\n")
  with pytest.raises(ValueError, match=r"bad.txt:1: field 'label'=9"):
    pipeline.ListFileVideos(str(bad))
  empty_dir = tmp_path / "v"
  empty_dir.mkdir()
  ok = tmp_path / "ok.txt"
  ok.write_text(f"{empty_dir} 10 1\n")
  with pytest.raises(FileNotFoundError, match="no frames"):
    pipeline.ListFileVideos(str(ok))[0]


def test_resolve_short_config_names():
  assert cli.resolve_config_path("former_dfer:smoke").endswith(os.path.join("configs",
                                                                            "former_dfer.py:smoke"))
  with pytest.raises(UserError, match="not found"):
    cli.resolve_config_path("nonexistent_model:x")


def test_group_random_resized_crop_is_one_box_for_all_frames():
  """Former-DFER's GroupRandomSizedCrop: area 0.08-1, ratio 3/4-4/3, the same crop on every frame."""
  from PIL import Image
  rng = np.random.default_rng(0)
  boxes = [pipeline.sample_resized_crop_box(64, 64, rng) for _ in range(2000)]
  areas = np.array([w * h / (64 * 64) for _, _, w, h in boxes])
  ratios = np.array([w / h for _, _, w, h in boxes])
  for x0, y0, w, h in boxes:
    assert 0 <= x0 and x0 + w <= 64 and 0 <= y0 and y0 + h <= 64
  fitted = areas < 0.999
  assert areas[fitted].min() >= 0.07 and areas.max() <= 1.0
  r = np.where(ratios >= 1, ratios, 1 / ratios)[fitted]
  assert r.max() <= 4 / 3 * 1.1                                 # rounding to whole pixels
  # w/h swapped half the time: wide and tall crops equally often on a square frame
  assert np.mean(ratios > 1) == pytest.approx(np.mean(ratios < 1), abs=0.05)
  video = np.random.default_rng(1).integers(0, 256, (4, 60, 80, 3), np.uint8)
  clip = pipeline.VideoClip(num_segments=2, duration=2, image_size=32, train=True, hflip=False,
                            random_resized_crop=True)
  rec = {"frames": np.repeat(video[:1], 4, axis=0), "label": np.int32(1), "index": np.int32(0)}
  got = clip(rec, np.random.default_rng(3))["video"]
  assert got.shape == (4, 32, 32, 3)
  assert all(np.array_equal(got[0], got[i]) for i in range(4))  # one box for the whole clip
  box = pipeline.sample_resized_crop_box(60, 80, np.random.default_rng(3))
  np.testing.assert_array_equal(got[0], pipeline.crop_and_resize(video[:1], box, 32)[0])
  eval_clip = pipeline.VideoClip(num_segments=2, duration=2, image_size=32, train=False)
  with pytest.raises(ValueError, match="data.image_size"):     # no crop at test: sizes must match
    eval_clip(rec)
  out = pipeline.crop_and_resize(video, (5, 7, 40, 30), 32)
  for i in range(4):
    ref = np.asarray(Image.fromarray(video[i]).crop((5, 7, 45, 37)).resize((32, 32), Image.BILINEAR))
    np.testing.assert_array_equal(out[i], ref)


def test_shards_argument_selects_the_fold():
  c = former_dfer.get_config("dfew,fold=3,shards=/data/dfew_shards")
  s = c.data.source
  assert (s.name, s.shards, s.train_select, s.eval_select) == (
      "shards", "/data/dfew_shards", "3:train", "3:test")
  assert former_dfer.get_config("dfew").data.source.name == "list_file"


def test_cosine_epoch_schedule_matches_torch_cosine_annealing_with_linear_warmup():
  """EST's schedule: CosineAnnealingLR(T_max=epochs) stepped per epoch, times pytorch_warmup's
  LinearWarmup(warmup_period) dampened per epoch (factor min(1, (e+1)/period))."""
  import ml_collections
  from jaxaffect.train import optim
  cfg = ml_collections.ConfigDict(dict(name="adam", lr=1e-4, schedule="cosine_epoch",
                                       warmup_epochs=10, weight_decay=1e-4))
  spe, epochs = 3, 160
  _, sched = optim.make_optimizer(cfg, spe, spe * epochs)
  p = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.Adam([p], lr=1e-4)
  cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
  for e in range(epochs):
    import warnings
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      cos.step(e)                                   # the official call (closed form)
    want = opt.param_groups[0]["lr"] * min(1.0, (e + 1) / 10)
    for k in range(spe):
      assert float(sched(np.int32(e * spe + k))) == pytest.approx(want, rel=1e-5, abs=1e-10), e   # 1e-6 of the peak lr


def test_list_file_root_keeps_nested_split_folders(tmp_path):
  """Issue 10, bug 6: AFEW lists name `.../AFEW_Face/{train,validation}/<Emotion>/<clip>`;
  `data.source.root` replaced all but the basename, so `train/Happiness/` was lost and every clip was
  missing. The root now replaces the prefix: the longest tail of the listed path found under it."""
  from PIL import Image
  faces = tmp_path / "AFEW_Face"
  listed = []
  for split, emo, clip, label in (("train", "Happiness", "011603980", 3),
                                  ("validation", "Surprise", "000142", 5)):
    d = faces / split / emo / clip
    d.mkdir(parents=True)
    for f in (1, 2):
      Image.fromarray(np.full((8, 8, 3), 10 * f, np.uint8)).save(d / f"{f}.png")
    listed.append(f"/home/user/datasets/AFEW_Face/{split}/{emo}/{clip} 2 {label}")
  # A same-named clip folder elsewhere must not be taken instead of the nested one.
  (faces / "011603980").mkdir()
  lst = tmp_path / "AFEW_all.txt"
  lst.write_text("\n".join(listed) + "\n")
  src = pipeline.ListFileVideos(str(lst), root=str(faces), image_size=8)
  assert [p for p, _ in src.items] == [str(faces / "train" / "Happiness" / "011603980"),
                                       str(faces / "validation" / "Surprise" / "000142")]
  assert len(src.frame_paths(1)) == 2 and int(src[1]["label"]) == 5
  # DFEW-style flat folders still resolve (root = the folder of the clips).
  flat = _write_list_fixture(str(tmp_path / "dfew"))
  assert len(pipeline.ListFileVideos(flat, root=str(tmp_path / "dfew" / "DFEW_Face"))) == 3
  lst.write_text("/home/user/datasets/AFEW_Face/train/Anger/999 2 0\n")
  with pytest.raises(ValueError, match=r"AFEW_all.txt:1: field 'frame dir'.*data.source.root="):
    pipeline.ListFileVideos(str(lst), root=str(faces))


def test_every_schedule_takes_a_python_int_step():
  """Issue 11 item 9: `est:dfew` crashed at its first logging step, where the loop calls the
  schedule with a Python int (`'int' object has no attribute 'astype'` in `cosine_epoch`)."""
  import ml_collections
  from jaxaffect.train import optim
  for name in ("constant", "step", "cosine", "cosine_epoch"):
    cfg = ml_collections.ConfigDict(dict(name="adam", lr=1e-3, schedule=name, warmup_epochs=1,
                                         decay_epochs=2, decay_factor=0.1, weight_decay=0.0))
    _, sched = optim.make_optimizer(cfg, 4, 40)
    for step in (0, 5, 13, 39):
      assert float(sched(step)) == float(sched(np.int32(step))), (name, step)


def test_every_config_declares_the_optimizer_rule_fields():
  """`--config.optim.no_decay=...` (and the other rules) work for every config from the command
  line; the declared defaults build the same optimizer as before (test_optim_rules.py)."""
  from jaxaffect import config_loader
  from jaxaffect.train import optim_rules
  for spec in ("former_dfer:smoke", "est:smoke", "abaw_tcn:smoke", "frame_resnet:smoke"):
    c = config_loader.load(spec, ['--config.optim.no_decay=[".*/bias$"]',
                                  "--config.optim.layer_decay=0.75",
                                  "--config.optim.layer_decay_num_layers=4"])
    assert set(optim_rules.config_fields()) <= set(c.optim.keys()), spec
    assert c.optim.no_decay == (".*/bias$",) and c.optim.layer_decay == 0.75
