"""Every variant of every file in `configs/` runs (issue 11, item 9): at toy size (model widths,
image size, windows and data through overrides), with the variant's own schedule, optimizer,
sampler, task and data source, through a few steps, logging, evaluation, checkpoint and export.

The data are small fixtures in the official layouts each variant reads: DFEW (`EmoLabel_DataSplit`
folds, `Clip/clip_224x224`) and its Former-DFER list files, AFEW face folders, a frame folder with
a basic-6 label CSV (BU-3DFE / MMI through the `folder` source), Aff-Wild2 (`cropped_aligned`, the
three annotation folders, no clip labels), ABAW per-frame `.npy` feature folders and per-video
audio arrays, and the synthetic videos of the smoke variants.
"""
from __future__ import annotations

import importlib
import json
import os

import numpy as np
import pytest

from configs import abaw_tcn as abaw_cfg
from data_prep import cli as prep_cli
from jaxaffect import cli, config_loader, interop
from jaxaffect.train import loop
from tests.data_prep import fixtures_sources as fx
from tests.train.test_real_layouts import affwild2_layout

CONFIG_FILES = ("former_dfer", "est", "abaw_tcn", "frame_resnet", "vit_frames", "mae", "mgct",
                "tdls")
RUN = ["--config.num_steps=2", "--config.log_every_steps=1", "--config.eval_every_steps=2",
       "--config.batch_size=8", "--config.checkpoint.async_save=false"]
FD = ["--config.model.width=8", "--config.data.image_size=32", "--config.data.sampler.num_segments=2",
      "--config.data.sampler.duration=1"]
EST = ["--config.model.width=8", "--config.model.d_model=64", "--config.model.dim_feedforward=64",
       "--config.model.classifier_dims=[16, 8]", "--config.model.ssop_dims=[32, 16]",
       "--config.data.image_size=32"]
FRAME = ["--config.model.width=4", "--config.data.image_size=16"]
VIT = ["--config.data.image_size=16", "--config.model.patch_size=8", "--config.model.embed_dim=16",
       "--config.model.depth=2", "--config.model.num_heads=2"]
MAE = VIT + ["--config.model.decoder_embed_dim=16", "--config.model.decoder_depth=1",
             "--config.model.decoder_num_heads=2", "--config.model.dtype=float32"]
TCN = ["--config.model.d_model=8", "--config.model.num_layers=1",
       "--config.model.dim_feedforward=8", "--config.model.kernel_size=3",
       "--config.data.sampler.window=8", "--config.data.sampler.stride=4"]
TDLS = ["--config.data.image_size=32", "--config.model.patch_size=2", "--config.model.embed_dim=8",
        "--config.model.depths=[1, 1, 2, 2]", "--config.model.num_heads=[1, 2, 2, 4]",
        "--config.model.window_size=4", "--config.model.offset_hidden=8",
        "--config.model.proj_hidden=16", "--config.model.proj_dim=8", "--config.model.tg_hidden=8",
        "--config.task.queue_size=16", "--config.task.num_neighbours=4"]
# a sampled window = 3 clips (L_CCL) of 16 frames (group 4, 2 levels: clips are multiples of 16)
MGCT = ["--config.model.channels=[8, 16, 16]", "--config.model.num_heads=2",
        "--config.data.sampler.window=48", "--config.data.sampler.stride=4"]
MGCT_BASE = ["--config.model.channels=[8]", "--config.model.depth=1", "--config.model.num_heads=2",
             "--config.data.sampler.window=8", "--config.data.sampler.stride=4"]
SYN = ["--config.data.source.num_train=8", "--config.data.source.num_eval=4", "--config.data.source.video_frames=6"]


def _variants(name: str) -> tuple[str, ...]:
  mod = importlib.import_module(f"configs.{name}")
  return mod.VARIANTS


def test_the_table_below_covers_every_variant():
  named = {(n, v) for n in CONFIG_FILES for v in _variants(n)}
  files = {f[:-3] for f in os.listdir(os.path.dirname(abaw_cfg.__file__))
           if f.endswith(".py") and f not in ("__init__.py", "common.py")}
  assert files == set(CONFIG_FILES)
  assert named == {(c.split(":")[0], c.split(":")[1].split(",")[0]) for c, _ in CASES}


