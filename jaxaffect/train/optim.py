"""Optimizers and learning-rate schedules from a config, with torch-equivalent semantics."""
from __future__ import annotations

import ml_collections
import optax

from jaxaffect.errors import UserError
from jaxaffect.train import optim_rules


def make_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int):
  """Schedules indexed by optimizer step.

  - `step`: torch StepLR(step_size=`decay_epochs`, gamma=`decay_factor`), stepped once per epoch.
  - `cosine`: linear warm-up for `warmup_epochs`, then cosine to 0 at the end of training.
  - `cosine_epoch`: EST's official schedule, piecewise constant per epoch: torch
    `CosineAnnealingLR(T_max=num_epochs)` stepped with the epoch (closed form
    lr·(1 + cos(π e / T_max)) / 2) times `pytorch_warmup.LinearWarmup(warmup_period=warmup_epochs)`
    dampened once per epoch (factor min(1, (e + 1) / warmup_epochs)).
  - `constant`.
  """
  lr = cfg.lr
  warm = int(round(cfg.get("warmup_epochs", 0) * steps_per_epoch))
  if cfg.schedule == "constant":
    sched = optax.constant_schedule(lr)
  elif cfg.schedule == "step":
    every = int(cfg.decay_epochs * steps_per_epoch)
    if every <= 0:
      raise UserError(f"optim.decay_epochs={cfg.decay_epochs} gives no decay step")
    bounds = {k * every: cfg.decay_factor for k in range(1, total_steps // every + 1)}
    sched = optax.piecewise_constant_schedule(lr, bounds)
  elif cfg.schedule == "cosine":
    sched = optax.cosine_decay_schedule(lr, max(total_steps - warm, 1))
  elif cfg.schedule == "cosine_epoch":
    import jax.numpy as jnp
    t_max = max(total_steps // max(steps_per_epoch, 1), 1)
    w_ep = cfg.get("warmup_epochs", 0)

    def sched(step):
      e = (jnp.asarray(step) // steps_per_epoch).astype(jnp.float32)   # traced or a Python int
      f = jnp.minimum(1.0, (e + 1.0) / w_ep) if w_ep > 0 else 1.0
      return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * e / t_max)) * f
    return sched
  else:
    raise UserError(f"optim.schedule={cfg.schedule!r}: expected step, cosine, cosine_epoch or "
                    f"constant")
  if warm > 0:
    sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warm), sched], [warm])
  return sched


def _group_transform(cfg: ml_collections.ConfigDict, sched, wd: float):
  """The optimizer proper (no clipping) with learning-rate schedule `sched` and weight decay `wd`."""
  if cfg.name == "sgd":
    return optax.chain(optax.add_decayed_weights(wd),
                       optax.sgd(sched, momentum=cfg.momentum or None,
                                 nesterov=cfg.get("nesterov", False)))
  if cfg.name == "adam":
    return optax.chain(optax.add_decayed_weights(wd),
                       optax.adam(sched, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                                  eps=cfg.get("eps", 1e-8)))
  if cfg.name == "adamw":
    return optax.adamw(sched, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                       eps=cfg.get("eps", 1e-8), weight_decay=wd)
  raise UserError(f"optim.name={cfg.name!r}: expected sgd, adam or adamw")


def make_optimizer(cfg: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int):
  """(optax transform, schedule).

  - `sgd`: torch SGD with momentum and coupled weight decay (`g + wd·p` before momentum), which is
    what `torch.optim.SGD(weight_decay=...)` does.
  - `adam`: torch Adam with coupled L2 weight decay.
  - `adamw`: decoupled weight decay (torch AdamW).

  Per-parameter rules (`no_decay`, `frozen`, `lr_mults`, `layer_decay`: see `optim_rules`) turn
  the transform into an `optax.multi_transform` over parameter groups, the torch param groups;
  without them the transform is the single chain below, unchanged.
  """
  sched = make_schedule(cfg, steps_per_epoch, total_steps)
  wd = cfg.get("weight_decay", 0.0)
  clip = cfg.get("grad_clip_norm", 0.0)
  if cfg.name not in ("sgd", "adam", "adamw"):
    raise UserError(f"optim.name={cfg.name!r}: expected sgd, adam or adamw")
  rules = optim_rules.rules_from_config(cfg)
  if rules.active:
    return optim_rules.rules_transform(
        rules, cfg, lambda s, d: _group_transform(cfg, s, d), sched, clip), sched
  chain = [optax.clip_by_global_norm(clip)] if clip else []
  if cfg.name == "sgd":
    chain += [optax.add_decayed_weights(wd), optax.sgd(sched, momentum=cfg.momentum or None,
                                                       nesterov=cfg.get("nesterov", False))]
  elif cfg.name == "adam":
    chain += [optax.add_decayed_weights(wd),
              optax.adam(sched, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                         eps=cfg.get("eps", 1e-8))]
  else:
    chain += [optax.adamw(sched, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                          eps=cfg.get("eps", 1e-8), weight_decay=wd)]
  return optax.chain(*chain), sched


def describe_param_groups(params, cfg: ml_collections.ConfigDict) -> list[dict]:
  """Per leaf path: decay, frozen, lr multiplier, lr scale (see `optim_rules.describe_param_groups`)."""
  return optim_rules.describe_param_groups(params, cfg)
