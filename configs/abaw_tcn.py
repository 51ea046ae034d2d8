"""ABAW TCN + Transformer over per-frame feature streams (ABAW5 fusion, ABAW6 sequential learning).

Variants (`--config configs/abaw_tcn.py:VARIANT[,key=value...]`):
  va, expr, au  the ABAW6 team's settings (upczww/abaw6, Zhou et al. 2024): one stream of MAE
          ViT-B features (768-d) → TCN [768, 256, 128], k 5, PReLU → Conv1d 1×1 to 512 → 8 post-norm
          encoder layers (4 heads, FF 512, no positional encoding) → Linear(512,256)-BN-Linear;
          AdamW lr 3e-5, weight decay 1e-5, linear warm-up 2 epochs then cosine, batch 32,
          dropout 0. Windows: VA and AU w 300 / s 200 (40 and 30 epochs), EXPR w 100 / s 50
          (10 epochs; `window=300,stride=200` or `window=400,stride=200` are the paper's other
          EXPR settings). Features: `features=DIR` (per-frame `.npy` files `DIR/<video>/00001.npy`
          or per-video arrays `DIR/<video>.npy`), labels: `labels=DIR` (the Aff-Wild2 annotation
          folder or our face shards). `stream=NAME[,dim=D]` reads `data_prep features` shards
          instead (`features=` = the job's `--out`, NAME = its stream, the image model's name,
          e.g. `stream=vit_frames` for the ABAW6 fine-tuned ViT-B; D defaults to 768); the
          labels then come with the shards (`labels=` may stay empty).
  abaw5_va  the ABAW5 VA fusion (Zhou et al. 2023): six streams (wav2vec base, wav2vec emotion,
          ArcFace, EfficientNet emotion 1280-d, AffectNet-8, RAF-DB), one TCN each, separate valence
          and arousal heads, dropout 0.3; the stream roots are `features=DIR` with one sub-folder
          per stream name (audio streams at `audio_rate` Hz, interpolated to the frames).
  smoke   CPU-sized: one stream of 128-d features of the smoke frame encoder
          (`configs/frame_resnet.py:smoke`, written by `python -m data_prep features`), TCN
          [128, 64, 64] k 3, d 64, 2 layers, FF 128, the three tasks at once, windows 32 / 16 over
          48-frame synthetic videos, for the learning tests; `stream=vit_frames,dim=96` reads the
          features of the fine-tuned smoke ViT instead (`stream=` is the stream name in the
          feature shards, the image model's name; `dim=` its width).
The ABAW6 code restarts the cosine (`CosineAnnealingWarmRestarts`); one cosine over the run is used
here. Evaluation windows do not overlap, so the in-training metrics count every frame once (CCC of
all frames concatenated, ABAW); `jaxaffect predict` merges overlapping windows by averaging.
"""
from __future__ import annotations

import ml_collections

from configs import common
from jaxaffect.data import parts

VARIANTS = ("va", "expr", "au", "abaw5_va", "smoke")
ABAW5_STREAMS = (("wav_base", (512, 256, 128), 512), ("wav_emotion", (512, 256, 128), 512),
                 ("arcface", (512, 256, 128), 512), ("emotion", (1024, 512, 256), 1280),
                 ("affecnet8", (512, 256, 128), 512), ("rafdb", (512, 256, 128), 512))
