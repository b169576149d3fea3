"""What the loop trains when the config is a single run: its state, step, batches and rows.

The loop (`loop.train_and_evaluate`) trains "a state and a step" supplied by
such an object; a grid supplies its own (`resjax.grid.layer.Grid`), with the
same methods, so the loop never asks which of the two it holds.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import ml_collections

from resjax import data
from resjax import metrics
from resjax import sharding
from resjax.train import faults
from resjax.train import mesh as train_mesh
from resjax.train import state as train_state
from resjax.train import steps as train_steps


class Single:
  """One net: the single run of `config`."""
  per_net = False  # Metrics are scalars, not arrays over nets.

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.count = 1
    self.seed = int(config.seed)
    self.batch_size = int(config.data.batch_size)

  def mesh(self, ds: data.Dataset) -> jax.sharding.Mesh:
    return train_mesh.data_mesh(self.config, ds.input_shape, ds.num_classes)

  def create_state(self, mesh: jax.sharding.Mesh, ds: data.Dataset) -> Any:
    return train_state.create_train_state(self.config, mesh, ds.input_shape, ds.num_classes,
                                          mean=ds.mean, std=ds.std)

  def jit_steps(self, state: Any, mesh: jax.sharding.Mesh) -> tuple[Callable, Callable]:
    return train_steps.jit_steps(state, mesh)

  def batch(self, split: data.Split, step: int, mesh: jax.sharding.Mesh) -> Any:
    """The global training batch of `step`."""
    return sharding.to_global(train_steps.host_batch(split, step, seed=self.seed,
                                                     global_batch=self.batch_size), mesh)

  def merge(self, fetched: Any) -> Any:
    """Fetched metrics as one dict (they already are)."""
    return fetched

  def what(self, n_params: int) -> str:
    return f"({n_params:,} parameters)"

  def check_finite(self, window: list[dict], done: int, *, last_saved: int | None,
                   workdir: str, writer: metrics.Writer, say: Callable) -> None:
    """Raises `faults.Diverged` at the first non-finite step of `window`."""
    del say
    faults.check_finite(window, done, last_saved, workdir, writer)

  def write(self, writer: metrics.Writer, step: int, row: Mapping[str, Any]) -> None:
    writer.write(step, row)

  def summarize(self, result: dict, workdir: str | None, say: Callable) -> dict:
    del workdir, say
    return result
