#!/usr/bin/env bash
# Set-up and run on a fresh machine: creates .venv (Python >= 3.12, newest JAX/Flax) from pyproject.toml.
#   bash launch/local.sh demo [--workdir DIR]   # synthetic videos -> Former-DFER -> eval, export
#   bash launch/local.sh test [pytest args]     # the whole test-suite
#   bash launch/local.sh setup                  # only the environment
#   bash launch/local.sh run ARGS...            # `jaxaffect ARGS...` inside the environment
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${JAXAFFECT_VENV:-.venv}"

find_python() {
  for c in "${PYTHON:-}" python3.12 python3.13; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  # pyenv keeps 3.12 without putting it on PATH.
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.1[2-9]' | sort -V); do
      p="$(pyenv root)/versions/$v/bin/python3"
      [ -x "$p" ] && { echo "$p"; return 0; }
    done
  fi
  echo "jaxaffect needs Python >= 3.12 (jax 0.12 / flax 0.12.12); none found. Install python3.12." >&2
  return 1
}

check_disk() {
  # torch + torchvision (CUDA build, the pair that imports beside timm) need ~6 GB in the venv and
  # ~3 GB of wheels while installing: say so before pip fails half-way with "No space left on device".
  local need_kb=$((10 * 1024 * 1024)) avail_kb d
  for d in "$VENV" "${TMPDIR:-/tmp}"; do
    avail_kb="$(df -Pk "$d" 2>/dev/null | awk 'NR==2 {print $4}')" || continue
    [ -n "$avail_kb" ] || continue
    if [ "$avail_kb" -lt "$need_kb" ]; then
      echo "[setup] warning: only $((avail_kb / 1024)) MB free on the file system of $d; the install needs ~10 GB (set TMPDIR or JAXAFFECT_VENV to a larger disk)" >&2
    fi
  done
}

setup() {
  local stamp="$VENV/.jaxaffect-installed"
  if [ ! -x "$VENV/bin/python" ]; then
    local py; py="$(find_python)"
    echo "[setup] creating $VENV with $("$py" --version)" >&2
    "$py" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[setup] installing jaxaffect[dev] into $VENV (first time: a few minutes, ~8 GB: torch is a CUDA build)" >&2
    check_disk
    # --no-cache-dir: pip's cache would keep a second copy of torch's ~3 GB of wheels on disk.
    "$VENV/bin/python" -m pip install -q --no-cache-dir --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q --no-cache-dir -e '.[dev]'
    touch "$stamp"
  fi
}

cmd="${1:-demo}"; shift || true
case "$cmd" in
  setup) setup ;;
  demo)  setup; exec "$VENV/bin/jaxaffect" demo "$@" ;;
  test)  setup; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  run)   setup; exec "$VENV/bin/jaxaffect" "$@" ;;
  *) echo "usage: bash launch/local.sh {demo|test|setup|run} [args]" >&2; exit 2 ;;
esac
