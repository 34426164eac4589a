#!/usr/bin/env bash
# Two JAX processes on this machine over loopback, each with 2 forced CPU devices
# (4 devices in one global mesh; collectives through gloo), for testing multi-host code.
#
# Usage (from the repository root):
#   launch/local_2proc.sh CONFIG WORKDIR [extra mixjax.main flags, e.g. --config.num_steps=20]
#
# Each process logs to WORKDIR/process_<i>.log; process 0 writes the metrics and
# summary.json, process 1 writes summary.process_1.json (for comparison). The script
# waits for both and exits non-zero if either failed.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,12p' "$0"; exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
PYTHON=${PYTHON:-.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
PORT=${PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
mkdir -p "$WORKDIR"

pids=()
for i in 0 1; do
  env -u XLA_FLAGS JAX_PLATFORMS=cpu "$PYTHON" -m mixjax.main \
    --config="$CONFIG" --workdir="$WORKDIR" \
    --jax_distributed --coordinator_address="127.0.0.1:$PORT" \
    --num_processes=2 --process_id="$i" --num_cpu_devices=2 \
    "$@" > "$WORKDIR/process_$i.log" 2>&1 &
  pids+=($!)
done

rc=0
for i in 0 1; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; see $WORKDIR/process_$i.log" >&2
    tail -n 20 "$WORKDIR/process_$i.log" >&2 || true
    rc=1
  fi
done
exit $rc
