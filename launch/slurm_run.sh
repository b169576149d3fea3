# The body of every SLURM batch script here (slurm_gpu.sh, slurm_cpu.sh source it
# after their #SBATCH lines): one `python -m launch.train --multihost` per task,
# then a requeue when the tasks stopped on a signal, so the next run resumes.
#
# Submit from the root of the checkout: sbatch copies a batch script before
# running it, so this file and the relative --config paths are found from
# $SLURM_SUBMIT_DIR, where sbatch was called.
set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
# SLURM 22.05's srun does not inherit the job's --cpus-per-task; without it
# each task would be bound to one CPU (and get few host devices on the CPU).
if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then
  export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
fi
attempt_log=$(mktemp)
srun --kill-on-bad-exit=1 python -u -m launch.train --multihost "$@" | tee "$attempt_log"
status=$?
if [[ $status -eq 0 ]] && grep -q "^stopped by a signal at step" "$attempt_log"; then
  echo "requeueing job ${SLURM_JOB_ID} to resume from the checkpoint just saved"
  scontrol requeue "${SLURM_JOB_ID}"
fi
rm -f "$attempt_log"
exit $status
