"""Trains one network: progress on stdout, metrics and checkpoints in --workdir.

  python -m launch.train --config=configs/cifar10.py:resnet20 --workdir=/tmp/resnet20
  python -m launch.train --config=configs/embedded.py:digits_resnet20 --workdir=/tmp/d20

Running the same command again resumes from the latest checkpoint in --workdir;
--fresh moves an earlier run aside (to DIR.old-<time>, never deleted) and starts
over. SIGTERM or Ctrl-C saves a checkpoint at the current step and exits 0.
Several processes: --multihost (JAX reads SLURM, Cloud TPU or Open MPI settings)
or --coordinator_address/--num_processes/--process_id; see launch/slurm_gpu.sh,
launch/slurm_cpu.sh and launch/tpu_pod.sh. Override any config field with
--config.<group>.<field>=VALUE.
"""
from launch import platform  # (before JAX)

import errno
import os

from absl import flags  # pylint: disable=g-import-not-at-top
import jax

import configs
from launch import common, runtime, stdout_filter
from resjax import checkpoints, errors, train

_CONFIG = common.define_config(
    os.path.join(os.path.dirname(configs.__file__), "cifar10.py"), "Training config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where metrics and checkpoints go.")
_FRESH = flags.DEFINE_bool("fresh", False, "Move an earlier run in --workdir aside to "
                           "WORKDIR.old-<time> (nothing is deleted) and start at step 0.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Join a multi-process job described by "
                               "the cluster environment (SLURM, Cloud TPU, Open MPI).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0 of a multi-process job.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process: 0..num_processes-1.")
_COORD_TIMEOUT = flags.DEFINE_integer("coordinator_timeout", 120, "Seconds to wait for all processes.")


def _say(line: str) -> None:
  """Progress lines of the run, on stdout."""
  print(line, flush=True)


@common.readable_errors
def main(argv):
  runtime.quiet_orbax()
  runtime.import_tensorboardx()
  common.compilation_cache()
  errors.check(len(argv) == 1, f"unexpected arguments: {' '.join(argv[1:])}")
  errors.check(bool(_WORKDIR.value), "--workdir is required: pass --workdir=DIR")
  common.refuse_unused(train.unused(_CONFIG.value))
  multihost = bool(_MULTIHOST.value or _NUM_PROCESSES.value)
  if not multihost and train.trains_on_one_host_device(_CONFIG.value):
    platform.use_one_device()  # Before JAX's backend starts (log_devices, below).
  if runtime.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                        auto=_MULTIHOST.value, timeout_s=_COORD_TIMEOUT.value):
    stdout_filter.quiet_gloo()
  common.log_devices()
  with runtime.stop_on_signals() as should_stop:
    try:
      result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, fresh=_FRESH.value,
                                        should_stop=should_stop, say=_say)
    except (train.Diverged, train.NotSaved) as e:
      common.fail(str(e), code=1, now=isinstance(e, train.NotSaved))
    except OSError as e:  # metrics.jsonl, TensorBoard or config.json on a full disk.
      if e.errno not in common.DISK_ERRNOS:
        raise
      steps = checkpoints.saved_steps(_WORKDIR.value)
      kept = (f"the last good checkpoint is step {steps[-1]} in "
              f"{checkpoints.directory(_WORKDIR.value)}" if steps else "no checkpoint was saved")
      fix = "make it writable" if e.errno == errno.EROFS else "free some space"
      common.fail(f"could not write{f' to {e.filename}' if e.filename else ''} in "
                  f"{_WORKDIR.value} ({e.strerror}); {kept}; {fix} and run the same command "
                  "to resume", code=1, now=True)
  if jax.process_index() != 0:
    return
  if result["stopped"]:
    print(f"stopped by a signal at step {result['step']}: checkpoint saved in "
          f"{result['checkpoint']}; run the same command to resume", flush=True)
    return
  evals = ", ".join(f"{k} {v:.4g}" for k, v in sorted(result.items()) if k.startswith("eval/"))
  print(f"done at step {result['step']}: {evals}; results in {_WORKDIR.value}")


if __name__ == "__main__":
  runtime.run(main, flags_parser=common.parse_flags)
