"""Former-DFER (Zhao & Liu, ACM MM 2021): CS-Former + T-Former for dynamic facial expressions.

Variants (`--config configs/former_dfer.py:VARIANT`):
  dfew   the official code's settings (1 spatial encoder; SGD 0.01, momentum 0.9, wd 1e-4, ×0.1 every
         40 epochs, 100 epochs, batch 32, 8 segments × 2 frames at 112 px, pixels in [0, 1]), reading
         the official annotation list files (`data.train_list`, `data.eval_list`, `data.root`);
  paper  as `dfew` with the paper's Table 3 default N=3 spatial encoders (M=3 temporal);
  smoke  a CPU-sized Former-DFER (width 16, 64 px, 8 segments x 1 frame) on synthetic face videos,
         for the demo and the learning test (held-out UAR 0.94 in ~4 min on 2 cores).
Extra `key=value` arguments: `fold=1..5` (DFEW fold), `shards=DIR` (read data_prep shards of DFEW:
`python -m data_prep dfew --src /data/DFEW --out DIR`, selecting `<fold>:train` / `<fold>:test`).
"""
from __future__ import annotations

import ml_collections

from configs import common
from jaxaffect.data import parts

DFEW_CLASSES = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")


VARIANTS = ("dfew", "paper", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, variant="dfew", fold=1, shards="")
  if a.variant not in VARIANTS:
    raise ValueError(f"former_dfer config: unknown variant {a.variant!r} (dfew, paper, smoke)")
  c = common.base_config()
  c.variant = a.variant           # which variant built this config (informational)
  c.model_name = "former_dfer"    # models.registry key

  c.model = ml_collections.ConfigDict()
  c.model.num_classes = 7         # DFEW / AFEW 7 basic expressions
  c.model.num_spatial_layers = 3 if a.variant == "paper" else 1  # N: official code 1, paper Table 3: 3
  c.model.num_temporal_layers = 3  # M
  c.model.width = 64              # ResNet-18 base width (64 = official; CS/T-Former dims scale with it)
  c.model.dropout = 0.0           # transformer dropout (official 0.0)
  c.model.dtype = "float32"       # compute dtype ('bfloat16' on TPU/GPU)

  c.task = ml_collections.ConfigDict()
  c.task.name = "clip_classification"
  c.task.num_classes = c.model.get_ref("num_classes")
  c.task.label_smoothing = 0.0    # official: plain cross-entropy

  # The data config by parts (jaxaffect/data/parts.py): shared fields, then `source` and `sampler`.
  c.data = ml_collections.ConfigDict()
  c.data.num_classes = c.model.get_ref("num_classes")
  c.data.class_names = DFEW_CLASSES  # label order of the Former-DFER lists (DFEW label − 1)
  c.data.image_size = 112         # frames resized to this square size
  c.data.label_vocab = "dfew7"    # shards: class order the model is trained in (labels converted, never silently)
  c.data.expr_vocab = ""
  c.data.read_threads = 4
  c.data.prefetch_batches = 4
  if a.shards:                    # data_prep output: split name or fold membership ('1:train')
    c.data.source = parts.source_config("shards", shards=a.shards, train_select=f"{a.fold}:train",
                                        eval_select=f"{a.fold}:test")
  elif a.variant == "smoke":      # procedural face videos in memory (the demo preps them first)
    c.data.source = parts.source_config("synthetic", video_frames=24, num_train=1344, num_eval=140,
                                        pose=0.3)
  else:                           # the official annotation lists (`root` replaces their prefix)
    c.data.source = parts.source_config(
        "list_file", train_list=f"annotation/DFEW_set_{a.fold}_train.txt",
        eval_list=f"annotation/DFEW_set_{a.fold}_test.txt")
  # U segments x V frames, flip, official GroupRandomSizedCrop (area 0.08-1, ratio 3/4-4/3)
  c.data.sampler = parts.sampler_config("former_dfer", num_segments=8, duration=2, hflip=True,
                                        random_resized_crop=True)

  c.optim = common.optim_config()  # + rule fields (no_decay, frozen, lr_mults, layer_decay)
  c.optim.name = "sgd"            # torch SGD semantics (coupled weight decay)
  c.optim.lr = 0.01
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "step"       # StepLR
  c.optim.decay_epochs = 40       # StepLR step_size (epochs)
  c.optim.decay_factor = 0.1      # StepLR gamma
  c.optim.warmup_epochs = 0       # linear warm-up length (epochs)
  c.num_epochs = 100
  c.batch_size = 32

  if a.variant == "smoke":
    c.model.width = 16
    # synthetic source above: 24 frames; 1344 training videos (many identities: memorising 448
    # gave 0.65 held-out UAR); 140 held-out ones (other generator seeds, unseen identities);
    # pose 0.3 (moderate head motion: learnable to UAR >= 0.9 within the demo budget)
    c.data.image_size = 64
    c.data.sampler.duration = 1   # 8 segments x 1 frame: half the compute of 8 x 2 on the CPU
    c.data.sampler.random_resized_crop = False  # synthetic clips are already face crops
    c.batch_size = 16
    c.num_epochs = 6
    c.eval_every_steps = 168      # every 2 epochs
    c.optim.name = "adam"         # converges in minutes on CPU; `dfew` keeps the official SGD
    c.optim.lr = 1e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 1
    c.log_every_steps = 10
  c.lock()
  return c
