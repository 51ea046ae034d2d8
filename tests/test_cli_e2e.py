"""The command line end to end on a tiny run: train → kill/resume → eval --json → export → import."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config", "former_dfer:smoke", "--config.model.width=8", "--config.data.image_size=32",
        "--config.data.source.video_frames=10", "--config.data.sampler.num_segments=4",
        "--config.data.source.num_train=16", "--config.data.source.num_eval=10", "--config.batch_size=8",
        "--config.num_steps=4", "--config.eval_every_steps=2", "--config.log_every_steps=1"]


def _run(*args, timeout=300):
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  r = subprocess.run([sys.executable, "-m", "jaxaffect.cli", *args], capture_output=True, text=True,
                     env=env, cwd=ROOT, timeout=timeout)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  return r.stdout


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("cli") / "run")
  _run("train", *TINY, "--workdir", wd)
  return wd


def test_train_writes_checkpoints_tensorboard_and_config(workdir):
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int)[-1] == "4"
  tb = os.listdir(os.path.join(workdir, "tensorboard"))
  assert any(f.startswith("events.out.tfevents") for f in tb)
  rows = [json.loads(l) for l in open(os.path.join(workdir, "tensorboard", "metrics.jsonl"))]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
  assert {r["step"] for r in rows if "eval/uar" in r} == {2, 4}
  cfg = json.load(open(os.path.join(workdir, "config.json")))
  assert cfg["model"]["width"] == 8


def test_rerun_of_a_finished_run_resumes_and_does_nothing(workdir):
  _run("train", *TINY, "--workdir", workdir)
  rows = [json.loads(l) for l in open(os.path.join(workdir, "tensorboard", "metrics.jsonl"))]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]


def test_rerun_with_another_model_is_refused(workdir):
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  args = [a if a != "--config.model.width=8" else "--config.model.width=16" for a in TINY]
  r = subprocess.run([sys.executable, "-m", "jaxaffect.cli", "train", *args, "--workdir", workdir],
                     capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert r.returncode != 0 and "config.model" in r.stderr


def test_eval_json_matches_the_training_eval(workdir):
  out = _run("eval", "--workdir", workdir, "--json").strip().splitlines()[-1]
  m = json.loads(out)
  rows = [json.loads(l) for l in open(os.path.join(workdir, "tensorboard", "metrics.jsonl"))]
  last = [r for r in rows if "eval/uar" in r][-1]
  assert m["step"] == 4
  assert m["uar"] == pytest.approx(last["eval/uar"]) and m["war"] == pytest.approx(last["eval/war"])
  assert np.sum(m["confusion_matrix"]) == 10          # every held-out clip counted once
  best = json.loads(_run("eval", "--workdir", workdir, "--json", "--best").strip().splitlines()[-1])
  assert best["step"] in (2, 4)


def test_export_and_import_round_trip(workdir, tmp_path):
  out = str(tmp_path / "fdfer.safetensors")
  text = _run("export", "--checkpoint", workdir, "--out", out)
  from jaxaffect import interop
  assert os.path.exists(out) and os.path.exists(interop.verify_path(out))
  assert "load_state_dict" in text
  from safetensors.numpy import load_file
  sd = load_file(out)
  assert "fc.weight" in sd and sd["fc.weight"].shape == (7, 64)
  assert any(k.startswith("s_former.layer4") for k in sd)
  wd2 = str(tmp_path / "imported")
  _run("import", "--weights", out, *TINY, "--workdir", wd2)
  out2 = str(tmp_path / "again.safetensors")
  _run("export", "--checkpoint", wd2, "--out", out2)
  sd2 = load_file(out2)
  assert sd.keys() == sd2.keys()
  for k in sd:
    np.testing.assert_array_equal(sd[k], sd2[k], err_msg=k)


def _run_rc(*args, timeout=300):
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "jaxaffect.cli", *args], capture_output=True,
                        text=True, env=env, cwd=ROOT, timeout=timeout)


def test_import_hint_is_a_command_that_runs(workdir, tmp_path):
  """Issue 10: the "continue with" hint of `import` carries the overrides it was given (without
  them the hinted `train` was refused as a different run)."""
  import shlex
  out = str(tmp_path / "w.pth.tar")
  _run("export", "--checkpoint", workdir, "--out", out)
  wd2 = str(tmp_path / "imported")
  text = _run("import", "--weights", out, *TINY, "--workdir", wd2)
  hint = text.split("continue with: ", 1)[1].strip().splitlines()[0]
  assert hint.startswith("jaxaffect train ") and "--config.model.width=8" in hint
  _run(*shlex.split(hint)[1:])
  rows = [json.loads(l) for l in open(os.path.join(wd2, "tensorboard", "metrics.jsonl"))]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]


@pytest.mark.parametrize("args,needle", [
    (["train", *TINY, "--config.model.widht=8", "--workdir", "{tmp}/a"],
     "config.model has no field 'widht' (did you mean config.model.width?)"),
    (["train", "--config", "former_dfer:smok", "--workdir", "{tmp}/b"], "unknown variant 'smok'"),
    (["train", "--config", "nonexistent:x", "--workdir", "{tmp}/c"], "config file"),
    (["train", *TINY, "--config.batch_size=eight", "--workdir", "{tmp}/d"],
     "--config.batch_size=eight: expected int"),
    (["export", "--checkpoint", "{wd}", "--out", "{tmp}/m.safetensors", "--format", "pth"],
     "the extension says safetensors, --format says pth"),
    (["import", "--weights", "{tmp}/absent.pth", *TINY, "--workdir", "{tmp}/e"], "no such file"),
    (["import", "--weights", "{junk}", *TINY, "--workdir", "{tmp}/f"],
     "neither a safetensors file nor a PyTorch checkpoint"),
    (["export", "--checkpoint", "{wd}", "--out", "{tmp}/m.pth", "--step", "99"],
     "no checkpoint at step 99; it has steps"),
    (["export", "--checkpoint", "{tmp}", "--out", "{tmp}/m.pth"], "no checkpoint"),
    (["train", *TINY, "--config.batch_size=0", "--workdir", "{tmp}/g"], "batch_size=0"),
    (["train", *TINY, "--config.model.dtype=float99", "--workdir", "{tmp}/h"], "not a dtype"),
    (["eval", "--workdir", "{tmp}/none"], "no checkpoint"),
])
def test_user_errors_are_one_line_with_status_2(workdir, tmp_path, args, needle):
  junk = tmp_path / "junk.pth"
  junk.write_bytes(b"not weights")
  args = [a.format(tmp=tmp_path, wd=workdir, junk=junk) for a in args]
  r = _run_rc(*args)
  assert r.returncode == 2, r.stderr[-3000:]
  err = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(err) == 1 and err[0].startswith("jaxaffect: ") and needle in err[0], r.stderr[-3000:]
  assert "Traceback" not in r.stderr
  assert sorted(os.listdir(tmp_path)) == ["junk.pth"]      # nothing written, no empty workdir
  r = _run_rc("--debug", *args)                             # --debug: the traceback
  assert r.returncode == 1 and "Traceback" in r.stderr and "jaxaffect.errors." in r.stderr


def test_read_only_commands_print_no_orbax_notices(workdir):
  """`eval` printed absl warnings "Given directory is read only" for every restore."""
  r = _run_rc("eval", "--workdir", workdir, "--json")
  assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["step"] == 4
  assert "read only" not in r.stderr and "read_only" not in r.stderr, r.stderr[-2000:]


def test_sub_command_flags_are_not_taken_for_the_multi_host_flags(monkeypatch):
  """`bench encoder --d 768` was read as an abbreviation of `--distributed` and started
  `jax.distributed.initialize` without a coordinator."""
  from jaxaffect import cli
  from jaxaffect.train import distributed
  seen = {}
  monkeypatch.setattr(distributed, "maybe_initialize",
                      lambda *a, force=False: seen.setdefault("force", force))
  rest = cli._maybe_init_distributed(["bench", "encoder", "--d", "768", "--dist", "1"])
  assert seen["force"] is False and rest == ["bench", "encoder", "--d", "768", "--dist", "1"]
