"""The data config by parts: `config.data.source` and `config.data.sampler` are sub-configs, each
owned by a small class found by its `name`.

  config.data                  what every part shares: the examples' shape and label space
    image_size, num_classes, class_names, label_vocab, expr_vocab, read_threads, prefetch_batches
  config.data.source           where the records come from: `name` + the fields of that source
    shards | mixture | synthetic | list_file | features                (data/source_parts.py)
  config.data.sampler          how one example is made of a record: `name` + that sampler's fields
    former_dfer | est | frame | window | sequence | frame_views | feature_windows
                                                                       (data/sampler_parts.py)

A part is a subclass of `Source` or `Sampler` with a `NAME` and its `FIELDS` (field -> default);
defining the class registers it, so a new source or sampler is one class and no table. A name
with a dot (`mylab.data.MySource`) is imported as `module.Class`, so parts outside this package
need no edit here either. `part_config(kind, name, **values)` is the sub-config of a part (its
fields, every one declared, unknown ones refused); the command line switches parts with
`--config.data.sampler.name=frame` (or `--config.data.sampler=frame`), which rebuilds the
sub-config from the new part's fields, keeping the values of the fields both parts have.

The parts hand the older reader functions (`features.FeatureReader`, `frames.make_views`, ...)
`view(data)`: the shared fields, the source's and the sampler's fields flattened into one dict (no
field name is declared by both a source and a sampler, which `test_parts` checks).
"""
from __future__ import annotations

import importlib
from typing import Any, ClassVar

import ml_collections

from jaxaffect.errors import UserError

KINDS = ("source", "sampler")
SHARED_FIELDS: dict[str, Any] = dict(
    image_size=112,               # frames resized to this square size
    num_classes=7,                # clip / expression classes of the task
    class_names=(),               # their names in label order (plots, per-class metrics)
    label_vocab="",               # clip labels converted to this class order ('' = as stored)
    expr_vocab="",                # per-frame EXPR labels converted to this order ('' = as stored)
    read_threads=4,               # grain read threads of the index reader
    prefetch_batches=4,           # batches read ahead
)
_REGISTRY: dict[tuple[str, str], type] = {}


class Part:
  """A source or sampler: `NAME`, `FIELDS` (its config fields with defaults), built on the whole
  `config.data` (`self.data`) and its own sub-config (`self.cfg`)."""
  KIND: ClassVar[str] = ""
  NAME: ClassVar[str] = ""
  FIELDS: ClassVar[dict[str, Any]] = {}

  def __init_subclass__(cls, **kw):
    super().__init_subclass__(**kw)
    if cls.NAME:
      _REGISTRY[(cls.KIND, cls.NAME)] = cls

  def __init__(self, data: ml_collections.ConfigDict):
    self.data, self.cfg = data, data[self.KIND]

  def field(self, name: str) -> str:
    """`config.data.<kind>.<name>`, for error messages."""
    return f"config.data.{self.KIND}.{name}"

  def __repr__(self) -> str:
    return f"{type(self).__name__}({dict(self.cfg)})"


class Source(Part):
  """Where records come from. `SAMPLERS`: the sampler names it feeds (None = every video sampler);
  `PATHS`: fields that are file paths (made absolute in a run's config)."""
  KIND = "source"
  SAMPLERS: ClassVar[tuple[str, ...] | None] = None
  PATHS: ClassVar[tuple[str, ...]] = ()
  READER: ClassVar[str] = "index"     # the train reader ('stream' only where a source offers it)

  def build(self) -> tuple[Any, Any]:
    """(train, eval) random-access sources of records."""
    raise NotImplementedError

  def spec(self, sampler: "Sampler") -> Any:
    """A one-record stand-in whose examples have the configured shapes (build or restore a model
    without reading data): a black video long enough for the sampler."""
    import numpy as np
    from jaxaffect.data.sources import InMemoryVideos
    s = int(self.data.image_size)
    return InMemoryVideos(np.zeros((1, max(1, sampler.min_frames()), s, s, 3), np.uint8),
                          np.zeros((1,), np.int32), "spec")

  def reader(self) -> str:
    return self.READER

  def absolute_paths(self, absolute) -> None:
    for k in self.PATHS:
      self.cfg[k] = absolute(self.cfg[k])


