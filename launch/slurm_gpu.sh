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
#
# The body is launch/slurm_run.sh, which tests/test_slurm.py runs through
# launch/slurm_cpu.sh on a one-node SLURM cluster; on GPUs this script is
# untried (docs/clusters.md). Submit from the root of the checkout.
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

body=${SLURM_SUBMIT_DIR:-.}/launch/slurm_run.sh
[[ -f $body ]] || { echo "error: no $body: submit from the root of the resjax checkout" >&2; exit 2; }
source "$body"
