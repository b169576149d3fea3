"""A grid run vs one ordinary run per net, in one process.

  python -m launch.bench grid [--quick] [--out=FILE.json]

Two grids, each trained twice:

  (a) grid        one `train.train_and_evaluate` with `config.grid` set: the
                  nets padded, vmapped and sharded over the 'grid' mesh axis.
  (b) sequential  one `train.train_and_evaluate` per net (`grid.nets`), i.e.
                  what `launch.train --config.seed=k ...` does K times.

MLP grid: 32 MLPs on the embedded spirals (4 seeds x widths 4, 8, 16, 32 x
depths 2, 4, Adam), also trained by PyTorch (`benchmarks/torch_mlp.py`, with
the `bench` extra): (c) one net after another and (d) `torch.func.vmap` over
the seeds of each shape, same nets, steps, batch and optimizer. Then whole
processes, what a researcher waits for: `python -m launch.train` with the
grid, first with an empty compilation cache and again with it warm, against
`python -m benchmarks.torch_mlp` training the same nets one after another.
(`python -m launch.bench layouts` times the two ways to run a grid's nets on
one device.) ResNet grid: 8 seeds of ResNet-20 on CIFAR-sized
synthetic data at batch 128 (the training benchmark's data). Wall times
include compilation, evaluation and checkpoints; both ways write the same
files. Net k of (a) computes what run k of (b) computes (tests/test_grid.py:
1e-5 after a few steps); the benchmark prints how far the final training
losses drift apart over the whole run, from rounding differences (a batched
matmul is not summed in the order of a single one) that training amplifies.
"""
from __future__ import annotations

import contextlib
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from configs import embedded
from resjax import grid, train
from benchmarks import train as bench_train


def _quiet_run(config: ml_collections.ConfigDict, dataset=None) -> dict:
  with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
    return train.train_and_evaluate(config, workdir, dataset=dataset)


def _compare(name: str, config: ml_collections.ConfigDict, dataset=None) -> dict[str, Any]:
  """Times (a) and (b) for `config`'s grid; prints two lines; returns the figures."""
  nets = grid.nets(config)
  t0 = time.perf_counter()
  grid_result = _quiet_run(config, dataset)
  grid_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  singles = [_quiet_run(net, dataset) for net in nets]
  sequential_s = time.perf_counter() - t0
  grid_loss = np.asarray([r["train/loss"] for r in grid_result["nets"]])
  seq_loss = np.asarray([r["train/loss"] for r in singles])
  steps = int(config.train.steps)
  figures = {"nets": len(nets), "steps": steps, "batch_size": int(config.data.batch_size),
             "grid_s": grid_s, "sequential_s": sequential_s,
             "speedup": sequential_s / grid_s,
             "max_abs_final_loss_diff": float(np.max(np.abs(grid_loss - seq_loss))),
             "median_abs_final_loss_diff": float(np.median(np.abs(grid_loss - seq_loss)))}
  print(f"{name:<14}{len(nets):>5}{steps:>7}{grid_s:>12.1f}{sequential_s:>16.1f}"
        f"{figures['speedup']:>10.2f}x   final losses differ by {figures['median_abs_final_loss_diff']:.1e}"
        f" (median), {figures['max_abs_final_loss_diff']:.1e} (max)")
  return figures


