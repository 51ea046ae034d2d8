"""`jaxaffect bench mae` at toy size (mae:smoke shapes, random images): the JAX step alone, and
beside a stand-in checkout that has the timm-0.3.2 breakages of facebookresearch/mae (a
`Block(..., qk_scale=None)` call, `np.float`, noise drawn with `torch.rand(N, L)`), which the
loader's shims must get through. No timing assertions."""
import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxaffect import bench
from jaxaffect.bench import mae as bench_mae
from jaxaffect.errors import UserError
from jaxaffect.models import mae

TINY = ["--config", "mae:smoke", "--batch", "8", "--steps", "2", "--peak-size", "128",
        "--config.model.depth=2", "--config.model.decoder_depth=1"]

# A stand-in for the checkout: MAE's constructor signature and return values, the three
# incompatibilities with timm 1.0 / numpy 2 that the real one has, a trivial body.
FAKE_MODELS_MAE = '''
import numpy as np, torch
from timm.models.vision_transformer import PatchEmbed, Block
from util.pos_embed import table

class MaskedAutoencoderViT(torch.nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24,
                 num_heads=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
                 mlp_ratio=4., norm_layer=torch.nn.LayerNorm, norm_pix_loss=False):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.blocks = torch.nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True,
                                                 qk_scale=None, norm_layer=norm_layer)
                                           for i in range(depth)])
        self.pred = torch.nn.Linear(embed_dim, patch_size ** 2 * in_chans)
        self.table = table(embed_dim)

    def forward(self, imgs, mask_ratio=0.75):
        x = self.patch_embed(imgs)
        noise = torch.rand(x.shape[0], x.shape[1])
        mask = (noise > 0.5).float()
        for b in self.blocks:
            x = b(x)
        pred = self.pred(x)
        return (pred ** 2).mean(-1).mul(mask).sum() / mask.sum().clamp(min=1), pred, mask
'''
FAKE_POS_EMBED = '''
import numpy as np
def table(d):
    return np.arange(d // 2, dtype=np.float)
'''


@pytest.fixture()
def checkout(tmp_path):
  (tmp_path / "util").mkdir()
  (tmp_path / "util" / "__init__.py").write_text("")
  (tmp_path / "util" / "pos_embed.py").write_text(textwrap.dedent(FAKE_POS_EMBED))
  (tmp_path / "models_mae.py").write_text(textwrap.dedent(FAKE_MODELS_MAE))
  (tmp_path / "models_vit.py").write_text("")
  yield str(tmp_path)
  import sys
  for name in ("models_mae", "models_vit", "util", "util.pos_embed"):
    sys.modules.pop(name, None)


def _json(out: str) -> dict:
  lines = [l for l in out.strip().splitlines() if l.strip()]
  assert len(lines) == 1
  return json.loads(lines[0])


def test_bench_mae_runs_at_toy_size(capsys):
  assert bench.main(["mae", *TINY, "--json"]) == 0
  r = _json(capsys.readouterr().out)
  assert r["model"] == "mae" and r["unit"] == "images" and r["input_shape"] == [32, 32, 3]
  assert r["clips_per_s"] == pytest.approx(8 / r["step_s"]) and np.isfinite(r["last_loss"])
  m = mae.MAE(img_size=32, patch_size=8, embed_dim=96, depth=2, num_heads=4,
              decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=4)
  shapes = jax.eval_shape(lambda: m.init({"params": jax.random.key(0),
                                          "masking": jax.random.key(0)},
                                         jnp.zeros((1, 32, 32, 3))))
  assert r["params"] == mae.num_values(shapes)["params"]
  assert r["reference"] is None and r["train_step_flops"] > 0


def test_bench_mae_reference_through_the_shims(capsys, checkout):
  """The loader gets a timm-0.3.2 style checkout through (qk_scale, np.float), trains it with its
  own loss beside JAX, and leaves numpy without `np.float` afterwards."""
  with pytest.raises(UserError, match="dtype=float32"):
    bench.main(["mae", *TINY, "--config.model.dtype=bfloat16", "--reference", checkout])
  assert bench.main(["mae", *TINY, "--json", "--reference", checkout]) == 0
  r = _json(capsys.readouterr().out)
  ref = r["reference"]
  assert ref["name"].startswith("official MAE") and np.isfinite(ref["last_loss"])
  assert r["jax_over_torch"] == pytest.approx(r["clips_per_s"] / ref["clips_per_s"])
  assert "float" not in np.__dict__


def test_injected_noise_reaches_random_masking(checkout):
  """`injected_noise` replaces exactly the (N, L) draw; other shapes still come from torch.rand."""
  models_mae, _ = bench_mae.official_modules(checkout)
  with bench_mae._np_float():
    model = models_mae.MaskedAutoencoderViT(img_size=16, patch_size=8, embed_dim=8, depth=1,
                                            num_heads=2)
  noise = torch.tensor([[0.9, 0.1, 0.7, 0.2]])
  with bench_mae.injected_noise(noise):
    _, _, mask = model(torch.zeros(1, 3, 16, 16))
    other = torch.rand(3)
  np.testing.assert_array_equal(mask.numpy(), [[1, 0, 1, 0]])
  assert other.shape == (3,) and torch.rand is not None
  with pytest.raises(UserError, match="not found"):
    bench_mae.official_modules(checkout + "/nowhere")
