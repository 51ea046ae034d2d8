"""TDLS, stage 1 of TDLS + MGCT (Li, Meng, Hu, Dong): Swin-T with deformable landmark attention,
trained on single face frames for valence/arousal with the temporal-cue guided loss (Eq. 7).
`models/tdls.py` has the model, `models/tdls_task.py` the task; stage 2 is `configs/mgct.py` over
the per-frame features of a run of this config (`python -m data_prep features --checkpoint RUN`).

Variants (`--config configs/tdls.py:VARIANT[,key=value...]`):
  affectnet  the paper's first fine-tuning: Swin-T (224 px, patch 4, window 7, ImageNet-1K init:
             `init=WORKDIR` of a `jaxaffect import --partial swin_tiny_patch4_window7_224.pth`
             run, see README) on AffectNet face shards, Adam lr 1e-5, batch 256, VA only
             (AffectNet images have no temporal neighbours, so L_TG is off: `tg=1` turns it on
             with label neighbours);
  recola     the second: from the AffectNet run (`init=WORKDIR`), RECOLA face shards, lr 1e-6,
             batch 256, two augmented views per frame (zoom 1.1-1.5, flip, colour jitter 0.4),
             momentum 0.999, queue 8,192, N_k = 768 temporal neighbours, L_VA + 0.1 L_TG;
  sewa       the same on SEWA face shards;
  smoke      CPU size for the tests: 64 px synthetic face shards (`shards=`), patch 4, window 4,
             widths 24/48/96/192, depths 1/1/2/2, queue 1,024, N_k 16, Adam lr 3e-4 (2 warm-up
             epochs, cosine), 12 epochs of 2 frames per video, views = resize + flip.
Arguments: `shards=DIR` (data_prep face shards), `init=WORKDIR` (a previous stage or an imported
ImageNet Swin-T), `mode=tdls|rp|fl|swin` (Table IV: TDLS, RP-Swin, FL-Swin, Swin; fl reads each
frame's 68 landmarks from the shards), `offsets=paper|signed` (Eq. 2's trailing ReLU or a signed
tanh), `tg=1|0` (L_TG and the momentum encoder on/off), `neighbours=time|label` (Eq. 7's reading).
The reference points come from the shards' mean landmark template (`manifest.json` `template.
keypoints7`, the training split's mean 7 key points); shards without landmarks (`--detector none`)
fall back to the ArcFace-based stand-in template of nn/deformable.py (recorded in
`config.model_keypoints_source`). The paper gives no epoch counts for stage 1: 5 epochs here.
"""
from __future__ import annotations

import json
import os

import ml_collections

from configs import common
from jaxaffect.data import parts

VARIANTS = ("affectnet", "recola", "sewa", "smoke")
MODES = ("tdls", "rp", "fl", "swin")


