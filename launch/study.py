"""Runs one study: its grids trained as ordinary grid runs, then its analysis.

  python -m launch.study --config=configs/study.py:degradation --workdir=runs/degradation
  python -m launch.study --config=configs/study.py:collapse,tiny --workdir=/tmp/collapse

Studies: degradation, dead_units, collapse, bottleneck, convergence,
redundancy, pilot, revival, power (append ',tiny' for a seconds-long version). Each grid trains
in --workdir/<grid> as launch.train would; the study writes study.csv,
nets.csv, study.json and <study>.png/.pdf to --workdir. SIGTERM or Ctrl-C saves
the grid in training at its current step (or, when it cannot stop there within
1.5 s, keeps its last checkpoint; a second signal does not wait for a save),
prints what was kept and exits 130 / 143; running the same command again
resumes. Override any config field with --config.<field>=VALUE (e.g.
--config.seeds=4). On a CPU the cores are split into host devices as for
launch.train, and the nets of a grid are spread over as many as they keep busy
(resjax/grid/steps.py grid_training_mesh). `--redraw` draws the figure of a
finished study again from its study.json alone (no --config needed, nothing
trained).
"""
from launch import platform  # noqa: F401  # pylint: disable=unused-import  (before JAX)

import os

from absl import app, flags  # pylint: disable=g-import-not-at-top

import configs
from launch import common, runtime
from resjax import checkpoints, errors, files, studies

_DEFAULT = os.path.join(os.path.dirname(configs.__file__), "study.py")
_CONFIG = common.define_config(_DEFAULT, "Study config file[:study[,tiny]].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results and checkpoints go (created).")
_REDRAW = flags.DEFINE_bool("redraw", False, "Draw the figure of the finished study in "
                            "--workdir again from its study.json (no --config; trains nothing).")
# A signal lets the grid in training stop at its next step within this long; a
# grid that did gets up to _SAVING_S to finish its save (a second signal: at once).
_GRACE_S, _SAVING_S = 1.5, 120.0


def _kept(workdir: str, config) -> str:
  """What a stop leaves on disk: the latest checkpoint of each grid."""
  try:
    kept = [f"grid '{name}' at step {steps[-1]}/{g.train.steps}"
            for name, g in studies.grids(config).items()
            if (steps := checkpoints.saved_steps(os.path.join(workdir, name)))]
  except Exception:  # pylint: disable=broad-except
    return f"the checkpoints saved so far are kept in {workdir}"
  return f"kept in {workdir}: {', '.join(kept)}" if kept else f"no checkpoint in {workdir} yet"


def _require_flags() -> None:
  """ConfigError naming what is missing: --config (with the studies) and --workdir."""
  missing = []
  if not flags.FLAGS["config"].present:
    missing.append("--config is required: pass --config=configs/study.py:STUDY[,tiny], STUDY one "
                   f"of {', '.join(studies.names())}")
  if not _WORKDIR.value:
    missing.append("--workdir is required: pass --workdir=DIR")
  errors.check(not missing, "; ".join(missing))


@common.readable_errors
def main(argv):
  errors.check(len(argv) == 1, f"unexpected arguments {argv[1:]}; pass options as --flag=value")
  if _REDRAW.value:
    errors.check(bool(_WORKDIR.value), "--workdir is required: pass --workdir=DIR")
    print(f"redrawn: {studies.redraw(files.workdir_path(_WORKDIR.value))}")
    return
  _require_flags()
  common.refuse_unused(studies.unused(_CONFIG.value))
  runtime.quiet_orbax()
  runtime.import_tensorboardx()
  common.compilation_cache()
  common.log_devices()
  workdir, config = files.workdir_path(_WORKDIR.value), _CONFIG.value
  stopped = lambda sig: (f"stopped by {sig}: {_kept(workdir, config)}; "  # noqa: E731
                         "run the same command to resume")
  with runtime.exit_on_signals(stopped, grace_s=_GRACE_S,
                               saving_s=_SAVING_S) as should_stop:
    out = studies.run(config, workdir, log=lambda line: print(line, flush=True),
                      should_stop=should_stop)
    if out["stopped"]:  # The grid in training saved at its current step.
      runtime.exit_now(stopped(should_stop.name), 128 + should_stop.signum)
  print(f"wall time {out['wall_s']:.0f} s; {len(out['rows'])} conditions in "
        f"{os.path.join(workdir, 'study.csv')}")


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
