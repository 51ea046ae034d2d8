"""How shards are written safely, for the face job (`data_prep.shards`) and the feature job
(`data_prep.features`): the output directory and its lock (`output_dir`), the job pin
(`pin_job`, `Pin`), committing a staged shard with its sidecar (`commit_shard`), recognising a
finished one (`_shard_done`), and the worker pool that runs a job's shard tasks (`run_tasks`)."""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import threading
from typing import Any, Callable

from data_prep.sources import base
from jaxaffect.data import schema

JOB_FILE = "prep_job.json"
LOCK_FILE = ".lock"


class PrepFailed(SystemExit):
  pass


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _atomic_json(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def commit_shard(tmp: str, final: str, task: dict, job_hash: str, *, pin: "Pin | None" = None,
                 **fields) -> dict:
  """A fully written and fsync'ed shard `tmp` becomes `final`: the job is pinned (`pin.write()`,
  with the first shard), its sidecar (task, job hash, inputs, sha256, size, `fields`) is written,
  then the shard is renamed into place, so a shard without a matching sidecar is never taken as
  done."""
  if pin is not None:
    pin.write()
  side = {"name": task["name"], "split": task["split"], "index": task["index"],
          "count": task["count"], "job": job_hash, "inputs": task["inputs"], **fields,
          "sha256": _sha256(tmp), "bytes": os.path.getsize(tmp)}
  _atomic_json(final + ".json", side)
  os.replace(tmp, final)
  return side


def _shard_done(out: str, task: dict, job_hash: str) -> dict | None:
  """The sidecar of a finished shard made by this job from the same inputs, else None."""
  name = task["name"]
  path, side = os.path.join(out, name), os.path.join(out, name + ".json")
  if not (os.path.exists(path) and os.path.exists(side)):
    return None
  try:
    with open(side) as f:
      s = json.load(f)
  except (OSError, ValueError):
    return None
  if s.get("job") != job_hash or s.get("inputs") != task["inputs"]:
    return None
  if s.get("sha256") != _sha256(path):
    return None
  return s


@contextlib.contextmanager
def _locked(out: str):
  f = open(os.path.join(out, LOCK_FILE), "w")
  try:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise PrepFailed(f"data_prep: another job is writing to {out} (lock {LOCK_FILE}); wait for it "
                       f"or use another --out") from None
    yield
  finally:
    f.close()


@contextlib.contextmanager
def output_dir(out: str):
  """`out` created if needed and locked for one job; if this run created it and fails leaving
  nothing but the lock file, the directory is removed again (a failed run leaves no trace)."""
  created = not os.path.isdir(out)
  os.makedirs(out, exist_ok=True)
  try:
    with _locked(out):
      yield
  except BaseException:
    if created:
      with contextlib.suppress(OSError):
        if os.listdir(out) == [LOCK_FILE]:
          os.remove(os.path.join(out, LOCK_FILE))
        os.rmdir(out)
    raise


def _settings_diff(old: dict, new: dict) -> list[str]:
  """Which settings of two job files differ: keys of `args` and `recipe`, then other sections."""
  diff = []
  for section in ("args", "recipe"):
    a, b = old.get(section, {}), new.get(section, {})
    if isinstance(a, dict) and isinstance(b, dict):
      diff += sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    elif a != b:
      diff.append(section)
  diff += sorted(k for k in set(old) | set(new)
                 if k not in ("args", "recipe") and old.get(k) != new.get(k))
  return diff


@dataclasses.dataclass
class Pin:
  """A job's settings and what it replaces in its output directory, applied only when the job
  writes: `prepare()` just before its first shard (or, under --strict, once all are staged),
  `write()` (the job file) with the first committed shard. Until then `--out` is untouched."""
  out: str
  job: dict
  job_file: str
  overwrite: bool
  extra_outputs: tuple[str, ...]
  leftovers: tuple[str, ...]        # temp files of a killed run (present when the job started)
  written: bool = False

  def stale(self, keep: set[str]) -> list[str]:
    """Shard files and sidecars the job will delete: all of them with overwrite, else those of
    another layout (not in `keep`)."""
    return sorted(n for n in os.listdir(self.out) if ".tfrecord-" in n and ".tmp-" not in n
                  and (self.overwrite or n.removesuffix(".json") not in keep))

  def prepare(self, keep: set[str]) -> None:
    """Deletes what the job replaces: stale shards (`stale(keep)`), the manifest and
    `extra_outputs` (they describe the old content; rewritten at the end), the job file with
    overwrite, and the leftovers."""
    names = set(self.stale(keep)) | set(self.leftovers) | {schema.MANIFEST, *self.extra_outputs}
    if self.overwrite:
      names.add(self.job_file)
    for name in sorted(names):
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(self.out, name))

  def write(self) -> None:
    """Pins the settings (once per process; the same bytes if several workers do)."""
    if not self.written:
      _atomic_json(os.path.join(self.out, self.job_file), self.job)
      self.written = True


