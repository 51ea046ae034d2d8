"""Per-parameter optimizer rules (big_vision / timm / MAE style), decided by regexes on the path.

A parameter's path is its '/'-joined key in the `params` tree (`blocks_0/attn/qkv/bias`,
`cls_token`), the state path of the sharding rules without the leading `params/`; a regex applies
when `re.search` finds it in the path. Fields of `config.optim` (all optional; when none is set
`optim.make_optimizer` builds exactly the chain it always built):

- `no_decay`: regexes; matching leaves get no weight decay (neither sgd/adam's coupled L2 nor
  adamw's decoupled decay) — torch: a param group with `weight_decay=0`.
- `frozen`: regexes; matching leaves get zero updates (`optax.set_to_zero`) and hold no optimizer
  state (their slots are `optax.MaskedNode`); they are also left out of gradient clipping —
  torch: `requires_grad=False`.
- `lr_mults`: `((regex, multiplier), ...)`, the first match wins; the leaf's learning rate is
  `schedule(step) · multiplier` — torch: a param group with `lr=lr·multiplier` (scaled by the
  scheduler like the others).
- `layer_decay` (0 = off), `layer_decay_num_layers` (L, the number of blocks),
  `layer_decay_block_regex` (one group capturing the block index i → layer id i + 1, default
  `(^|/)blocks_(\\d+)/`), `layer_decay_embed_regex` (layer id 0, default patch/pos embeddings and
  cls/mask tokens); any other leaf (final norm, head) has layer id L + 1. The learning rate is
  scaled by `layer_decay ** (L + 1 - layer_id)`, as MAE's `util/lr_decay.param_groups_lrd` and
  timm's `param_groups_layer_decay` (MAE fine-tuning: 0.75 for ViT-B, 0.65 for ViT-L). Combined
  with `lr_mults` the two factors multiply.

Leaves with the same (decay, lr scale) share one optax transformation inside
`optax.multi_transform`; the groups are derived from the parameter tree when the optimizer is
initialised (and identically, from the gradient tree, at each update), so only groups that hold
parameters exist. A rule that matches no parameter is a `UserError` naming it: a silent no-op rule
is the classic bug of regex-configured optimizers.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import re
from typing import Any, Callable, Sequence

import jax
import numpy as np
import optax

from jaxaffect.errors import UserError

log = logging.getLogger("jaxaffect.train")

DEFAULT_BLOCK_REGEX = r"(^|/)blocks_(\d+)/"
DEFAULT_EMBED_REGEX = r"(^|/)(patch_embed|pos_embed|cls_token|mask_token)(/|$)"
FROZEN = "frozen"


def path_str(path) -> str:
  """A `tree_util` key path → 'a/b/c' (the convention of the sharding rules)."""
  from jaxaffect.train.mesh import _path_str
  return _path_str(path)


def config_fields() -> dict[str, Any]:
  """The rule fields of `config.optim` with their defaults (all off), for a config file that wants
  them overridable from the command line: `c.optim.update(optim_rules.config_fields())`."""
  return {"no_decay": (), "frozen": (), "lr_mults": (), "layer_decay": 0.0,
          "layer_decay_num_layers": 0, "layer_decay_block_regex": DEFAULT_BLOCK_REGEX,
          "layer_decay_embed_regex": DEFAULT_EMBED_REGEX}


def _compile(rx: Any, field: str) -> re.Pattern:
  if not isinstance(rx, str):
    raise UserError(f"config.optim.{field}: {rx!r} is not a regex string")
  try:
    return re.compile(rx)
  except re.error as e:
    raise UserError(f"config.optim.{field}: {rx!r} is not a valid regex ({e})") from None


@dataclasses.dataclass(frozen=True)
class Rules:
  no_decay: tuple[re.Pattern, ...] = ()
  frozen: tuple[re.Pattern, ...] = ()
  lr_mults: tuple[tuple[re.Pattern, float], ...] = ()
  layer_decay: float = 0.0
  num_layers: int = 0
  block_regex: re.Pattern | None = None
  embed_regex: re.Pattern | None = None

  @property
  def active(self) -> bool:
    return bool(self.no_decay or self.frozen or self.lr_mults or self.layer_decay)


def rules_from_config(cfg) -> Rules:
  """The rules of `config.optim` (validated: regexes, numbers; matching is checked on params)."""
  def seq(field):
    v = cfg.get(field, ()) or ()
    if isinstance(v, str):
      v = (v,)
    return tuple(v)

  no_decay = tuple(_compile(rx, "no_decay") for rx in seq("no_decay"))
  frozen = tuple(_compile(rx, "frozen") for rx in seq("frozen"))
  mults = []
  for item in seq("lr_mults"):
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], (int, float)) and not isinstance(item[1], bool)):
      raise UserError(f"config.optim.lr_mults: {item!r} is not a (regex, multiplier) pair")
    if not item[1] >= 0:
      raise UserError(f"config.optim.lr_mults: multiplier of {item[0]!r} is {item[1]}, "
                      f"expected >= 0")
    mults.append((_compile(item[0], "lr_mults"), float(item[1])))
  decay = float(cfg.get("layer_decay", 0.0) or 0.0)
  num_layers, block_rx, embed_rx = 0, None, None
  if decay:
    if not 0.0 < decay <= 1.0:
      raise UserError(f"config.optim.layer_decay={decay}: expected 0 (off) or a factor in (0, 1]")
    num_layers = int(cfg.get("layer_decay_num_layers", 0) or 0)
    if num_layers <= 0:
      raise UserError("config.optim.layer_decay is set but config.optim.layer_decay_num_layers "
                      f"is {num_layers}: give the number of blocks (12 for ViT-B)")
    block_rx = _compile(cfg.get("layer_decay_block_regex", "") or DEFAULT_BLOCK_REGEX,
                        "layer_decay_block_regex")
    if block_rx.groups < 1:
      raise UserError(f"config.optim.layer_decay_block_regex {block_rx.pattern!r} needs a group "
                      "capturing the block index, e.g. r'blocks_(\\d+)/'")
    embed_rx = _compile(cfg.get("layer_decay_embed_regex", "") or DEFAULT_EMBED_REGEX,
                        "layer_decay_embed_regex")
  return Rules(no_decay, frozen, tuple(mults), decay, num_layers, block_rx, embed_rx)


def _block_index(m: re.Match) -> int:
  groups = [g for g in m.groups() if g is not None and g.isdigit()]
  if not groups:
    raise UserError(f"config.optim.layer_decay_block_regex {m.re.pattern!r} matched "
                    f"{m.string!r} without capturing a block index")
  return int(groups[-1])


def layer_id(rules: Rules, path: str) -> int:
  """MAE's `get_layer_id_for_vit`: embeddings 0, block i → i + 1, the rest L + 1."""
  if rules.embed_regex.search(path):
    return 0
  m = rules.block_regex.search(path)
  if m:
    i = _block_index(m)
    if i >= rules.num_layers:
      raise UserError(f"{path}: block index {i} >= config.optim.layer_decay_num_layers="
                      f"{rules.num_layers}")
    return i + 1
  return rules.num_layers + 1


