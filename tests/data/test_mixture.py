"""The `mixture` source (several shard directories with weights; ABAW6's MAE corpus), the
resized-crop scale of the frame samplers, and frame_views without landmarks (issue 13 item 5)."""
from __future__ import annotations

import collections
import types

import numpy as np
import pytest

from data_prep import cli as prep_cli
from data_prep import shards
from jaxaffect.data import augment, mixture, parts, pipeline
from jaxaffect.errors import UserError


def _prep(out, n, seed):
  args = prep_cli.build_parser().parse_args(
      ["synthetic", "--src", "-", "--out", str(out), "--num-videos", str(n), "--heldout-videos",
       "2", "--num-frames", "3", "--render-size", "24", "--size", "24", "--quiet",
       "--occlusion", "0", "--seed", str(seed)])
  shards.run("synthetic", args)
  return str(out)


@pytest.fixture(scope="module")
def two_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("mix")
  return _prep(root / "a", 4, 1), _prep(root / "b", 6, 2)


def _data(dirs, weights=(1.0, 3.0), **src):
  comps = [dict(shards=d, weight=w) for d, w in zip(dirs, weights)]
  return parts.data_config(dict(name="mixture", sources=comps, eval_select="test", **src),
                           dict(name="frame", crop="resized_crop", crop_scale=(0.2, 1.0)),
                           image_size=16, read_threads=1, prefetch_batches=1)


def test_training_mixes_in_the_weights_proportions_and_covers_each_component(two_dirs):
  d = _data(two_dirs)
  tr, ev = pipeline.build_sources(d)
  assert (len(tr), len(ev)) == (10, 4)                     # an epoch = 4 + 6; eval: 2 + 2
  ds = tr.map_dataset(seed=0)
  idx = [int(ds[i]["index"]) for i in range(400)]
  comp = collections.Counter(i >= 4 for i in idx)          # index offset: b's records are 4..9
  assert comp[False] == 100 and comp[True] == 300          # exactly 1 : 3
  a_items = [i for i in idx if i < 4]
  for e in range(len(a_items) // 4):                       # each pass over a: every record once
    assert sorted(a_items[4 * e:4 * e + 4]) == [0, 1, 2, 3]
  assert a_items[:4] != a_items[4:8] or a_items[4:8] != a_items[8:12]   # reshuffled per pass
  ev_idx = [int(ev[i]["index"]) for i in range(len(ev))]
  assert ev_idx == [0, 1, 2, 3] and ev[2]["record"].split == "test"


def test_mixture_iterator_batches_resume_exactly(two_dirs):
  d = _data(two_dirs)
  tr, _ = pipeline.build_sources(d)
  it = pipeline.train_iterator(tr, d, 4, seed=3)
  next(it)
  state = it.get_state()
  want = next(it)
  it2 = pipeline.train_iterator(tr, d, 4, seed=3)
  it2.set_state(state)
  got = next(it2)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
  assert want["image"].shape == (4, 16, 16, 3)


def test_labels_drop_and_vocabulary_checks(two_dirs):
  tr, _ = pipeline.build_sources(_data(two_dirs, labels="drop"))
  ex = tr.map_dataset(0)[0]
  assert int(ex["label"]) == -1 and float(ex["labelled"]) == 0.0
  fake = lambda v: [{"record": types.SimpleNamespace(vocab=v)}]
  mixture.check_vocabularies([fake("dfew7"), fake("dfew7")], ["a", "b"])
  with pytest.raises(UserError, match=r"different vocabularies \{'a': 'dfew7', 'b': 'rafdb7'\}"):
    mixture.check_vocabularies([fake("dfew7"), fake("rafdb7")], ["a", "b"])


@pytest.mark.parametrize("comps,needle", [
    ([], r"needs config.data.source.sources"),
    ([{"weight": 1}], r"sources\[0\]: expected a dict with 'shards'"),
    ([{"shards": "/x", "wieght": 1}], r"sources\[0\]: unknown key\(s\) \['wieght'\]"),
])
def test_mixture_config_errors_name_the_field(comps, needle):
  d = parts.data_config(dict(name="mixture", sources=comps), "frame")
  with pytest.raises(UserError, match=needle):
    pipeline.build_sources(d)


def test_negative_weight_is_refused(two_dirs):
  with pytest.raises(UserError, match=r"weights \[1.0, -1.0\]"):
    pipeline.build_sources(_data(two_dirs, weights=(1.0, -1.0)))


def test_frame_sampler_passes_its_crop_scale(two_dirs, monkeypatch):
  """MAE pretraining crops with RandomResizedCrop(scale=(0.2, 1)); the samplers used to draw
  with torchvision's default (0.08, 1) whatever the config said."""
  seen = []
  real = augment.random_resized_crop_params
  monkeypatch.setattr(augment, "random_resized_crop_params",
                      lambda h, w, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3):
                      seen.append(scale) or real(h, w, rng, scale, ratio))
  d = _data(two_dirs)
  tr, _ = pipeline.build_sources(d)
  pipeline.make_clip(d, train=True)(tr[0], np.random.default_rng(0))
  frames_src = parts.data_config(dict(name="shards", shards=two_dirs[0]),
                                 dict(name="frame_views", crop_scale=(0.3, 0.9), landmarks=False),
                                 image_size=16)
  s, _ = pipeline.build_sources(frames_src)
  ex = pipeline.make_clip(frames_src, train=True)(s[0], np.random.default_rng(0))
  assert set(seen) == {(0.2, 1.0), (0.3, 0.9)}      # (grain threads of other tests may add more)
  assert ex["image"].shape == (16, 16, 3) and "landmarks" not in ex and "expr" in ex