# ------------------------------------------------------------------------------------ fixtures
def _dfew(root):
  """DFEW: 8 clips of 6 frames in `Clip/clip_224x224`, fold 1 = 6 train + 2 test."""
  split = root / "EmoLabel_DataSplit"
  train = "".join(f"{c},{c % 7 + 1}\n" for c in range(1, 7))
  fx.write_text(str(split / "train(single-labeled)" / "set_1.csv"), "video_name,label\n" + train)
  fx.write_text(str(split / "test(single_labeled)" / "set_1.csv"), "video_name,label\n7,3\n8,5\n")
  for c in range(1, 9):
    for n in range(1, 7):
      fx.write_jpeg(str(root / "Clip" / "clip_224x224" / f"{c:05d}" / f"{c:05d}_{n}.jpg"),
                    fx.image(c, n, 32))
  return root


def _afew(root):
  for split, emo, clip, vid in (("train", "Happy", "011", 0), ("train", "Angry", "012", 1),
                                ("train", "Sad", "013", 2), ("validation", "Fear", "014", 3),
                                ("validation", "Surprise", "015", 4)):
    for i in range(1, 7):
      fx.write_jpeg(str(root / "AFEW_Face" / split / emo / clip / f"{i}.jpg"),
                    fx.image(vid, i, 32))
  return root


def _basic6(root):
  """BU-3DFE / MMI through the `folder` source: frame folders + `video_id,label,split` CSV."""
  names = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise")
  rows = []
  for v in range(8):
    for i in range(1, 7):
      fx.write_jpeg(str(root / "frames" / f"s{v:02d}" / f"{i}.jpg"), fx.image(v, i, 32))
    rows.append(f"s{v:02d},{names[v % 6]},{'train' if v < 6 else 'test'}")
  fx.write_text(str(root / "labels.csv"), "video_id,label,split\n" + "\n".join(rows) + "\n")
  return root


def _faces(seed, n):
  """Frames of a synthetic talking face at 160 px: BlazeFace finds these (tests/data_prep/
  test_faces.py), so RECOLA / SEWA videos go through the detector as real recordings do."""
  from jaxaffect.data import synthetic
  return list(synthetic.generate_video(seed, num_frames=n, size=160, occlusion_prob=0.0)["frames"])


def _recola(root):
  """RECOLA: `recordings_video/<name>.mp4` + gold-standard ARFF valence/arousal at 40 ms."""
  gs = root / "ratings_gold_standard"
  for k, name in enumerate(("train_1", "train_2", "dev_1")):
    for dim, off in (("valence", 0.0), ("arousal", 0.3)):
      rows = "".join(f"{name},{0.04 * i:.2f},{np.sin(i / 3 + k + off):.4f}\n" for i in range(8))
      fx.write_text(str(gs / dim / f"{name}.arff"),
                    "@relation GOLDSTANDARD\n\n@attribute Instance_name string\n@attribute "
                    "frameTime numeric\n@attribute GoldStandard numeric\n\n@data\n\n" + rows)
    fx.write_video(str(root / "recordings_video" / f"{name}.mp4"), _faces(k, 8))
  return root


def _sewa(root):
  """SEWA: `labels/<instance>.csv` (time; arousal; valence; liking at 100 ms) + videos."""
  for k, name in enumerate(("Train_DE_01", "Train_DE_02", "Devel_DE_03")):
    rows = "".join(f"{name}; {0.1 * i:.1f}; {np.cos(i / 2 + k):.3f}; {np.sin(i / 2 + k):.3f}; 0.0\n"
                   for i in range(4))
    fx.write_text(str(root / "labels" / f"{name}.csv"), rows)
    fx.write_video(str(root / "vids" / f"{name}.avi"), _faces(k + 3, 8), fps=25)
  return root


def _affectnet(root):
  """AffectNet: `Manually_Annotated_Images/<dir>/<file>` + the two list CSVs with boxes, 68
  landmarks, expression, valence, arousal (one image with no VA: -2)."""
  header = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
            "expression,valence,arousal\n")
  rng = np.random.default_rng(0)
  rows = {"training.csv": [], "validation.csv": []}
  for k in range(10):
    rel = f"{100 + k % 2}/im {k}.jpg"
    fx.write_jpeg(str(root / "Manually_Annotated_Images" / rel), fx.image(k, 0, 32))
    lm = ";".join(f"{v:.2f}" for v in rng.uniform(4, 28, (68, 2)).reshape(-1))
    va = (-2, -2) if k == 3 else (round(float(rng.uniform(-1, 1)), 3),
                                  round(float(rng.uniform(-1, 1)), 3))
    rows["training.csv" if k < 8 else "validation.csv"].append(
        f"{rel},2,2,28,28,{lm},{k % 7},{va[0]},{va[1]}\n")
  for name, r in rows.items():
    fx.write_text(str(root / "Manually_Annotated_file_lists" / name), header + "".join(r))
  return root


