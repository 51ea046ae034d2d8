"""The trainer's edges a user meets first (issue 10): period fields at 0, a stop by signal, a
resume into a workdir of another run, a config error before anything is written."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from jaxaffect import cli, errors
from jaxaffect.train import loop
from tests.train.helpers import random_sources, set_fields, tiny_config


def _rows(workdir):
  with open(os.path.join(workdir, "tensorboard", "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_period_fields_zero_mean_default_and_negative_is_an_error(tmp_path):
  """Bug 8: `log_every_steps=0` crashed with ZeroDivisionError after the first step and wrote no
  checkpoint; 0 means "default" as for the other period fields (here: every evaluation)."""
  c = tiny_config(log_every_steps=0, num_epochs=1, **{"data.source.num_train": 24})   # 3 steps/epoch
  src = random_sources(c)
  wd = str(tmp_path / "zero")
  ev = loop.train(c, wd, sources=src)
  assert np.isfinite(ev["loss"])
  assert [r["step"] for r in _rows(wd) if "train/loss" in r] == [3]
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3"]
  for key in ("log_every_steps", "eval_every_steps", "checkpoint.every_steps"):
    node, *rest = key.split(".")
    bad = tiny_config(**{key: -1})
    with pytest.raises(errors.UserError, match=f"config.{key}=-1"):
      loop.train(bad, str(tmp_path / f"neg_{node}"), sources=src)
    assert not os.path.exists(tmp_path / f"neg_{node}")


class _SignalAfter:
  """A source that sends this process `sig` once `n` items have been read (a preemption)."""

  def __init__(self, src, n, sig):
    self.src, self.n, self.sig, self.reads = src, n, sig, 0

  def __len__(self):
    return len(self.src)

  def __getitem__(self, i):
    self.reads += 1
    if self.reads == self.n:
      os.kill(os.getpid(), self.sig)
    return self.src[i]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_reports_preemption(tmp_path, sig):
  """A SIGTERM (or a first Ctrl-C) stops at a step boundary with a checkpoint, and the result says
  the run was preempted (it used to look like a finished run); rerunning resumes to the end."""
  c = tiny_config(num_epochs=3, **{"data.source.num_train": 32})      # 4 steps/epoch, 12 steps
  tr, ev = random_sources(c)
  wd = str(tmp_path / "run")
  # What was installed before the run (SIG_IGN for SIGINT when the suite runs as a background job
  # of a non-interactive shell, e.g. `nohup ... &`; default_int_handler in a terminal).
  before = signal.getsignal(sig)
  out = loop.train(c, wd, sources=(_SignalAfter(tr, 9, sig), ev))
  assert out["preempted"]["signal"] == signal.Signals(sig).name
  step = out["preempted"]["step"]
  assert 1 <= step < 12
  assert str(step) in os.listdir(os.path.join(wd, "checkpoints"))
  assert signal.getsignal(sig) == before                                     # restored
  done = loop.train(c, wd, sources=(tr, ev))
  assert "preempted" not in done and np.isfinite(done["loss"])
  assert max(r["step"] for r in _rows(wd)) == 12


def test_cli_train_exits_with_preempted_status(monkeypatch, capsys, tmp_path):
  monkeypatch.setattr(loop, "train", lambda config, workdir: {
      "loss": 1.0, "preempted": {"step": 7, "signal": "SIGTERM"}})
  rc = cli.main(["train", "--config", "former_dfer:smoke", "--workdir", str(tmp_path / "w")])
  out = capsys.readouterr()
  assert rc == errors.EXIT_PREEMPTED != 0
  assert out.out == ""                                     # no final-metrics JSON
  assert "preempted by SIGTERM at step 7" in out.err and "rerun" in out.err


def test_resume_into_another_run_names_the_keys_and_ignores_trailing_slash(tmp_path):
  c = tiny_config(num_epochs=1, **{"data.source.num_train": 16})
  src = random_sources(c)
  wd = str(tmp_path / "run")
  loop.train(c, wd, sources=src)
  c2 = tiny_config(num_epochs=2, **{"data.source.num_train": 16, "model.width": 16,
                                     "data.sampler.duration": 1})
  with pytest.raises(errors.UserError) as e:
    loop.train(c2, wd, sources=src)
  msg = str(e.value)
  assert "config.model.width: 8 -> 16" in msg and "config.data.sampler.duration: 2 -> 1" in msg
  assert "{" not in msg                                  # names keys, no dumped dicts
  saved = {"data": {"shards": "/x/shards/", "list": ["a/", "b"]}, "seed": 0}
  new = {"data": {"shards": "/x/shards", "list": ["a", "b"]}, "seed": 0}
  assert loop.config_differences(saved, new, ("data", "seed")) == []
  new["data"]["shards"] = "/y/shards"
  assert loop.config_differences(saved, new, ("data",)) == [
      "config.data.shards: '/x/shards/' -> '/y/shards'"]


def test_config_error_leaves_no_workdir(tmp_path):
  c = tiny_config(batch_size=7)                         # not divisible by the 8 devices
  wd = tmp_path / "never"
  with pytest.raises(ValueError, match="not divisible"):
    loop.train(c, str(wd), sources=random_sources(c))
  assert not wd.exists()


def test_signal_during_start_up_stops_cleanly(tmp_path, monkeypatch):
  """A SIGTERM while the run is being built (or restored) used to kill the process (no handler
  yet) and leave an empty workdir: now the run reports `preempted` and leaves nothing behind; on
  a resume it keeps the checkpoints and trains nothing."""
  c = tiny_config(num_epochs=1, **{"data.source.num_train": 16})
  src = random_sources(c)
  real_build = loop.build

  def build_then_signal(*a, **kw):
    out = real_build(*a, **kw)
    os.kill(os.getpid(), signal.SIGTERM)
    return out
  monkeypatch.setattr(loop, "build", build_then_signal)
  wd = tmp_path / "run"
  out = loop.train(c, str(wd), sources=src)
  assert out == {"preempted": {"step": 0, "signal": "SIGTERM"}} and not wd.exists()
  monkeypatch.setattr(loop, "build", real_build)
  loop.train(c, str(wd), sources=src)                      # a full run: 2 steps
  real_restore = loop.ckpt_lib.restore

  def restore_then_signal(*a, **kw):
    out = real_restore(*a, **kw)
    os.kill(os.getpid(), signal.SIGINT)
    return out
  monkeypatch.setattr(loop.ckpt_lib, "restore", restore_then_signal)
  c2 = tiny_config(num_epochs=2, **{"data.source.num_train": 16})
  out = loop.train(c2, str(wd), sources=src)
  assert out == {"preempted": {"step": 2, "signal": "SIGINT"}}
  assert sorted(os.listdir(wd / "checkpoints")) == ["2"]
  monkeypatch.setattr(loop.ckpt_lib, "restore", real_restore)
  assert loop.train(c, str(wd), sources=src) == {"finished_before": 2}


def test_relative_data_paths_are_stored_absolute(tmp_path, monkeypatch):
  """`shards=s_dfew` ran, but `eval` from another directory looked for `s_dfew/manifest.json`
  there, and a resume with `./s_dfew` was refused as another run."""
  c = tiny_config(**{"data.source": "list_file", "data.source.train_list": "lists/train.txt",
                     "data.source.root": "./frames/", "init_from.workdir": ""})
  monkeypatch.chdir(tmp_path)
  loop.absolute_paths(c)
  assert c.data.source.train_list == str(tmp_path / "lists" / "train.txt")
  assert c.data.source.root == str(tmp_path / "frames")
  saved = {"data": {"root": str(tmp_path / "frames")}}
  assert loop.config_differences(saved, {"data": {"root": c.data.source.root}}, ("data",)) == []


def test_demo_refuses_another_run_s_workdir_before_preparing_data(tmp_path):
  """`jaxaffect demo --workdir <another run>` spent a minute writing shards there first."""
  from jaxaffect import demo
  wd = tmp_path / "run"
  wd.mkdir()
  c = tiny_config()
  (wd / "config.json").write_text(c.to_json_best_effort())
  with pytest.raises(errors.UserError, match=r"holds another run \(config.model.width: 8 -> 16"):
    demo.run(str(wd), "former_dfer:smoke")
  assert sorted(os.listdir(wd)) == ["config.json"]


def test_unknown_reader_is_an_error():
  """`data.source.reader='strem'` trained silently with the index reader."""
  from jaxaffect.data import pipeline
  c = tiny_config()
  tr, _ = random_sources(c)
  set_fields(c, {"data.source": "shards", "data.source.reader": "strem"})
  with pytest.raises(errors.UserError, match="config.data.source.reader='strem'"):
    pipeline.train_iterator(tr, c.data, 8, 0)
