"""`python -m data_prep features`: per-frame embeddings of a trained jaxaffect image model, written
as TFRecord feature shards aligned to the frames of face shards.

  python -m data_prep features --shards /shards/affwild2 --checkpoint /runs/frame_resnet \\
      --out /features/affwild2_resnet [--select all] [--batch 256] [--stream frame_resnet] [--best]

The image model is restored with `jaxaffect.train.loop.restore_state(workdir, step)` and applied
as `module.apply(variables, images, train=False, method="embed")` to float32 `(N, H, W, 3)` images
in [0, 1] (uint8 / 255) at the model's `config.data.image_size` (crops of another size are resized
with the evaluation transform of the frame sampler, `augment.augment_clip(crop=None)`). Frames of
all videos are batched together: one jit-compiled function of fixed batch shape (the last batch is
padded), the batch split over the local devices when it divides.

Output: one feature shard per input shard (same name), whose records are the input records with
every field kept (ids, frame indices, t_sec, status, face_found, per-frame labels va/expr/au, clip
label, folds, split, series) except `frame/jpeg` (empty strings), plus `features/<stream>` (T, D).
Frames without a face keep their row: the embedding of the crop stored for them (data_prep stores
one for every frame; a frame with an empty JPEG is embedded as a black image) and
`frame/face_found` = 0 says so. Readers fill those rows from the nearest face frame
(`jaxaffect.data.features.fill_nearest`).

Guarantees as for face shards (`data_prep.shards`): each shard is written to a temp file,
fsync'ed, its sidecar (records, offsets, sha256, job hash, input shard sha256) renamed into place,
then the shard; a rerun skips shards whose sidecar matches (job and input) and whose bytes hash to
the sidecar's sha256, so a killed job rerun completes the missing shards only. `feature_job.json`
pins the job (source shards + their manifest sha256, checkpoint path and step, model, stream,
select, embedding dim, image size), written with the first shard (a run that fails before leaves
`--out` as it was); a rerun with other settings is refused (`--overwrite`).
`manifest.json` has the face shards' layout (readable by `jaxaffect.data.pipeline.ShardRecords`)
plus a `features` section (the recipe and package versions).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np

from data_prep import shards as shards_lib
from jaxaffect.data import schema

FEATURE_VERSION = 1
JOB_FILE = "feature_job.json"
SOURCE_NAME = "features"


@dataclasses.dataclass
class Embedder:
  """A batched embedding function: uint8 images (batch, H, W, 3) -> float32 (batch, dim).

  `fn` is called with exactly `batch` images (the caller pads); `image_size` is the side the model
  expects; `info` is what the manifest records about the model (checkpoint, step, model name)."""
  fn: Callable[[np.ndarray], np.ndarray]
  batch: int
  image_size: int
  dim: int
  info: dict


def make_embedder(module, variables, image_size: int, batch: int, info: dict) -> Embedder:
  """Jits `module.apply(variables, x, train=False, method="embed")` once for `(batch, S, S, 3)`.

  The images enter as float32 `uint8 / 255` computed on the host (numpy, correctly rounded), so
  the result equals `module.apply` on the same float images. With several local devices and a
  batch they divide, the batch is split over them (variables replicated)."""
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  devices = jax.local_devices()
  n = len(devices) if batch % len(devices) == 0 else 1
  mesh = Mesh(np.asarray(devices[:n]), ("data",))
  x_sh, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  variables = jax.device_put(variables, rep)

  def apply(v, x):
    return module.apply(v, x, train=False, method="embed")

  fn = jax.jit(apply, in_shardings=(rep, x_sh), out_shardings=rep)
  spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), np.float32)
  out = jax.eval_shape(apply, variables, spec)
  if len(out.shape) != 2 or out.shape[0] != batch:
    raise ValueError(f"model {info.get('model_name', '?')}: embed returns shape {out.shape} for "
                     f"{batch} images, expected ({batch}, D)")

  def run(images: np.ndarray) -> np.ndarray:
    if images.shape != (batch, image_size, image_size, 3):
      raise ValueError(f"embedder: got images {images.shape}, compiled for "
                       f"{(batch, image_size, image_size, 3)}")
    x = images.astype(np.float32) / np.float32(255.0)
    return np.asarray(fn(variables, x), np.float32)

  return Embedder(run, batch, image_size, int(out.shape[1]), dict(info))


def load_embedder(checkpoint: str, *, step: int | None = None, best: bool = False,
                  batch: int = 256) -> Embedder:
  """The image model of a training workdir (`loop.restore_state`) at the step
  `loop.resolve_step(checkpoint, step, best)` names: `step`, the best by the run's
  `checkpoint.best_metric`, or the latest; a missing checkpoint or metric is a PrepFailed."""
  from jaxaffect.train import loop
  try:
    step = loop.resolve_step(checkpoint, step, best)
  except FileNotFoundError as e:
    raise shards_lib.PrepFailed(f"data_prep features: --checkpoint {checkpoint}"
                                f"{' --best' if best else ''}: {e}") from e
  config, setup, variables, step = loop.restore_state(checkpoint, step)
  module = setup.task.module
  if not callable(getattr(module, "embed", None)):
    raise shards_lib.PrepFailed(f"data_prep features: model {config.model_name!r} of {checkpoint} "
                                f"has no `embed` method (an image model such as frame_resnet)")
  info = {"checkpoint": os.path.abspath(checkpoint), "step": int(step),
          "model_name": config.model_name}
  return make_embedder(module, variables, int(config.data.image_size), batch, info)


# ------------------------------------------------------------------------------------- the job
def add_arguments(p: argparse.ArgumentParser) -> None:
  from data_prep.sources._util import int_arg
  p.add_argument("--shards", required=True, help="face shards (a data_prep output directory)")
  p.add_argument("--checkpoint", required=True, help="training workdir of the image model")
  p.add_argument("--out", required=True, help="output directory for the feature shards")
  p.add_argument("--select", default="all",
                 help="records to embed: a split ('train'), a fold ('1:test') or 'all'")
  p.add_argument("--batch", type=int_arg(1), default=256,
                 help="frames per model call (fixed shape)")
  p.add_argument("--stream", default="", help="feature stream name (default: the model name)")
  g = p.add_mutually_exclusive_group()
  g.add_argument("--step", type=int_arg(0), default=None,
                 help="checkpoint step (default: the latest)")
  g.add_argument("--best", action="store_true", help="the checkpoint with the best eval metric")
  p.add_argument("--overwrite", action="store_true", help="delete the feature shards in --out first")
  p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="data_prep features", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  add_arguments(p)
  return p


def run(args: argparse.Namespace, embedder: Embedder | None = None) -> dict:
  """Runs (or resumes) the job; `embedder` replaces the checkpoint's model (tests)."""
  if args.batch < 1:
    raise shards_lib.PrepFailed(f"data_prep features: --batch must be >= 1, got {args.batch}")
  if embedder is None:
    embedder = load_embedder(args.checkpoint, step=args.step, best=args.best, batch=args.batch)
  return extract(args.shards, args.out, embedder, select=args.select, stream=args.stream,
                 overwrite=args.overwrite, quiet=args.quiet)


