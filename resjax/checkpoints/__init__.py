"""Checkpoints: Orbax I/O (`io`) and `load`, which rebuilds a state from a workdir.

`io` knows nothing of training. Rebuilding a state is resjax/restore.py (it
builds the state with resjax/train and resjax/grid, then restores the arrays
with `io`); `load` here hands over to it. Code inside the library imports
`resjax.checkpoints.io` or `resjax.restore`, never this package's `load`.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import jax
import ml_collections

from resjax import restore as _restore
from resjax.checkpoints.io import (CHECKPOINT_DIR, CONFIG_FILE, RESUMABLE_GROUPS, RUN_FILES,
                                   STEPS_SCHEDULES, check_same_config, complete_steps,
                                   directory, holds_run, manager, move_aside,
                                   read_config, read_meta, remove_partial_saves, restore,
                                   save, save_config, saved_steps, unreadable)


def load(workdir: str, step: int | None = None, devices: Sequence[jax.Device] | None = None,
         net: int | None = None) -> tuple[ml_collections.ConfigDict, Any]:
  """(config, TrainState) of checkpoint `step` (default: latest) in `workdir`; net k
  of a grid with `net=k`. See `resjax.restore.load`.

  Looked up when called: resjax.restore imports this package's `io` (through
  this `__init__`), so it may still be loading while this module runs.
  """
  return _restore.load(workdir, step, devices, net)


def load_nets(workdir: str, nets: Sequence[int] | None = None, step: int | None = None,
              devices: Sequence[jax.Device] | None = None
              ) -> Iterator[tuple[ml_collections.ConfigDict, Any]]:
  """(config, TrainState) of each net k in `nets` (default: all) of a grid run, each as
  `load(workdir, step, devices, net=k)` gives it, from one restore. See
  `resjax.restore.load_nets`."""
  return _restore.load_nets(workdir, nets, step, devices)
