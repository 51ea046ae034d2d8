"""Optimizer rules (no-decay groups, frozen leaves, lr multipliers, layer-wise lr decay) against torch
param groups, step by step on a small ViT-shaped Flax model.

The reference is torch's optimizer with explicit param groups built here from the MAE / timm
conventions (independently of `optim_rules`' regexes): no decay for 1-D tensors (biases, norm
scales) and the `pos_embed` / `cls_token` list; layer id 0 for patch_embed/cls_token/pos_embed,
i + 1 for blocks.i, L + 1 for the rest, lr scale `decay ** (L + 1 - id)` (MAE `lr_decay.py`).
Both sides get the same gradients, the loss's gradient along the JAX trajectory (at the params
before each JAX step): the optimizer arithmetic is what is compared, not the conditioning of the
loss (gradients taken at parameters that differ by rounding differ by up to 1e-5 relative here,
through cancellation, and Adam passes that on).

Tolerance: after k steps a parameter is `p0 + Σ Δ_t`; float32 rounding of each step's arithmetic
is a few ulps of `|p0| + Σ |Δ_t|` (measured on the torch side): allowed 64 ulps of that. Adam adds
one known term: optax computes the bias correction `1 - b2**t` in float32 (torch in float64), and
rounding b2 = 0.999 to float32 makes it off by up to `t·eps/2` absolute, i.e. `t·eps/(2(1-b2^t))`
relative, halved by the square root: the update Δ_t is off by `t/(4(1-b2^t))` ulps (250 at t = 1,
measured 200-250 against a float64 torch); allowed twice that, `t/(2(1-b2^t))·eps·|Δ_t|`. The smallest difference a wrong
rule makes here (the weight decay of one step on a no-decay leaf, lr·wd·|p| = 1e-3·|p|, or a layer
scale 0.75 instead of 0.5625 on 5 updates of ~lr) is > 1e3 times larger.
"""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch

from jaxaffect.errors import UserError
from jaxaffect.train import mesh as mesh_lib
from jaxaffect.train import optim, optim_rules
from tests import tolerances as tol

DEPTH, DIM, N, P, CLASSES, B = 3, 8, 4, 6, 5, 6
ULPS = 64
NO_DECAY = (r"/bias$", r"norm.*/scale$", r"(^|/)pos_embed$", r"(^|/)cls_token$")


class Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm(name="norm1")(x)
    h = nn.Dense(2 * DIM, name="fc1")(h)
    h = nn.Dense(DIM, name="fc2")(nn.gelu(h))
    return x + h


class TinyViT(nn.Module):
  """Parameter paths like a ViT: patch_embed, cls_token, pos_embed, blocks_i, norm, head."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(DIM, name="patch_embed")(x)
    cls = self.param("cls_token", nn.initializers.normal(0.5), (1, 1, DIM))
    pos = self.param("pos_embed", nn.initializers.normal(0.5), (1, N + 1, DIM))
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, DIM)), x], axis=1) + pos
    for i in range(DEPTH):
      x = Block(name=f"blocks_{i}")(x)
    return nn.Dense(CLASSES, name="head")(nn.LayerNorm(name="norm")(x)[:, 0])


MODEL = TinyViT()
X = np.random.default_rng(0).normal(size=(B, N, P)).astype(np.float32)
Y = np.random.default_rng(1).integers(0, CLASSES, size=(B,))


@jax.jit
def _grad(params):
  def loss(p):
    logits = MODEL.apply({"params": p}, X)
    return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()
  return jax.grad(loss)(params)


def _params():
  p = MODEL.init(jax.random.key(0), X)["params"]
  return jax.tree.map(lambda a: np.asarray(a, np.float32), p)


def _flat(tree):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return [optim_rules.path_str(k) for k, _ in leaves], [np.asarray(v) for _, v in leaves], treedef


def torch_name(path: str) -> str:
  """Flax path → the torch (timm ViT) parameter name: blocks_0/norm1/scale → blocks.0.norm1.weight."""
  name = re.sub(r"blocks_(\d+)", r"blocks.\1", path).replace("/", ".")
  return re.sub(r"\.(kernel|scale)$", ".weight", name)


def mae_layer_id(name: str, num_layers: int) -> int:
  """MAE util/lr_decay.get_layer_id_for_vit (num_layers there = blocks + 1)."""
  if name in ("cls_token", "pos_embed"):
    return 0
  if name.startswith("patch_embed"):
    return 0
  if name.startswith("blocks"):
    return int(name.split(".")[1]) + 1
  return num_layers


def mae_param_groups(names, tensors, weight_decay, layer_decay=None, no_wd=("pos_embed",
                                                                              "cls_token")):
  """MAE `param_groups_lrd` (and timm's `param_groups_weight_decay` when layer_decay is None)."""
  num_layers = DEPTH + 1
  groups = {}
  for n, t in zip(names, tensors):
    no_decay = t.ndim == 1 or n in no_wd
    lid = mae_layer_id(n, num_layers) if layer_decay else 0
    scale = layer_decay ** (num_layers - lid) if layer_decay else 1.0
    key = (no_decay, lid)
    g = groups.setdefault(key, {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                                "lr_scale": scale})
    g["params"].append(t)
  return list(groups.values())


def _cfg(**kw) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(name="adamw", lr=1e-2, weight_decay=0.1, schedule="cosine",
                                     warmup_epochs=0, momentum=0.9))
  for k, v in kw.items():
    c[k] = v
  return c