def _selected(manifest: dict, select: str) -> list[dict]:
  from jaxaffect.data import pipeline
  if select == "all":
    return list(manifest["records"])
  try:
    return pipeline.select_records(manifest, select)
  except ValueError as e:
    raise shards_lib.PrepFailed(f"data_prep features: {e}") from e


def extract(shard_dir: str, out: str, embedder: Embedder, *, select: str = "all",
            stream: str = "", overwrite: bool = False, quiet: bool = False) -> dict:
  """Embeds every frame of the selected records of `shard_dir` into feature shards in `out`."""
  shard_dir, out = os.path.abspath(shard_dir), os.path.abspath(out)
  if shard_dir == out:
    raise shards_lib.PrepFailed("data_prep features: --out must differ from --shards")
  try:
    manifest = schema.read_manifest(shard_dir)
  except FileNotFoundError as e:
    raise shards_lib.PrepFailed(f"data_prep features: {e}") from e
  if manifest.get("schema_version") != schema.SCHEMA_VERSION:
    raise shards_lib.PrepFailed(f"data_prep features: {shard_dir}/manifest.json: schema_version "
                                f"{manifest.get('schema_version')}, this job reads "
                                f"{schema.SCHEMA_VERSION}")
  stream = stream or embedder.info.get("model_name") or "frame"
  if "/" in stream:
    raise shards_lib.PrepFailed(f"data_prep features: --stream {stream!r} must not contain '/'")
  records = _selected(manifest, select)
  shard_meta = {sh["file"]: sh for sp in manifest["splits"].values() for sh in sp["shards"]}
  recipe = {"source_dir": shard_dir,
            "source_manifest_sha256": shards_lib._sha256(os.path.join(shard_dir, schema.MANIFEST)),
            "select": select, "stream": stream, "dim": embedder.dim,
            "image_size": embedder.image_size, "model": embedder.info,
            "feature_version": FEATURE_VERSION, "schema_version": schema.SCHEMA_VERSION}
  job = json.loads(json.dumps({"source": SOURCE_NAME, "recipe": recipe}, sort_keys=True))
  job_hash = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:24]
  with shards_lib.output_dir(out):
    return _extract_locked(shard_dir, out, embedder, records, shard_meta, job, job_hash, overwrite,
                           quiet)