class Sampler(Part):
  """How an example is made of a record. `SOURCES`: the source names it reads (None = every video
  source)."""
  KIND = "sampler"
  SOURCES: ClassVar[tuple[str, ...] | None] = None

  def make(self, train: bool):
    """The per-record callable `(record, rng=None) -> example` (augmented when training)."""
    raise NotImplementedError

  def items(self, train_src, eval_src) -> tuple[Any, Any]:
    """The sources whose items the sampler takes (default: the records themselves)."""
    return train_src, eval_src

  def min_frames(self) -> int:
    """Frames a stand-in video needs for this sampler (`Source.spec`)."""
    return 1


def _load_builtins() -> None:
  from jaxaffect.data import sampler_parts, source_parts  # noqa: F401  (defining registers)


def lookup(kind: str, name: str) -> type:
  """The part class of `kind` ('source' / 'sampler') called `name` (see the module doc)."""
  if kind not in KINDS:
    raise ValueError(f"part kind {kind!r}: expected one of {KINDS}")
  name = str(name)
  _load_builtins()
  if (kind, name) in _REGISTRY:
    return _REGISTRY[(kind, name)]
  if "." in name:
    mod, _, cls_name = name.rpartition(".")
    try:
      cls = getattr(importlib.import_module(mod), cls_name)
    except (ModuleNotFoundError, AttributeError) as e:
      raise UserError(f"config.data.{kind}.name={name!r}: cannot import it ({e})") from None
    base = Source if kind == "source" else Sampler
    if not (isinstance(cls, type) and issubclass(cls, base)):
      raise UserError(f"config.data.{kind}.name={name!r}: not a {base.__name__} subclass")
    return cls
  raise UserError(f"config.data.{kind}.name={name!r}: unknown {kind} (known: {names(kind)}; a "
                  f"{kind} elsewhere is named by its module path, `package.module.Class`)")


def names(kind: str) -> list[str]:
  _load_builtins()
  return sorted(n for k, n in _REGISTRY if k == kind)


def part_config(kind: str, name: str, **values) -> ml_collections.ConfigDict:
  """The sub-config of part `name`: `name` + its declared fields, `values` replacing defaults."""
  cls = lookup(kind, name)
  unknown = sorted(set(values) - set(cls.FIELDS))
  if unknown:
    raise UserError(f"config.data.{kind} {name!r} has no field(s) {unknown} (its fields: "
                    f"{sorted(cls.FIELDS)})")
  out = ml_collections.ConfigDict({"name": name})
  for k, default in cls.FIELDS.items():
    out[k] = values.get(k, default)
  return out


def source_config(name: str, **values) -> ml_collections.ConfigDict:
  return part_config("source", name, **values)


def sampler_config(name: str, **values) -> ml_collections.ConfigDict:
  return part_config("sampler", name, **values)


