#!/usr/bin/env bash
# N JAX processes on this machine (CPU, gloo collectives on 127.0.0.1): exercises the multi-host code
# paths (per-host data, global arrays, Orbax across processes) without a cluster.
#   bash launch/multiprocess_local.sh 2 train --config former_dfer:smoke --workdir /tmp/mp_run
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:?number of processes}"; shift
PORT="${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
DEV_PER_PROC="${DEV_PER_PROC:-1}"
pids=()
for ((i=0; i<N; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DEV_PER_PROC" \
    .venv/bin/jaxaffect --coordinator_address "127.0.0.1:$PORT" --num_processes "$N" --process_id "$i" "$@" \
    > "multiprocess_$i.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
tail -n 3 multiprocess_*.log
exit $rc
