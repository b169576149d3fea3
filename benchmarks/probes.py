"""What probes during training cost: the 32-MLP grid with and without them, side by side.

  python -m launch.bench probes [--quick] [--out=FILE.json]

The grid of `launch.bench grid` (32 MLPs on the embedded spirals: widths 4, 8,
16, 32 x depths 2, 4 x seeds 0-3, Adam, 300 steps of batch 32) trained by
`train.train_and_evaluate` (a) as it is and (b) with `train.probe_every=50`
(7 probes of every net and layer on 256 training examples, rows written to
probes.jsonl and TensorBoard). Each way runs `repeats` times, interleaved,
and the fastest of each counts; the wall times are whole calls (compilation,
evaluation and checkpoints included), so the overhead is the probes'
compilation, device time and rows against everything a run costs.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from benchmarks import grid as bench_grid
from resjax import metrics, train


def _timed(config: ml_collections.ConfigDict) -> tuple[float, int]:
  """(wall seconds of one run, probe rows it wrote)."""
  with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
    t0 = time.perf_counter()
    train.train_and_evaluate(config, workdir, say=lambda _: None)
    seconds = time.perf_counter() - t0
    return seconds, len(metrics.read(workdir, metrics.PROBES_FILE))


def run(quick: bool = False, every: int = 50) -> dict[str, Any]:
  """Prints the two wall times and the overhead; returns the figures."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  plain = bench_grid.mlp_config(quick)
  probed = ml_collections.ConfigDict(plain.to_dict())
  probed.train.probe_every = 5 if quick else every
  repeats = 1 if quick else 3
  times: dict[str, list[float]] = {"without": [], "with": []}
  rows = 0
  try:
    for _ in range(repeats):
      times["without"].append(_timed(plain)[0])
      seconds, rows = _timed(probed)
      times["with"].append(seconds)
  finally:
    logging.set_verbosity(verbosity)
  a, b = min(times["without"]), min(times["with"])
  devices = jax.devices()
  print(f"{len(devices)} {devices[0].platform} devices; MLP grid of "
        f"{plain.grid.model.width} x {plain.grid.model.depth} x seeds {plain.grid.seeds}, "
        f"{plain.train.steps} steps; wall seconds (fastest of {repeats}) include compilation")
  print(f"{'without probes':>16}{f'probe_every={probed.train.probe_every}':>18}{'overhead':>10}"
        f"{'probe rows':>12}")
  print(f"{a:>16.2f}{b:>18.2f}{100 * (b / a - 1):>9.1f}%{rows:>12}")
  return {"without_s": a, "with_s": b, "overhead": b / a - 1, "probe_every":
          int(probed.train.probe_every), "probe_rows": rows, "repeats": repeats,
          "all_without_s": times["without"], "all_with_s": times["with"],
          "devices": [str(d) for d in devices]}