def switch(kind: str, old: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The sub-config of part `name`, keeping `old`'s values of the fields both parts declare."""
  fields = lookup(kind, name).FIELDS
  keep = {k: old[k] for k in old.keys() if k != "name" and k in fields}
  return part_config(kind, name, **keep)


def data_config(source: dict | str, sampler: dict | str, **shared) -> ml_collections.ConfigDict:
  """A whole `config.data`: shared fields (defaults of `SHARED_FIELDS`) and the two parts, each a
  name or a dict with `name` and field values."""
  unknown = sorted(set(shared) - set(SHARED_FIELDS))
  if unknown:
    raise UserError(f"config.data has no shared field(s) {unknown} (shared: {sorted(SHARED_FIELDS)}"
                    f"; the others belong to data.source or data.sampler)")
  d = ml_collections.ConfigDict(dict(SHARED_FIELDS, **shared))
  for kind, spec in (("source", source), ("sampler", sampler)):
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    d[kind] = part_config(kind, spec.pop("name"), **spec)
  return d


def from_flat(flat: dict) -> ml_collections.ConfigDict:
  """A `config.data` from one flat dict of fields (the layout before the data config had parts,
  e.g. an older run's `config.json`): `source` and `sampler` name the parts (sampler default
  'former_dfer', as then), every other field goes to whichever of shared / source / sampler
  declares it (the source's `pose` / `occlusion` were `synthetic_pose` / `synthetic_occlusion`);
  a field that none declares is an error naming it."""
  flat = dict(flat)
  src = lookup("source", flat.pop("source", "shards"))
  smp = lookup("sampler", flat.pop("sampler", "former_dfer"))
  for old, new in (("synthetic_pose", "pose"), ("synthetic_occlusion", "occlusion")):
    if old in flat:
      flat[new] = flat.pop(old)
  out: dict[str, dict] = {"shared": {}, "source": {"name": src.NAME}, "sampler": {"name": smp.NAME}}
  unknown = []
  for k, v in flat.items():
    if k in SHARED_FIELDS:
      out["shared"][k] = v
    elif k in src.FIELDS:
      out["source"][k] = v
    elif k in smp.FIELDS:
      out["sampler"][k] = v
    elif not any(k in lookup(kd, n).FIELDS for kd in KINDS for n in names(kd)):
      unknown.append(k)                      # fields of other parts are dropped (they were unused)
  if unknown:
    raise UserError(f"config.data: field(s) {sorted(unknown)} belong to no part (shared: "
                    f"{sorted(SHARED_FIELDS)}; source {src.NAME!r}: {sorted(src.FIELDS)}; sampler "
                    f"{smp.NAME!r}: {sorted(smp.FIELDS)})")
  return data_config(out["source"], out["sampler"], **out["shared"])


def source(data: ml_collections.ConfigDict) -> Source:
  return lookup("source", _name(data, "source"))(data)


def sampler(data: ml_collections.ConfigDict) -> Sampler:
  return lookup("sampler", _name(data, "sampler"))(data)


def _name(data, kind: str) -> str:
  sub = data.get(kind, None)
  if not isinstance(sub, (ml_collections.ConfigDict, dict)) or "name" not in sub:
    raise UserError(f"config.data.{kind} must be a sub-config with a `name` (data config by parts: "
                    f"jaxaffect/data/parts.py), got {sub!r}")
  return str(sub["name"])


def check(data: ml_collections.ConfigDict) -> tuple[Source, Sampler]:
  """The two parts of `config.data`, checked to fit together."""
  src, smp = source(data), sampler(data)
  if src.SAMPLERS is not None and smp.NAME not in src.SAMPLERS:
    raise UserError(f"config.data.sampler.name={smp.NAME!r} with data.source.name={src.NAME!r}: "
                    f"this source feeds only {list(src.SAMPLERS)}")
  if smp.SOURCES is not None and src.NAME not in smp.SOURCES:
    hint = (" (write the synthetic videos as shards first: `python -m data_prep synthetic`, as "
            "`jaxaffect demo` does)" if src.NAME == "synthetic" and "shards" in smp.SOURCES else "")
    raise UserError(f"config.data.sampler.name={smp.NAME!r} reads only data.source "
                    f"{list(smp.SOURCES)}, not {src.NAME!r}{hint}")
  return src, smp


def view(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shared + source + sampler fields in one flat dict (`source` / `sampler` = their names), for
  the reader functions that take one dict of fields."""
  flat = {k: v for k, v in data.items() if k not in KINDS}
  for kind in KINDS:
    sub = data[kind]
    flat.update({k: v for k, v in sub.items() if k != "name"})
    flat[kind] = sub["name"]
  return ml_collections.ConfigDict(flat)