def _classify(rules: Rules, paths: Sequence[str]) -> list[dict]:
  """Per path: decay, frozen, lr_mult, layer_id, lr_scale; raises for rules matching nothing."""
  used: set[tuple[str, int]] = set()
  rows = []
  for path in paths:
    row = {"path": path}
    row["frozen"] = False
    for i, rx in enumerate(rules.frozen):
      if rx.search(path):
        used.add(("frozen", i))
        row["frozen"] = True
    row["decay"] = True
    for i, rx in enumerate(rules.no_decay):
      if rx.search(path):
        used.add(("no_decay", i))
        row["decay"] = False
    mult = 1.0
    for i, (rx, m) in enumerate(rules.lr_mults):
      if rx.search(path):
        used.add(("lr_mults", i))
        mult = m
        break
    row["lr_mult"] = mult
    scale = mult
    if rules.layer_decay:
      lid = layer_id(rules, path)
      used.add(("layer", lid))
      row["layer_id"] = lid
      row["layer_scale"] = rules.layer_decay ** (rules.num_layers + 1 - lid)
      scale = mult * row["layer_scale"]
    row["lr_scale"] = scale
    rows.append(row)
  unused = [f"config.optim.{f}[{i}] = {rx.pattern!r}"
            for f in ("frozen", "no_decay") for i, rx in enumerate(getattr(rules, f))
            if (f, i) not in used]
  # a later lr_mults entry shadowed by earlier ones (first match wins) also matches nothing
  unused += [f"config.optim.lr_mults[{i}] = ({rx.pattern!r}, {m})"
             for i, (rx, m) in enumerate(rules.lr_mults) if ("lr_mults", i) not in used]
  if rules.layer_decay:
    if ("layer", 0) not in used:
      unused.append(f"config.optim.layer_decay_embed_regex = {rules.embed_regex.pattern!r}")
    if not any(("layer", i) in used for i in range(1, rules.num_layers + 1)):
      unused.append(f"config.optim.layer_decay_block_regex = {rules.block_regex.pattern!r}")
  if unused:
    shown = ", ".join(paths[:6]) + (" …" if len(paths) > 6 else "")
    raise UserError(f"optimizer rules that match no parameter: {'; '.join(unused)} "
                    f"(parameter paths look like: {shown})")
  return rows