def _prep(*argv):
  assert prep_cli.main([*argv, "--size", "32", "--quiet"]) == 0, argv


def _abaw_features(root, names_dims, audio=(), rate=50.0, n_frames=12):
  """ABAW teams' feature files for the videos of `affwild2_layout`: per-frame `.npy` folders
  (`<stream>/<video>/00001.npy`, frame 3 missing = no face) and per-video audio arrays."""
  rng = np.random.default_rng(0)
  vids = [d for d in os.listdir(root / "ABAW" / "cropped_aligned")]
  for name, dim in names_dims:
    for vid in vids:
      if name in audio:
        path = root / "feats" / name / f"{vid}.npy"
        os.makedirs(path.parent, exist_ok=True)
        np.save(path, rng.normal(size=(int(n_frames / 30 * rate) + 2, dim)).astype(np.float32))
      else:
        d = root / "feats" / name / vid
        os.makedirs(d, exist_ok=True)
        for i in range(1, n_frames + 1):
          if i != 3:
            np.save(d / f"{i:05d}.npy", rng.normal(size=(1, dim)).astype(np.float32))
  return str(root / "feats")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  t = tmp_path_factory.mktemp("variants")
  out = {}
  _prep("dfew", "--src", str(_dfew(t / "DFEW")), "--out", str(t / "dfew_shards"))
  out["dfew_shards"] = str(t / "dfew_shards")
  # Former-DFER's own list files name frame folders on the authors' disk.
  lines = {"train": [], "test": []}
  for c in range(1, 9):
    role = "train" if c <= 6 else "test"
    lines[role].append(f"/home/user/DFEW/Clip/clip_224x224/{c:05d} 6 {c % 7}")
  for role, ls in lines.items():
    fx.write_text(str(t / f"set_1_{role}.txt"), "\n".join(ls) + "\n")
  out["lists"] = (str(t / "set_1_train.txt"), str(t / "set_1_test.txt"),
                  str(t / "DFEW" / "Clip" / "clip_224x224"))
  _prep("afew", "--src", str(_afew(t / "AFEW")), "--out", str(t / "afew_shards"))
  out["afew_shards"] = str(t / "afew_shards")
  b6 = _basic6(t / "B6")
  _prep("folder", "--src", str(b6 / "frames"), "--labels", str(b6 / "labels.csv"), "--vocab",
        "basic6_alpha", "--out", str(t / "basic6_shards"))
  out["basic6_shards"] = str(t / "basic6_shards")
  aw = affwild2_layout(t)
  _prep("affwild2", "--src", str(aw), "--out", str(t / "aw2_shards"))
  out["aw2_shards"], out["aw2_labels"] = str(t / "aw2_shards"), str(aw / "annotations")
  out["mae"] = _abaw_features(t, [("mae", 6)])
  a5 = [(n, 4) for n, _, _ in abaw_cfg.ABAW5_STREAMS]
  out["abaw5"] = _abaw_features(t, a5, audio=abaw_cfg.AUDIO_STREAMS)
  _prep("synthetic", "--src", "-", "--out", str(t / "syn_shards"), "--num-videos", "8",
        "--heldout-videos", "4", "--num-frames", "6", "--render-size", "32")
  out["syn_shards"] = str(t / "syn_shards")
  # abaw_tcn:smoke reads feature shards of the smoke frame encoder (`data_prep features`).
  enc = config_loader.load(f"frame_resnet:smoke,shards={out['syn_shards']}", FRAME + RUN)
  loop.train(enc, str(t / "frame_enc"))
  assert prep_cli.main(["features", "--shards", out["syn_shards"], "--checkpoint",
                        str(t / "frame_enc"), "--out", str(t / "syn_feats"), "--quiet"]) == 0
  out["syn_feats"] = str(t / "syn_feats")
  # TDLS stage 1: RECOLA / SEWA videos through the face detector (BlazeFace + FaceMesh's
  # approximate iBUG-68 landmarks) and AffectNet images with the dataset's boxes and 68 landmarks
  _prep("recola", "--src", str(_recola(t / "RECOLA")), "--out", str(t / "recola_shards"))
  sewa = _sewa(t / "SEWA")
  _prep("sewa", "--src", str(sewa), "--video-dir", str(sewa / "vids"), "--out",
        str(t / "sewa_shards"))
  _prep("affectnet", "--src", str(_affectnet(t / "AffectNet")), "--out",
        str(t / "affectnet_shards"))
  for k in ("recola", "sewa", "affectnet"):
    out[f"{k}_shards"] = str(t / f"{k}_shards")
  out["root"] = t
  return out


