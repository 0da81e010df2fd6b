#!/bin/bash
# A sweep on a Slurm allocation, the classic way (any supported Ray): `ray start --head` on the
# first node, `ray start --address` on the others (each a background job step), then the sweep
# runs on the head's node (this batch script's node) against that cluster.
#   sbatch configs/cluster/slurm-head-worker.sh                   # from the repository root
# Ray 2.49+: configs/cluster/slurm-symmetric-run.sh does the same in one step.
# Requeue and --resume: as in slurm-symmetric-run.sh. Walk-through: docs/cluster.md, "Slurm".
#SBATCH --job-name=repnas-sweep
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --gpus-per-task=4
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --output=repnas-sweep-%j.out

set -euo pipefail

SWEEP=${SWEEP:-configs/imagenet_cluster.yaml}
RAY_PORT=${RAY_PORT:-6379}

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
gpus=${SLURM_GPUS_PER_TASK:-0}

resume=()
if (( ${SLURM_RESTART_COUNT:-0} > 0 )); then
    resume=(--resume)
fi
trap 'echo "time limit near: requeueing job $SLURM_JOB_ID"; scontrol requeue "$SLURM_JOB_ID"' USR1

srun --nodes=1 --ntasks=1 -w "$head" \
    ray start --head --node-ip-address="$head_ip" --port="$RAY_PORT" \
    --num-cpus "$SLURM_CPUS_PER_TASK" --num-gpus "$gpus" --block &
until ray status --address "$head_ip:$RAY_PORT" >/dev/null 2>&1; do sleep 2; done
workers=$(( SLURM_JOB_NUM_NODES - 1 ))
if (( workers > 0 )); then
    srun --nodes="$workers" --ntasks="$workers" --exclude="$head" \
        ray start --address "$head_ip:$RAY_PORT" \
        --num-cpus "$SLURM_CPUS_PER_TASK" --num-gpus "$gpus" --block &
    sleep "${RAY_WORKER_WAIT:-20}"  # the driver checks at start that the trials fit the nodes up
fi

RAY_ADDRESS="$head_ip:$RAY_PORT" python -u -m orchestrator.run "$SWEEP" "${resume[@]}" &
sweep=$!
while true; do  # `wait` returns early when USR1 arrives (the trap runs then): wait again
    wait "$sweep" && status=0 || status=$?
    kill -0 "$sweep" 2>/dev/null || break
done
exit "$status"