def _leaves(params) -> tuple[list[str], list[Any], Any]:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  return [path_str(p) for p, _ in leaves], [x for _, x in leaves], treedef


def describe_param_groups(params: Any, cfg) -> list[dict]:
  """For each leaf of `params` (arrays or `jax.ShapeDtypeStruct`s): `path`, `shape`, `size`,
  `decay` (weight decay applies: also False when `weight_decay` is 0), `frozen`, `lr_mult`,
  `lr_scale` (multiplier × layer-decay scale) and, with layer decay, `layer_id`, `layer_scale`."""
  rules = rules_from_config(cfg)
  paths, leaves, _ = _leaves(params)
  rows = _classify(rules, paths)
  wd = float(cfg.get("weight_decay", 0.0) or 0.0)
  for row, x in zip(rows, leaves):
    row["shape"] = tuple(getattr(x, "shape", ()))
    row["size"] = int(np.prod(row["shape"], dtype=np.int64))
    row["decay"] = bool(row["decay"] and wd and not row["frozen"])
  return rows


def summarize_param_groups(rows: Sequence[dict]) -> str:
  """One line per group: leaves, parameters, decay, lr scale (frozen groups first)."""
  groups = collections.OrderedDict()
  for r in sorted(rows, key=lambda r: (not r["frozen"], not r["decay"], -r["lr_scale"])):
    key = ("frozen",) if r["frozen"] else (r["decay"], r["lr_scale"])
    n, s = groups.get(key, (0, 0))
    groups[key] = (n + 1, s + r["size"])
  lines = []
  for key, (n, s) in groups.items():
    what = "frozen" if key == ("frozen",) else (
        f"{'decay' if key[0] else 'no decay'}, lr x{key[1]:.6g}")
    lines.append(f"  {what}: {n} leaves, {s:,} parameters")
  return "optimizer parameter groups:\n" + "\n".join(lines)


def _scaled(sched: Callable, scale: float) -> Callable:
  if scale == 1.0:
    return sched
  return lambda step: sched(step) * scale


def rules_transform(rules: Rules, cfg, make_group: Callable[[Callable, float], Any], sched,
                    clip: float) -> optax.GradientTransformation:
  """`[zero frozen grads, clip by global norm,] multi_transform(groups)`; the groups (label →
  `make_group(scaled schedule, weight decay)`) are derived from the tree at init and update."""
  wd = float(cfg.get("weight_decay", 0.0) or 0.0)
  logged = []

  def build(tree):
    paths, _, treedef = _leaves(tree)
    rows = _classify(rules, paths)
    labels, transforms = [], {}
    for r in rows:
      if r["frozen"]:
        label = FROZEN
        transforms[label] = optax.set_to_zero()
      else:
        d = wd if r["decay"] else 0.0
        label = f"{'decay' if d else 'no_decay'}_lr{r['lr_scale']!r}"
        if label not in transforms:
          transforms[label] = make_group(_scaled(sched, r["lr_scale"]), d)
      labels.append(label)
    labels = jax.tree_util.tree_unflatten(treedef, labels)
    chain = []
    if clip:
      if rules.frozen:      # torch: frozen parameters have no .grad, clip_grad_norm_ skips them
        chain.append(optax.masked(optax.set_to_zero(),
                                  jax.tree.map(lambda lab: lab == FROZEN, labels)))
      chain.append(optax.clip_by_global_norm(clip))
    chain.append(optax.multi_transform(transforms, labels))
    return optax.chain(*chain) if len(chain) > 1 else chain[0], rows

  def init(params):
    tx, _ = build(params)
    if not logged:
      logged.append(True)
      log.info("%s", summarize_param_groups(describe_param_groups(params, cfg)))
    return tx.init(params)

  def update(updates, state, params=None):
    tx, _ = build(updates)
    return tx.update(updates, state, params)

  return optax.GradientTransformation(init, update)
