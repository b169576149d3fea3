"""Trajectories of the probes taken during training (probes.jsonl), per condition.

`rows(workdir)` reads a run's probes.jsonl and reduces the nets of each grid
condition (its seeds) to one row per (condition, layer, step): for each field
of `FIELDS`, the mean over the seeds and its 95% t-interval
(`resjax.stats.mean_ci`; NaN bounds for one seed). A single run is one
condition of one seed. `resjax.plotting.trajectories` draws them.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from resjax import checkpoints, grid, metrics, stats

# The fields drawn against step (probes.training.SCALARS) and each one's bounds
# (None: the layer's units).
FIELDS = {"dead_frac": (0.0, 1.0), "dormant_frac": (0.0, 1.0), "active_mean": (0.0, 1.0),
          "linear_frac": (0.0, 1.0), "entropy_rank": (0.0, None),
          "entropy_rank_gram": (0.0, None), "cosine": (-1.0, 1.0), "srank": (0.0, None)}


def has_probes(workdir: str) -> bool:
  """Whether `workdir` holds probes taken during training."""
  return os.path.isfile(os.path.join(workdir, metrics.PROBES_FILE))


def conditions(workdir: str) -> list[tuple[str, int]]:
  """Net k's (condition, seed) in the run of `workdir` (a single run: one net)."""
  return _conditions(checkpoints.read_config(workdir))


def _conditions(config) -> list[tuple[str, int]]:
  if not grid.is_grid(config):
    return [("all", int(config.seed))]
  return [(grid.condition_name(label), int(net.seed))
          for label, net in zip(grid.labels(config), grid.nets(config))]


def rows(workdir: str, run: str | None = None) -> list[dict[str, Any]]:
  """One row per (condition, layer, step) of the run in `workdir`, in the
  order of the conditions, then the layers' forward order, then the steps."""
  run = run or os.path.basename(os.path.normpath(workdir))
  config = checkpoints.read_config(workdir)
  of_net = _conditions(config)
  tau = float(config.train.get("dormant_tau", 0.1))
  values: dict[tuple[str, str, int], list[dict]] = {}
  for r in metrics.read(workdir, metrics.PROBES_FILE):
    if "dead_frac" in r:
      values.setdefault((of_net[int(r.get("net", 0))][0], r["layer"], int(r["step"])),
                        []).append(r)
  order = list(dict.fromkeys(c for c, _ in of_net))
  layers: dict[str, list[str]] = {}
  for condition, layer, _ in values:
    layers.setdefault(condition, [])
    if layer not in layers[condition]:
      layers[condition].append(layer)
  out = []
  for condition, layer, step in sorted(values, key=lambda k: (
      order.index(k[0]), layers[k[0]].index(k[1]), k[2])):
    members = values[(condition, layer, step)]
    row = {"run": run, "condition": condition, "layer": layer, "step": step,
           "seeds": len(members), "dormant_tau": tau}
    units = max(m["units"] for m in members)  # A rank is at most the layer's width.
    for field, bounds in FIELDS.items():
      if any(field not in m for m in members):  # Written before the field existed.
        continue
      mean, lo, hi = stats.mean_ci([m[field] for m in members],
                                   bounds=(bounds[0], units if bounds[1] is None else bounds[1]))
      row.update({field: mean, f"{field}_lo": lo, f"{field}_hi": hi})
    out.append(row)
  return out


def layer_order(table: Sequence[dict]) -> list[str]:
  """The layers of `table` in the forward order of their first condition that has them."""
  return list(dict.fromkeys(r["layer"] for r in table))
