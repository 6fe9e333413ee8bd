#!/usr/bin/env bash
# Distributed training through torch.distributed.run.
# Usage: bash tools/dist_train.sh CONFIG GPUS [train.py options...]
# Env: NNODES (1), NODE_RANK (0), PORT (29500), MASTER_ADDR (127.0.0.1).
# GPUS is the number of processes per node; without CUDA, tools/train.py switches to the gloo
# backend and CPU DDP by itself, so the same command runs on CPU.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: bash $0 CONFIG GPUS [train.py options...]" >&2
  exit 2
fi
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
TOOLS_DIR=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}

PYTHONPATH="$TOOLS_DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" \
  --node_rank="$NODE_RANK" \
  --master_addr="$MASTER_ADDR" \
  --master_port="$PORT" \
  --nproc_per_node="$GPUS" \
  "$TOOLS_DIR/train.py" "$CONFIG" --launcher pytorch "${@:3}"
