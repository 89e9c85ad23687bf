#!/bin/bash
# Two "nodes" of one process each on THIS machine, over loopback only (127.0.0.1), started by torchrun: the
# multi-node launch path (what two machines would run, one agent per machine) tried on a laptop or CI box.
#
#   bash docs/launch/train-llm-torchrun-loopback.sh            # from the repository root, after `llmrec demo`
#   PORT=29600 OUT=checkpoints/torchrun-2x1 bash docs/launch/train-llm-torchrun-loopback.sh
#
# On two real machines run the same torchrun line once on each, with --node-rank 0 and 1 and --master-addr set
# to node 0's address. Each agent starts --nproc-per-node processes and sets RANK/LOCAL_RANK/WORLD_SIZE; llmrec
# reads them through Lightning (--devices = processes per node, --num-nodes = nodes). --threads 1: the two
# "nodes" share this machine's cores. A CPU run uses gloo; the tiny small preset keeps it to minutes on 2 cores.
set -euo pipefail
PORT="${PORT:-29511}"
OUT="${OUT:-checkpoints/torchrun-2x1}"

PIDS=()
for NODE in 0 1; do
    torchrun --nnodes 2 --nproc-per-node 1 --node-rank "$NODE" --master-addr 127.0.0.1 --master-port "$PORT" \
        -m llmrec train-llm --config llmrec/configs/llm-tiny-cpu-small.yaml \
        --data data/processed/ml-100k-llara-all --encoder checkpoints/demo/sasrec --out "$OUT" \
        --max-train-samples 1000 --max-valid-samples 100 --max-test-samples 100 --batch-size 8 \
        --device cpu --devices 1 --num-nodes 2 --threads 1 --no-progress-bar &
    PIDS+=("$!")
done
for PID in "${PIDS[@]}"; do
    wait "$PID"   # set -e: the script fails when either node's agent failed
done
