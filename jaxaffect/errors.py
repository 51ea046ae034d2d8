"""User-facing errors: bad input (a file, a flag, a config field) reported as one line.

`UserError` is what code raises when the *input* is wrong, not the program: a missing file, a
malformed CSV line, a misspelt config key, an impossible label map. Both command lines
(`jaxaffect ...` and `python -m data_prep ...`) print it as one line, `prog: message`, and exit
with status 2 (argparse's status for bad usage). Anything else is an internal error and keeps its
traceback. `--debug` (before the sub-command, or the env variable JAXAFFECT_DEBUG=1) re-raises
user errors too, with their traceback.

It subclasses `ValueError` so that callers and tests that catch `ValueError` keep working.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

EXIT_USAGE = 2          # bad input / usage (argparse uses 2 as well)
EXIT_PREEMPTED = 75     # EX_TEMPFAIL: stopped by SIGTERM/SIGINT after a checkpoint; rerun resumes


class UserError(ValueError):
  """Bad input, with a message that names the file, record/line and field."""


class MissingFile(UserError, FileNotFoundError):
  """A file or directory the user named (or that a named directory should hold) does not exist;
  also a `FileNotFoundError`, so callers that catch that keep working."""


def take_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
  """Removes a leading-or-anywhere `--debug` from argv; also honours JAXAFFECT_DEBUG=1."""
  debug = os.environ.get("JAXAFFECT_DEBUG", "") not in ("", "0")
  if "--debug" in argv:
    argv = [a for a in argv if a != "--debug"]
    debug = True
  return argv, debug


def run_main(prog: str, fn: Callable[[], int], *, debug: bool = False) -> int:
  """Runs `fn`; a `UserError` becomes one line on stderr and status 2 (unless `debug`)."""
  try:
    return fn() or 0
  except UserError as e:
    if debug:
      raise
    msg = str(e)
    if not msg.startswith((prog + ":", prog + " ")):     # "jaxaffect predict: ..." is prefixed
      msg = f"{prog}: {msg}"
    print(msg, file=sys.stderr, flush=True)
    return EXIT_USAGE
