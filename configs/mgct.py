"""MGCT, stage 2 of TDLS + MGCT (Li, Meng, Hu, Dong): the multi-layer group temporal transformer
(jaxaffect/models/mgct.py, Eqs. 8-10) trained on windows of frozen per-frame features of the
stage-1 TDLS model, written by `python -m data_prep features` (TDLS: configs/tdls.py).

Variants (`--config configs/mgct.py:VARIANT[,key=value...]`):
  recola  MGCT as the paper: input the 768-d TDLS (Swin-T) frame features, channels 128 / 256 /
          512 (frame level, then 2 levels), groups of 4, max-pool summaries, top-down guidance,
          level weights λ = 1.2 / 0.9 / 0.6 (Eq. 10, 1 − CCC per level); Adam lr 1e-4, batch 64;
          windows of 768 time steps. "768 steps of RECOLA at its frame rate, 400 of SEWA" (the
          issue) is read as time steps per window = frames of the feature stream: RECOLA's video
          and gold standard are both at 25 Hz, so 768 frames = 30.72 s. Best checkpoint by the
          mean CCC of valence and arousal, `va/p_va` (CCC of all evaluation frames concatenated;
          the RECOLA/SEWA papers often average per-recording CCCs instead). RECOLA shards:
          `python -m data_prep recola` (dev → "val", evaluated here).
  sewa    the same with windows of 400 time steps. SEWA's webcams record at 20-30 fps (the
          database's own description) and its labels are at 10 Hz, resampled to the frames when
          read: 400 frames ≈ 13-20 s. If the paper's 400 steps are label steps (40 s), pass
          `window=N` with N = 40 s × the videos' frame rate.
  baseline  Tables I/II's baseline "Swin + 4-layer TE": the same features through one 4-layer
          transformer encoder over the frames (MGCT with num_levels=0, channels (128,): the
          frame-level width of MGCT, our choice; the paper gives none), plain 1 − CCC loss
          (λ = 1); RECOLA's settings (`window=400` for SEWA's).
  smoke   CPU-sized (channels 16 / 32 / 64, 2 heads, clips of 16 frames, stride 8) on feature shards of the
          smoke frame encoder over synthetic videos (`stream=frame_resnet`, 128-d by default).
Arguments: `features=DIR` (the `data_prep features` job's `--out`), `stream=NAME` (the stream in
those shards, the image model's name: default `tdls`, smoke `frame_resnet`), `dim=D` (its width:
default 768, smoke 128), `window=N`, `stride=N` (training windows; evaluation windows never
overlap), `fps=F` (frame rate for labels without frame times; feature shards carry them).
The labels come with the feature shards.

The paper's ablations are model fields, overridable on the command line:
  Table VIII  `--config.model.group_size=G`
  Table IX    `--config.model.summarise=max|avg|concat`
  Table X     `--config.model.num_levels=L` with `--config.model.channels=[...]` (L + 1 widths,
              frame level first) and, for L > 2, `--config.task.level_weights=[...]` (L + 1)
  Table XI    `--config.model.summarise_twice=true`, `--config.model.guidance=false`
The paper gives no training-window stride, number of epochs or dropout: stride = window / 4,
100 epochs (RECOLA's 9 training recordings give ~5 steps per epoch at batch 64), dropout 0 and a
constant learning rate are ours.

Cross-clip loss (Eq. 11-12, stage 2's L = L_MGCT + 0.1 L_CCL): `ccl=1` (default; `baseline`: 0)
samples windows of N_c = 3 consecutive clips of one video and the task cuts each into its clips
(models/mgct_task.py: MGCT runs per clip; a random main clip per window; CCL mode `stats`), so
`window=` is the CLIP length (768 / 400 frames) and the sampled window is 3× that (clip starts
advance by `stride`); `ccl=0` trains MGCT on single clips without L_CCL (the ablation).
"""
from __future__ import annotations

import ml_collections

from configs import common
from jaxaffect.data import parts

