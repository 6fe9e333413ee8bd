#!/usr/bin/env bash
# One command of the CIFAR-10 benchmark on the lent GPU machine (see benchmarks/cifar10/README.md).
# From the repository root there, with .device/ carried (wheels, dataset tarball, state):
#   BUDGET=540 bash benchmarks/device_run.sh [arguments of python -m benchmarks.cifar10_table]
# It installs the OpenMMLab wheels into /tmp/site, unpacks CIFAR-10 to /tmp/cifar10, restores the
# benchmark state carried in .device/state (bench-state.tar.gz.part*), runs the driver with a time
# budget of BUDGET seconds for the whole command (default 540, for a 600 s limit) and packs the
# state and the results into $OUT (at most 8 files of <= 15 MiB: state parts, results.md/json, log).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
T0=$(date +%s)
BUDGET=${BUDGET:-540}
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
[ -d /tmp/cifar10/train ] || tar xzf .device/data/cifar10-jpeg.tar.gz -C /tmp || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
RESTORE=()
if ls .device/state/bench-state.tar.gz.part* >/dev/null 2>&1; then RESTORE=(--restore .device/state); fi
LEFT=$(( BUDGET - ($(date +%s) - T0) ))
echo "[device_run] set-up took $(( $(date +%s) - T0 )) s; driver time budget ${LEFT} s"
python3 -m benchmarks.cifar10_table --data-root /tmp/cifar10 --time-budget "$LEFT" --pack "$OUT" \
    "${RESTORE[@]}" "$@" 2>&1 | tee /tmp/driver-output.log
RC=${PIPESTATUS[0]}
tail -c 8000000 /tmp/driver-output.log | gzip > "$OUT/driver-output.log.gz"
echo "[device_run] driver exit code $RC after $(( $(date +%s) - T0 )) s; files in $OUT:"
ls -la "$OUT"
exit "$RC"
