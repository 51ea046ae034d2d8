"""EST, Expression Snippet Transformer (Liu et al., 2021): AA-SFE + DETR-style encoder-decoder with
an emotion query + shuffled snippet order prediction (SSOP), on 7 snippets x 5 frames.

Variants (`--config configs/est.py:VARIANT[,key=value...]`):
  dfew    the official code (DreamMr/EST `options/base_options.py`, `main.py`): 3 + 3 layers, d 512,
          4 heads, FF 2048, dropout 0.1; Adam lr 1e-4 (coupled weight decay 1e-4, as torch Adam),
          CosineAnnealingLR(T_max=160) stepped per epoch times a 10-epoch LinearWarmup, 160 epochs,
          batch 8, λ = 0.1428 (≈ 1/7, Eq. 7); frames resized to 224, no normalisation, no flip or
          crop; classes in EST's alphabetical order (`dfew7_alpha`, converted from the shards'
          DFEW order by an explicit map); 5 folds (`fold=k`) read from data_prep shards (`shards=DIR`).
  afew    the same settings on AFEW (train / val split of the shards: `python -m data_prep afew`).
  bu3dfe, mmi  the same settings on 6 basic expressions (`basic6_alpha`), shards made with the
          `folder` source (`train_select` / `eval_select` name the subject-independent split).
          The paper does not list per-dataset hyper-parameters beyond the DFEW ones, so the
          official DFEW settings are used.
  smoke   a CPU-sized EST (width 16 → d 128, FF 256, 64 px, batch 8) on synthetic face videos
          through data_prep shards, starting from the smoke frame encoder's trunk, for the
          learning test.
Extra arguments: `fold=1..5`, `shards=DIR`, `baseline=true` (the paper's Table 6 baseline: no
AA-SFE, no SSOP), `aasfe_only=true` (Table 6 "+AA-SFE": AA-SFE without SSOP).
"""
from __future__ import annotations

import ml_collections

from configs import common
from jaxaffect.data import parts

VARIANTS = ("dfew", "afew", "bu3dfe", "mmi", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, variant="dfew", fold=1, shards="", baseline=False, aasfe_only=False)
  if a.variant not in VARIANTS:
    raise ValueError(f"est config: unknown variant {a.variant!r} ({', '.join(VARIANTS)})")
  c = common.base_config()
  c.variant = a.variant           # which variant built this config (informational)
  c.model_name = "est"            # models.registry key
  six = a.variant in ("bu3dfe", "mmi")

  c.model = ml_collections.ConfigDict()
  c.model.num_classes = 6 if six else 7  # DFEW/AFEW 7 classes; BU-3DFE/MMI 6 basic expressions
  c.model.num_snippets = 7        # n snippets per clip
  c.model.frames_per_snippet = 5  # frames sampled per snippet
  c.model.d_model = 512           # transformer width (= ResNet-18 feature width, 8 x width)
  c.model.num_heads = 4
  c.model.num_encoder_layers = 3  # main.py passes 3 (the constructor default is 4)
  c.model.num_decoder_layers = 3
  c.model.dim_feedforward = 2048
  c.model.dropout = 0.1
  c.model.num_permutations = 10   # rows of datasets/permutation_10.npy
  c.model.use_aasfe = not a.baseline   # AA-SFE snippet features (False: Table 6 baseline)
  c.model.use_ssop = not (a.baseline or a.aasfe_only)  # SSOP head and loss
  c.model.width = 64              # ResNet-18 base width (64 = official)
  c.model.classifier_dims = (128, 64)  # official classifier Linear(512,128)-ReLU-Linear(128,64)
  c.model.classifier_dropout = 0.4     # official Dropout(0.4) before the last Linear
  c.model.ssop_dims = (2048, 512)      # official SSOP head Linear(3584,2048)-BN-ReLU-Linear(.,512)
  c.model.dtype = "float32"       # compute dtype ('bfloat16' on TPU/GPU)

  c.task = ml_collections.ConfigDict()
  c.task.name = "snippet_order"
  c.task.num_classes = c.model.get_ref("num_classes")
  c.task.ssop_weight = 0.1428     # λ of Eq. 7 as in the official code (0 = exactly 1/num_snippets)

  # The data config by parts (jaxaffect/data/parts.py): shared fields, then `source` and `sampler`.
  c.data = ml_collections.ConfigDict()
  c.data.num_classes = c.model.get_ref("num_classes")
  c.data.class_names = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise") if six else (
      "Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
  c.data.image_size = 224         # frames resized to this square size (official 224)
  c.data.label_vocab = "basic6_alpha" if six else "dfew7_alpha"  # EST's alphabetical class order
  c.data.expr_vocab = ""
  c.data.read_threads = 4
  c.data.prefetch_batches = 4
  # data_prep shards; only the smoke variant has an in-memory synthetic fallback (a dataset
  # variant without `shards=` is an error naming data.source.shards, not an empty synthetic set)
  if a.shards or a.variant != "smoke":
    c.data.source = parts.source_config(
        "shards", shards=a.shards,
        train_select={"dfew": f"{a.fold}:train", "afew": "train"}.get(a.variant, "train"),
        eval_select={"dfew": f"{a.fold}:test", "afew": "val"}.get(a.variant, "test"))
  else:                           # the smoke variant's videos (the same as frame_resnet:smoke's)
    c.data.source = parts.source_config("synthetic", video_frames=48, num_train=1008, num_eval=140,
                                        pose=0.3)
  # 7 snippets x 5 frames (samplers.est_indices); official: resize only, no flip, no jitter
  c.data.sampler = parts.sampler_config("est", crop="", hflip=False, color_jitter=0.0)

  c.optim = common.optim_config()  # + rule fields (no_decay, frozen, lr_mults, layer_decay)
  c.optim.name = "adam"           # torch Adam (coupled L2 weight decay)
  c.optim.lr = 1e-4
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "cosine_epoch"  # CosineAnnealingLR(T_max=epochs) per epoch x LinearWarmup
  c.optim.warmup_epochs = 10      # pytorch_warmup.LinearWarmup(warmup_period=10), per epoch
  c.num_epochs = 160
  c.batch_size = 8

  if a.variant == "smoke":
    # The official recipe at CPU size: a ResNet-18 pretrained on face frames (there FER+; here the
    # smoke frame encoder `frame_resnet:smoke`, imported with `jaxaffect import --partial`), then
    # EST end to end. From scratch the DETR-style encoder-decoder stays near chance for many
    # epochs on the CPU. Same synthetic shards as `frame_resnet:smoke` (48 frames, 64 px).
    c.model.width = 16            # = frame_resnet:smoke's trunk
    c.model.d_model = 128         # = 8 x width (the ResNet-18 feature width)
    c.model.dim_feedforward = 256
    c.model.dropout = 0.0
    c.model.classifier_dims = (64, 32)
    c.model.ssop_dims = (256, 128)
    c.data.image_size = 64        # the trunk's training size (48 px loses the transfer)
    c.data.sampler.hflip = True
    c.data.label_vocab = "dfew7_alpha"
    c.batch_size = 8              # the official batch size
    c.num_epochs = 2
    c.eval_every_steps = 63       # every half epoch
    c.log_every_steps = 21
    c.optim.lr = 3e-4              # 1e-3 overshoots the pretrained trunk at the end of warm-up
    c.optim.weight_decay = 0.0
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 1
  return c