def template_keypoints(shards: str) -> tuple[tuple[tuple[float, float], ...] | None, str]:
  """The 7 mean key points of a face-shard directory in [0, 1] image units, and where they came
  from ("manifest" or "default" when the manifest has no landmark template)."""
  path = os.path.join(shards, "manifest.json")
  if not shards or not os.path.exists(path):
    return None, "default"
  with open(path) as f:
    m = json.load(f)
  t = m.get("template") or {}
  k7 = t.get("keypoints7")
  sizes = {s.get("size") for s in (m.get("recipe", {}).get("stages") or {}).values()}
  sizes.discard(None)
  if not k7 or len(sizes) != 1:
    return None, "default"
  size = float(sizes.pop())
  return tuple((round((x + 0.5) / size, 6), round((y + 0.5) / size, 6)) for x, y in k7), \
      f"manifest ({t.get('split')}, {t.get('frames')} frames)"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, variant="recola", shards="", init="", mode="tdls", offsets="paper",
                       tg=-1, neighbours="time")
  if a.variant not in VARIANTS:
    raise ValueError(f"tdls config: unknown variant {a.variant!r} ({', '.join(VARIANTS)})")
  if a.mode not in MODES:
    raise ValueError(f"tdls config: mode={a.mode!r}: expected one of {MODES} (Table IV)")
  use_tg = (a.variant != "affectnet") if a.tg < 0 else bool(a.tg)
  c = common.base_config()
  c.variant = a.variant           # which variant built this config (informational)
  c.model_name = "tdls"           # models.registry key

  c.data = ml_collections.ConfigDict()
  c.data.image_size = 224         # Swin-T input
  keypoints, source = template_keypoints(a.shards)
  c.model_keypoints_source = source  # where model.keypoints came from (informational)

  c.model = ml_collections.ConfigDict()
  c.model.mode = a.mode           # Table IV: tdls | rp (reference points) | fl (landmarks) | swin
  c.model.img_size = c.data.get_ref("image_size")
  c.model.patch_size = 4          # Swin-T
  c.model.embed_dim = 96
  c.model.depths = (2, 2, 6, 2)
  c.model.num_heads = (3, 6, 12, 24)
  c.model.window_size = 7
  c.model.deformable_stages = (2, 3)  # stages 3-4 (0-based)
  c.model.placement = "alternate"  # window / deformable alternating (DAT); "all"
  c.model.offsets = a.offsets     # Eq. 2: paper (trailing ReLU) | signed (tanh x offset_range)
  c.model.offset_range = 2.0      # signed offsets' bound, in map pixels
  c.model.offset_hidden = 96      # conv1 width of the offset network (Eq. 2; the paper gives none;
                                  # 0 = the map's width C: train step 1.49x Swin-T vs 1.13x at 96)
  c.model.keypoints = keypoints   # 7 mean key points (x, y) in [0, 1]; None = stand-in template
  c.model.sigma = 3.0             # heatmap std in 28x28 heat pixels
  c.model.heat_size = 28          # the paper's 28x28 heatmap
  c.model.seed = 0                # the draw of the reference points (kept with the model)
  c.model.form = "matmul"         # grid_sample form: matmul (MXU-friendly) | gather
  c.model.drop_path_rate = 0.1    # Swin stochastic depth
  c.model.proj_hidden = 512       # Eq. 7 MLP head (MoCo v2 style): hidden width
  c.model.proj_dim = 128          # frame representation a / b width
  c.model.tg_hidden = 256         # the MLP on [a''; c] predicting |dVA|
  c.model.normalize = True        # ImageNet mean/std inside the model
  c.model.dtype = "float32"       # compute dtype ('bfloat16' on TPU/GPU)

  c.task = ml_collections.ConfigDict()
  c.task.name = "tdls"            # the model module's task (models/tdls_task.py)
  c.task.ccc_ddof = 1             # VA CCC loss std as torch.std
  c.task.use_tg = use_tg          # L_TG + momentum encoder + queue (`tg=` argument)
  c.task.momentum = 0.999         # m
  c.task.queue_size = 8192        # queue rows (the paper gives none)
  c.task.num_neighbours = 768     # N_k
  c.task.neighbours = a.neighbours  # "time": same video, nearest in time; "label": nearest in VA
  c.task.tg_error = "mse"         # L_TG: squared (mse) or absolute (l1) error of |dVA|
  c.task.tg_weight = 0.1          # beta of Eq. 12

  c.data.num_classes = 7          # unused by the VA task (clip-label fields of the data layer)
  c.data.class_names = ()
  c.data.label_vocab = ""
  c.data.expr_vocab = ""
  c.data.read_threads = 4
  c.data.prefetch_batches = 4
  c.data.source = parts.source_config("shards", shards=a.shards, train_select="train",
                                      eval_select="val")
  # frames of the videos: two views (Eq. 7's online / momentum inputs), zoom 1.1-1.5, flip,
  # colour jitter; every face frame of the evaluation videos
  c.data.sampler = parts.sampler_config(
      "frame_views", crop="zoom", hflip=True, color_jitter=0.4, num_views=2 if use_tg else 1,
      landmarks=a.mode == "fl", frames_per_video=0)

  c.optim = common.optim_config()
  c.optim.name = "adam"
  c.optim.lr = 1e-6               # RECOLA / SEWA (AffectNet: 1e-5)
  c.optim.weight_decay = 0.0
  c.optim.no_decay = ()
  c.optim.schedule = "constant"
  c.batch_size = 256
  c.num_epochs = 5
  c.checkpoint.best_metric = "va/p_va"  # mean CCC of valence and arousal
  c.checkpoint.best_mode = "max"
  c.init_from.workdir = a.init
  # a previous stage: everything but the queue and the momentum copy (rebuilt from the params);
  # an imported ImageNet Swin-T: its backbone
  c.init_from.keep = (r"^params/", r"^constants/") if a.init else ()

  if a.variant == "affectnet":
    c.optim.lr = 1e-5
    c.data.source.eval_select = "val"
  if a.variant == "smoke":
    c.data.image_size = 64
    c.model.window_size = 4
    c.model.embed_dim = 24
    c.model.depths = (1, 1, 2, 2)
    c.model.num_heads = (1, 2, 4, 8)
    c.model.offset_hidden = 32
    # 64-px faces: plain resize + flips (zoom 1.1-1.5 with colour jitter and lr 1e-3 collapsed the
    # VA head at this size: held-out P_VA -0.13 after 124 steps; this recipe 0.90 after 372)
    c.data.sampler.crop = ""
    c.data.sampler.color_jitter = 0.0
    c.model.proj_hidden = 64
    c.model.proj_dim = 32
    c.model.tg_hidden = 32
    c.model.drop_path_rate = 0.0
    c.task.queue_size = 1024
    c.task.num_neighbours = 16
    c.task.momentum = 0.99
    c.data.source.eval_select = "test"  # held-out generator seeds: unseen identities
    c.data.sampler.frames_per_video = 2
    c.optim.lr = 3e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 2
    c.batch_size = 64
    c.num_epochs = 12
    c.eval_every_steps = 100
    c.log_every_steps = 25
  c.lock()
  return c
