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
from resjax import distributed, errors, files, study

_DEFAULT = os.path.join(os.path.dirname(configs.__file__), "study.py")
_CONFIG = common.define_config(_DEFAULT, "Study config file[:study[,tiny]].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results and checkpoints go (created).")


def _stopped(sig: str, workdir: str) -> str:
  """What a signal leaves: the grids finished and the checkpoints of the one in progress."""
  grids = sorted(n[:-4] for n in _ls(os.path.join(workdir, "grids")) if n.endswith(".npz"))
  steps = {g: max(int(s) for s in _ls(os.path.join(workdir, "checkpoints", g)) if s.isdigit())
           for g in _ls(os.path.join(workdir, "checkpoints")) if g not in grids and any(
               s.isdigit() for s in _ls(os.path.join(workdir, "checkpoints", g)))}
  kept = [f"grids done: {', '.join(grids)}"] if grids else []
  kept += [f"grid {g} checkpointed at step {s}" for g, s in sorted(steps.items())]
  return (f"stopped by {sig}: kept in {workdir}: {'; '.join(kept) or 'nothing trained yet'}; "
          "run the same command to resume")


def _ls(path: str) -> list[str]:
  return os.listdir(path) if os.path.isdir(path) else []


@common.readable_errors
def main(argv):
  errors.check(len(argv) == 1, f"unexpected arguments {argv[1:]}; pass options as --flag=value")
  errors.check(bool(_WORKDIR.value), "--workdir is required: pass --workdir=DIR")
  common.quiet_orbax()
  common.compilation_cache()
  common.log_devices()
  workdir = files.workdir_path(_WORKDIR.value)
  with distributed.exit_on_signals(lambda sig: _stopped(sig, workdir)):
    out = study.run(_CONFIG.value, workdir, log=lambda line: print(line, flush=True))
  print(f"wall time {out['wall_s']:.0f} s; {len(out['rows'])} conditions in "
        f"{os.path.join(_WORKDIR.value, 'study.csv')}")


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
