"""ViT frame model: an (MAE-pretrained) ViT fine-tuned on face crops with per-frame heads.

The ABAW6 system's image model (`models.vit_frames.ViTFrames`, issue 13 item 6): MAE ViT-B/16
fine-tuned on Aff-Wild2 expressions, whose pooled 768-d features `python -m data_prep features`
writes for the TCN + Transformer (`configs/abaw_tcn.py`).

Variants (`--config configs/vit_frames.py:VARIANT[,key=value...]`):
  finetune_expr  ABAW6 / MAE fine-tuning: ViT-B/16 (looped blocks: layer-wise lr decay needs one
                 parameter per block), 224 px crops of Aff-Wild2 face shards, EXPR head (8 ABAW
                 classes; `heads=expr+va+au` adds per-frame VA / AU heads), AdamW lr 1e-4
                 (ABAW6) batch 256, betas (0.9, 0.999), wd 0.05 without biases / norms / cls
                 token (MAE `param_groups_lrd`), layer decay 0.65, drop path
                 0.1, label smoothing 0.1, 5 warm-up epochs + cosine, best by `expr/macro_f1`;
                 `init=WORKDIR` starts from an MAE pretraining run (encoder kept, decoder and the
                 encoder's final `norm` unused, `fc_norm` and heads fresh).
  b16, l16, h14  the same recipe at scale (ViT-B/16, L/16, H/14): scanned blocks + full remat,
                 bfloat16 compute, parameters and AdamW state sharded over a mesh that is all
                 `fsdp` (`FSDP_RULES`); no layer decay (stacked blocks share one learning rate).
                 `jaxaffect bench vit_frames --plan` projects them to pods.
  smoke          a tiny ViT (32 px, patch 8, width 96, 4 blocks: the encoder of `mae:smoke`, whose
                 run `init=` loads) on synthetic face videos through data_prep shards (7 ABAW
                 expressions without `Other`; one random frame per video per epoch, 40 epochs, every
                 frame of the held-out videos in evaluation), for the learning tests.
Extra arguments: `shards=DIR`, `init=WORKDIR` (MAE pretraining run to fine-tune from),
`heads=expr` (default; ABAW6), `expr+va`, `expr+va+au` (any `+`-joined subset of va, expr, au): the
per-frame heads trained (one loss each, weight 1); without EXPR the best metric is the VA mean CCC
(`va/p_va`), else the AU mean F1. `configs/mae.py:finetune_expr` is `finetune_expr` built here.
Not in this recipe (MAE's fine-tuning has them): RandAugment, mixup/cutmix, random erasing.
"""
from __future__ import annotations

import ml_collections

from configs import common
from jaxaffect.data import parts

VARIANTS = ("finetune_expr", "b16", "l16", "h14", "smoke")
SCALE = {"b16": "vit_b16", "l16": "vit_l16", "h14": "vit_h14"}
HEADS = ("va", "expr", "au")

