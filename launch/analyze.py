"""Probes trained networks and writes a report with figures into DIR/analysis/step_<N>.

  python -m launch.analyze --workdir=/tmp/d20
  python -m launch.analyze --workdir=/tmp/p20 --compare=/tmp/d20 --step=1500 --split=test
  python -m launch.analyze --workdir=/shared/readonly_run --out=/tmp/analysis

Each run's checkpoint is restored on the devices present (any count) and probed
on its own training split (--split=test for the test split): probes.csv,
probes.json, PNG/PDF figures and report.md, written as one set into --out
(default WORKDIR/analysis/step_<N>, N the checkpoint step). --compare runs
must share the dataset and model family; their layers are aligned by name.
"""
import shlex
import sys

from absl import app, flags

from launch import common, runtime
from resjax import analysis, errors

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of the training run to analyse.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of every run (default: latest).")
_COMPARE = flags.DEFINE_multi_string("compare", [], "Workdirs of runs to overlay.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to probe: train or test.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/analysis/step_<N>).")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Global probe batch size.")
_THRESHOLD = flags.DEFINE_float("dormant_threshold", 0.1, "ReDo dormant-score threshold.")
_GRAD_BATCHES = flags.DEFINE_integer("grad_batches", None, "Batches for the gradient norms "
                                     "(default: 8, at most what the split holds).")
_GRAD_BATCH = flags.DEFINE_integer("grad_batch_size", None, "Examples per gradient batch "
                                   "(default: 64, at most the split; a larger value is refused).")
_MAX = flags.DEFINE_integer("max_examples", None, "Probe only this many examples.")


@common.readable_errors
def main(argv):
  errors.check(len(argv) == 1, f"unexpected arguments: {' '.join(argv[1:])}")
  errors.check(bool(_WORKDIR.value), "--workdir is required: pass --workdir=DIR of a run")
  runtime.quiet_orbax()
  common.compilation_cache()
  common.log_devices()
  analysis.analyze(_WORKDIR.value, step=_STEP.value, compare=_COMPARE.value,
                   split=_SPLIT.value, out=_OUT.value, batch_size=_BATCH.value,
                   dormant_threshold=_THRESHOLD.value, grad_batches=_GRAD_BATCHES.value,
                   grad_batch_size=_GRAD_BATCH.value, max_examples=_MAX.value,
                   command="python -m launch.analyze " + shlex.join(sys.argv[1:]), say=print)


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
