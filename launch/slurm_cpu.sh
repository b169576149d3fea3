#!/bin/bash
# Trains one network on a SLURM cluster of CPU nodes: one process per node,
# with all of the node's cores (split into host devices by launch/platform.py).
#
#   sbatch launch/slurm_cpu.sh --config=configs/embedded.py:digits_resnet20 --workdir=/shared/runs/d20
#   sbatch --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 launch/slurm_cpu.sh ...  # as the tests
#
# The same body as launch/slurm_gpu.sh (launch/slurm_run.sh): every argument
# goes to `python -m launch.train --multihost`, JAX reads the job layout from
# SLURM's variables, --workdir must be a directory every node sees, and a
# SIGTERM (120 s before the time limit, on preemption, `scancel --signal=TERM`)
# saves one step on every task and requeues the job, which resumes from it.
# Submit from the root of the checkout.
#SBATCH --job-name=resjax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=resjax-%x-%j.out

body=${SLURM_SUBMIT_DIR:-.}/launch/slurm_run.sh
[[ -f $body ]] || { echo "error: no $body: submit from the root of the resjax checkout" >&2; exit 2; }
source "$body"
