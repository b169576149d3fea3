"""Orbax checkpoints of the training state, and restoring them anywhere.

Layout of a workdir:

  config.json                the config of the run (written before training)
  checkpoints/<step>/state   the TrainState arrays (step, params, batch_stats,
                             opt_state, rng), saved asynchronously
  checkpoints/<step>/meta    JSON: the config and the dataset facts (name,
                             input shape, classes, mean, std) needed to rebuild
                             the state without the data or the training flags

`load(workdir)` rebuilds the state from that metadata on the caller's devices
(any number) and restores the arrays into it.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import ml_collections
import orbax.checkpoint as ocp

from resjax import errors
from resjax import files

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
# Config groups that may change between a run and its resumption (e.g. more
# steps); every other field must match the checkpoint's.
RESUMABLE_GROUPS = ("train",)


def directory(workdir: str) -> str:
  """Where the checkpoints of `workdir` live."""
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes `workdir/config.json` atomically."""
  files.write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config saved in `workdir/config.json`."""
  path = os.path.join(workdir, CONFIG_FILE)
  errors.check(os.path.isfile(path), f"{path} does not exist; pass the workdir of a run")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def manager(workdir: str, *, keep: int = 0, read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager on `workdir/checkpoints` keeping the last `keep` (0 = all)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep or None, create=not read_only, read_only=read_only,
      cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(directory(workdir), options=options)


def save(mngr: ocp.CheckpointManager, state: Any, meta: dict) -> None:
  """Starts saving `state` (a TrainState) at its step; returns once the arrays
  are copied off the device buffers, so the next (donating) step may run."""
  step = int(jax.device_get(state.step))
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state.arrays()),
                                          meta=ocp.args.JsonSave(meta)), force=True)


def restore(mngr: ocp.CheckpointManager, state: Any, step: int | None = None) -> Any:
  """`state` with its arrays replaced by checkpoint `step` (default: latest).

  `state` may be concrete or abstract (ShapeDtypeStructs with shardings); the
  restored arrays take its shardings, whatever devices wrote them.
  """
  step = mngr.latest_step() if step is None else step
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state.arrays())
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return state.replace(**restored["state"])


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  """The JSON metadata saved with checkpoint `step`."""
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def _strip(config: dict) -> dict:
  return {k: v for k, v in config.items() if k not in RESUMABLE_GROUPS}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in sorted(set(old) | set(new), key=str):
      out += _differences(old.get(key, "<missing>"), new.get(key, "<missing>"),
                          f"{prefix}{key}.")
    return out
  if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
    old, new = list(old), list(new)
  return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def check_same_config(workdir: str, mngr: ocp.CheckpointManager,
                      config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a checkpoint written by a different config.

  Only the `train` group (steps, logging and saving periods) may differ.
  """
  step = mngr.latest_step()
  if step is None:
    return
  old = read_meta(mngr, step)["config"]
  new = json.loads(json.dumps(config.to_dict()))
  diff = _differences(_strip(old), _strip(new))
  errors.check(not diff, f"{directory(workdir)} holds checkpoints of a different config "
               f"({'; '.join(diff[:3])}); pass a new --workdir or delete that directory")


def load(workdir: str, step: int | None = None,
         devices: Sequence[jax.Device] | None = None) -> tuple[ml_collections.ConfigDict, Any]:
  """(config, TrainState) of checkpoint `step` (default: the latest) in `workdir`.

  The state is rebuilt from the config saved with the checkpoint and restored
  replicated over `devices` (default: all devices of this process's JAX), so a
  checkpoint written on 8 devices loads on 1 and vice versa.
  """
  from resjax import sharding, train  # train imports this module.

  path = directory(workdir)
  errors.check(os.path.isdir(path), f"no checkpoints in {os.path.abspath(workdir)} "
               "(expected a checkpoints/ folder); pass the --workdir of a training run")
  mngr = manager(workdir, read_only=True)
  try:
    steps = list(mngr.all_steps())
    errors.check(bool(steps), f"{path} holds no complete checkpoint; train first or pass "
                 "another workdir")
    step = max(steps) if step is None else step
    errors.check(step in steps, f"step={step} has no checkpoint in {path}; available: "
                 f"{', '.join(map(str, sorted(steps)))}")
    try:
      meta = read_meta(mngr, step)
      config = ml_collections.ConfigDict(meta["config"])
      ds = meta["dataset"]
      mesh = sharding.make_mesh(devices)
      abstract = train.abstract_train_state(config, mesh, tuple(ds["input_shape"]),
                                            int(ds["num_classes"]), mean=ds["mean"],
                                            std=ds["std"])
      state = restore(mngr, abstract, step)
    except errors.ConfigError:
      raise
    except Exception as e:  # Orbax raises many types for unreadable files.
      first = str(e).strip().splitlines()[0] if str(e).strip() else ""
      raise errors.ConfigError(f"checkpoint {step} in {path} cannot be read "
                               f"({type(e).__name__}: {first[:200]})") from None
  finally:
    mngr.close()
  return config, state
