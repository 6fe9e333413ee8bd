#!/usr/bin/env bash
# Distributed evaluation through torch.distributed.run (see dist_launch.sh for the environment).
# Usage: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options...]
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash $0 CONFIG CHECKPOINT GPUS [test.py options...]" >&2
  exit 2
fi
exec bash "$(dirname "$0")/dist_launch.sh" test.py "$3" "$1" "$2" "${@:4}"
