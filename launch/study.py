"""Runs one study: grids of small nets, each grid trained in one compiled call.

  python -m launch.study --config=configs/study.py:degradation --workdir=runs/degradation
  python -m launch.study --config=configs/study.py:collapse,tiny --workdir=/tmp/collapse

Studies: degradation, dead_units, collapse, bottleneck, convergence (append
',tiny' for a seconds-long version). Writes study.csv, nets.csv, study.json and
<study>.png to --workdir; running the same command again resumes. Override any
config field with --config.<field>=VALUE (e.g. --config.seeds=4).
"""
import os

from absl import app, flags

import configs
from launch import common
from resjax import errors, study

_DEFAULT = os.path.join(os.path.dirname(configs.__file__), "study.py")
_CONFIG = common.define_config(_DEFAULT, "Study config file[:study[,tiny]].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results and checkpoints go (created).")


@common.readable_errors
def main(argv):
  errors.check(len(argv) == 1, f"unexpected arguments {argv[1:]}; pass options as --flag=value")
  errors.check(bool(_WORKDIR.value), "--workdir is required: pass --workdir=DIR")
  common.quiet_orbax()
  common.compilation_cache()
  common.log_devices()
  out = study.run(_CONFIG.value, _WORKDIR.value, log=lambda line: print(line, flush=True))
  print(f"wall time {out['wall_s']:.0f} s; {len(out['rows'])} conditions in "
        f"{os.path.join(_WORKDIR.value, 'study.csv')}")


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
