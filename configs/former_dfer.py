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

DFEW_CLASSES = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, variant="dfew", fold=1, shards="")
  if a.variant not in ("dfew", "paper", "smoke"):
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

  c.data = ml_collections.ConfigDict()
  # 'shards' (data_prep output), 'list_file' (official lists) or 'synthetic'
  c.data.source = "shards" if a.shards else "list_file"
  c.data.shards = a.shards        # shards: a data_prep output directory (manifest.json + shards)
  c.data.train_select = f"{a.fold}:train"  # shards: split name ('train') or fold membership ('1:train')
  c.data.eval_select = f"{a.fold}:test"    # shards: the held-out selection
  c.data.label_vocab = "dfew7"    # shards: class order the model is trained in (labels converted, never silently)
  c.data.reader = "index"         # shards: 'index' (random access, global shuffle) or 'stream' (per-host files)
  c.data.cycle_length = 4         # stream reader: shard files read concurrently per host
  c.data.shuffle_window = 64      # stream reader: record shuffle window
  c.data.train_list = f"annotation/DFEW_set_{a.fold}_train.txt"  # official list file, train split
  c.data.eval_list = f"annotation/DFEW_set_{a.fold}_test.txt"    # official list file, test split
  c.data.root = ""                # replaces the absolute frame-dir prefix in the lists ('' = as is)
  c.data.num_classes = c.model.get_ref("num_classes")
  c.data.class_names = DFEW_CLASSES  # label order of the Former-DFER lists (DFEW label − 1)
  c.data.image_size = 112         # frames resized to this square size
  c.data.num_segments = 8         # U: segments per clip (dynamic sampling)
  c.data.duration = 2             # V: consecutive frames per segment
  c.data.hflip = True             # random horizontal flip (same for all frames)
  c.data.random_resized_crop = True  # official GroupRandomSizedCrop (area 0.08-1, ratio 3/4-4/3)
  c.data.video_frames = 0         # synthetic only: frames per generated video
  c.data.num_train = 0            # synthetic only: number of training videos
  c.data.num_eval = 0             # synthetic only: number of held-out videos
  c.data.seed = 0                 # synthetic only: generator seed
  c.data.synthetic_pose = 1.0     # synthetic only: head-pose variation (0 frontal/static, 1 full)
  c.data.synthetic_occlusion = 0.2  # synthetic only: probability of an occluded span of frames

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
    c.data.source = "shards" if a.shards else "synthetic"
    c.data.train_list = ""
    c.data.eval_list = ""
    c.data.image_size = 64
    c.data.video_frames = 24
    c.data.duration = 1           # 8 segments x 1 frame: half the compute of 8 x 2 on the CPU
    c.data.random_resized_crop = False  # synthetic clips are already face crops; the demo budget
    c.data.num_train = 1344       # many identities (memorising 448 gave 0.65 held-out UAR)
    c.data.num_eval = 140         # held-out: other generator seeds, so unseen identities
    c.data.synthetic_pose = 0.3   # moderate head motion: learnable to UAR >= 0.9 within the demo budget
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
