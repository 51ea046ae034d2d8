"""EST's task: Eq. 7 on the shuffled input (as the official `train()`), the class evaluated on the
unshuffled input, SSOP accuracy on a shuffled copy; and a short run of the trainer on shards."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaffect.errors import UserError
from jaxaffect.models import est, tasks

KW = dict(width=4, d_model=32, num_heads=4, dim_feedforward=64, classifier_dims=(16, 8),
          ssop_dims=(32, 16), dropout=0.0, classifier_dropout=0.0)


def _batch(b=4, hw=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"video": rng.integers(0, 256, (b, 35, hw, hw, 3), dtype=np.uint8),
          "label": rng.integers(0, 7, b).astype(np.int32), "mask": np.ones(b, np.float32)}


def test_loss_is_eq7_on_the_shuffled_clip():
  task = tasks.SnippetOrderTask(est.EST(**KW), 7, ssop_weight=0.1428)
  batch = _batch()
  params, extra = task.init(jax.random.key(0), batch)
  rng = jax.random.key(7)
  loss, (out, new_extra) = task.loss(params, extra, batch, rng)
  # The PE table is a read-only constant: passed through (never mutable), BatchNorm stats updated.
  assert new_extra.keys() == extra.keys() == {"batch_stats", "constants"}
  assert new_extra["constants"] is extra["constants"]
  assert not jax.tree.all(jax.tree.map(np.array_equal, new_extra["batch_stats"],
                                       extra["batch_stats"]))
  # Re-derive by hand: the permutation rows the task draws, the shuffled clip, both heads.
  s_rng, _ = jax.random.split(rng)
  p = jax.random.randint(s_rng, (4,), 0, 10)
  perm = jnp.asarray(est.PERMUTATIONS_10)[p]
  v = batch["video"].astype(np.float32) / 255.0
  shuffled = est.shuffle_snippets(jnp.asarray(v), perm, 7)
  np.testing.assert_array_equal(np.asarray(shuffled).reshape(4, 7, 5, 32, 32, 3)[:, 0],
                                v.reshape(4, 7, 5, 32, 32, 3)[np.arange(4), np.asarray(perm)[:, 0]])
  o, _ = task.module.apply({"params": params, **extra}, shuffled, perm, train=True,
                           mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
  want, _ = est.est_loss(o["logits"], batch["label"], o["perm_logits"], p, batch["mask"], 7,
                         ssop_weight=0.1428)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  np.testing.assert_array_equal(out["perm_label"], p)
  # Evaluation: the class from the unshuffled clip with the identity order.
  pred = task.predict(params, extra, batch)
  ident = jnp.broadcast_to(jnp.arange(7), (4, 7))
  o = task.module.apply({"params": params, **extra}, jnp.asarray(v), ident, train=False)
  np.testing.assert_allclose(pred["logits"], o["logits"], rtol=1e-5, atol=1e-6)
  assert pred["perm_logits"].shape == (4, 10)
  # Baseline (no SSOP): only the class loss, no permutation outputs.
  base = tasks.SnippetOrderTask(est.EST(**KW, use_aasfe=False, use_ssop=False), 7)
  bp, be = base.init(jax.random.key(0), batch)
  bl, (bo, _) = base.loss(bp, be, batch, rng)
  assert "perm_logits" not in bo and np.isfinite(float(bl))
  assert set(base.train_metrics.__annotations__) == {"loss", "_clip"}


def test_trainer_runs_est_on_shards(tmp_path):
  """A few steps of the real loop: data_prep shards -> EST sampler -> task -> metrics."""
  from configs import est as est_cfg
  from data_prep import cli as prep_cli, shards
  from jaxaffect.train import loop
  out = tmp_path / "shards"
  args = prep_cli.build_parser().parse_args(
      ["synthetic", "--src", "-", "--out", str(out), "--num-videos", "8", "--heldout-videos", "4",
       "--num-frames", "12", "--render-size", "32", "--size", "32", "--quiet"])
  shards.run("synthetic", args)
  c = est_cfg.get_config(f"smoke,shards={out}")
  for k, v in KW.items():
    c.model[k] = v
  c.data.image_size = 32
  c.batch_size = 8
  c.num_epochs = 2
  c.eval_every_steps = 0
  c.checkpoint.async_save = False
  m = loop.train(c, str(tmp_path / "run"))
  for k in ("uar", "war", "ssop_accuracy", "ssop_loss"):
    assert np.isfinite(m[k]), (k, m)
  assert 0.0 <= m["ssop_accuracy"] <= 1.0


def test_partial_import_of_a_pretrained_backbone(tmp_path):
  """The official EST initialisation: a (FER+-pretrained) torchvision ResNet-18 state dict with
  `module.` prefixes and an `fc` head goes into EST's backbone; the rest keeps its own init."""
  from flax import traverse_util
  from configs import est as est_cfg
  from jaxaffect import interop
  from jaxaffect.train import loop
  c = est_cfg.get_config("smoke")
  for k, v in KW.items():
    c.model[k] = v
  c.data.image_size = 32
  c.batch_size = 8
  c.checkpoint.async_save = False
  donor = est.EST(**KW)
  dv = donor.init({"params": jax.random.key(42), "dropout": jax.random.key(1)},
                  jnp.zeros((1, 35, 32, 32, 3)), train=False)
  sd = interop.to_torch_state_dict("est", dv)
  backbone = {f"module.{k}": v for k, v in sd.items() if k.startswith(("conv1.", "bn1.", "layer"))}
  backbone["module.fc.weight"] = np.zeros((7, 32), np.float32)          # ignored (no rule)
  assert len(backbone) > 50
  path = str(tmp_path / "resnet18_ferplus.safetensors")
  interop.save_state_dict(backbone, path)
  with pytest.raises(UserError, match="unexpected torch keys"):             # strict import refuses it
    loop.import_weights(c, str(tmp_path / "strict"), path)
  loop.import_weights(c, str(tmp_path / "run"), path, partial=True)
  _, _, got, _ = loop.restore_state(str(tmp_path / "run"))
  flat_got = traverse_util.flatten_dict(got, sep="/")
  flat_donor = traverse_util.flatten_dict(jax.device_get(dv), sep="/")
  back = {k for k in flat_got if k.startswith(("params/backbone", "batch_stats/backbone"))}
  assert back, sorted(flat_got)[:5]
  for k in back:
    np.testing.assert_array_equal(flat_got[k], flat_donor[k], err_msg=k)
  others = [k for k in flat_got if k.startswith("params/") and k not in back]
  assert others and not all(np.array_equal(flat_got[k], flat_donor[k]) for k in others)
