"""`jaxaffect` command line: train, eval, predict, export, import, bench, demo, prep.

  jaxaffect train --config configs/former_dfer.py:dfew --workdir DIR [--config.x=y ...]
  jaxaffect eval --workdir DIR [--best] [--json]
  jaxaffect predict --workdir DIR --out DIR [--select test] [--best] [--window W --stride S]
      (sequence models: per-frame ABAW submission files, CCC/F1 metrics, valence/arousal plots)
  jaxaffect export --checkpoint DIR --out FILE [--format safetensors|pth]
  jaxaffect import --weights FILE --config CONFIG --workdir DIR   (then `train` fine-tunes it)
  jaxaffect bench former_dfer [--json] [--reference PATH_TO_OFFICIAL_CHECKOUT]
  jaxaffect demo [--workdir DIR]
  jaxaffect prep SOURCE --src PATH --out DIR [...]   (= python -m data_prep; `prep SOURCE --help`)
Multi-host: `--coordinator_address HOST:PORT --num_processes N --process_id I` (or the JAX_* env
variables / a cluster jax auto-detects) before the sub-command's own flags.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from jaxaffect import errors


def resolve_config_path(spec: str) -> str:
  """`configs/former_dfer.py:dfew`, an absolute path, or the short `former_dfer:dfew`."""
  from jaxaffect import config_loader
  return config_loader.resolve_config_path(spec)


def _maybe_init_distributed(argv: list[str]) -> list[str]:
  """Consumes the multi-host flags and calls `jax.distributed.initialize` when asked to."""
  # No abbreviations: a sub-command's own `--d 768` must not be taken for `--distributed`.
  p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  p.add_argument("--coordinator_address")
  p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int)
  p.add_argument("--distributed", action="store_true",
                 help="initialize from the environment (TPU pods, SLURM, Open MPI)")
  known, rest = p.parse_known_args(argv)
  from jaxaffect.train import distributed
  distributed.maybe_initialize(known.coordinator_address, known.num_processes, known.process_id,
                               force=known.distributed)
  return rest


def cmd_train(argv: list[str]) -> int:
  from jaxaffect import config_loader
  pairs, rest = config_loader.split_overrides(list(argv))
  p = argparse.ArgumentParser(prog="jaxaffect train")
  p.add_argument("--config", required=True, help="config file[:arg], e.g. former_dfer:dfew,fold=2")
  p.add_argument("--workdir", required=True, help="run directory (checkpoints, TensorBoard)")
  a = p.parse_args(rest)
  config = config_loader.load(a.config, pairs)
  from jaxaffect.train import loop
  _setup_logging()
  metrics = loop.train(config, a.workdir)
  if "preempted" in metrics:        # a signal stopped it: not finished, no final metrics
    pre = metrics["preempted"]
    print(f"jaxaffect train: preempted by {pre['signal']} at step {pre['step']}; checkpoint saved "
          f"in {a.workdir}/checkpoints; rerun the same command to resume", file=sys.stderr,
          flush=True)
    return errors.EXIT_PREEMPTED
  if "finished_before" in metrics:
    print(f"jaxaffect train: {a.workdir} already finished at step {metrics['finished_before']}; "
          f"nothing to do (raise --config.num_steps / num_epochs to train on)", file=sys.stderr)
    return 0
  _print_json({k: v for k, v in metrics.items() if not hasattr(v, "shape") or v.ndim == 0})
  return 0


def cmd_eval(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="jaxaffect eval")
  p.add_argument("--workdir", required=True)
  p.add_argument("--best", action="store_true", help="the best checkpoint by the config's metric")
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--json", action="store_true", help="print one JSON line of metrics")
  a = p.parse_args(argv)
  from jaxaffect.train import loop
  m = loop.evaluate_workdir(a.workdir, best=a.best, step=a.step)
  scal = {k: v for k, v in m.items() if not hasattr(v, "ndim") or v.ndim == 0}
  if "confusion_matrix" in m:
    scal["confusion_matrix"] = m["confusion_matrix"].astype(int).tolist()
  if a.json:
    _print_json(scal)
  else:
    for k, v in scal.items():
      print(f"{k}: {v}")
  return 0


def cmd_predict(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="jaxaffect predict",
                              description="whole-video per-frame predictions of a sequence model: "
                                          "ABAW submission files, metrics.json, VA plots")
  p.add_argument("--workdir", required=True, help="the training run (its checkpoints/)")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--select", default=None, help="split/fold of the data (default: eval_select)")
  p.add_argument("--best", action="store_true", help="the best checkpoint by the config's metric")
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--window", type=int, default=None, help="default: config.data.sampler.window")
  p.add_argument("--stride", type=int, default=None, help="default: config.data.sampler.stride")
  p.add_argument("--plot", type=int, default=4, help="VA plots for the first N videos")
  p.add_argument("--frames-from", default=None, metavar="EXAMPLE",
                 help="ABAW example submission file: write exactly its frames (test sets)")
  p.add_argument("--labels", default=None,
                 help="replace data.source.labels ('' = unlabelled, e.g. the test set; then --select all)")
  p.add_argument("--stream", action="append", default=[], metavar="NAME=PATH",
                 help="replace a feature stream's path (repeatable), e.g. mae=/feats/test/mae")
  p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
  a = p.parse_args(argv)
  bad = [x for x in a.stream if "=" not in x or not x.split("=", 1)[0]]
  if bad:
    raise errors.UserError(f"predict --stream {bad[0]!r}: expected NAME=PATH, e.g. mae=/feats/mae")
  from jaxaffect import predict
  summary = predict.run(a.workdir, a.out, select=a.select, step=a.step, best=a.best,
                        window=a.window, stride=a.stride, plot=a.plot,
                        frames_from=a.frames_from, labels=a.labels,
                        stream_paths=dict(x.split("=", 1) for x in a.stream) or None)
  if a.json:
    _print_json({k: v for k, v in summary.items() if k != "per_video"})
  else:
    print(f"{summary['videos']} videos, {summary['frames']} frames "
          f"({summary['no_face_frames']} without a face) -> {a.out}")
    for k, v in summary["metrics"].items():
      print(f"  {k}: {v}")
    for k, v in summary["files"].items():
      print(f"  {k} submission: {v}")
  return 0


def cmd_export(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="jaxaffect export")
  p.add_argument("--checkpoint", required=True, help="a workdir or its checkpoints/ directory")
  p.add_argument("--out", required=True,
                 help="output file: .safetensors, or .pth / .pt / .pth.tar (torch.save)")
  p.add_argument("--format", choices=("safetensors", "pth"), default=None,
                 help="default: from --out's extension (a contradicting extension is refused)")
  p.add_argument("--step", type=int, default=None)
  a = p.parse_args(argv)
  from jaxaffect import interop
  fmt = interop.resolve_format(a.out, a.format)       # before restoring anything
  if os.path.isdir(a.out):
    raise errors.UserError(f"export --out {a.out}: a directory; give a file name (e.g. "
                           f"{os.path.join(a.out, 'model.safetensors')})")
  from jaxaffect.train import loop
  step = loop.resolve_step(a.checkpoint, a.step)      # a missing step names the steps there
  config, s, variables, step = loop.restore_state(a.checkpoint, step)
  info = interop.export(config.model_name, s.task.module, variables, a.out, fmt=fmt)
  print(f"exported step {step} of {config.model_name} to {a.out}")
  print(info.get("snippet", ""))
  return 0


def cmd_import(argv: list[str]) -> int:
  """PyTorch weights (official key layout) → a step-0 checkpoint that `train` then fine-tunes."""
  p = argparse.ArgumentParser(prog="jaxaffect import")
  p.add_argument("--weights", required=True, help=".safetensors / .pth / .pth.tar state dict")
  p.add_argument("--config", required=True, help="config file[:arg] of the run to start")
  p.add_argument("--workdir", required=True, help="new run directory (must hold no checkpoint)")
  p.add_argument("--partial", action="store_true",
                 help="the weights cover part of the model (e.g. EST's FER+ ResNet-18 backbone; "
                      "keys without a rule, like fc.*, are ignored); the rest is initialised")
  from jaxaffect import config_loader
  pairs, rest = config_loader.split_overrides(list(argv))
  a = p.parse_args(rest)
  overrides = [f"--config.{k}={v}" for k, v in pairs]
  config = config_loader.load(a.config, pairs)
  from jaxaffect.train import loop
  step = loop.import_weights(config, a.workdir, a.weights, partial=a.partial)
  again = " ".join(shlex.quote(x) for x in ["--config", a.config, "--workdir", a.workdir,
                                             *overrides])
  print(f"imported {a.weights} into {a.workdir}/checkpoints/{step}; "
        f"continue with: jaxaffect train {again}")
  return 0


def cmd_bench(argv: list[str]) -> int:
  from jaxaffect import bench
  return bench.main(argv)


def cmd_demo(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="jaxaffect demo")
  p.add_argument("--workdir", default="jaxaffect_demo")
  p.add_argument("--config", default="former_dfer:smoke")
  a, overrides = p.parse_known_args(argv)
  from jaxaffect import demo
  _setup_logging()
  summary = demo.run(a.workdir, resolve_config_path(a.config), overrides)
  _print_json(summary)
  return 0


def _setup_logging():
  import logging
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
  for noisy in ("absl", "orbax", "jax._src", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def _print_json(d):
  def default(o):
    import numpy as np
    if isinstance(o, np.generic):
      return o.item()
    if isinstance(o, np.ndarray):
      return o.tolist()
    raise TypeError(type(o))
  print(json.dumps(d, default=default), flush=True)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "export": cmd_export,
            "import": cmd_import, "bench": cmd_bench, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
  """Bad input (`errors.UserError`: a file, flag or config field) is one line on stderr with
  status 2; `--debug` (anywhere) shows its traceback. Internal errors keep theirs."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "prep":       # before JAX starts: the prep job forks workers
    from data_prep import cli as prep_cli
    return prep_cli.main(argv[1:])
  argv, debug = errors.take_debug_flag(argv)

  def run() -> int:
    rest = _maybe_init_distributed(argv)
    if not rest or rest[0] in ("-h", "--help") or rest[0] not in COMMANDS:
      print(__doc__)
      return 0 if not rest or rest[0] in ("-h", "--help") else errors.EXIT_USAGE
    return COMMANDS[rest[0]](rest[1:]) or 0
  return errors.run_main("jaxaffect", run, debug=debug)


if __name__ == "__main__":
  sys.exit(main())