def _torch_columns(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """(c) PyTorch sequential and (d) torch.func.vmap on the MLP grid, in this process."""
  try:
    from benchmarks import torch_mlp  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("PyTorch columns left out: torch is not installed (pip install -e '.[bench]')")
    return {}
  x, y, classes = spirals(config)
  nets = net_shapes(config)
  data = torch_mlp.batches(x, y, int(config.data.batch_size), int(config.train.steps))
  out = {}
  threads = torch_mlp.torch.get_num_threads()
  torch_mlp.torch.set_num_threads(torch_mlp.THREADS)  # As the whole-process competitor.
  try:
    for name, fn in (("torch_sequential_s", torch_mlp.train_sequential),
                     ("torch_vmap_s", torch_mlp.train_vmapped)):
      t0 = time.perf_counter()
      fn(nets, data, float(config.opt.lr), x.shape[1], classes)
      out[name] = time.perf_counter() - t0
  finally:
    torch_mlp.torch.set_num_threads(threads)
  print(f"{'':<14}PyTorch on the same nets: (c) sequential {out['torch_sequential_s']:.1f} s, "
        f"(d) torch.func.vmap {out['torch_vmap_s']:.1f} s")
  return out


def net_shapes(config: ml_collections.ConfigDict) -> list[tuple[int, int, int]]:
  return [(int(n.seed), int(n.model.width), int(n.model.depth)) for n in grid.nets(config)]


def spirals(config: ml_collections.ConfigDict):
  ds = train.load_data(config)
  x = np.asarray(ds.train.inputs, np.float32).reshape(len(ds.train.labels), -1)
  return x, np.asarray(ds.train.labels), int(ds.num_classes)


def train_flags(config: ml_collections.ConfigDict) -> list[str]:
  """`launch.train` flags for the MLP grid of `mlp_config`."""
  d, t, g = config.data, config.train, config.grid
  join = lambda v: ",".join(map(str, v))
  return ["--config=configs/embedded.py:spirals_mlp", f"--config.data.num_train={d.num_train}",
          f"--config.data.num_test={d.num_test}", f"--config.data.batch_size={d.batch_size}",
          f"--config.opt.lr={config.opt.lr}", "--config.opt.schedule=constant",
          f"--config.train.steps={t.steps}", f"--config.train.log_every={t.log_every}",
          "--config.train.eval_every=0", "--config.train.checkpoint_every=0",
          f"--config.grid.seeds={join(g.seeds)}", f"--config.grid.model.width={join(g.model.width)}",
          f"--config.grid.model.depth={join(g.model.depth)}"]


def timed_process(cmd: list[str]) -> tuple[float, float]:
  """Wall and CPU seconds (user + system) of the process `cmd`.

  On a machine shared with other jobs the wall time grows with their load;
  the CPU time much less, so the ratios of both are printed.
  """
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  took = time.perf_counter() - t0
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
  return took, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def whole_process(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Whole-process wall and CPU times: launch.train's grid (empty, then warm cache) vs PyTorch."""
  out: dict[str, Any] = {}
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, "cache")
    for name in ("first", "rerun"):
      out[f"resjax_{name}_s"], out[f"resjax_{name}_cpu_s"] = timed_process(
          [sys.executable, "-m", "launch.train", *train_flags(config),
           f"--workdir={os.path.join(tmp, name)}", f"--compilation_cache_dir={cache}"])
    try:
      import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      torch = None
    if torch is not None:
      x, y, _ = spirals(config)
      job = os.path.join(tmp, "job.npz")
      np.savez(job, x=x, y=y, nets=net_shapes(config), steps=int(config.train.steps),
               batch=int(config.data.batch_size), lr=float(config.opt.lr))
      out["torch_sequential_s"], out["torch_sequential_cpu_s"] = timed_process(
          [sys.executable, "-m", "benchmarks.torch_mlp", job])
  for unit, key in (("wall", "_s"), ("CPU", "_cpu_s")):
    first, rerun = out["resjax_first" + key], out["resjax_rerun" + key]
    line = (f"whole process, MLP grid, {unit}: launch.train {first:.1f} s (empty cache), "
            f"{rerun:.1f} s (warm cache)")
    if "torch_sequential" + key in out:
      t = out["torch_sequential" + key]
      line += f"; PyTorch one net after another {t:.1f} s: {t / first:.2f}x / {t / rerun:.2f}x"
    print(line)
  return out


def mlp_config(quick: bool) -> ml_collections.ConfigDict:
  config = embedded.get_config("spirals_mlp")
  config.data.num_train, config.data.num_test = 512, 256
  config.data.batch_size = 32
  config.opt.lr, config.opt.schedule = 1e-2, "constant"
  config.train.steps = 20 if quick else 300
  config.train.log_every = config.train.steps
  config.train.eval_every = config.train.checkpoint_every = 0
  config.grid.seeds = (0, 1) if quick else (0, 1, 2, 3)
  config.grid.model.width = (4, 16) if quick else (4, 8, 16, 32)
  config.grid.model.depth = (2,) if quick else (2, 4)  # --quick: 4 nets.
  return config


def resnet_config(quick: bool) -> ml_collections.ConfigDict:
  config = embedded.get_config("digits_resnet20")
  config.data.batch_size = 32 if quick else 128
  if quick:
    config.model.depth, config.model.widths = 6, bench_train.QUICK_WIDTHS
  config.data.pad, config.data.flip = 4, True
  config.train.steps = 2 if quick else 10
  config.train.log_every = config.train.steps
  config.train.eval_every = config.train.checkpoint_every = 0
  config.grid.seeds = (0, 1) if quick else tuple(range(8))
  return config


def run(quick: bool = False) -> dict[str, Any]:
  """Prints the comparison table; returns its figures."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  devices = jax.devices()
  print(f"{len(devices)} {devices[0].platform} devices; wall seconds include compilation")
  print(f"{'grid':<14}{'nets':>5}{'steps':>7}{'(a) grid s':>12}{'(b) sequential s':>16}"
        f"{'(b)/(a)':>11}")
  try:
    mlp = _compare("MLP", mlp_config(quick))
    mlp.update(_torch_columns(mlp_config(quick)))
    batch = 32 if quick else 128
    dataset = bench_train._synthetic_dataset(num_train=8 * batch, num_test=batch)  # pylint: disable=protected-access
    resnet = _compare("ResNet-20" if not quick else "ResNet-6", resnet_config(quick), dataset)
    processes = whole_process(mlp_config(quick))
  finally:
    logging.set_verbosity(verbosity)
  return {"mlp": mlp, "resnet": resnet, "whole_process": processes,
          "devices": [str(d) for d in devices]}
