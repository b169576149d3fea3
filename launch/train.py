"""Trains one network: progress on stdout, metrics and checkpoints in --workdir.

  python -m launch.train --config=configs/cifar10.py:resnet20 --workdir=/tmp/resnet20
  python -m launch.train --config=configs/embedded.py:digits_resnet20 --workdir=/tmp/d20

Running the same command again resumes from the latest checkpoint in --workdir.
Override any config field with --config.<group>.<field>=VALUE.
"""
from absl import app, flags
from ml_collections import config_flags

from launch import common
from resjax import errors, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/cifar10.py", "Training config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where metrics and checkpoints go.")


@common.readable_errors
def main(argv):
  common.quiet_orbax()
  errors.check(len(argv) == 1, f"unexpected arguments: {' '.join(argv[1:])}")
  errors.check(bool(_WORKDIR.value), "--workdir is required: pass --workdir=DIR")
  common.log_devices()
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.Diverged as e:
    common.fail(str(e), code=1)
  evals = ", ".join(f"{k} {v:.4g}" for k, v in sorted(result.items()) if k.startswith("eval/"))
  print(f"done at step {result['step']}: {evals}; results in {_WORKDIR.value}")


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
