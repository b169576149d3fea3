"""Trains one network: progress on stdout, metrics and checkpoints in --workdir.

  python -m launch.train --config=configs/cifar10.py:resnet20 --workdir=/tmp/resnet20
  python -m launch.train --config=configs/embedded.py:digits_resnet20 --workdir=/tmp/d20

Running the same command again resumes from the latest checkpoint in --workdir.
Override any config field with --config.<group>.<field>=VALUE.
"""
import logging as py_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from launch import common
from resjax import errors, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/cifar10.py", "Training config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where metrics and checkpoints go.")


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing where a bad --config (file, variant, field) ends in one line."""
  try:
    rest = flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    lines = str(e).strip().splitlines()
    found = [l.split("ConfigError: ", 1)[1] for l in lines if "ConfigError: " in l]
    if found:
      _fail(found[-1])
    if isinstance(e, flags.Error):
      _fail(lines[0])
    _fail(f"a --config.<field> override names a field the config lacks ({lines[-1]})")
  try:
    _CONFIG.value.keys()  # A missing file fails here, not while parsing.
  except OSError:
    _fail(f"cannot load --config={flags.FLAGS['config'].serialize().split('=', 1)[-1]}; "
          "pass an existing file, e.g. --config=configs/cifar10.py:resnet20")
  return rest


def _quiet_orbax(record: py_logging.LogRecord) -> bool:
  """Drops Orbax's per-save INFO lines, which would bury the progress lines."""
  return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


@common.readable_errors
def main(argv):
  logging.get_absl_handler().addFilter(_quiet_orbax)
  errors.check(len(argv) == 1, f"unexpected arguments: {' '.join(argv[1:])}")
  errors.check(bool(_WORKDIR.value), "--workdir is required: pass --workdir=DIR")
  common.log_devices()
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.Diverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  evals = ", ".join(f"{k} {v:.4g}" for k, v in sorted(result.items()) if k.startswith("eval/"))
  print(f"done at step {result['step']}: {evals}; results in {_WORKDIR.value}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
