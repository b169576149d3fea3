"""One compiled call for a grid of small MLPs vs one ordinary run per net.

  python -m launch.bench study [--quick] [--out=FILE.json]

The same grid (seeds x widths x depths, plain MLPs on the embedded spirals) is
trained twice in one process:

  (a) sweep       `resjax.sweeps.train_grid`: every net padded to the widest /
                  deepest, vmapped, all steps inside one jitted `lax.scan`.
  (b) sequential  `resjax.sweeps.train_single` per net: a jitted train step
                  called from a Python loop, compiled once per distinct
                  (width, depth), the way a single run is usually written.

Both times include compilation. Because a padded net trains exactly like the
unpadded one, both ways end at the same losses; the benchmark checks that too.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from resjax import study, sweeps


def run(quick: bool) -> dict[str, Any]:
  """Times (a) and (b) on the same grid and prints a table; returns the figures."""
  seeds = range(2) if quick else range(4)
  widths = (4, 16) if quick else (4, 8, 16, 32)
  depths = (2, 3) if quick else (2, 4)
  steps = 20 if quick else 300
  batch_size = 32
  data = study.load_arrays("spirals", seed=0, options={"num_train": 512, "num_test": 256})
  nets = sweeps.grid(seeds, widths, depths, ["plain"])
  arch = sweeps.Arch("mlp", data.num_classes, data.x_train.shape[1:], max_width=max(widths),
                     max_depth=max(depths))
  opt = sweeps.Optim("adam", lr=1e-2)
  device = jax.devices()[:1]
  k = len(nets)
  print(f"grid: {k} MLPs (seeds {len(seeds)} x widths {widths} x depths {depths}), "
        f"{steps} steps of batch {batch_size} on spirals, {device[0].platform} x1")

  t0 = time.perf_counter()
  grid = sweeps.train_grid(arch, opt, nets, data, steps=steps, batch_size=batch_size,
                           eval_every=steps, devices=device, log=None)
  sweep_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  singles = [sweeps.train_single(arch, opt, n, data, steps=steps, batch_size=batch_size)
             for n in nets]
  sequential_s = time.perf_counter() - t0

  seq_loss = np.asarray([s["train_loss"] for s in singles])
  grid_loss = grid.history["train_loss"][:, -1]
  shapes = len({(n.width, n.depth) for n in nets})
  figures = {
      "nets": k, "steps": steps, "batch_size": batch_size, "distinct_shapes": shapes,
      "sweep_s": sweep_s, "sweep_compile_s": grid.timing["compile_s"],
      "sequential_s": sequential_s, "speedup": sequential_s / sweep_s,
      "sweep_net_steps_per_s": k * steps / sweep_s,
      "sequential_net_steps_per_s": k * steps / sequential_s,
      "max_abs_final_loss_diff": float(np.max(np.abs(seq_loss - grid_loss))),
      "device": str(device[0]),
  }
  print(f"{'method':<34}{'wall s (incl. compile)':>24}{'net-steps/s':>14}")
  print(f"{'(a) one-call vmapped sweep':<34}{sweep_s:>24.2f}{figures['sweep_net_steps_per_s']:>14,.0f}"
        f"   (compile {grid.timing['compile_s']:.2f} s, 1 program)")
  print(f"{'(b) sequential ordinary runs':<34}{sequential_s:>24.2f}"
        f"{figures['sequential_net_steps_per_s']:>14,.0f}   ({shapes} shapes compiled)")
  print(f"speedup (b)/(a): {figures['speedup']:.1f}x; final training losses agree to "
        f"{figures['max_abs_final_loss_diff']:.2e}")
  return figures
