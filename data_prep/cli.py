"""`python -m data_prep SOURCE --src PATH --out DIR [...]` (also `jaxaffect prep ...`).

  python -m data_prep dfew --src /data/DFEW --out /shards/dfew --size 112 --workers 8
  python -m data_prep affwild2 --src /data/ABAW --out /shards/affwild2 --detector none
  python -m data_prep video --src clips/ --out /shards/mine --detector blazeface
  python -m data_prep synthetic --src - --out /tmp/syn --num-videos 64
  python -m data_prep SOURCE --help     # the source's own flags
  python -m data_prep features --shards /shards/affwild2 --checkpoint WORKDIR --out /feats/x
                                        # per-frame embeddings of an image model (data_prep.features)

A killed job rerun with the same arguments completes the missing shards only.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
  """Numbers out of range (`--shards -1`, `--workers 0`, `--jpeg-quality 101`, ...) are argument
  errors (usage + status 2), before anything is read or written."""
  from data_prep import sources
  from data_prep.sources._util import float_arg, int_arg
  p = argparse.ArgumentParser(prog="data_prep", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
  for name, mod in sorted(sources.SOURCES.items()):
    sp = sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else name)
    g = sp.add_argument_group("common")
    g.add_argument("--src", required=True, help="the dataset root / file (as the dataset ships it)")
    g.add_argument("--out", required=True, help="output directory for shards + manifest.json")
    g.add_argument("--size", type=int_arg(1), default=112,
                   help="crop side in pixels (112 or 224 usual)")
    g.add_argument("--detector", default="auto",
                   help="auto | blazeface | haar | precomputed | none. auto: the item's own "
                        "geometry if it has some, dataset-provided aligned crops resized as they "
                        "are, otherwise BlazeFace + FaceMesh")
    g.add_argument("--margin", type=float_arg(0.0), default=None,
                   help="crop margin (see data_prep.faces)")
    g.add_argument("--jpeg-quality", type=int_arg(1, 100), default=None,
                   help="JPEG quality of the crops (95)")
    g.add_argument("--workers", type=int_arg(1), default=1, help="parallel worker processes")
    g.add_argument("--shards", type=int_arg(0), default=0,
                   help="shards per split (0: ~64 videos each)")
    g.add_argument("--segment-frames", type=int_arg(0), default=0,
                   help="write videos longer than this as consecutive records (0: whole videos)")
    g.add_argument("--template-split", default=None,
                   help="split whose mean landmarks form the template (default: train)")
    g.add_argument("--strict", action="store_true", help="stop at the first bad input")
    g.add_argument("--overwrite", action="store_true",
                   help="delete the shards in --out and write them again")
    g.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    if hasattr(mod, "add_arguments"):
      mod.add_arguments(sp.add_argument_group(name))
  from data_prep import features
  features.add_arguments(sub.add_parser("features", help="per-frame embeddings of a trained "
                                        "image model over face shards (feature shards)"))
  return p


def main(argv: list[str] | None = None) -> int:
  """Bad input (`UserError`, e.g. a `PrepError` naming file, line and field) is one line on
  stderr with status 2; `--debug` shows its traceback. Internal errors keep theirs."""
  from jaxaffect import errors
  argv, debug = errors.take_debug_flag(list(sys.argv[1:] if argv is None else argv))
  args = build_parser().parse_args(argv)

  def run() -> int:
    from data_prep import shards
    try:
      if args.source == "features":
        from data_prep import features
        features.run(args)
      else:
        shards.run(args.source, args)
    except shards.PrepFailed as e:
      print(e.code if isinstance(e.code, str) else e, file=sys.stderr)
      return errors.EXIT_USAGE
    return 0
  return errors.run_main("data_prep", run, debug=debug)
