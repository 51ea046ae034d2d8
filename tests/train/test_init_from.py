"""`config.init_from`: a JAX checkpoint merged into a fresh initialisation, with keep/drop regexes
and a report of what was loaded, skipped and left fresh (issue 11, item 5)."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from jaxaffect.errors import UserError
from jaxaffect.train import init_from, loop
from tests.train.helpers import random_sources, tiny_config


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  c = tiny_config(num_epochs=1, **{"data.source.num_train": 16})
  wd = str(tmp_path_factory.mktemp("src") / "run")
  loop.train(c, wd, sources=random_sources(c))
  _, _, variables, step = loop.restore_state(wd)
  return wd, variables, step


def _first_state(config, wd, sources):
  """The variables a run starts from: the trainer's own init, then its `init_from` merge (the
  same two calls `loop.train` makes before the first step)."""
  s = loop.build(config, sources=sources)
  os.makedirs(wd, exist_ok=True)
  with jax.set_mesh(s.mesh):
    state = s.init_fn(loop._rngs(config)[0])
    if config.init_from.workdir:
      state = loop._init_from_checkpoint(s, state, config.init_from, wd)
  return {"params": state["params"], **state["extra"]}


def test_init_from_a_checkpoint_with_drop_and_report(source_run, tmp_path):
  src_wd, src_vars, step = source_run
  c = tiny_config(**{"init_from.workdir": src_wd, "init_from.drop": (r"^params/fc/",)})
  got = _first_state(c, str(tmp_path / "b"), random_sources(c))
  fresh = _first_state(tiny_config(), str(tmp_path / "fresh"), random_sources(c))
  g, s, f = _flat(got), _flat(src_vars), _flat(fresh)
  assert g.keys() == s.keys()
  for k in g:
    want = f[k] if k.startswith("params/fc/") else s[k]
    np.testing.assert_array_equal(g[k], want, err_msg=k)
  assert not np.array_equal(s["params/fc/kernel"], f["params/fc/kernel"])   # the test can fail
  rep = json.load(open(tmp_path / "b" / "init_from.json"))
  assert rep["source"]["step"] == step and sorted(rep["dropped"]) == ["params/fc/bias",
                                                                      "params/fc/kernel"]
  assert len(rep["loaded"]) == len(g) - 2 and rep["absent"] == rep["unused"] == []


def test_a_training_run_starts_from_the_merge(source_run, tmp_path):
  """Through `loop.train`: the report is written and training proceeds from the loaded weights
  (its first eval differs from a fresh run's)."""
  src_wd, _, _ = source_run
  c = tiny_config(num_steps=1, **{"init_from.workdir": src_wd, "init_from.best": True})
  loop.train(c, str(tmp_path / "run"), sources=random_sources(c))
  rep = json.load(open(tmp_path / "run" / "init_from.json"))
  assert rep["loaded"] and not rep["dropped"] and rep["source"]["workdir"] == src_wd


def test_shape_mismatch_is_left_fresh_and_reported(source_run, tmp_path):
  src_wd, src_vars, _ = source_run
  c = tiny_config(**{"init_from.workdir": src_wd, "model.num_classes": 5})
  got = _flat(_first_state(c, str(tmp_path / "b"), random_sources(c)))
  rep = json.load(open(tmp_path / "b" / "init_from.json"))
  assert rep["shape_mismatch"] == ["params/fc/bias: (7,) -> (5,)",
                                   "params/fc/kernel: (64, 7) -> (64, 5)"]
  assert got["params/fc/kernel"].shape == (64, 5)
  k = "params/cs_former/encoder/layer_0/attn/qkv/kernel"
  np.testing.assert_array_equal(got[k], _flat(src_vars)[k])


def test_keep_selects_and_bad_rules_are_errors(source_run):
  _, src_vars, _ = source_run
  fresh = jax.tree.map(np.zeros_like, src_vars)
  merged, rep = init_from.merge(fresh, src_vars, keep=(r"^params/t_former/",))
  m, s = _flat(merged), _flat(src_vars)
  assert rep["loaded"] and all(k.startswith("params/t_former/") for k in rep["loaded"])
  for k in m:
    assert np.array_equal(m[k], s[k]) == k.startswith("params/t_former/") or not s[k].any(), k
  with pytest.raises(UserError, match=r"regex '\^params/nope' matches no variable"):
    init_from.merge(fresh, src_vars, drop=(r"^params/nope",))
  with pytest.raises(UserError, match="nothing loaded"):
    init_from.merge(fresh, {"params": {"other": np.zeros(3)}})
  with pytest.raises(UserError, match="no such directory"):
    init_from.load_checkpoint_variables({"workdir": "/no/such/run"})
