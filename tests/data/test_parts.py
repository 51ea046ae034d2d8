"""The data config by parts (issue 11 item 7): `config.data.source` / `config.data.sampler`
sub-configs owned by small classes found by name."""
from __future__ import annotations

import glob
import os
import re
import sys
import textwrap

import numpy as np
import pytest

from jaxaffect import config_loader
from jaxaffect.data import parts, pipeline
from jaxaffect.errors import UserError

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(os.path.dirname(__file__), "..", "..", "configs", "*.py"))
    if not p.endswith(("__init__.py", "common.py")))


def test_builtin_parts_are_found_by_name_and_declare_disjoint_fields():
  assert parts.names("source") == ["features", "list_file", "mixture", "shards", "synthetic"]
  assert parts.names("sampler") == ["est", "feature_windows", "former_dfer", "frame",
                                    "frame_views", "sequence", "window"]
  # `view` flattens shared + source + sampler: a field name declared by a source and by a sampler
  # (or by either and the shared fields) would be ambiguous there
  src_fields = {f for n in parts.names("source") for f in parts.lookup("source", n).FIELDS}
  smp_fields = {f for n in parts.names("sampler") for f in parts.lookup("sampler", n).FIELDS}
  assert not src_fields & smp_fields
  assert not (src_fields | smp_fields) & set(parts.SHARED_FIELDS)
  assert "name" not in src_fields | smp_fields


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_variant_has_the_data_by_parts(name):
  """No config keeps a union of every sampler's fields: each data field is shared or belongs to
  the chosen source / sampler, and the two parts fit together."""
  mod = __import__(f"configs.{name}", fromlist=["VARIANTS"])
  for v in mod.VARIANTS:
    c = config_loader.load(f"{name}:{v}")
    assert set(c.data.keys()) == set(parts.SHARED_FIELDS) | set(parts.KINDS), (name, v)
    smp_cls = parts.lookup("sampler", c.data.sampler.name)
    if c.data.source.name == "synthetic" and smp_cls.SOURCES and "shards" in smp_cls.SOURCES:
      # synthetic videos named for the prep step only (frame_resnet:smoke): a clear error, then
      # the variant runs on the prepped shards
      with pytest.raises(UserError, match=re.escape(f"reads only data.source "
                                                    f"{list(smp_cls.SOURCES)}, not 'synthetic' "
                                                    f"(write the synthetic videos as shards")):
        parts.check(c.data)
      c = config_loader.load(f"{name}:{v},shards=/s")
    src, smp = parts.check(c.data)
    assert set(c.data.source.keys()) == {"name"} | set(type(src).FIELDS)
    assert set(c.data.sampler.keys()) == {"name"} | set(type(smp).FIELDS)


def test_command_line_switches_a_part_keeping_common_fields():
  c = config_loader.load("frame_resnet:affwild2", ["--config.data.sampler.name=window",
                                                   "--config.data.sampler.window=12"])
  assert dict(c.data.sampler) == dict(name="window", crop="zoom", hflip=True, color_jitter=0.2,
                                      crop_scale=(0.08, 1.0), window=12, stride=200)
  c = config_loader.load("former_dfer:smoke", ["--config.data.source=shards",
                                               "--config.data.source.shards=/s"])
  assert dict(c.data.source)["shards"] == "/s" and c.data.source.train_select == "train"
  assert "num_train" not in c.data.source        # the synthetic source's fields are gone


@pytest.mark.parametrize("override,needle", [
    ("--config.data.duration=1", r"did you mean config.data.sampler.duration\?"),
    ("--config.data.shards=/s", r"a field of data.source \['shards'\]: switch with "
                                r"--config.data.source.name=shards"),
    ("--config.data.sampler.name=nope", r"unknown sampler \(known: \['est', "),
    ("--config.data.sampler.name=frame_views", r"reads only data.source \['shards'\], not "
                                               r"'synthetic'"),
])
def test_part_errors_name_the_field(override, needle):
  with pytest.raises(UserError, match=needle):
    c = config_loader.load("former_dfer:smoke", [override])
    parts.check(c.data)


def test_from_flat_splits_an_old_flat_data_config():
  d = parts.from_flat(dict(source="synthetic", num_train=4, num_eval=2, video_frames=5,
                           synthetic_pose=0.1, image_size=16, num_segments=2, duration=1,
                           window=9))          # `window`: another sampler's field, unused: dropped
  assert d.source.name == "synthetic" and d.source.pose == 0.1 and d.source.num_train == 4
  assert d.sampler.name == "former_dfer" and (d.sampler.num_segments, d.sampler.duration) == (2, 1)
  assert d.image_size == 16 and "window" not in d.sampler
  with pytest.raises(UserError, match=r"field\(s\) \['windw'\] belong to no part"):
    parts.from_flat(dict(source="synthetic", windw=3))
  with pytest.raises(UserError, match=r"has no field\(s\) \['nope'\]"):
    parts.source_config("shards", nope=1)


def test_a_source_and_sampler_outside_the_package_by_module_path(tmp_path, monkeypatch):
  """A new part is one class in any importable module, named by its path; nothing in
  jaxaffect is edited (the toy source gives videos whose frames are the label's grey level)."""
  pkg = tmp_path / "toyparts"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "mine.py").write_text(textwrap.dedent('''
      import numpy as np
      from jaxaffect.data import parts
      from jaxaffect.data.sources import InMemoryVideos

      class Levels(parts.Source):
        FIELDS = dict(num_videos=6, frames=3)
        def build(self):
          n, t, s = self.cfg.num_videos, self.cfg.frames, self.data.image_size
          y = np.arange(n) % self.data.num_classes
          v = np.broadcast_to((y * 30).astype(np.uint8)[:, None, None, None, None],
                              (n, t, s, s, 3)).copy()
          return InMemoryVideos(v, y, "levels"), InMemoryVideos(v[:2], y[:2], "levels-eval")

      class Middle(parts.Sampler):
        FIELDS = dict(offset=0)
        def make(self, train):
          def clip(rec, rng=None):
            f = rec["frames"]
            return {"image": f[len(f) // 2 + self.cfg.offset], "label": rec["label"],
                    "mask": np.float32(1)}
          return clip
  '''))
  monkeypatch.syspath_prepend(str(tmp_path))
  d = parts.data_config(dict(name="toyparts.mine.Levels", num_videos=5),
                        dict(name="toyparts.mine.Middle", offset=1), image_size=4, num_classes=3)
  tr, ev = pipeline.build_sources(d)
  assert (len(tr), len(ev)) == (5, 2)
  ex = pipeline.make_clip(d, train=True)(tr[4])
  assert ex["image"].shape == (4, 4, 3) and int(ex["image"][0, 0, 0]) == 30 * (4 % 3)
  assert pipeline.batch_spec(tr, d, 2)["image"].shape == (2, 4, 4, 3)
  spec = pipeline.spec_sources(d)[0]["frames"]            # default stand-in: 1 black frame
  assert spec.shape == (1, 4, 4, 3) and not spec.any()
  sys.modules.pop("toyparts.mine", None)
  sys.modules.pop("toyparts", None)


def test_spec_stand_in_is_long_enough_for_each_video_sampler():
  for name, want in (("former_dfer", 16), ("est", 35), ("frame", 1), ("window", 300),
                     ("frame_views", 1)):
    d = parts.data_config("shards", name, image_size=8)
    assert pipeline.spec_sources(d)[0]["frames"].shape[0] == want, name
    assert np.asarray(pipeline.spec_sources(d)[0]["frames"]).dtype == np.uint8