def _extract_locked(shard_dir, out, embedder, records, shard_meta, job, job_hash, overwrite, quiet):
  pin = shards_lib.pin_job(out, job, overwrite=overwrite, prog="data_prep features",
                           job_file=JOB_FILE)
  log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

  by_file: dict[str, list[dict]] = {}
  for r in records:
    by_file.setdefault(r["file"], []).append(r)
  tasks = []
  for name in sorted(by_file):
    sh = shard_meta[name]
    recs = sorted(by_file[name], key=lambda r: r["offset"])
    meta = schema.parse_shard_name(name)
    tasks.append({"name": name, "split": meta["split"], "index": meta["index"],
                  "count": meta["count"], "records": recs,
                  "inputs": {"sha256": sh["sha256"], "records": [[r["id"], r["offset"]]
                                                                  for r in recs]}})
  done = {t["name"]: None if overwrite else _shard_done(out, t, job_hash) for t in tasks}
  names = {t["name"] for t in tasks}
  todo = [t for t in tasks if done[t["name"]] is None]
  n_frames = sum(r["num_frames"] for t in todo for r in t["records"])
  log(f"[data_prep features] {len(records)} records in {len(tasks)} shards "
      f"({len(tasks) - len(todo)} already done), {n_frames} frames to embed, stream "
      f"{job['recipe']['stream']!r} dim {embedder.dim}")
  t0 = time.time()
  for t in todo:                            # every input checked before --out is touched
    path = os.path.join(shard_dir, t["name"])
    if not os.path.exists(path) or os.path.getsize(path) != shard_meta[t["name"]]["bytes"]:
      raise shards_lib.PrepFailed(f"data_prep features: {path}: missing or changed since "
                                  f"{shard_dir}/manifest.json was written")
  # Shards of another selection would mislead globs: deleted, with the old manifest, when the job
  # writes; the job file is pinned with the first shard (a run that fails before leaves --out as
  # it was).
  if todo or pin.stale(names):
    pin.prepare(names)
  if todo:
    from tqdm import tqdm
    bar = tqdm(total=n_frames, unit="frame", desc="features", file=sys.stderr, disable=quiet,
               dynamic_ncols=True)
    try:
      for t in todo:
        done[t["name"]] = _write_shard(shard_dir, out, t, embedder, job["recipe"]["stream"],
                                       job_hash, bar.update, pin)
    finally:
      bar.close()
  pin.write()
  manifest = shards_lib._manifest(SOURCE_NAME, job, tasks, done, [], "")
  manifest["features"] = dict(job["recipe"], versions=_versions())
  shards_lib._atomic_json(os.path.join(out, schema.MANIFEST), manifest)
  dt = time.time() - t0
  log(f"[data_prep features] wrote {manifest['totals']['videos']} records / "
      f"{manifest['totals']['frames']} frames in {len(tasks)} shards to {out}; "
      f"{n_frames / max(dt, 1e-9):.1f} frames/s this run")
  return manifest


def _versions() -> dict:
  import importlib.metadata as md
  out = {"python": sys.version.split()[0]}
  for pkg in ("jaxaffect", "jax", "flax", "numpy", "opencv-python-headless", "opencv-python"):
    try:
      out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      pass
  return out


# A finished feature shard is recognised exactly as a face shard is (sidecar: job hash, inputs,
# sha256 of the file).
_shard_done = shards_lib._shard_done


