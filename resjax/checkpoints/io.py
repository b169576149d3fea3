"""Orbax checkpoints of the training state, and restoring them anywhere.

Layout of a workdir:

  config.json                the config of the run (written before training)
  checkpoints/<step>/state   the TrainState arrays (step, params, batch_stats,
                             opt_state, rng), saved asynchronously
  checkpoints/<step>/meta    JSON: the config and the dataset facts (name,
                             input shape, classes, mean, std) needed to rebuild
                             the state without the data or the training flags

Orbax writes each checkpoint into `<step>.orbax-checkpoint-tmp-*` and renames
it to `<step>` only once every file is written, so a process killed in the
middle of a save leaves the previous checkpoints as they were; the half-written
temporary directory is ignored when reading and removed by the next training
run once it holds the workdir's lock (`remove_partial_saves`). `load(workdir)` rebuilds the state from the metadata on the caller's
devices (any number) and restores the arrays into it.

Orbax's noise on stderr (a read-only warning, closed-loop tracebacks) is kept
off the terminal by the launchers (`launch.runtime.quiet_orbax`), not here.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from resjax import errors
from resjax import files

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
# Config groups that may change between a run and its resumption (e.g. more
# steps); every other field must match the checkpoint's.
RESUMABLE_GROUPS = ("train",)
# Fields of those groups that change what is trained (dead-unit resets, on the
# probe batch, at the threshold): they must match too, when resets are on.
# A run written before a field existed holds its default.
MATCHED_FIELDS = {"train.reset_dead_every": 0, "train.dormant_tau": 0.1,
                  "train.probe_batch": 256}
# Learning-rate schedules shaped by train.steps: a run with one of them resumes
# only with its own train.steps.
STEPS_SCHEDULES = ("cosine",)
# What makes a directory hold a run (moved together by `move_aside`).
RUN_FILES = (CONFIG_FILE, CHECKPOINT_DIR, "metrics.jsonl", "probes.jsonl", "tensorboard")
# The seam for fault injection: a subclass of Orbax's public
# `ocp.path.atomicity.AtomicRenameTemporaryPath` that writable managers save
# through (None: Orbax's default). Tests set it to stop a save in its commit.
SAVE_PATH_CLASS: type | None = None


def directory(workdir: str) -> str:
  """Where the checkpoints of `workdir` live."""
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes `workdir/config.json` atomically."""
  files.write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config saved in `workdir/config.json`."""
  path = os.path.join(os.path.abspath(workdir), CONFIG_FILE)
  errors.check(os.path.isfile(path), f"{path} does not exist; pass the workdir of a run")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError, TypeError) as e:
    raise errors.ConfigError(f"{path} cannot be read ({type(e).__name__}: "
                             f"{errors.first_line(e)[:200]}); pass --fresh to move that run "
                             "aside") from None


def manager(workdir: str, *, keep: int = 0, read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager on `workdir/checkpoints` keeping the last `keep` (0 = all).

  A writable manager removes the temporary directories of interrupted saves.
  """
  if read_only:
    options = ocp.CheckpointManagerOptions(
        read_only=True, create=False, save_interval_steps=0, cleanup_tmp_directories=False)
  else:
    extra = {"temporary_path_class": SAVE_PATH_CLASS} if SAVE_PATH_CLASS else {}
    options = ocp.CheckpointManagerOptions(max_to_keep=keep or None, create=True,
                                           cleanup_tmp_directories=True, **extra)
  return ocp.CheckpointManager(directory(workdir), options=options)


def remove_partial_saves(workdir: str) -> list[str]:
  """Removes the temporary folders of saves that never finished (`<step>.orbax-
  checkpoint-tmp*`, left by a save cut by a full disk or a kill); returns their names.

  Call only while holding the workdir's lock: no save of another run can be in flight.
  """
  try:
    names = sorted(os.listdir(directory(workdir)))
  except OSError:
    return []
  removed = []
  for name in names:
    path = os.path.join(directory(workdir), name)
    if re.match(r"^\d+\.orbax-checkpoint-tmp", name) and os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
      removed.append(name)
  return removed


