"""Fields shared by every config (trainer, mesh, checkpoints, logging)."""
from __future__ import annotations

import ml_collections

from jaxaffect.errors import UserError


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """`variant,key=value,...` → ConfigDict (big_vision's `parse_arg`); the first bare word is the variant."""
  out = dict(defaults)
  for i, tok in enumerate([t for t in (arg or "").split(",") if t]):
    if "=" in tok:
      k, v = tok.split("=", 1)
      if k not in out:
        raise UserError(f"config argument {k!r} unknown; known: {sorted(out)}")
      out[k] = type(out[k])(v) if not isinstance(out[k], bool) else v.lower() in ("1", "true")
    elif i == 0 and "variant" in out:
      out["variant"] = tok
    else:
      raise UserError(f"config argument {tok!r}: expected key=value")
  return ml_collections.ConfigDict(out)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                      # PRNG seed: parameters, dropout (fold_in per step) and data order
  c.partitionable_init_rng = False  # True: each device draws only its shard at init (huge models)
  c.batch_size = 32               # global batch (all hosts and devices together)
  c.num_epochs = 100              # epochs over the training source
  c.num_steps = -1                # >0 overrides num_epochs (total optimizer steps)
  c.log_every_steps = 50          # train metrics / progress line period (0 = min(50, eval period))
  c.eval_every_steps = 0          # 0 = once per epoch (periods: steps >= 0, 0 = default)
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                # data-parallel axis size (-1 = all remaining devices)
  c.mesh.fsdp = 1                 # FSDP axis size (parameters sharded over it by `sharding_rules`)
  # (regex on the state path, tactic): 'replicate' or 'fsdp'; first match wins.
  c.sharding_rules = (((".*", "replicate"),))
  # Start from another run's weights (jaxaffect/train/init_from.py): its checkpoint at `step`
  # (-1 = latest; `best` = the best by its metric), variables whose path matches a `keep` regex
  # (all if empty) and no `drop` regex, with equal shapes; the rest stays freshly initialised.
  c.init_from = ml_collections.ConfigDict()
  c.init_from.workdir = ""        # '' = no
  c.init_from.step = -1
  c.init_from.best = False
  c.init_from.keep = ()
  c.init_from.drop = ()
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep = 3           # keep the last N checkpoints ...
  c.checkpoint.best_metric = "uar"  # ... and the best by this eval metric ('' = none)
  c.checkpoint.best_mode = "max"  # 'max' or 'min'
  c.checkpoint.every_steps = 0    # 0 = at every evaluation
  c.checkpoint.async_save = True  # Orbax asynchronous saving
  return c


def optim_config() -> ml_collections.ConfigDict:
  """`config.optim` with the optimizer-rule fields declared (all off: no_decay, frozen, lr_mults,
  layer_decay; see jaxaffect/train/optim_rules.py), so `--config.optim.no_decay='["bias$"]'`
  works from the command line; the config file then sets name, lr, schedule, ..."""
  from jaxaffect.train import optim_rules
  c = ml_collections.ConfigDict()
  c.update(optim_rules.config_fields())
  return c