def _run(cfg, make_torch_opt, steps=5, total=8, frozen=()):
  """Both optimizers for `steps` steps; returns (paths, jax leaves, torch leaves, magnitudes, tx,
  final optimizer state)."""
  params = _params()
  paths, leaves0, treedef = _flat(params)
  tx, sched = optim.make_optimizer(cfg, 1, total)
  state = tx.init(params)
  update = jax.jit(tx.update)
  tparams = [torch.nn.Parameter(torch.tensor(a.copy())) for a in leaves0]
  names = [torch_name(p) for p in paths]
  for n, t in zip(names, tparams):
    if any(re.search(f, n) for f in frozen):
      t.requires_grad_(False)
  topt = make_torch_opt(names, tparams)
  base = [g["lr"] for g in topt.param_groups]
  mag = [np.abs(a).astype(np.float64) for a in leaves0]
  mag_bc = [np.zeros(a.shape) for a in leaves0]          # Adam's float32 bias-correction term
  b2 = cfg.get("b2", 0.999)
  p = params
  for i in range(steps):
    g = _grad(p)
    tg = jax.tree.leaves(g)
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
    lr_t = float(sched(i))
    for g, b in zip(topt.param_groups, base):      # the schedule, scaled per group like timm
      g["lr"] = lr_t * b / cfg.lr
    before = [t.detach().numpy().copy() for t in tparams]
    for t, g in zip(tparams, tg):
      t.grad = torch.tensor(np.asarray(g)) if t.requires_grad else None
    topt.step()
    bc = (i + 1) / (2 * (1 - b2 ** (i + 1))) if cfg.name in ("adam", "adamw") else 0.0
    for j, t in enumerate(tparams):
      d = np.abs(t.detach().numpy() - before[j])
      mag[j] += d
      mag_bc[j] += bc * d
  _, got, _ = _flat(p)
  return paths, got, [t.detach().numpy() for t in tparams], (mag, mag_bc), tx, state, leaves0


def _assert_same(paths, got, want, mags, label):
  """|jax - torch| <= eps·(64·(|p0| + Σ|Δ_t|) + Σ t/(2(1-b2^t))·|Δ_t|); prints the worst in
  ulps of |p0| + Σ|Δ_t|."""
  worst, frac, absmax = 0.0, 0.0, 0.0
  for path, a, b, m, mb in zip(paths, got, want, *mags):
    unit = tol.rounding_atol(m, ulps=1.0)
    allowed = ULPS * unit + tol.rounding_atol(mb, ulps=1.0)
    tol.assert_within(a, b, allowed, err_msg=f"{label} {path}", unit=unit)
    diff = np.abs(a.astype(np.float64) - b)
    absmax = max(absmax, float(diff.max()))
    worst = max(worst, float(np.max(np.divide(diff, unit, out=np.zeros_like(diff),
                                              where=unit > 0))))
    frac = max(frac, float(np.max(np.divide(diff, allowed, out=np.zeros_like(diff),
                                            where=allowed > 0))))
  print(f"{label}: max |jax - torch| = {absmax:.3g}, {worst:.1f} ulps of |p0| + sum |dp|, "
        f"{frac:.2f} of the allowed")
  return worst