def _tcn_streams(streams):
  return [f"--config.data.source.features={json.dumps(streams)}",
          f"--config.model.streams={json.dumps([[s['name'], [s['dim'], 4]] for s in streams])}"]


def _abaw5(d):
  specs = []
  for name, _, _ in abaw_cfg.ABAW5_STREAMS:
    s = {"name": name, "kind": "array" if name in abaw_cfg.AUDIO_STREAMS else "npy",
         "path": os.path.join(d["abaw5"], name), "dim": 4}
    if name in abaw_cfg.AUDIO_STREAMS:
      s["rate_hz"] = 50.0
    specs.append(s)
  return _tcn_streams(specs)


# (config spec, function of the data fixture -> overrides)
CASES = [
    ("former_dfer:dfew", lambda d: FD + [f"--config.data.source.train_list={d['lists'][0]}",
                                         f"--config.data.source.eval_list={d['lists'][1]}",
                                         f"--config.data.source.root={d['lists'][2]}"]),
    ("former_dfer:dfew,shards={dfew_shards}", lambda d: FD),
    ("former_dfer:paper,shards={dfew_shards}", lambda d: FD),
    ("former_dfer:smoke", lambda d: FD + SYN),
    ("est:dfew,shards={dfew_shards}", lambda d: EST),
    ("est:afew,shards={afew_shards}", lambda d: EST),
    ("est:bu3dfe,shards={basic6_shards}", lambda d: EST),
    ("est:mmi,shards={basic6_shards}", lambda d: EST),
    ("est:smoke,shards={syn_shards}", lambda d: EST),
    ("frame_resnet:affwild2,shards={aw2_shards}", lambda d: FRAME),
    ("frame_resnet:smoke,shards={syn_shards}", lambda d: FRAME),
    ("vit_frames:finetune_expr,shards={aw2_shards}", lambda d: VIT),
    ("vit_frames:b16,shards={aw2_shards}", lambda d: VIT),
    ("vit_frames:l16,shards={aw2_shards}", lambda d: VIT),
    ("vit_frames:h14,shards={aw2_shards}", lambda d: VIT),
    ("vit_frames:smoke,shards={syn_shards}", lambda d: VIT),
    ("mae:pretrain_b,shards={syn_shards}", lambda d: MAE + ["--config.data.source.eval_select=test"]),
    ("mae:pretrain_l,shards={syn_shards}", lambda d: MAE + ["--config.data.source.eval_select=test"]),
    ("mae:pretrain_h,shards={syn_shards}", lambda d: MAE + ["--config.data.source.eval_select=test"]),
    ("mae:abaw6,rafdb={syn_shards},ferplus={syn_shards}",
     lambda d: MAE + ["--config.data.source.eval_select=test"]),
    ("mae:smoke,shards={syn_shards}", lambda d: MAE),
    ("mae:finetune_expr,shards={aw2_shards},heads=expr+va+au", lambda d: VIT),
    ("abaw_tcn:va,labels={aw2_labels}",
     lambda d: TCN + _tcn_streams([{"name": "mae", "kind": "npy", "path": d["mae"] + "/mae",
                                    "dim": 6}])),
    ("abaw_tcn:expr,labels={aw2_labels}",
     lambda d: TCN + _tcn_streams([{"name": "mae", "kind": "npy", "path": d["mae"] + "/mae",
                                    "dim": 6}])),
    ("abaw_tcn:au,labels={aw2_labels}",
     lambda d: TCN + _tcn_streams([{"name": "mae", "kind": "npy", "path": d["mae"] + "/mae",
                                    "dim": 6}])),
    ("abaw_tcn:abaw5_va,labels={aw2_labels}", lambda d: TCN + _abaw5(d)),
    # the ABAW6 chain's last link: a va/expr/au variant over `data_prep features` shards of our
    # own image model (here the smoke frame encoder's 32-d stream), as built by the config
    ("abaw_tcn:expr,features={syn_feats},stream=frame_resnet,dim=32",
     lambda d: TCN + ["--config.data.source.eval_select=test"]),
    ("abaw_tcn:smoke,features={syn_feats}",
     lambda d: TCN + _tcn_streams([{"name": "frame", "kind": "shards", "path": d["syn_feats"],
                                    "stream": "frame_resnet", "dim": 32}])),
    # TDLS + MGCT stage 2 over `data_prep features` shards (the smoke frame encoder's 32-d stream
    # standing in for TDLS's 768-d one)
    ("mgct:recola,features={syn_feats},stream=frame_resnet,dim=32",
     lambda d: MGCT + ["--config.data.source.eval_select=test"]),
    ("mgct:sewa,features={syn_feats},stream=frame_resnet,dim=32",
     lambda d: MGCT + ["--config.data.source.eval_select=test"]),
    ("mgct:baseline,features={syn_feats},stream=frame_resnet,dim=32",
     lambda d: MGCT_BASE + ["--config.data.source.eval_select=test"]),
    ("mgct:smoke,features={syn_feats},dim=32", lambda d: MGCT),
    # TDLS stage 1 on each dataset layout it reads; Table IV modes as arguments
    ("tdls:affectnet,shards={affectnet_shards}", lambda d: TDLS),
    ("tdls:affectnet,shards={affectnet_shards},mode=fl,tg=1,neighbours=label", lambda d: TDLS),
    ("tdls:recola,shards={recola_shards}", lambda d: TDLS),
    ("tdls:recola,shards={recola_shards},mode=fl", lambda d: TDLS),
    ("tdls:sewa,shards={sewa_shards}", lambda d: TDLS),
    ("tdls:sewa,shards={sewa_shards},mode=rp,offsets=signed", lambda d: TDLS),
    ("tdls:sewa,shards={sewa_shards},mode=swin,tg=0", lambda d: TDLS),
    ("tdls:smoke,shards={syn_shards}", lambda d: TDLS),
]


