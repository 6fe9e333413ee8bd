#!/usr/bin/env bash
# Runs one of this folder's tools under torch.distributed.run (what dist_train.sh and
# dist_test.sh call). Usage: bash tools/dist_launch.sh TOOL.py GPUS [tool arguments...]
# Env: NNODES (1), NODE_RANK (0), PORT (29500), MASTER_ADDR (127.0.0.1), PYTHON (python).
# GPUS is the number of processes per node; without CUDA the tools switch to the gloo backend
# and CPU DDP by themselves, so the same command runs on CPU.
set -euo pipefail
TOOL=$1
GPUS=$2
TOOLS_DIR=$(cd "$(dirname "$0")" && pwd)
PYTHONPATH="$TOOLS_DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
"${PYTHON:-python}" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" \
  --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" \
  --master_port="${PORT:-29500}" \
  --nproc_per_node="$GPUS" \
  "$TOOLS_DIR/$TOOL" "${@:3}" --launcher pytorch
