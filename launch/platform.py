"""Host-platform setup that must run before JAX is imported.

Importing this module calls `configure()`, which splits the CPU into several
XLA host devices unless the user already chose a count (an
`--xla_force_host_platform_device_count` in XLA_FLAGS, or JAX_NUM_CPU_DEVICES).
Only the CPU platform is affected: on a GPU/TPU machine `jax.devices()` still
lists the accelerators, and the extra host devices stay unused.

Why: training shards the global batch over a 'data' mesh of devices
(`resjax.sharding`), and BatchNorm reduces over the whole batch, so the
numbers do not depend on the split. On the CPU a split pays off for
convolutional nets: each device works on a slice of the batch (a ResNet-20
stage-1 activation is 8 MiB at batch 128, 1 MiB at 16), and the devices'
programs keep both cores busy. `python -m launch.bench split` times meshes of
1, 2, 4 and 8 host devices side by side; on a 2-core Xeon (AVX-512) shared
with other jobs, ResNet-20 at batch 128 took 1320 ms per step on 1 device and
912 ms on 8 (1.45x), with XLA's convolution. More devices than 8 were slower
in earlier one-off runs that no benchmark here repeats. Four devices per core,
at most 8, is the rule below; XLA's thread pool keeps its default size.
Since then models with oneDNN convolutions (the CIFAR ResNet configs) train
on one of them, which the same benchmark found fastest on a quiet machine,
and `launch.train` starts a single run of such a model with just one
(`use_one_device`); grids spread their nets over them (`resjax/grid/steps.py`).

This module only makes the host devices exist. Models with little arithmetic
per parameter (MLPs, nets on tiny images) train faster on fewer of them,
since every step all-reduces the gradients between devices:
`resjax.sharding.data_devices` picks how many a model uses.

The cores counted are those this process may run on (its CPU affinity), so
each task of a SLURM job bound to its --cpus-per-task (task/affinity or
task/cgroup) gets its own share of host devices, not the whole node's.

Set XLA_FLAGS=--xla_force_host_platform_device_count=N to choose N yourself.

Importing this module also imports `launch.memory`, which makes glibc's
malloc keep the buffers XLA frees after each step (see there).
"""
from __future__ import annotations

import os
import re
from typing import MutableMapping

from launch import memory  # noqa: F401  # pylint: disable=unused-import  (before JAX's threads)

DEVICE_FLAG = "--xla_force_host_platform_device_count"
MAX_HOST_DEVICES = 8
DEVICES_PER_CORE = 4


def host_device_count(cpus: int | None) -> int:
  """The number of host devices for a machine with `cpus` cores (power of two)."""
  target = min(MAX_HOST_DEVICES, DEVICES_PER_CORE * max(1, cpus or 1))
  count = 1
  while count * 2 <= target:
    count *= 2
  return count


def usable_cpus() -> int | None:
  """The CPUs this process may run on: a SLURM task's (or taskset's) share, else all."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):  # No affinity API (macOS).
    return os.cpu_count()


def configure(environ: MutableMapping[str, str] | None = None,
              cpus: int | None = None) -> int | None:
  """Adds the host device count to XLA_FLAGS unless the user set one.

  Returns the count it set, or None when it left the environment alone. Has
  no effect once JAX has initialized its backends.
  """
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "")
  if DEVICE_FLAG in flags or environ.get("JAX_NUM_CPU_DEVICES"):
    return None
  count = host_device_count(usable_cpus() if cpus is None else cpus)
  environ["XLA_FLAGS"] = f"{flags} {DEVICE_FLAG}={count}".strip()
  return count


def use_one_device(environ: MutableMapping[str, str] | None = None,
                   configured: int | None = None) -> bool:
  """Sets the host device count `configure` chose (`configured`, default the
  one it chose at import) to 1; whether it did. Call it before JAX's backend
  starts (the first `jax.devices()`). A count the user chose is kept.

  For a single run whose model convolves with oneDNN: it trains on one host
  device anyway (`resjax.sharding.data_devices`), and the mere presence of
  the other 7 made its step slower (ResNet-20 at batch 128: 467-534 img/s
  with 8 host devices against 625-644 with 1, two rounds alternated, 2-core
  Intel Xeon, 2026-12-06, load 1.4-1.8; `python -m launch.bench memory` with
  and without XLA_FLAGS=--xla_force_host_platform_device_count=8 measures it:
  268.4 against 199.8 ms per step; `python -m launch.bench train` starts the
  way launch.train does).
  """
  environ = os.environ if environ is None else environ
  if (CONFIGURED if configured is None else configured) is None:
    return False
  flags = environ.get("XLA_FLAGS", "")
  environ["XLA_FLAGS"] = re.sub(rf"{DEVICE_FLAG}=\d+", f"{DEVICE_FLAG}=1", flags)
  return True


# The count configure() set, or None where the user chose one.
CONFIGURED = configure()
