"""Runs the ReLU-collapse sweep and writes collapse.csv / .json / .png.

  python -m launch.sweep --workdir=/tmp/collapse
  python -m launch.sweep --workdir=/tmp/collapse --config.dims=2,3,5,15,30 --config.seeds=256
  python -m launch.sweep --config=configs/collapse.py:ball --workdir=/tmp/collapse_ball

Any config field can be overridden with --config.FIELD=VALUE; tuples take a
comma list (--config.activations=relu,tanh).
"""
import functools
import os

from launch import memory  # noqa: F401  # pylint: disable=unused-import  (before JAX's threads)

from absl import flags

import configs
from launch import common, runtime
from resjax import collapse, errors, files

_DEFAULT = os.path.join(os.path.dirname(configs.__file__), "collapse.py")
_CONFIG = common.define_config(_DEFAULT, "Sweep config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the results (created).")


@common.readable_errors
def main(argv):
  errors.check(len(argv) == 1, f"unexpected arguments {argv[1:]}; pass options as --flag=value")
  errors.check(bool(_WORKDIR.value), "--workdir is required: pass --workdir=DIR")
  common.refuse_unused(collapse.unused(_CONFIG.value))
  common.compilation_cache()
  common.log_devices()
  workdir = files.workdir_path(_WORKDIR.value)
  with runtime.exit_on_signals(lambda sig: f"stopped by {sig}: no new results were "
                               f"written to {workdir}; results written earlier are kept"):
    collapse.run(_CONFIG.value, workdir, log=functools.partial(print, flush=True))


if __name__ == "__main__":
  runtime.run(main, flags_parser=common.parse_flags)
