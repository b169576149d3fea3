"""A train step with and without `launch.memory`: page faults and images/s.

  python -m launch.bench memory [--quick]

The CIFAR ResNet-20 step (batch 128, the config's convolution, one host
device, as `launch.train` runs it) in child processes, alternated over rounds:
one with `launch.memory`'s malloc settings (one arena, no mmap, freed memory
kept), one with glibc's defaults (the child's environment sets
MALLOC_MMAP_MAX_=65536, glibc's own value, so `launch.memory` leaves malloc
alone). Each child times its steps and counts the minor page faults they
cause (`getrusage`): with glibc's defaults XLA's temporary buffer is mapped
afresh, and its pages faulted in, at every step. With the settings the heap
still grows now and then by about the temporary buffer's size (one `brk`
of 54 MB for ResNet-6 at batch 128, seen with strace) and those pages are
faulted in: in 1-3 of 10 steps after the warm-up on a loaded 2-core
machine. The figures are medians over the steps for that reason. The
children inherit XLA_FLAGS: with --xla_force_host_platform_device_count=8 the same step runs
on one of 8 host devices (see `launch.platform.use_one_device`).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

_CHILD = "RESJAX_MEMORY_CHILD"
MODES = ("glibc_default", "launch_memory")


def _child(depth: int, batch: int, widths: tuple[int, ...], steps: int) -> dict[str, Any]:
  """In the child: median seconds and minor page faults per step on one device."""
  import resource  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel

  from launch import memory  # pylint: disable=import-outside-toplevel  (before JAX)
  import jax  # pylint: disable=import-outside-toplevel
  from benchmarks import train as bench_train  # pylint: disable=import-outside-toplevel

  config = bench_train._config(depth, False, batch, widths)  # pylint: disable=protected-access
  step, _, _ = bench_train.resjax_step(config, jax.devices()[:1])
  for _ in range(3):  # Warm-up: threads and buffers that the first steps touch first.
    step()
  walls, faults = [], []
  for _ in range(steps):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    step()
    walls.append(time.perf_counter() - start)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  return {"kept": memory.KEPT, "step_s": statistics.median(walls),
          "faults_per_step": statistics.median(faults),
          "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run_child(mode: str, args: list[str]) -> dict[str, Any]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
  env[_CHILD] = "1"
  if mode == "glibc_default":
    env["MALLOC_MMAP_MAX_"] = "65536"
  done = subprocess.run([sys.executable, "-m", "benchmarks.memory", *args], env=env,
                        capture_output=True, text=True, check=False)
  if done.returncode:
    raise RuntimeError(f"the {mode} child failed:\n{done.stderr[-2000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict[str, Any]:
  """Prints step time, images/s and page faults per step for both modes; returns them."""
  depth, batch, widths, steps, rounds = ((6, 128, (8, 16), 9, 1) if quick
                                         else (20, 128, (16, 32, 64), 8, 3))
  # Imported here: the child must set up malloc before JAX, which this imports.
  from benchmarks.train import load_average  # pylint: disable=import-outside-toplevel
  args = [str(depth), str(batch), ",".join(map(str, widths)), str(steps)]
  print(f"ResNet-{depth}, batch {batch}, one host device: {rounds} rounds of {steps} steps "
        f"per mode, each mode in its own process, alternated; load average "
        f"{load_average()}", flush=True)
  runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
  for r in range(rounds):
    for mode in MODES:
      out = _run_child(mode, args)
      runs[mode].append(out)
      print(f"  round {r + 1} {mode:14s} {1e3 * out['step_s']:7.1f} ms/step "
            f"{batch / out['step_s']:7.1f} img/s {out['faults_per_step']:8.0f} faults/step "
            f"(malloc settings applied: {out['kept']}; peak RSS {out['max_rss_mb']:.0f} MB)",
            flush=True)
  summary = {m: {"step_s": statistics.median(o["step_s"] for o in runs[m]),
                 "faults_per_step": statistics.median(o["faults_per_step"] for o in runs[m]),
                 "kept": [o["kept"] for o in runs[m]]} for m in MODES}
  ratio = summary["glibc_default"]["step_s"] / summary["launch_memory"]["step_s"]
  print(f"launch.memory: {ratio:.2f}x the images/s of glibc's defaults (median step "
        f"{1e3 * summary['launch_memory']['step_s']:.1f} against "
        f"{1e3 * summary['glibc_default']['step_s']:.1f} ms); page faults per step "
        f"{summary['launch_memory']['faults_per_step']:.0f} against "
        f"{summary['glibc_default']['faults_per_step']:.0f}; load average {load_average()}")
  return {"depth": depth, "batch": batch, "rounds": runs, "summary": summary, "ratio": ratio}


if __name__ == "__main__" and os.environ.get(_CHILD):
  d, b, w, s = sys.argv[1:5]
  print(json.dumps(_child(int(d), int(b), tuple(int(v) for v in w.split(",")), int(s))))
