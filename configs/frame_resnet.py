"""Frame encoder: ResNet-18 on single face crops with per-frame VA / EXPR / AU heads.

The image model of the ABAW feature path (`models.frame_resnet.FrameResNet`): trained on frames with
the ABAW losses, then `python -m data_prep features` writes its pooled features as a stream for the
TCN + Transformer (`configs/abaw_tcn.py`). Its torchvision-layout trunk also initialises EST's
ResNet-18 (`jaxaffect import --partial`).

Variants (`--config configs/frame_resnet.py:VARIANT[,key=value...]`):
  affwild2  ResNet-18 (width 64) on the 112-px crops of Aff-Wild2 face shards (`python -m data_prep
            affwild2`), the three tasks at once (8 expressions, 12 AUs, VA), one random frame with a
            face per video per epoch, AdamW lr 1e-4, batch 256, 20 epochs. This is our frame
            baseline, not a paper's table: the ABAW5/6 teams' frame encoders (ArcFace, AffectNet-8,
            RAF-DB ResNets; MAE ViT-B) are trained elsewhere and read as feature files.
  smoke     width 16, 64 px, on synthetic face videos through data_prep shards (7 expressions in
            the ABAW order without `Other`, which synthetic faces never show), for the learning test.
Extra arguments: `shards=DIR`.
"""
from __future__ import annotations

import ml_collections

from configs import common
from jaxaffect.data import parts

VARIANTS = ("affwild2", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, variant="affwild2", shards="")
  if a.variant not in VARIANTS:
    raise ValueError(f"frame_resnet config: unknown variant {a.variant!r} ({', '.join(VARIANTS)})")
  c = common.base_config()
  c.variant = a.variant           # which variant built this config (informational)
  c.model_name = "frame_resnet"   # models.registry key

  c.model = ml_collections.ConfigDict()
  c.model.outputs = ("va", "expr", "au")  # heads (any subset)
  c.model.num_expr = 8            # ABAW expressions (Neutral .. Other)
  c.model.num_au = 12             # ABAW AUs 1,2,4,6,7,10,12,15,23,24,25,26
  c.model.width = 64              # ResNet-18 base width (64 = torchvision)
  c.model.dropout = 0.0           # before the heads
  c.model.dtype = "float32"       # compute dtype ('bfloat16' on TPU/GPU)

  c.task = ml_collections.ConfigDict()
  c.task.name = "frame_labels"
  c.task.input = "image"          # single face crops
  c.task.outputs = c.model.get_ref("outputs")
  c.task.num_expr = c.model.get_ref("num_expr")
  c.task.num_au = c.model.get_ref("num_au")
  c.task.loss_weights = ()        # () = 1 for every output
  c.task.ccc_ddof = 1             # CCC loss std as torch.std (the ABAW6 code)

  # The data config by parts (jaxaffect/data/parts.py): shared fields, then `source` and `sampler`.
  c.data = ml_collections.ConfigDict()
  c.data.image_size = 112         # Aff-Wild2 cropped_aligned size
  c.data.num_classes = c.model.get_ref("num_expr")
  c.data.class_names = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise",
                        "Other")
  c.data.label_vocab = ""         # clip labels are not used
  c.data.expr_vocab = "abaw8"     # per-frame EXPR converted to this order (explicit map)
  c.data.read_threads = 4
  c.data.prefetch_batches = 4
  # data_prep face shards; Aff-Wild2's validation split for eval (test labels are not public)
  c.data.source = parts.source_config("shards", shards=a.shards, train_select="train",
                                      eval_select="val")
  if a.variant == "smoke" and not a.shards:
    # the synthetic videos the smoke encoder trains on, to be written as shards first (the frame
    # sampler reads data_prep records: `jaxaffect demo` and the tests prep them, then `shards=`)
    c.data.source = parts.source_config("synthetic", video_frames=48, num_train=1008,
                                        num_eval=140, pose=0.3)
  # one frame with a face per video (random in training); random zoom 1.1-1.5, flip, jitter
  c.data.sampler = parts.sampler_config("frame", crop="zoom", hflip=True, color_jitter=0.2)

  c.optim = common.optim_config()  # + rule fields (no_decay, frozen, lr_mults, layer_decay)
  c.optim.name = "adamw"
  c.optim.lr = 1e-4
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "cosine"     # linear warm-up, then cosine to 0
  c.optim.warmup_epochs = 1
  c.batch_size = 256
  c.num_epochs = 20
  c.checkpoint.best_metric = "expr/macro_f1"
  c.checkpoint.best_mode = "max"

  if a.variant == "smoke":
    c.model.num_expr = 7          # synthetic faces never show `Other`: the ABAW-7 order
    c.model.width = 16
    c.data.expr_vocab = "abaw7"
    c.data.class_names = c.data.class_names[:7]
    if a.shards:
      c.data.source.eval_select = "test"  # held-out generator seeds: unseen identities
    c.data.image_size = 64
    c.data.sampler.crop = ""
    c.data.sampler.color_jitter = 0.0
    c.optim.lr = 2e-3
    c.optim.weight_decay = 1e-4
    c.batch_size = 64
    c.num_epochs = 20             # one frame per video per epoch: 20 x 15 steps
    c.eval_every_steps = 100
    c.log_every_steps = 25
  c.lock()
  return c