def save(mngr: ocp.CheckpointManager, state: Any, meta: dict) -> None:
  """Starts saving `state` (a TrainState) at its step; returns once the arrays
  are copied off the device buffers, so the next (donating) step may run.

  Every process calls it (a collective); Orbax decides who writes what.
  """
  step = int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])  # A grid: one per net.
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state.arrays()),
                                          meta=ocp.args.JsonSave(meta)), force=True)


# What to do about a checkpoint that cannot be read, when training would resume from it.
RESUME_FIX = "move that step directory aside to use an earlier one, or pass --fresh to start over"


def restore(mngr: ocp.CheckpointManager, state: Any, step: int | None = None, *,
            fix: str = RESUME_FIX) -> Any:
  """`state` with its arrays replaced by checkpoint `step` (default: latest).

  `state` may be concrete or abstract (ShapeDtypeStructs with shardings); the
  restored arrays take its shardings, whatever devices wrote them. Raises
  ConfigError when the files cannot be read.
  """
  step = mngr.latest_step() if step is None else step
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state.arrays())
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
  except Exception as e:  # Orbax raises many types for unreadable files.
    raise unreadable(mngr, step, e, fix) from None
  return state.replace(**restored["state"])


def read_meta(mngr: ocp.CheckpointManager, step: int, *, fix: str = RESUME_FIX) -> dict:
  """The JSON metadata saved with checkpoint `step` (ConfigError if unreadable)."""
  try:
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if not (isinstance(meta, dict) and isinstance(meta.get("config"), dict)
            and isinstance(meta.get("dataset"), dict)):
      raise ValueError("metadata without config and dataset")
    return meta
  except Exception as e:  # pylint: disable=broad-except
    raise unreadable(mngr, step, e, fix) from None


def unreadable(mngr: ocp.CheckpointManager, step: int, e: BaseException,
               fix: str = RESUME_FIX) -> errors.ConfigError:
  """The one-line ConfigError for checkpoint `step` that cannot be read; `fix` says
  what to do (the caller knows: resume elsewhere, or load another step)."""
  return errors.ConfigError(
      f"checkpoint {step} in {mngr.directory} cannot be read ({type(e).__name__}: "
      f"{errors.first_line(e)[:200]}); {fix}")


def complete_steps(workdir: str) -> list[int]:
  """Steps of the complete checkpoints in `workdir`, ascending (no files changed)."""
  if not os.path.isdir(directory(workdir)):
    return []
  mngr = manager(workdir, read_only=True)
  try:
    return sorted(mngr.all_steps())
  finally:
    mngr.close()


def saved_steps(workdir: str) -> list[int]:
  """Steps of the checkpoints in place in `workdir`, ascending, from the names alone.

  Orbax renames a save to `<step>` once it is complete, so these are the
  complete ones; no Orbax call, safe while the process is ending.
  """
  try:
    names = os.listdir(directory(workdir))
  except OSError:
    return []
  return sorted(int(n) for n in names if n.isdigit())


def _strip(config: dict) -> dict:
  out = {k: v for k, v in config.items() if k not in RESUMABLE_GROUPS}
  resets = config.get("train", {}).get("reset_dead_every", 0)
  for field, default in MATCHED_FIELDS.items():
    group, name = field.split(".")
    if resets or name == "reset_dead_every":
      out.setdefault(group, {})[name] = config.get(group, {}).get(name, default)
  return out


