#!/usr/bin/env bash
# `gcd fit` under torchrun (DDP) on one node or several, without SLURM.
#
#   one node, all its GPUs:      docker/torchrun.sh experiments/quickstart.yaml [extra gcd fit args]
#   two nodes x 4 GPUs, run the same line on both nodes (node0 = host reachable from both):
#       NNODES=2 NPROC_PER_NODE=4 RDZV_ENDPOINT=node0:29500 RDZV_ID=qs-2x4 \
#           docker/torchrun.sh experiments/quickstart.yaml --run_name qs-2x4
#
# Environment (defaults in brackets):
#   NNODES [1]            nodes taking part; also --trainer.num_nodes
#   NPROC_PER_NODE [GPUs] processes per node = GPUs per node (nvidia-smi count; 1 without GPUs);
#                         also --trainer.devices
#   RDZV_ENDPOINT [localhost:29500]  host:port of the c10d rendezvous, the same on every node
#                         (localhost:0 picks a free port; single node only)
#   RDZV_ID [gcd]         a job id shared by the nodes of one run, different between concurrent runs
#   ACCELERATOR [auto]    --trainer.accelerator (auto = cuda when visible)
# Node ranks come from the rendezvous, so nodes need not be numbered. Lightning sees torchrun's variables
# (TORCHELASTIC_RUN_ID, RANK, LOCAL_RANK, WORLD_SIZE, ...) and uses its TorchElasticEnvironment: it starts no
# processes itself. Started inside a SLURM job, TorchElastic still takes precedence over SLURM detection.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: [NNODES=..] [NPROC_PER_NODE=..] [RDZV_ENDPOINT=host:port] $0 CONFIG [gcd fit args...]" >&2
    exit 2
fi
CONFIG=$1
shift

if [ -z "${NPROC_PER_NODE:-}" ]; then
    NPROC_PER_NODE=$( (nvidia-smi -L 2> /dev/null || true) | grep -c '^GPU' || true)
    [ "${NPROC_PER_NODE}" -ge 1 ] || NPROC_PER_NODE=1
fi
NNODES=${NNODES:-1}
RDZV_ENDPOINT=${RDZV_ENDPOINT:-localhost:29500}
RDZV_ID=${RDZV_ID:-gcd}
ACCELERATOR=${ACCELERATOR:-auto}
# Keep freed memory in the process (see docker/Dockerfile); the image sets these already.
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-17179869184}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-17179869184}"

exec torchrun \
    --nnodes "${NNODES}" \
    --nproc-per-node "${NPROC_PER_NODE}" \
    --rdzv-backend c10d \
    --rdzv-endpoint "${RDZV_ENDPOINT}" \
    --rdzv-id "${RDZV_ID}" \
    -m lightning_gcd.cli fit \
    --config "${CONFIG}" \
    --trainer.accelerator "${ACCELERATOR}" \
    --trainer.num_nodes "${NNODES}" \
    --trainer.devices "${NPROC_PER_NODE}" \
    --trainer.strategy ddp \
    "$@"