def _frames(rec: schema.VideoRecord, lo: int, hi: int, size: int, where: str) -> np.ndarray:
  """Frames [lo, hi) of a record as uint8 (n, size, size, 3): decoded, resized if needed; an
  empty JPEG (no image stored) is a black frame."""
  from jaxaffect.data import augment
  idx = np.arange(lo, hi)
  have = np.asarray([len(rec.jpegs[i]) > 0 for i in idx], bool)
  out = np.zeros((hi - lo, size, size, 3), np.uint8)
  if have.any():
    img = schema.decode_frames(rec.jpegs, idx[have], where)
    if img.shape[1:3] != (size, size):
      img, _ = augment.augment_clip(img, np.random.default_rng(0), size=size, crop=None,
                                    flip_prob=0.0)
    out[have] = img
  return out


def feature_record(rec: schema.VideoRecord, stream: str, emb: np.ndarray) -> schema.VideoRecord:
  """The feature record of a face record: every field kept, no images, `features[stream]`."""
  fr = schema.VideoRecord(**{f: getattr(rec, f) for f in rec.__dataclass_fields__})
  fr.jpegs = [b""] * rec.num_frames
  fr.features = {stream: np.asarray(emb, np.float32)}
  return fr


def _write_shard(shard_dir: str, out: str, task: dict, embedder: Embedder, stream: str,
                 job_hash: str, progress: Callable[[int], Any],
                 pin: "shards_lib.Pin | None" = None) -> dict:
  """One feature shard (temp + fsync + rename, sidecar first) from one input shard."""
  src = os.path.join(shard_dir, task["name"])
  final = os.path.join(out, task["name"])
  tmp = f"{final}.tmp-{os.getpid()}"
  B, S = embedder.batch, embedder.image_size
  records: list[dict] = []
  try:
    with open(tmp, "wb") as f, open(src, "rb") as fin:
      w = schema.TFRecordWriter(f)
      pending: list[list] = []        # [record, embeddings (T, D), frames embedded]
      buf = np.zeros((B, S, S, 3), np.uint8)
      owners: list[tuple[int, int, int]] = []   # (pending slot, lo, hi) of the rows in buf
      fill = 0

      def flush():
        nonlocal fill, owners
        if not fill:
          return
        buf[fill:] = 0                # padding rows of the last batch
        emb = embedder.fn(buf)
        row = 0
        for slot, lo, hi in owners:
          pending[slot][1][lo:hi] = emb[row:row + hi - lo]
          pending[slot][2] += hi - lo
          row += hi - lo
        progress(fill)
        fill, owners = 0, []

      def emit():                     # finished records, in input order (called with buf empty)
        while pending and pending[0][2] == pending[0][0].num_frames:
          rec, emb, _ = pending.pop(0)
          off, n = w.write(schema.encode(feature_record(rec, stream, emb)))
          records.append({"id": rec.video_id, "split": rec.split, "file": task["name"],
                          "offset": off, "length": n, "label": rec.label,
                          "folds": list(rec.folds), **shards_lib._record_stats(rec)})

      for r in task["records"]:
        where = f"{src} record at byte {r['offset']} ({r['id']})"
        rec = schema.decode(schema.read_record_at(fin, r["offset"], where), where)
        t = rec.num_frames
        pending.append([rec, np.zeros((t, embedder.dim), np.float32), 0])
        slot = len(pending) - 1
        lo = 0
        while lo < t:
          hi = min(t, lo + B - fill)
          buf[fill:fill + hi - lo] = _frames(rec, lo, hi, S, where)
          owners.append((slot, lo, hi))
          fill += hi - lo
          lo = hi
          if fill == B:
            flush()
            before = len(pending)
            emit()
            slot -= before - len(pending)
      flush()
      emit()
      if pending:
        raise RuntimeError(f"{src}: {len(pending)} records left unembedded (internal error)")
      f.flush()
      os.fsync(f.fileno())
    return shards_lib.commit_shard(tmp, final, task, job_hash, pin=pin, records=records,
                                   skipped=[], frame_issues=[], template=None)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    run(args)
  except shards_lib.PrepFailed as e:
    print(e.code if isinstance(e.code, str) else e, file=sys.stderr)
    return 2
  return 0