def pin_job(out: str, job: dict, *, overwrite: bool, prog: str, job_file: str = JOB_FILE,
            extra_outputs: tuple[str, ...] = ()) -> Pin:
  """Checks a job's settings against its output directory (`job_file`), under the directory lock,
  and returns the `Pin` that writes them with the job's first shard.

  Without `overwrite`, a directory pinned to other settings is refused (naming what differs), so
  one directory never mixes two recipes. Nothing is written or deleted here: a job that fails
  before its first shard (bad input, a --strict stop) leaves the directory as it was."""
  job_path = os.path.join(out, job_file)
  if not overwrite and os.path.exists(job_path):
    with open(job_path) as f:
      old = json.load(f)
    if old != job:
      raise PrepFailed(f"{prog}: {out} holds a job with other settings (differs in "
                       f"{_settings_diff(old, job)}); use another --out or --overwrite")
  leftovers = tuple(sorted(n for n in os.listdir(out) if ".tmp-" in n))
  return Pin(out, job, job_file, overwrite, tuple(extra_outputs), leftovers)


class _LocalQueue:
  def __init__(self, fn):
    self.fn = fn

  def put(self, msg):
    self.fn(msg)


def run_tasks(todo: list[dict], write: Callable[[dict], dict], init: Callable, job: dict, *,
              workers: int, on_msg: Callable, finished: Callable[[dict], None],
              staged: dict[str, dict], strict: bool) -> None:
  """Runs `write(task)` for every task, in this process (`workers == 1`: `init(job, queue)` here)
  or in `workers` forked processes (each runs `init(job, queue)` first); `finished` gets each
  result, `on_msg` the workers' queue messages. A dead worker is a `PrepFailed` (finished shards
  are kept). Under `strict`, a failure removes every staged shard (`staged`, also those of workers
  that finished after the failure), and a `PrepError` becomes a `PrepFailed`."""
  futs: list = []
  try:
    if workers == 1:
      q = _LocalQueue(on_msg)
      init(job, q)
      for t in todo:
        finished(write(t))
    else:
      ctx = mp.get_context("fork")
      q = ctx.Queue()
      stop = threading.Event()

      def pump():
        while not stop.is_set() or not q.empty():
          try:
            on_msg(q.get(timeout=0.1))
          except Exception:
            pass
      th = threading.Thread(target=pump, daemon=True)
      th.start()
      try:
        # ProcessPoolExecutor (not Pool): a worker killed by the OS raises BrokenProcessPool
        # instead of hanging the job.
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=init,
                                                    initargs=(job, q)) as ex:
          futs = [ex.submit(write, t) for t in todo]
          try:
            for fu in concurrent.futures.as_completed(futs):
              finished(fu.result())
          except BaseException:
            for fu in futs:
              fu.cancel()
            raise
      except concurrent.futures.process.BrokenProcessPool as e:
        raise PrepFailed(f"data_prep: a worker process died ({e}); finished shards are kept, "
                         f"rerun the same command to complete the job") from e
      finally:
        stop.set()
        th.join(timeout=5)
  except BaseException as e:
    if strict:                    # nothing is committed: staged shards go, also those of
      for fu in futs:             # workers that finished after the failure
        if fu.done() and not fu.cancelled() and fu.exception() is None:
          finished(fu.result())
      for res in staged.values():
        with contextlib.suppress(FileNotFoundError):
          os.remove(res["staged"])
    if isinstance(e, base.PrepError):
      raise PrepFailed(f"data_prep: {e} (--strict)") from e
    raise
