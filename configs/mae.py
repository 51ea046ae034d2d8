"""MAE pretraining (facebookresearch/mae `main_pretrain.py`; `models.mae.MAE`), the first stage of
the ABAW6 system; `configs/vit_frames.py:finetune_expr,init=WORKDIR` fine-tunes its encoder.

Variants (`--config configs/mae.py:VARIANT[,key=value...]`):
  pretrain_b   MAE ViT-B/16 at 224 px, MAE's recipe: AdamW betas (0.9, 0.95), weight decay 0.05
               without biases / norms / tokens, lr = blr 1.5e-4 x batch / 256 (batch 4096 -> 2.4e-3),
               40 warm-up epochs + cosine, 800 epochs, mask ratio 0.75, norm_pix_loss, random
               resized crop (0.2-1) + flip; scanned blocks, bfloat16 compute (MAE: fp16 autocast).
  pretrain_l   ViT-L/16 (MAE: decoder 512 x 8 as for B), full remat, parameters and AdamW state
               sharded over a mesh that is all `fsdp` (`FSDP_RULES`).
  pretrain_h   ViT-H/14, the same.
  abaw6        the ABAW6 system: ViT-B/16 on the face-image corpus (AffectNet, RAF-DB, FER2013,
               FER+ image shards, `mixture` source), AdamW lr 5e-4, batch 1024, 500 epochs.
  smoke        a tiny MAE (32 px, patch 8, width 96, 4 blocks, decoder 64 x 2) on synthetic face
               videos through data_prep shards (one random frame per video per step), for the
               learning tests (its encoder is `vit_frames:smoke`'s, which fine-tunes it).
  finetune_expr  the ABAW6 fine-tune of a pretraining run (issue 13 item 6): exactly
               `configs/vit_frames.py:finetune_expr` (built there, not repeated here):
               `init=WORKDIR` keeps the encoder and drops the decoder, layer-wise lr decay 0.65,
               drop path 0.1, label smoothing 0.1, best by ABAW EXPR macro-F1, `heads=expr`
               (default), `expr+va` or `expr+va+au` for per-frame VA / AU heads beside EXPR.
Extra arguments: `shards=DIR` (one data_prep shard directory; finetune_expr: Aff-Wild2 face
shards; its other arguments are `init=WORKDIR` and `heads=`), or for a mixture
`affectnet=DIR,rafdb=DIR,fer2013=DIR,ferplus=DIR` (any subset; equal weights, change them with
`--config.data.source.sources='[...]'`). The weight-decay exclusion of the tokens follows the issue
(and timm's `no_weight_decay`); MAE's pretraining code (timm `add_weight_decay` without a skip
list) decays `cls_token` and `mask_token`: `--config.optim.no_decay='["bias$", "scale$"]'` is MAE's.
"""
from __future__ import annotations

import ml_collections

from configs import common
from jaxaffect.data import parts

VARIANTS = ("pretrain_b", "pretrain_l", "pretrain_h", "abaw6", "smoke", "finetune_expr")
SCALE = {"pretrain_b": "vit_b16", "pretrain_l": "vit_l16", "pretrain_h": "vit_h14",
         "abaw6": "vit_b16", "smoke": "vit_b16"}  # (finetune_expr: configs/vit_frames.py)
CORPUS = ("affectnet", "rafdb", "fer2013", "ferplus")
# held-out split of each corpus as data_prep writes it (AffectNet: validation; RAF-DB: test;
# FER2013 / FER+: PublicTest = val)
CORPUS_EVAL = {"affectnet": "val", "rafdb": "test", "fer2013": "val", "ferplus": "val"}

