"""MAE pretraining learns (issue 13 item 8a): `configs/mae.py:smoke` (32 px, patch 8, ViT width 96
x 4 blocks, decoder 64 x 2, mask ratio 0.75, norm_pix_loss) on synthetic face videos written as
data_prep shards (400 training + 64 held-out videos of 8 frames; held-out = other generator
seeds, unseen identities). After training, the masked-patch loss on the held-out frames must be
<= 50 % of the loss of predicting every masked patch as the mean of the visible pixels of its
image (with norm_pix_loss: 0, loss ≈ 1). Measured on this machine (2 shared cores): held-out loss 0.422,
baseline 0.995, ratio 0.424 after 720 steps, training 65 s (0.466 at step 400). The evaluation also writes the
reconstruction sheet to TensorBoard and as PNG. The pretraining run is the session fixture
`mae_smoke` (tests/conftest.py), shared with the ABAW6 fine-tuning tests (test_abaw6_learning.py).
Through the fixture (same config, same seed): the same figures to 4 digits (0.4216, 0.9948,
0.4238), training 124 s on the loaded machine (load average ~10)."""
import os

import numpy as np


def test_mae_smoke_beats_half_the_mean_of_visible_baseline_on_held_out_faces(mae_smoke):
  # the pretraining run is the session fixture `mae_smoke` (tests/conftest.py): the ABAW6
  # fine-tuning tests (tests/models/test_abaw6_learning.py) start from the same run
  m, cfg, wd = mae_smoke["metrics"], mae_smoke["config"], mae_smoke["workdir"]
  steps = cfg.num_epochs * (400 // cfg.batch_size)
  print(f"\nMAE smoke: held-out loss {m['loss']:.4f}, mean-of-visible baseline "
        f"{m['mean_baseline_loss']:.4f}, ratio {m['loss_ratio']:.4f} after ~{steps} steps; "
        f"prep {mae_smoke['prep_seconds']:.1f} s, training {mae_smoke['train_seconds']:.1f} s")
  assert np.isclose(m["loss_ratio"], m["loss"] / m["mean_baseline_loss"], rtol=1e-5)
  assert m["loss_ratio"] <= 0.5, m
  pngs = os.listdir(os.path.join(wd, "tensorboard", "images"))
  assert any(p.startswith("eval_reconstruction_") and p.endswith(".png") for p in pngs), pngs