@pytest.mark.parametrize("spec,overrides", CASES, ids=[c for c, _ in CASES])
def test_variant_runs_logs_evaluates_checkpoints_and_exports(data, spec, overrides, tmp_path):
  spec = spec.format(**{k: v for k, v in data.items() if isinstance(v, str)})
  config = config_loader.load(spec, overrides(data) + RUN)
  wd = str(tmp_path / "run")
  ev = loop.train(config, wd)
  assert "preempted" not in ev and np.isfinite(ev["loss"]), ev
  rows = [json.loads(x) for x in open(os.path.join(wd, "tensorboard", "metrics.jsonl"))]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
  assert all(np.isfinite(r["train/loss"]) and np.isfinite(r["train/lr"])
             for r in rows if "train/loss" in r)
  assert any(k.startswith("eval/") for r in rows for k in r)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints")), key=int)[-1] == "2"
  # the metric the variant keeps its best checkpoint by is one it reports
  best = config.checkpoint.best_metric
  assert not best or best in ev, (best, sorted(ev))
  out = str(tmp_path / "export.safetensors")
  assert cli.main(["export", "--checkpoint", wd, "--out", out]) == 0
  sd = interop.load_state_dict_file(out)
  assert len(sd) > 4 and all(np.isfinite(v).all() for v in sd.values())


def test_dataset_variants_without_their_data_say_which_field_is_missing(tmp_path):
  from jaxaffect.errors import UserError
  for spec in ("est:dfew", "est:afew", "est:bu3dfe", "frame_resnet:affwild2"):
    with pytest.raises(UserError, match="needs config.data.source.shards"):
      loop.train(config_loader.load(spec, RUN), str(tmp_path / "x"))
  with pytest.raises(UserError, match=r"config.data.source.train_list='\S*annotation/DFEW_set_1_train"
                                      r".txt': no such file"):
    loop.train(config_loader.load("former_dfer:dfew", RUN), str(tmp_path / "x"))
  assert not (tmp_path / "x").exists()