def _torch_groups(names, tparams, wd, lr, layer_decay=None, mults=None):
  groups = mae_param_groups(names, tparams, wd, layer_decay)
  if mults:
    out = []
    for g in groups:          # split each group by multiplier (first matching torch-name rule)
      by = {}
      for t in g["params"]:
        n = names[[id(x) for x in tparams].index(id(t))]
        m = next((m for rx, m in mults if re.search(rx, n)), 1.0)
        by.setdefault(m, []).append(t)
      out += [dict(g, params=ts, lr_scale=g["lr_scale"] * m) for m, ts in by.items()]
    groups = out
  return [{"params": [t for t in g["params"] if t.requires_grad], "lr": lr * g["lr_scale"],
           "weight_decay": g["weight_decay"]} for g in groups]


def test_adamw_no_decay_group_matches_torch():
  cfg = _cfg(no_decay=NO_DECAY)
  paths, got, want, mag, *_ = _run(cfg, lambda n, t: torch.optim.AdamW(
      _torch_groups(n, t, cfg.weight_decay, cfg.lr), lr=cfg.lr))
  _assert_same(paths, got, want, mag, "adamw no-decay")
  rows = {r["path"]: r for r in optim.describe_param_groups(_params(), cfg)}
  assert not rows["blocks_0/fc1/bias"]["decay"] and not rows["norm/scale"]["decay"]
  assert not rows["pos_embed"]["decay"] and not rows["cls_token"]["decay"]
  assert rows["blocks_0/fc1/kernel"]["decay"] and rows["head/kernel"]["decay"]


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_coupled_l2_no_decay_group_matches_torch(name):
  cfg = _cfg(name=name, no_decay=NO_DECAY, lr=1e-2 if name == "adam" else 0.1, schedule="step",
             decay_epochs=2, decay_factor=0.5)
  ctor = {"adam": lambda g: torch.optim.Adam(g, lr=cfg.lr),
          "sgd": lambda g: torch.optim.SGD(g, lr=cfg.lr, momentum=cfg.momentum)}[name]
  paths, got, want, mag, *_ = _run(cfg, lambda n, t: ctor(
      _torch_groups(n, t, cfg.weight_decay, cfg.lr)))
  _assert_same(paths, got, want, mag, f"{name} no-decay")


@pytest.mark.parametrize("decay", [0.75, 0.65])
def test_layer_decay_matches_torch_mae_groups(decay):
  cfg = _cfg(no_decay=NO_DECAY, layer_decay=decay, layer_decay_num_layers=DEPTH, warmup_epochs=2)
  paths, got, want, mag, *_ = _run(cfg, lambda n, t: torch.optim.AdamW(
      _torch_groups(n, t, cfg.weight_decay, cfg.lr, layer_decay=decay), lr=cfg.lr))
  _assert_same(paths, got, want, mag, f"layer decay {decay}")
  rows = {r["path"]: r for r in optim.describe_param_groups(_params(), cfg)}
  for path, r in rows.items():     # the scales are MAE's
    lid = mae_layer_id(torch_name(path), DEPTH + 1)
    assert r["layer_id"] == lid and r["lr_scale"] == pytest.approx(decay ** (DEPTH + 1 - lid))


