"""Runs one study: grids of small nets, each grid trained in one compiled call.

  python -m launch.study --config=configs/study.py:degradation --workdir=runs/degradation
  python -m launch.study --config=configs/study.py:collapse,tiny --workdir=/tmp/collapse

Studies: degradation, dead_units, collapse, bottleneck, convergence (append
',tiny' for a seconds-long version). Writes study.csv, nets.csv, study.json and
<study>.png to --workdir; running the same command again resumes.
"""
import logging as py_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from launch import common
from resjax import errors, study

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/study.py", "Study config file[:study[,tiny]].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results and checkpoints go.")


def _parse(argv: list[str]) -> list[str]:
  """Flag parsing where a bad --config ends in one line, not a traceback."""
  try:
    rest = flags.FLAGS(argv)
    _CONFIG.value.keys()
  except (flags.Error, AttributeError, KeyError, OSError) as e:
    lines = str(e).strip().splitlines() or [type(e).__name__]
    found = [l.split("ConfigError: ", 1)[1] for l in lines if "ConfigError: " in l]
    print(f"error: {found[-1] if found else lines[-1]}", file=sys.stderr)
    sys.exit(2)
  return rest


def _quiet_orbax(record: py_logging.LogRecord) -> bool:
  return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


@common.readable_errors
def main(argv):
  logging.get_absl_handler().addFilter(_quiet_orbax)
  errors.check(len(argv) == 1, f"unexpected arguments: {' '.join(argv[1:])}")
  errors.check(bool(_WORKDIR.value), "--workdir is required: pass --workdir=DIR")
  common.log_devices()
  out = study.run(_CONFIG.value, _WORKDIR.value, log=lambda line: print(line, flush=True))
  print(f"wall time {out['wall_s']:.0f} s; {len(out['rows'])} conditions in "
        f"{_WORKDIR.value}/study.csv")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