AUDIO_STREAMS = ("wav_base", "wav_emotion")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, variant="expr", features="", labels="", window=0, stride=0,
                       audio_rate=50.0, fps=30.0, stream="", dim=0)
  if a.variant not in VARIANTS:
    raise ValueError(f"abaw_tcn config: unknown variant {a.variant!r} ({', '.join(VARIANTS)})")
  if a.variant == "abaw5_va" and (a.stream or a.dim):
    raise ValueError("abaw_tcn config: stream= and dim= are not arguments of abaw5_va (its six "
                     "streams are set in config.data.source.features)")
  if a.dim and not a.stream and a.variant != "smoke":
    raise ValueError("abaw_tcn config: dim= goes with stream= (the width of that feature stream)")
  c = common.base_config()
  c.variant = a.variant           # which variant built this config (informational)
  c.model_name = "abaw_tcn"       # models.registry key
  task = {"va": ("va",), "expr": ("expr",), "au": ("au",), "abaw5_va": ("va",),
          "smoke": ("va", "expr", "au")}[a.variant]

  c.model = ml_collections.ConfigDict()
  c.model.streams = (("mae", (768, 256, 128)),)  # (stream, TCN channels) per feature stream
  c.model.outputs = task          # heads: 'va' (2), 'expr' (num_expr_classes), 'au' (12)
  c.model.num_expr_classes = 8    # ABAW: Neutral .. Other
  c.model.va_heads = "joint"      # ABAW6 one 2-unit head; ABAW5 'split' (vhead, ahead)
  c.model.kernel_size = 5         # TCN kernel (dilations 1, 2, 4, ...)
  c.model.tcn_activation = "prelu"  # the team's TCN (locuslab: relu)
  c.model.d_model = 512           # Conv1d 1x1 projection / encoder width
  c.model.num_heads = 4
  c.model.num_layers = 8
  c.model.dim_feedforward = 512
  c.model.dropout = 0.0           # ABAW6 0.0 (ABAW5 0.3)
  c.model.dtype = "float32"       # compute dtype ('bfloat16' on TPU/GPU)

  c.task = ml_collections.ConfigDict()
  c.task.name = "frame_labels"
  c.task.input = "features"       # windows of feature streams
  c.task.outputs = c.model.get_ref("outputs")
  c.task.num_expr = c.model.get_ref("num_expr_classes")
  c.task.num_au = 12
  c.task.loss_weights = ()        # () = 1 per output
  c.task.ccc_ddof = 1             # the team's CCC loss uses torch.std (ddof 1)

  # The data config by parts (jaxaffect/data/parts.py): shared fields, then `source` and `sampler`.
  c.data = ml_collections.ConfigDict()
  c.data.image_size = 112         # unused by feature windows (the streams are features)
  c.data.num_classes = c.model.get_ref("num_expr_classes")
  c.data.class_names = ()
  c.data.label_vocab = ""         # clip labels are not used
  c.data.expr_vocab = "abaw8"     # per-frame EXPR order (explicit map from the shards' vocabulary)
  c.data.read_threads = 4
  c.data.prefetch_batches = 4
  # Feature streams (see jaxaffect/data/features.py): kind 'npy' (per-frame files or per-video
  # arrays), 'array' (per-video arrays, optionally at `rate_hz`) or 'shards' (data_prep features);
  # `dim` (the width) lets a checkpoint be restored without reading data. `labels`: Aff-Wild2
  # annotation folder or face/feature shards; eval on Aff-Wild2's validation set (test labels are
  # not public); `fps` when the labels do not give frame times.
  c.data.source = parts.source_config(
      "features", features=[{"name": "mae", "kind": "npy", "path": a.features, "dim": 768}],
      labels=a.labels, train_select="train", eval_select="val", fps=a.fps, num_au=12)
  c.data.source.label_tasks = c.model.get_ref("outputs")  # annotation files read (tasks trained)
  # training windows 300 / 200; eval_stride 0 = window: non-overlapping evaluation windows
  c.data.sampler = parts.sampler_config("feature_windows", window=300, stride=200, eval_stride=0,
                                        feature_dropout=0.0)

  c.optim = common.optim_config()  # + rule fields (no_decay, frozen, lr_mults, layer_decay)
  c.optim.name = "adamw"
  c.optim.lr = 3e-5
  c.optim.weight_decay = 1e-5
  c.optim.schedule = "cosine"     # linear warm-up then cosine (the team restarts the cosine)
  c.optim.warmup_epochs = 2
  c.batch_size = 32
  c.num_epochs = {"va": 40, "au": 30}.get(a.variant, 10)
  c.checkpoint.best_metric = {"va": "va/p_va", "abaw5_va": "va/p_va", "au": "au/f1"}.get(
      a.variant, "expr/macro_f1")
  c.checkpoint.best_mode = "max"

  if a.variant == "expr":
    c.data.sampler.window, c.data.sampler.stride = 100, 50
  if a.variant in ("va", "expr", "au") and a.stream:
    # per-frame features of our own image model (python -m data_prep features), e.g. the ABAW6
    # fine-tuned ViT (`stream=vit_frames`): feature shards carry the labels and the frame times
    dim = a.dim or 768
    c.model.streams = (("mae", (dim, 256, 128)),)
    c.data.source.features = [{"name": "mae", "kind": "shards", "path": a.features,
                               "stream": a.stream, "dim": dim}]
  if a.variant == "abaw5_va":
    c.model.streams = tuple((n, ch) for n, ch, _ in ABAW5_STREAMS)
    c.model.va_heads = "split"
    c.model.dropout = 0.3
    c.data.source.features = [
        {"name": n, "kind": "array" if n in AUDIO_STREAMS else "npy",
         "path": f"{a.features}/{n}" if a.features else "", "dim": dim,
         **({"rate_hz": a.audio_rate} if n in AUDIO_STREAMS else {})}
        for n, _, dim in ABAW5_STREAMS]
  if a.variant == "smoke":
    stream, dim = a.stream or "frame_resnet", a.dim or 128
    c.model.streams = (("frame", (dim, 64, 64)),)
    c.model.num_expr_classes = 7  # synthetic faces never show `Other`
    c.model.kernel_size = 3
    c.model.d_model = 64
    c.model.num_layers = 2
    c.model.dim_feedforward = 128
    # the job names the stream after the image model (`data_prep features --stream` to change it)
    c.data.source.features = [{"name": "frame", "kind": "shards", "path": a.features,
                               "stream": stream, "dim": dim}]
    c.data.source.eval_select = "test"   # held-out generator seeds: unseen identities
    c.data.expr_vocab = "abaw7"
    c.data.sampler.window, c.data.sampler.stride = 32, 16
    c.optim.lr = 1e-3
    c.optim.warmup_epochs = 1
    c.batch_size = 32
    c.num_epochs = 12
    c.log_every_steps = 25
    c.checkpoint.best_metric = "va/p_va"
  if a.window:
    c.data.sampler.window = a.window
  if a.stride:
    c.data.sampler.stride = a.stride
  c.lock()
  return c
