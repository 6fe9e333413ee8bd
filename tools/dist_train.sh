#!/usr/bin/env bash
# Distributed training through torch.distributed.run (see dist_launch.sh for the environment).
# Usage: bash tools/dist_train.sh CONFIG GPUS [train.py options...]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash $0 CONFIG GPUS [train.py options...]" >&2
  exit 2
fi
exec bash "$(dirname "$0")/dist_launch.sh" train.py "$2" "$1" "${@:3}"
