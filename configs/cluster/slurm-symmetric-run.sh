#!/bin/bash
# A sweep on a Slurm allocation with `ray symmetric-run` (Ray 2.49+): every node runs the same
# command; it starts Ray on all of them (the first node of the allocation is the head), waits for
# --min-nodes, runs the sweep on the head and stops Ray when the sweep ends.
#   sbatch configs/cluster/slurm-symmetric-run.sh                 # from the repository root
#   SWEEP=configs/my_sweep.yaml sbatch configs/cluster/slurm-symmetric-run.sh
# Older Ray: configs/cluster/slurm-head-worker.sh. Walk-through: docs/cluster.md, "Slurm".
#
# Requeue: with --requeue, a preempted job, or one near its time limit (USR1, 5 minutes before:
# the trap below asks Slurm to requeue it), runs this script again; SLURM_RESTART_COUNT > 0 then
# adds --resume, so the sweep continues from its last checkpoints in storage_path.
# storage_path must be shared by every node (a parallel file system path, or s3://...).
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
head_ip=$(srun --nodes=1 --ntasks=1 -w "${nodes[0]}" hostname --ip-address | awk '{print $1}')

resume=()
if (( ${SLURM_RESTART_COUNT:-0} > 0 )); then
    resume=(--resume)
fi

# Near the time limit Slurm sends USR1 to this script: requeue the job; Slurm then stops the
# steps (SIGTERM to the trials, which checkpoint) and runs the script again with --resume.
trap 'echo "time limit near: requeueing job $SLURM_JOB_ID"; scontrol requeue "$SLURM_JOB_ID"' USR1

srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks="$SLURM_JOB_NUM_NODES" --kill-on-bad-exit=0 \
    ray symmetric-run --address "$head_ip:$RAY_PORT" --min-nodes "$SLURM_JOB_NUM_NODES" \
    --num-cpus "$SLURM_CPUS_PER_TASK" --num-gpus "${SLURM_GPUS_PER_TASK:-0}" -- \
    python -u -m orchestrator.run "$SWEEP" "${resume[@]}" &
sweep=$!
while true; do  # `wait` returns early when USR1 arrives (the trap runs then): wait again
    wait "$sweep" && status=0 || status=$?
    kill -0 "$sweep" 2>/dev/null || break
done
exit "$status"