VARIANTS = ("recola", "sewa", "baseline", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, variant="recola", features="", stream="", dim=0, window=0, stride=0,
                       ccl=-1,
                       fps=0.0)
  if a.variant not in VARIANTS:
    raise ValueError(f"mgct config: unknown variant {a.variant!r} ({', '.join(VARIANTS)})")
  smoke = a.variant == "smoke"
  stream = a.stream or ("frame_resnet" if smoke else "tdls")
  dim = a.dim or (128 if smoke else 768)
  c = common.base_config()
  c.variant = a.variant           # which variant built this config (informational)
  c.model_name = "mgct"           # models.registry key (its make_task builds the task)

  c.model = ml_collections.ConfigDict()
  c.model.channels = (128, 256, 512)  # width per level, frame level first (num_levels + 1)
  c.model.group_size = 4          # g: tokens summarised per group (Table VIII)
  c.model.num_levels = 2          # levels above the frame level (Table X; 0 = frame TE only)
  c.model.summarise = "max"       # group summary: max | avg | concat (Table IX)
  c.model.guidance = True         # top-down guidance, Eq. 9 (Table XI "no guidance": False)
  c.model.summarise_twice = False  # a second bottom-up + top-down pass (Table XI)
  c.model.depth = 1               # transformer layers per level
  c.model.num_heads = 4           # attention heads per layer
  c.model.mlp_ratio = 2.0         # feed-forward width = mlp_ratio · level width
  c.model.dropout = 0.0           # transformer dropout (the paper gives none)
  c.model.num_outputs = 2         # valence, arousal
  c.model.dtype = "float32"       # compute dtype ('bfloat16' on TPU/GPU)

  c.task = ml_collections.ConfigDict()
  c.task.name = "mgct"            # informational: models/mgct.py's make_task builds the task
  c.task.outputs = ("va",)        # per-frame valence/arousal (fixed for MGCT)
  c.task.level_weights = (1.2, 0.9, 0.6)  # Eq. 10 λ per level, frame level first
  c.task.level_loss = "ccc"       # level loss: 'ccc' (1 − CCC, mean over V and A) or 'mse'
  c.task.num_curves = 2           # evaluation windows drawn in eval/level_curves (Fig. 11)
  c.task.ccl_clips = 3            # N_c clips per sampled window (Eq. 11); 0 = no L_CCL
  c.task.ccl_weight = 0.1         # γ of Eq. 12
  c.task.ccl_mode = "stats"       # Eq. 11 reading: stats | relative | overlap (models/mgct.py)

  # The data config by parts (jaxaffect/data/parts.py): shared fields, then `source` and `sampler`.
  c.data = ml_collections.ConfigDict()
  c.data.image_size = 112         # unused by feature windows (the streams are features)
  c.data.num_classes = 8          # unused (no expression head)
  c.data.class_names = ()
  c.data.label_vocab = ""         # clip labels are not used
  c.data.expr_vocab = ""          # EXPR labels are not trained: kept in the shards' own order
  c.data.read_threads = 4
  c.data.prefetch_batches = 4
  # One stream of `data_prep features` shards (features/<stream> next to the face records);
  # `dim` lets a checkpoint be restored without reading data; the labels (`va`, resampled from
  # the recordings' own time base to the frames) come with the shards.
  c.data.source = parts.source_config(
      "features", features=[{"name": stream, "kind": "shards", "path": a.features,
                             "stream": stream, "dim": dim}],
      labels="", train_select="train", eval_select="val", fps=a.fps or 25.0, num_au=12)
  c.data.source.label_tasks = c.task.get_ref("outputs")  # annotation files read (tasks trained)
  # training windows (stride = window / 4, ours); eval_stride 0 = window: each frame once
  c.data.sampler = parts.sampler_config("feature_windows", window=768, stride=192, eval_stride=0,
                                        feature_dropout=0.0)

  c.optim = common.optim_config()  # + rule fields (no_decay, frozen, lr_mults, layer_decay)
  c.optim.name = "adam"           # torch Adam (the paper: Adam, lr 1e-4)
  c.optim.lr = 1e-4
  c.optim.weight_decay = 0.0
  c.optim.schedule = "constant"   # the paper names no schedule
  c.optim.warmup_epochs = 0
  c.batch_size = 64               # the paper's batch
  c.num_epochs = 100              # ours (the paper gives none)
  c.log_every_steps = 10
  c.checkpoint.best_metric = "va/p_va"  # mean CCC of valence and arousal
  c.checkpoint.best_mode = "max"

  if a.variant == "sewa":
    c.data.sampler.window, c.data.sampler.stride = 400, 100
    c.data.source.fps = a.fps     # 0: unknown (20-30 fps webcams); the shards carry frame times
  if a.variant == "baseline":
    c.model.channels = (128,)
    c.model.num_levels = 0
    c.model.depth = 4
    c.task.level_weights = (1.0,)
  if smoke:
    c.model.channels = (16, 32, 64)
    c.model.num_heads = 2
    c.data.source.eval_select = "test"   # held-out generator seeds: unseen identities
    c.data.sampler.window, c.data.sampler.stride = 16, 8   # clips of 16: 3 clips = a 48-frame video
    c.optim.lr = 1e-3
    c.batch_size = 32
    c.num_epochs = 12
    c.log_every_steps = 25
  if a.window:
    c.data.sampler.window = a.window
    c.data.sampler.stride = a.stride or max(a.window // 4, 1)
  if a.stride:
    c.data.sampler.stride = a.stride
  use_ccl = (a.variant != "baseline") if a.ccl < 0 else bool(a.ccl)
  if use_ccl:
    c.data.sampler.window *= c.task.ccl_clips   # a window = N_c consecutive clips of one video
  else:
    c.task.ccl_clips = 0
  c.lock()
  return c
