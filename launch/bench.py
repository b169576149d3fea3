"""Benchmarks measured side by side in one process.

  python -m launch.bench collapse   # one-call sweep vs NumPy loop vs per-n jit
  python -m launch.bench train      # resjax vs PyTorch CPU training images/s
  python -m launch.bench profile    # where a ResNet-20 train step spends its time
  python -m launch.bench split      # step time on 1/2/4/8 CPU host devices per model
  python -m launch.bench tried      # speed-ups tried on the ResNet-20 step, side by side
  python -m launch.bench grid       # a grid run (config.grid) vs one run per net, vs PyTorch
  python -m launch.bench layouts    # a grid's nets on one device: vmapped vs one after another
  python -m launch.bench grid_devices  # a grid's step at 1/2/4/8 host devices along its nets
  python -m launch.bench checkpoint # step time with and without an async save in flight
  python -m launch.bench restore    # each net of a grid checkpoint: one restore per net vs one
  python -m launch.bench probes     # the 32-MLP grid with and without probes during training
  python -m launch.bench onednn_versions  # resjax's conv code on each oneDNN in RESJAX_ONEDNN_PREFIXES
  python -m launch.bench memory     # a train step with and without launch.memory's malloc settings
  python -m launch.bench imports    # each launcher's import floor, in fresh processes
  python -m launch.bench startup    # the main job and the 32-MLP grid as whole processes, vs PyTorch
  python -m launch.bench init       # initial states' programs with and without their draws merged

`--quick` shrinks each benchmark (used by the tests); `--out=FILE.json` saves
the printed figures. The benchmarks live in benchmarks/ at the repository root,
outside the installed package: run this from there.
"""
import importlib
import importlib.util

from absl import app, flags

from launch import common
from resjax import errors, files

BENCHES = ("collapse", "train", "profile", "split", "tried", "grid", "layouts", "grid_devices",
           "checkpoint", "restore", "probes", "onednn_versions", "memory", "imports", "startup", "init")

_QUICK = flags.DEFINE_bool("quick", False, "Shrink the benchmark to seconds.")
_OUT = flags.DEFINE_string("out", None, "Write the figures to this JSON file.")


@common.readable_errors
def main(argv):
  errors.check(len(argv) == 2, f"name one benchmark: python -m launch.bench {{{','.join(BENCHES)}}}")
  name = errors.choice("benchmark", argv[1], BENCHES)
  errors.check(importlib.util.find_spec("benchmarks") is not None,
               "benchmarks/ is not on the path; run python -m launch.bench from the "
               "repository root (benchmarks are not part of the installed package)")
  if name in ("train", "profile", "split", "tried", "grid", "layouts", "grid_devices",
              "probes"):
    # Time the path launch.train runs: its host-device split, set before JAX starts.
    from launch import platform  # pylint: disable=g-import-not-at-top
    if name in ("train", "profile"):
      # As launch.train starts a single CIFAR ResNet run (one host device with oneDNN).
      from configs import cifar10  # pylint: disable=g-import-not-at-top
      from resjax import train  # pylint: disable=g-import-not-at-top
      if train.trains_on_one_host_device(cifar10.get_config("resnet20")):
        platform.use_one_device()
  # Benchmarks time compiles: no cache unless --compilation_cache_dir is given.
  common.compilation_cache(None if flags.FLAGS["compilation_cache_dir"].present else "")
  common.log_devices()
  figures = importlib.import_module(f"benchmarks.{name}").run(quick=_QUICK.value)
  if _OUT.value:
    files.write_json(_OUT.value, figures)
    print(f"figures written to {_OUT.value}")


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