def test_layer_decay_scales_equal_timm():
  """timm's `param_groups_layer_decay` (with timm's ViT group matcher) gives MAE's lr scales except
  for the final `norm`, which timm puts one layer below the head (scale decay^1; MAE: with the
  head, scale 1): `lr_mults=(("^norm/", decay),)` on top of our (MAE) layer ids gives timm's."""
  from timm.optim import param_groups_layer_decay
  names = [torch_name(p) for p in _flat(_params())[0]]

  class M(torch.nn.Module):
    def __init__(self):
      super().__init__()
      for n in names:
        mod, leaf = self, n.split(".")
        for part in leaf[:-1]:
          if not hasattr(mod, part):
            mod.add_module(part, torch.nn.Module())
          mod = getattr(mod, part)
        mod.register_parameter(leaf[-1], torch.nn.Parameter(torch.zeros(2)))

    def group_matcher(self, coarse=False):      # timm VisionTransformer.group_matcher
      return dict(stem=r"^cls_token|pos_embed|patch_embed",
                  blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

  m = M()
  cfg = _cfg(layer_decay=0.75, layer_decay_num_layers=DEPTH, lr_mults=((r"^norm/", 0.75),))
  ours = {torch_name(r["path"]): r["lr_scale"] for r in optim.describe_param_groups(_params(), cfg)}
  timm_scale = {}
  for g in param_groups_layer_decay(m, weight_decay=0.1, layer_decay=0.75):
    for t in g["params"]:
      timm_scale[next(n for n, p in m.named_parameters() if p is t)] = g["lr_scale"]
  assert timm_scale.keys() == ours.keys()
  for n in ours:
    assert ours[n] == pytest.approx(timm_scale[n], rel=1e-12), n


def test_lr_mults_and_frozen_match_torch():
  mults = ((r"^head\.", 10.0), (r"^blocks\.2\.", 0.5))
  cfg = _cfg(no_decay=NO_DECAY, lr_mults=((r"^head/", 10.0), (r"blocks_2/", 0.5)),
             frozen=(r"^patch_embed/", r"^blocks_0/"), grad_clip_norm=0.5)
  frozen_t = (r"^patch_embed\.", r"^blocks\.0\.")

  def make(n, t):
    return torch.optim.AdamW(_torch_groups(n, t, cfg.weight_decay, cfg.lr, mults=mults),
                             lr=cfg.lr)

  class Clipped:   # torch.nn.utils.clip_grad_norm_ over the trainable parameters, then AdamW
    def __init__(self, n, t):
      self.opt, self.t = make(n, t), [x for x in t if x.requires_grad]
      self.param_groups = self.opt.param_groups

    def step(self):
      torch.nn.utils.clip_grad_norm_(self.t, cfg.grad_clip_norm)
      self.opt.step()

  paths, got, want, mag, tx, state, p0 = _run(cfg, Clipped, frozen=frozen_t)
  _assert_same(paths, got, want, mag, "lr mults + frozen + clip")
  for path, a, b in zip(paths, got, p0):
    if path.startswith(("patch_embed/", "blocks_0/")):
      np.testing.assert_array_equal(a, b, err_msg=path)       # frozen: bit-identical
  # frozen leaves hold no optimizer state: the adam moments cover the trainable leaves only
  n_state = sum(x.size for x in jax.tree.leaves(state) if np.ndim(x) > 0)
  trainable = sum(a.size for path, a in zip(paths, p0)
                  if not path.startswith(("patch_embed/", "blocks_0/")))
  assert n_state == 2 * trainable
  rows = {r["path"]: r for r in optim.describe_param_groups(_params(), cfg)}
  assert rows["head/kernel"]["lr_mult"] == 10.0 and rows["blocks_2/fc1/kernel"]["lr_mult"] == 0.5
  assert rows["blocks_0/fc1/kernel"]["frozen"] and not rows["blocks_1/fc1/kernel"]["frozen"]
  text = optim_rules.summarize_param_groups(rows.values())
  assert "frozen: 8 leaves" in text and "lr x10" in text


@pytest.mark.parametrize("field,value,named", [
    ("no_decay", (r"/bias$", r"/gamma$"), "/gamma$"),
    ("frozen", (r"^encoder/",), "^encoder/"),
    ("lr_mults", ((r"^head/", 2.0), (r"^head/kernel", 3.0)), "^head/kernel"),   # shadowed
    ("layer_decay_block_regex", r"layers_(\d+)/", "layer_decay_block_regex = 'layers_("),
])
def test_rule_matching_nothing_is_an_error(field, value, named):
  cfg = _cfg(**{field: value})
  if field.startswith("layer_decay"):
    cfg.layer_decay, cfg.layer_decay_num_layers = 0.75, DEPTH
  tx, _ = optim.make_optimizer(cfg, 1, 8)
  with pytest.raises(UserError, match=re.escape(named)):
    tx.init(_params())
  with pytest.raises(UserError, match=re.escape(named)):
    optim.describe_param_groups(_params(), cfg)


@pytest.mark.parametrize("kw,msg", [
    (dict(no_decay=("(",)), "not a valid regex"),
    (dict(lr_mults=(("head", "x"),)), "not a (regex, multiplier) pair"),
    (dict(layer_decay=0.75), "layer_decay_num_layers"),
    (dict(layer_decay=1.5, layer_decay_num_layers=3), "expected 0"),
    (dict(layer_decay=0.75, layer_decay_num_layers=3, layer_decay_block_regex="blocks_"),
     "needs a group"),
])
def test_bad_rule_config_is_a_user_error(kw, msg):
  with pytest.raises(UserError, match=re.escape(msg)):
    optim.make_optimizer(_cfg(**kw), 1, 8)


def _old_make_optimizer(cfg, steps_per_epoch, total_steps):
  """`make_optimizer` as it was before the rules (commit 5cf9e95), verbatim."""
  sched = optim.make_schedule(cfg, steps_per_epoch, total_steps)
  wd = cfg.get("weight_decay", 0.0)
  clip = cfg.get("grad_clip_norm", 0.0)
  chain = [optax.clip_by_global_norm(clip)] if clip else []
  if cfg.name == "sgd":
    chain += [optax.add_decayed_weights(wd), optax.sgd(sched, momentum=cfg.momentum or None,
                                                       nesterov=cfg.get("nesterov", False))]
  elif cfg.name == "adam":
    chain += [optax.add_decayed_weights(wd),
              optax.adam(sched, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                         eps=cfg.get("eps", 1e-8))]
  elif cfg.name == "adamw":
    chain += [optax.adamw(sched, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                          eps=cfg.get("eps", 1e-8), weight_decay=wd)]
  return optax.chain(*chain), sched


@pytest.mark.parametrize("config", ["former_dfer:dfew", "est:dfew", "abaw_tcn:va",
                                    "frame_resnet:smoke"])
def test_default_config_is_bit_identical_to_the_old_chain(config):
  import importlib
  mod, arg = config.split(":")
  c = importlib.import_module(f"configs.{mod}").get_config(arg).optim
  c.unlock()
  c.grad_clip_norm = c.get("grad_clip_norm", 0.0) or 1.0
  params = _params()
  outs = []
  for make in (optim.make_optimizer, _old_make_optimizer):
    tx, _ = make(c, 2, 10)
    st, p = tx.init(params), params
    for _ in range(3):
      u, st = jax.jit(tx.update)(_grad(p), st, p)
      p = optax.apply_updates(p, u)
    outs.append((p, st))
  jax.tree.map(np.testing.assert_array_equal, outs[0], outs[1])


def test_rules_state_shards_by_path_and_jits(caplog):
  """The multi_transform state is a pytree the FSDP rules shard by path, and a jitted sharded
  update equals the unsharded one; the first init logs the group summary."""
  cfg = _cfg(no_decay=NO_DECAY, frozen=(r"^patch_embed/",), lr_mults=((r"^head/", 10.0),))
  tx, _ = optim.make_optimizer(cfg, 1, 8)
  params = _params()
  with caplog.at_level("INFO", logger="jaxaffect.train"):
    tx.init(params)
    tx.init(params)
  logged = [r.getMessage() for r in caplog.records if "parameter groups" in r.getMessage()]
  assert len(logged) == 1 and f"frozen: 2 leaves, {P * DIM + DIM} parameters" in logged[0], logged
  abstract = jax.eval_shape(lambda p: {"params": p, "opt_state": tx.init(p)}, params)
  mesh = mesh_lib.make_mesh(2, 4)
  sh = mesh_lib.state_shardings(abstract, mesh, [(r"opt_state/.*blocks_\d+/fc1/kernel", "fsdp:8"),
                                                 (".*", "replicate")])
  paths = [optim_rules.path_str(k) for k, s in jax.tree_util.tree_leaves_with_path(sh)
           if "fsdp" in str(s.spec)]
  assert paths and all(re.search(r"blocks_\d/fc1/kernel$", p) for p in paths)
  assert any("no_decay" not in p and "/mu/" in p for p in paths), paths
  with jax.set_mesh(mesh):
    st = jax.jit(tx.init, out_shardings=sh["opt_state"])(params)
    u, _ = jax.jit(tx.update, out_shardings=(None, sh["opt_state"]))(_grad(params), st, params)
  u_ref, _ = tx.update(_grad(params), tx.init(params), params)
  jax.tree.map(lambda a, b: tol.assert_close_ulps(np.asarray(a), np.asarray(b), ulps=4,
                                                  magnitude=np.abs(np.asarray(b)) + 1e-30), u, u_ref)


def test_rules_through_the_loop_fsdp_and_checkpoint(tmp_path):
  """A Former-DFER run with rules (no-decay, frozen stem, lr multiplier) on a data 2 × fsdp 4 mesh
  with FSDP rules equals the single-device run; the frozen leaves do not move; the multi_transform
  state (with its empty masked slots) saves and restores exactly through the Orbax checkpoint."""
  from jaxaffect.train import checkpoint as ckpt_lib
  from tests.train.helpers import random_sources, tiny_config
  from tests.train.test_parallel import _run_steps

  def config(fsdp):
    c = tiny_config()
    c.optim.weight_decay = 0.05       # SGD: Adam would turn reduction-order noise into ±lr steps
    with c.unlocked():
      c.optim.no_decay = (r"/bias$", r"(bn|norm)\d*/scale$")
      c.optim.frozen = (r"^cs_former/stem/",)
      c.optim.lr_mults = ((r"^fc/", 10.0),)
    if fsdp:
      c.mesh.data, c.mesh.fsdp = 2, 4
      c.sharding_rules = ((".*", "fsdp:256"),)
    return c

  c1 = config(False)
  sources = random_sources(c1)
  s1, losses1, _ = _run_steps(c1, mesh_lib.make_mesh(1, 1, devices=jax.devices()[:1]), sources)
  cf = config(True)
  mesh = mesh_lib.make_mesh(2, 4)
  sf, lossesf, s = _run_steps(cf, mesh, sources)
  assert len([sh for sh in jax.tree.leaves(s.state_shardings["opt_state"])
              if "fsdp" in str(sh.spec)]) >= 10
  np.testing.assert_allclose(losses1, lossesf, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               s1["params"], sf["params"])
  with jax.set_mesh(mesh):
    p0 = s.init_fn(loop_rng(cf))["params"]["cs_former"]["stem"]
  jax.tree.map(np.testing.assert_array_equal, mesh_lib.to_host(p0), sf["params"]["cs_former"]["stem"])
  mngr = ckpt_lib.make_manager(str(tmp_path / "ck"), async_save=False)
  with jax.set_mesh(mesh):
    state = jax.device_put(sf, s.state_shardings)
    ckpt_lib.save(mngr, 3, state, cf)
    mngr.wait_until_finished()
    back, _ = ckpt_lib.restore(mngr, 3, ckpt_lib.abstract_with_shardings(s.abstract_state,
                                                                          s.state_shardings))
  mngr.close()
  assert jax.tree.structure(back) == jax.tree.structure(sf)
  jax.tree.map(np.testing.assert_array_equal, mesh_lib.to_host(back), sf)


def loop_rng(config):
  from jaxaffect.train import loop
  return loop._rngs(config)[0]


def test_declared_fields_default_to_the_old_chain_and_take_overrides():
  """`config_fields()` declared in a locked config: off by default (the old chain, no groups), and
  `--config.optim.no_decay=[...]` / `lr_mults=[[...]]` overrides parse into working rules."""
  from configs import former_dfer
  from jaxaffect import config_loader
  c = former_dfer.get_config("smoke")
  with c.unlocked():
    c.optim.update(optim_rules.config_fields())
  c.lock()
  assert not optim_rules.rules_from_config(c.optim).active
  config_loader.apply_overrides(c, [("optim.no_decay", '["/bias$"]'),
                                    ("optim.lr_mults", '[["^fc/", 10]]')])
  assert c.optim.no_decay == ("/bias$",) and c.optim.lr_mults == (("^fc/", 10),)
  rules = optim_rules.rules_from_config(c.optim)
  assert rules.active and rules.lr_mults[0][1] == 10.0
