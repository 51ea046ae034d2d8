"""`after_update` state in the jitted step (issue 11, item 3): an EMA of the parameters equals its
closed form after k steps, a feature queue holds exactly the last N keys of the global batches on
8 devices, both survive a kill and resume exactly, and neither is exported."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from jaxaffect import cli, interop
from jaxaffect.train import hooks, loop
from tests.train import ema_queue_model as emq
from tests.train.helpers import random_sources, tiny_config


def _config(**kw):
  c = tiny_config(num_steps=5, eval_every_steps=5, **{"data.source.num_train": 40}, **kw)
  c.unlock()
  c.model_name = "tests.train.ema_queue_model"
  c.checkpoint.keep = 10
  c.checkpoint.every_steps = 1
  c.lock()
  return c


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def _state(wd, step):
  _, _, variables, _ = loop.restore_state(wd, step)
  return variables


def test_ema_closed_form_and_queue_of_the_last_keys_on_8_devices(tmp_path):
  assert jax.device_count() == 8
  c = _config()
  src = random_sources(c)
  wd = str(tmp_path / "run")
  loop.train(c, wd, sources=src)
  states = [_state(wd, k) for k in range(1, 6)]
  m = emq.MOMENTUM
  # closed form: ema_k = m^k p_0 + (1 - m) sum_i m^(k-i) p_i, p_0 = the initial parameters
  p0 = _flat(states[0]["ema"]["params"])                 # after step 1: m p_0 + (1 - m) p_1
  p1 = _flat(states[0]["params"])
  p_init = {k: (p0[k] - (1 - m) * p1[k]) / m for k in p0}
  ps = [_flat(s["params"]) for s in states]
  ema5 = _flat(states[4]["ema"]["params"])
  for k in ema5:
    want = m ** 5 * p_init[k] + (1 - m) * sum(m ** (5 - i) * ps[i - 1][k] for i in range(1, 6))
    scale = np.abs(p_init[k]).max() + max(np.abs(p[k]).max() for p in ps)
    np.testing.assert_allclose(ema5[k], want, rtol=0, atol=64 * np.finfo(np.float32).eps * scale,
                               err_msg=k)
  assert not np.allclose(ema5["fc/kernel"], ps[4]["fc/kernel"])   # it lags the parameters
  # queue: 20 rows = the logits of the last 20 examples of 5 global batches of 8 (40 examples)
  q = states[4]["queue"]["q"]
  keys, labels = hooks.queue_in_order(q)
  assert int(q["count"]) == 20 and int(q["ptr"]) == 40 % 20 and keys.shape == (20, 7)
  q3 = states[2]["queue"]["q"]                             # after 3 steps: 24 pushed, 20 kept
  k3, _ = hooks.queue_in_order(q3)
  k5, _ = hooks.queue_in_order(q)
  np.testing.assert_array_equal(k5[:4], k3[-4:])           # the last 4 of step 3 stay, oldest
  assert labels.min() >= 0 and len(set(labels.tolist())) > 1


def test_extra_state_resumes_exactly_and_is_not_exported(tmp_path):
  c = _config()
  src = random_sources(c)
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  loop.train(c, full, sources=src)
  loop.train(c, cut, sources=src, stop_after_steps=2)
  loop.train(c, cut, sources=src)
  a, b = _flat(_state(full, 5)), _flat(_state(cut, 5))
  assert a.keys() == b.keys() and any(k.startswith("queue/") for k in a)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  out = str(tmp_path / "m.safetensors")
  assert cli.main(["export", "--checkpoint", full, "--out", out]) == 0
  sd = interop.load_state_dict_file(out)
  assert sd.keys() == interop.to_torch_state_dict(
      "former_dfer", {k: v for k, v in _state(full, 5).items()
                      if k in ("params", "batch_stats")}).keys()


def test_queue_push_wraps_and_refuses_an_oversized_batch():
  q = hooks.queue_init(5, 2)
  for i in range(3):
    q = hooks.queue_push(q, np.full((2, 2), i, np.float32), np.full((2,), i))
  keys, labels = hooks.queue_in_order(q)
  assert labels.tolist() == [0, 1, 1, 2, 2] and keys[:, 0].tolist() == [0, 1, 1, 2, 2]
  with pytest.raises(ValueError, match="cannot take a batch of 6"):
    hooks.queue_push(q, np.zeros((6, 2), np.float32), np.zeros((6,)))
