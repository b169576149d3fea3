#!/bin/bash
# Trains one network on a SLURM GPU cluster: one process per GPU on every node.
#
#   sbatch launch/slurm_gpu.sh --config=configs/cifar10.py:resnet110 --workdir=/shared/runs/r110
#   sbatch --nodes=4 launch/slurm_gpu.sh --config=... --workdir=...   # other sizes
#
# Every argument goes to `python -m launch.train --multihost`; JAX reads the job
# layout (coordinator = first node, process count and ids, one GPU per process)
# from SLURM's variables. --workdir must be a directory every node sees (NFS,
# Lustre, ...): each process writes its part of every checkpoint there, process 0
# writes metrics.jsonl.
#
# Preemption and time limits: SLURM sends SIGTERM to every task 120 s before the
# time limit (--signal below) and when it preempts the job; the processes agree
# on one step, save it, and exit 0 with "stopped by a signal at step N". This
# script then requeues the job (--requeue also lets SLURM requeue a preempted
# job), and the new run resumes from that checkpoint: nothing is lost.
#SBATCH --job-name=resjax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=resjax-%x-%j.out

set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
attempt_log=$(mktemp)
srun --kill-on-bad-exit=1 python -u -m launch.train --multihost "$@" | tee "$attempt_log"
status=$?
if [[ $status -eq 0 ]] && grep -q "^stopped by a signal at step" "$attempt_log"; then
  echo "requeueing job ${SLURM_JOB_ID} to resume from the checkpoint just saved"
  scontrol requeue "${SLURM_JOB_ID}"
fi
rm -f "$attempt_log"
exit $status
