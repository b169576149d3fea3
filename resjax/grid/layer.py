"""What the loop trains when the config is a grid: the stacked state, the
vmapped / sharded step and the per-net bookkeeping (rows, divergence, summary).

`Grid` has the methods of the single run's `train.single.Single`, so the loop
(`train.train_and_evaluate`) trains either without asking which it holds.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np

from resjax import data
from resjax import errors
from resjax import files
from resjax import metrics
from resjax import sharding
from resjax.grid import spec
from resjax.grid import padding
from resjax.grid import state as grid_state
from resjax.grid import steps as grid_steps
from resjax.grid import summary
from resjax.train import steps as train_steps


class Grid:
  """The nets of `config.grid`, trained as one program per call."""
  per_net = True  # Metrics are arrays with one entry per net.

  def __init__(self, config: ml_collections.ConfigDict,
               say: Callable[[str], None] | None = None):
    self.config = config
    self.configs = spec.nets(config, say)  # Progress to `say` when building takes > 1 s.
    self.labels = spec.labels(config)
    self.count = len(self.configs)
    self.seeds = [int(c.seed) for c in self.configs]
    self.shared_batch = len(set(self.seeds)) == 1
    self.batch_size = int(config.data.batch_size)
    self.axes = spec.axes(config)
    self.calls = spec.calls(config)
    self.layout = spec.layout(config, jax.devices()[0].platform)
    self.diverged: dict[int, int] = {}
    pub = config.get("published")
    self.published = dict(zip(pub.conditions, pub.values)) if pub else None

  def describe(self) -> str:
    calls = f"; {len(self.calls)} compiled calls" if len(self.calls) > 1 else ""
    return " x ".join(f"{len(v)} {f}" for f, v in self.axes) + calls

  def what(self, n_params: int) -> str:
    return (f"a grid of {self.count} nets ({self.describe()}; {spec.LAYOUTS[self.layout]}), "
            f"each padded to {n_params:,} parameters,")

  def mesh(self, ds: data.Dataset) -> jax.sharding.Mesh:
    errors.check(jax.process_count() == 1, "a grid (config.grid) trains in one process; "
                 "run it without --multihost, or split its axes over separate runs")
    return grid_steps.grid_training_mesh(self.config, ds.input_shape, ds.num_classes,
                                         self.count)

  def create_state(self, mesh: jax.sharding.Mesh, ds: data.Dataset) -> grid_state.GridCalls:
    return grid_state.create_grid_state(self.config, mesh, ds.input_shape, ds.num_classes,
                                        mean=ds.mean, std=ds.std)

  def jit_steps(self, state: Any, mesh: jax.sharding.Mesh) -> tuple[Callable, Callable]:
    return grid_steps.jit_steps(state, mesh, shared_batch=self.shared_batch, layout=self.layout)

  def merge(self, fetched: Any) -> dict:
    return grid_steps.merge_calls(fetched)

  def batch(self, split: data.Split, step: int, mesh: jax.sharding.Mesh) -> list:
    """The global training batch of `step`, one per call: shared by its nets or
    stacked from each net's seed."""
    if self.shared_batch:
      one = sharding.to_global(train_steps.host_batch(
          split, step, seed=self.seeds[0], global_batch=self.batch_size), mesh)
      return [one] * len(self.calls)
    out = []
    for members in self.calls:
      rows = [train_steps.host_batch(split, step, seed=self.seeds[k],
                                     global_batch=self.batch_size) for k in members]
      out.append(sharding.to_global(padding.stack(rows), mesh,
                                    sharding.net_batch_sharding(mesh)))
    return out

  def write(self, writer: metrics.Writer, step: int, row: Mapping[str, Any]) -> None:
    """One metrics row per net, each with its 'net' index."""
    for k in range(self.count):
      writer.write(step, {name: (v[k] if np.ndim(v) else v) for name, v in row.items()},
                   net=k)

  def check_finite(self, window: list[dict], done: int, *, say: Callable, **_) -> None:
    """A grid goes on when some of its nets diverge; each is named once."""
    loss = np.stack([np.asarray(m["loss"]) for m in window])  # [steps, nets]
    for k in np.flatnonzero(~np.isfinite(loss).all(axis=0)):
      if int(k) not in self.diverged:
        step = done - len(window) + int(np.argmax(~np.isfinite(loss[:, k]))) + 1
        self.diverged[int(k)] = step
        say(f"net {k} ({spec.describe_label(self.labels[k])}) diverged at step {step}: its loss is "
            f"{loss[:, k][~np.isfinite(loss[:, k])][0]}; the other nets go on")

  def summarize(self, result: dict, workdir: str | None, say: Callable) -> dict:
    """Per-net rows ('nets'), per-condition rows ('conditions') and means over
    nets in `result`; nets.csv and conditions.csv in `workdir`; a table to `say`."""
    rows = []
    for k, label in enumerate(self.labels):
      row = {"net": k, **label}
      row.update({key: float(np.asarray(v)[k]) for key, v in result.items()
                  if key.startswith(("train/", "eval/", "eval_train/")) and np.ndim(v) == 1})
      row["diverged_at"] = self.diverged.get(k)
      rows.append(row)
    out = {k: (float(np.mean(v)) if np.ndim(v) == 1 else v) for k, v in result.items()}
    out["nets"] = rows
    out["conditions"] = conditions = summary.condition_rows(rows, self.published)
    if workdir is not None:
      files.write_csv(os.path.join(workdir, "nets.csv"), rows)
      files.write_csv(os.path.join(workdir, "conditions.csv"), conditions)
      say(summary.condition_table(conditions))
      say(f"per-net results: {os.path.join(workdir, 'nets.csv')}; per condition: "
          f"{os.path.join(workdir, 'conditions.csv')}")
    return out