# FSDP (issue 13 item 4): every kernel (patch embedding, qkv, attn out, fc1, fc2, heads; also the
# stacked (depth, …) kernels of a scanned encoder) and the cls token, with their AdamW moments,
# are sharded over `fsdp` on their largest divisible dimension; biases, LayerNorm scales, the
# sin-cos table, counters and the step are replicated (small vectors: < 1 % of ViT-B's bytes).
FSDP_RULES = (
    (r"(bias|scale)$", "replicate"),
    (r"(kernel|cls_token)$", "fsdp:0"),
    (r".*", "replicate"),
)
# MAE `param_groups_lrd` / timm `no_weight_decay`: 1-D parameters and the cls token.
NO_DECAY = (r"bias$", r"scale$", r"cls_token$")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, variant="finetune_expr", shards="", init="", heads="expr")
  if a.variant not in VARIANTS:
    raise ValueError(f"vit_frames config: unknown variant {a.variant!r} ({', '.join(VARIANTS)})")
  heads = tuple(h for h in a.heads.split("+") if h)
  if not heads or len(set(heads)) != len(heads) or set(heads) - set(HEADS):
    raise ValueError(f"vit_frames config: heads={a.heads!r}: expected heads of {HEADS} joined by "
                     f"'+' (expr, expr+va, expr+va+au, ...)")
  from jaxaffect.nn import vit as vit_lib
  c = common.base_config()
  c.variant = a.variant           # which variant built this config (informational)
  c.model_name = "vit_frames"     # models.registry key

  c.data = ml_collections.ConfigDict()
  c.data.image_size = 224         # MAE / ViT input size (Aff-Wild2 crops are resized)

  preset = vit_lib.PRESETS[SCALE.get(a.variant, "vit_b16")]
  c.model = ml_collections.ConfigDict()
  c.model.outputs = tuple(h for h in HEADS if h in heads)  # per-frame heads (`heads=` argument)
  c.model.num_expr = 8            # ABAW expressions (Neutral .. Other)
  c.model.num_au = 12             # ABAW AUs 1,2,4,6,7,10,12,15,23,24,25,26
  c.model.img_size = c.data.get_ref("image_size")  # the position table's grid
  c.model.patch_size = preset["patch_size"]
  c.model.embed_dim = preset["embed_dim"]
  c.model.depth = preset["depth"]
  c.model.num_heads = preset["num_heads"]
  c.model.pos_embed = "sincos"    # MAE's fixed table (as pretraining; see models/vit_frames.py)
  c.model.drop_path_rate = 0.1    # MAE fine-tuning --drop_path (ViT-B)
  c.model.head_dropout = 0.0
  c.model.normalize = True        # ImageNet mean/std inside the model
  c.model.scan = False            # looped blocks (layer decay); True for fast compiles
  c.model.remat_policy = "none"   # none | full | dots_saveable | dots_with_no_batch_dims_saveable
  c.model.dtype = "float32"       # compute dtype ('bfloat16' on TPU/GPU)

  c.task = ml_collections.ConfigDict()
  c.task.name = "frame_labels"
  c.task.input = "image"          # single face crops
  c.task.outputs = c.model.get_ref("outputs")
  c.task.num_expr = c.model.get_ref("num_expr")
  c.task.num_au = c.model.get_ref("num_au")
  c.task.loss_weights = ()        # () = 1 for every output
  c.task.ccc_ddof = 1             # CCC loss std as torch.std (the ABAW6 code)
  c.task.label_smoothing = 0.1    # EXPR cross-entropy (MAE fine-tuning --smoothing 0.1)

  c.data.num_classes = c.model.get_ref("num_expr")
  c.data.class_names = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise",
                        "Other")
  c.data.label_vocab = ""         # clip labels are not used
  c.data.expr_vocab = "abaw8"     # per-frame EXPR converted to this order (explicit map)
  c.data.read_threads = 4
  c.data.prefetch_batches = 4
  # data_prep face shards of Aff-Wild2; its validation split for eval (test labels are not public)
  c.data.source = parts.source_config("shards", shards=a.shards, train_select="train",
                                      eval_select="val")
  if a.variant == "smoke" and not a.shards:
    # synthetic videos to be written as shards first (`jaxaffect demo` / the tests), then shards=
    c.data.source = parts.source_config("synthetic", video_frames=48, num_train=1008,
                                        num_eval=140, pose=0.3)
  # one face frame per video; RandomResizedCrop (0.08-1, MAE fine-tuning) and flip in training
  c.data.sampler = parts.sampler_config("frame", crop="resized_crop", crop_scale=(0.08, 1.0),
                                        hflip=True, color_jitter=0.0)

  c.optim = common.optim_config()  # + rule fields (no_decay, frozen, lr_mults, layer_decay)
  c.optim.name = "adamw"
  c.optim.lr = 1e-4               # ABAW6 fine-tuning (MAE: blr 5e-4 x batch/256 for ViT-B)
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999              # MAE fine-tuning (pretraining uses 0.95)
  c.optim.weight_decay = 0.05
  c.optim.no_decay = NO_DECAY
  c.optim.layer_decay = 0.65      # lr x 0.65^(L+1-layer id) (MAE util/lr_decay.py)
  c.optim.layer_decay_num_layers = c.model.get_ref("depth")
  c.optim.schedule = "cosine"     # linear warm-up, then cosine to 0
  c.optim.warmup_epochs = 5
  c.batch_size = 256
  c.num_epochs = 20               # ABAW6 does not state it; one face frame per video per epoch
  # ABAW EXPR macro-F1 (without an EXPR head: the VA mean CCC, else the AU mean F1)
  c.checkpoint.best_metric = ("expr/macro_f1" if "expr" in heads else
                              "va/p_va" if "va" in heads else "au/f1")
  c.checkpoint.best_mode = "max"
  c.sharding_rules = FSDP_RULES   # no-op at mesh.fsdp = 1
  # Fine-tune from an MAE pretraining run: its encoder, nothing else (decoder, mask token,
  # the encoder's final `norm` are reported unused; fc_norm and heads stay fresh).
  c.init_from.workdir = a.init
  c.init_from.keep = (r"^params/encoder/", r"^constants/encoder/") if a.init else ()

  if a.variant in SCALE:
    c.model.scan = True           # one compiled block (ViT-H compiles in seconds)
    c.model.remat_policy = "full"
    c.model.dtype = "bfloat16"
    c.optim.layer_decay = 0.0     # one stacked parameter per kind: no per-block lr
    c.mesh.data = 1
    c.mesh.fsdp = -1              # every device on the fsdp axis
    if a.variant == "l16":
      c.model.drop_path_rate = 0.2  # MAE fine-tuning ViT-L
    if a.variant == "h14":
      c.model.drop_path_rate = 0.3  # MAE fine-tuning ViT-H
  if a.variant == "smoke":
    c.model.num_expr = 7          # synthetic faces never show `Other`: the ABAW-7 order
    c.data.expr_vocab = "abaw7"
    c.data.class_names = c.data.class_names[:7]
    if a.shards:
      c.data.source.eval_select = "test"  # held-out generator seeds: unseen identities
    c.data.image_size = 32
    c.model.patch_size = 8        # the encoder of `mae:smoke`, so `init=<mae:smoke run>` loads
    c.model.embed_dim = 96
    c.model.depth = 4
    c.model.num_heads = 4
    c.model.drop_path_rate = 0.0
    # every face frame of the held-out videos in evaluation (`frame`: only the middle one)
    c.data.sampler = parts.sampler_config("frame_views", crop="", hflip=True, landmarks=False,
                                          frames_per_video=1)
    c.optim.lr = 1e-3
    c.optim.layer_decay = 0.0
    c.optim.warmup_epochs = 1
    c.batch_size = 64
    c.num_epochs = 40             # 1,008 videos: 15 steps per epoch, 600 steps (300: EXPR F1 0.68)
    c.eval_every_steps = 100
    c.log_every_steps = 25
  c.lock()
  return c