# FSDP (issue 13 item 4): kernels (patch embedding, qkv, proj, fc1, fc2, decoder_embed,
# decoder_pred; the stacked (depth, ...) kernels of scanned blocks) and the tokens, with their
# AdamW moments, are sharded over `fsdp` on their largest divisible dimension; biases, LayerNorm
# scales, the sin-cos tables, counters and the step are replicated. Harmless at mesh.fsdp = 1.
FSDP_RULES = (
    (r"(bias|scale)$", "replicate"),
    (r"(kernel|cls_token|mask_token)$", "fsdp:0"),
    (r".*", "replicate"),
)
# No weight decay: 1-D parameters (biases, LayerNorm) and the tokens (the sin-cos tables are
# constants, never decayed).
NO_DECAY = (r"bias$", r"scale$", r"cls_token$", r"mask_token$")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, variant="pretrain_b", shards="", affectnet="", rafdb="", fer2013="",
                       ferplus="", init="", heads="expr")
  if a.variant not in VARIANTS:
    raise ValueError(f"mae config: unknown variant {a.variant!r} ({', '.join(VARIANTS)})")
  if a.variant == "finetune_expr":  # the fine-tuning stage: vit_frames builds it (one recipe)
    from configs import vit_frames
    return vit_frames.get_config(f"finetune_expr,shards={a.shards},init={a.init},heads={a.heads}")
  for k in ("init", "heads"):
    if a[k] != {"init": "", "heads": "expr"}[k]:
      raise ValueError(f"mae config: {k}= is an argument of the finetune_expr variant only")
  from jaxaffect.nn import vit as vit_lib
  c = common.base_config()
  c.variant = a.variant           # which variant built this config (informational)
  c.model_name = "mae"            # models.registry key

  c.data = ml_collections.ConfigDict()
  c.data.image_size = 224         # MAE input size (face crops are resized / random-resized-cropped)

  preset = vit_lib.PRESETS[SCALE[a.variant]]
  c.model = ml_collections.ConfigDict()
  c.model.img_size = c.data.get_ref("image_size")  # the position tables' grid
  c.model.patch_size = preset["patch_size"]
  c.model.embed_dim = preset["embed_dim"]
  c.model.depth = preset["depth"]
  c.model.num_heads = preset["num_heads"]
  c.model.decoder_embed_dim = 512  # MAE: 512 wide, 8 blocks, 16 heads for B, L and H
  c.model.decoder_depth = 8
  c.model.decoder_num_heads = 16
  c.model.mlp_ratio = 4.0
  c.model.mask_ratio = 0.75       # removed patches per image (exactly int(L*0.25) kept)
  c.model.norm_pix_loss = True    # per-patch standardised target (MAE --norm_pix_loss)
  c.model.normalize = True        # ImageNet mean/std inside the model
  c.model.scan = True             # nn.scan over encoder and decoder blocks (fast compiles)
  c.model.remat_policy = "none"   # none | full | dots_saveable | dots_with_no_batch_dims_saveable
  c.model.dtype = "bfloat16"      # compute dtype (parameters float32); 'float32' on CPU

  c.task = ml_collections.ConfigDict()
  c.task.name = "mae_pretrain"    # models/mae_task.py (through mae.make_task)
  c.task.input = "image"          # batch entry of the images
  c.task.eval_seed = 1234         # masking key of evaluation (deterministic)
  c.task.num_samples = 8          # images on the reconstruction sheet

  c.data.num_classes = 0          # no labels are used
  c.data.class_names = ()
  c.data.label_vocab = ""         # clip labels are not used
  c.data.expr_vocab = ""
  c.data.read_threads = 8
  c.data.prefetch_batches = 4
  comps = [dict(shards=getattr(a, k), weight=1.0, **({"eval_select": CORPUS_EVAL[k]}
                                                      if CORPUS_EVAL[k] == "test" else {}))
           for k in CORPUS if getattr(a, k)]
  if comps:
    # several image-shard directories interleaved by weight; labels dropped (self-supervised)
    c.data.source = parts.source_config("mixture", sources=comps, train_select="train",
                                        eval_select="val", labels="drop")
  else:
    # one data_prep shard directory (image shards: one-frame records; or face-video shards)
    c.data.source = parts.source_config("shards", shards=a.shards, train_select="train",
                                        eval_select="val")
  # one face frame per record; MAE: RandomResizedCrop(scale=(0.2, 1.0), bicubic) + flip
  c.data.sampler = parts.sampler_config("frame", crop="resized_crop", crop_scale=(0.2, 1.0),
                                        hflip=True, color_jitter=0.0)

  c.optim = common.optim_config()  # + rule fields (no_decay, frozen, lr_mults, layer_decay)
  c.optim.name = "adamw"
  c.optim.blr = 1.5e-4            # MAE base lr: lr = blr x batch / 256 (informational when lr is set)
  c.batch_size = 4096             # MAE: 64 per GPU x 64 GPUs
  c.optim.lr = c.optim.get_ref("blr") * c.get_ref("batch_size") / 256  # follows batch_size
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95               # MAE pretraining
  c.optim.weight_decay = 0.05
  c.optim.no_decay = NO_DECAY
  c.optim.schedule = "cosine"     # linear warm-up, then cosine to 0 (MAE: min_lr 0)
  c.optim.warmup_epochs = 40
  c.num_epochs = 800              # MAE paper: 800 (1600 for the best numbers)
  c.checkpoint.best_metric = "loss"  # held-out masked-patch loss
  c.checkpoint.best_mode = "min"
  c.sharding_rules = FSDP_RULES   # no-op at mesh.fsdp = 1
  c.partitionable_init_rng = False

  if a.variant in ("pretrain_l", "pretrain_h"):
    c.model.remat_policy = "full"
    c.mesh.data = 1
    c.mesh.fsdp = -1              # every device on the fsdp axis
    c.partitionable_init_rng = True  # each device draws only its shard at init
  if a.variant == "abaw6":
    c.batch_size = 1024           # ABAW6: batch 1024, AdamW lr 5e-4, 500 epochs
    c.optim.lr = 5e-4
    c.num_epochs = 500
  if a.variant == "smoke":
    if not (a.shards or comps):
      # synthetic videos to be written as shards first (`jaxaffect demo` / the tests), then shards=
      c.data.source = parts.source_config("synthetic", video_frames=8, num_train=400,
                                          num_eval=64, pose=0.3)
    else:
      c.data.source.eval_select = "test"  # held-out generator seeds: unseen identities
    c.data.image_size = 32
    c.model.patch_size = 8
    c.model.embed_dim = 96
    c.model.depth = 4
    c.model.num_heads = 4
    c.model.decoder_embed_dim = 64
    c.model.decoder_depth = 2
    c.model.decoder_num_heads = 4
    c.model.scan = False
    c.model.dtype = "float32"
    c.data.sampler.crop = ""      # synthetic crops are aligned already; flip only
    c.data.read_threads = 2
    c.optim.blr = 3e-3            # lr = 3e-3 x 64 / 256 = 7.5e-4
    c.optim.warmup_epochs = 2
    c.batch_size = 64
    c.num_epochs = 120            # one frame per video per epoch: 120 x 6 steps
    c.eval_every_steps = 100
    c.log_every_steps = 25
  c.lock()
  return c