def _empty(v: Any) -> bool:
  """An empty grid axis (or a group of them): what a run of an older release lacks."""
  if isinstance(v, dict):
    return all(_empty(x) for x in v.values())
  return isinstance(v, (list, tuple)) and not v


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in sorted(set(old) | set(new), key=str):
      if (key not in old and _empty(new[key])) or (key not in new and _empty(old[key])):
        continue
      out += _differences(old.get(key, "<missing>"), new.get(key, "<missing>"),
                          f"{prefix}{key}.")
    return out
  if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
    old, new = list(old), list(new)
  return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def check_same_config(workdir: str, mngr: ocp.CheckpointManager | None,
                      config: ml_collections.ConfigDict) -> int | None:
  """Refuses to continue a run of a different config in `workdir`.

  Compares `config` with the config of the latest checkpoint, or with
  `workdir/config.json` when no checkpoint is complete yet; only the `train`
  group (steps, logging and saving periods) may differ. `mngr=None` opens a
  read-only manager. Returns the latest complete step (None: none). Changes no
  file.
  """
  own = mngr is None
  if own:
    if not os.path.isdir(directory(workdir)):
      mngr = None
    else:
      mngr = manager(workdir, read_only=True)
  try:
    step = None if mngr is None else mngr.latest_step()
    if step is not None:
      old, source = read_meta(mngr, step)["config"], f"checkpoint {step}"
    elif os.path.isfile(os.path.join(workdir, CONFIG_FILE)):
      old, source = read_config(workdir).to_dict(), CONFIG_FILE
    else:
      return None
  finally:
    if own and mngr is not None:
      mngr.close()
  new = json.loads(json.dumps(config.to_dict()))
  old = json.loads(json.dumps(old))
  diff = _differences(_strip(old), _strip(new))
  old_steps = old.get("train", {}).get("steps")
  new_steps = new.get("train", {}).get("steps")
  if (step is not None and old_steps != new_steps
      and new.get("opt", {}).get("schedule") in STEPS_SCHEDULES):
    raise errors.ConfigError(
        f"{os.path.abspath(workdir)} holds a run with train.steps={old_steps}; resuming it "
        f"with train.steps={new_steps} would change its {new['opt']['schedule']} learning-rate "
        f"schedule mid-run (it decays to 0 at train.steps); pass "
        f"--config.train.steps={old_steps} to resume it, or --fresh to start over")
  errors.check(not diff, f"{os.path.abspath(workdir)} holds a run of a different config "
               f"({'; '.join(diff[:3])}{'; ...' if len(diff) > 3 else ''}; compared with "
               f"its {source}); pass another --workdir, or --fresh to move that run aside")
  return step


def unsaved_other_config(workdir: str, config: ml_collections.ConfigDict) -> str | None:
  """What differs ('opt.lr: 1e+30 -> 0.003; ...') when `workdir` holds the config.json of
  a run that saved no checkpoint (it diverged or was killed first) and `config` is
  another; None otherwise. Changes no file."""
  if not os.path.isfile(os.path.join(workdir, CONFIG_FILE)) or complete_steps(workdir):
    return None
  try:
    old = json.loads(json.dumps(read_config(workdir).to_dict()))
  except errors.ConfigError:
    return None  # Unreadable: check_same_config says so.
  diff = _differences(_strip(old), _strip(json.loads(json.dumps(config.to_dict()))))
  return "; ".join(diff[:3]) + ("; ..." if len(diff) > 3 else "") if diff else None


def holds_run(workdir: str) -> bool:
  """Whether `workdir` holds anything of a training run."""
  return any(os.path.exists(os.path.join(workdir, name)) for name in RUN_FILES)


def move_aside(workdir: str) -> str | None:
  """Renames a workdir holding a run to `<workdir>.old-<date>-<time>`; deletes nothing.

  Returns the new name (None when `workdir` holds no run).
  """
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir) or not holds_run(workdir):
    return None
  base = f"{workdir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
  target, n = base, 1
  while os.path.exists(target):
    n += 1
    target = f"{base}-{n}"
  try:
    os.rename(workdir, target)
  except OSError as e:
    raise errors.ConfigError(f"cannot move {workdir} aside to {target} ({e.strerror}); "
                             "pass another --workdir") from None
  return target

