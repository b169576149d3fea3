"""The training loop: a state and a step, with saving, resuming and logging.

`train_and_evaluate` trains what a `Single` (one net) or a grid's `Grid`
(resjax/grid/layer.py) supplies: a state born sharded on a mesh, its jitted
steps, its batches and its per-net bookkeeping. The loop itself never asks
which of the two it holds.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from resjax import data
from resjax import errors
from resjax import files
from resjax import locking
from resjax import memory
from resjax import metrics
from resjax import models
from resjax.checkpoints import io as ckpt
from resjax.grid import spec as grid_spec
from resjax.grid import layer as grid_layer
from resjax.progress import Progress
from resjax.train import faults
from resjax.train import watch as train_watch
from resjax.train.mesh import describe_mesh
from resjax.train import state as train_state
from resjax.train.single import Single
from resjax.train.state import step_of
from resjax.train.steps import evaluate
from resjax.train.validate import validate

# Fields of `config.data` the trainer reads; any other field is a dataset
# option passed to `data.load` (e.g. spirals' num_arms).
DATA_FIELDS = ("name", "data_dir", "seed", "batch_size", "augment", "pad", "flip")


def load_data(config: ml_collections.ConfigDict) -> data.Dataset:
  """The dataset named by `config.data` (its extra fields are dataset options)."""
  options = {k: v for k, v in config.data.items() if k not in DATA_FIELDS}
  return data.load(config.data.name, data_dir=config.data.get("data_dir"),
                   seed=int(config.data.get("seed", 0)), **options)


def checkpoint_meta(config: ml_collections.ConfigDict, ds: data.Dataset) -> dict:
  """What a checkpoint stores beside the arrays to be rebuilt without the data."""
  return {"config": config.to_dict(), "dataset": _dataset_facts(ds)}


def _dataset_facts(ds: data.Dataset) -> dict:
  return {"name": ds.name, "input_shape": list(ds.input_shape),
          "num_classes": int(ds.num_classes),
          "mean": np.ravel(np.asarray(ds.mean, np.float64)).tolist(),
          "std": np.ravel(np.asarray(ds.std, np.float64)).tolist()}


def _every(step: int, period: int, last: int) -> bool:
  return step == last or (period > 0 and step % period == 0)


def _barrier(name: str) -> None:
  """Waits for every process (a no-op with one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _quiet(*_) -> None:
  pass


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, fresh: bool = False,
                       should_stop: Callable[[int], bool] | None = None,
                       say: Callable[[str], None] | None = None,
                       dataset: data.Dataset | None = None) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Writes workdir/config.json, workdir/metrics.jsonl, TensorBoard events in
  workdir/tensorboard and Orbax checkpoints in workdir/checkpoints; hands
  progress lines to `say` on process 0 (default: absl logging). Returns the
  final metrics ('train/...' over the last log window, 'eval/...' on the full
  test split), 'step', and 'checkpoint' (the directory of the last checkpoint
  written). `dataset` replaces the one `config.data` names (tests, benchmarks).

  A workdir holding a run of another config (outside the `train` group) is
  refused with a ConfigError, unless `fresh`, which first renames such a
  workdir to `<workdir>.old-<time>` (nothing is deleted) and starts at step 0;
  a run that saved no checkpoint (it diverged or was killed first) is moved
  aside so without `fresh`.
  `should_stop(step)` is asked after every step (the same answer on every
  process); when it says True the state is saved at that step and the run
  returns with 'stopped' set. A non-finite loss or parameter raises
  `Diverged`; nothing is saved after the last finite step. Every process
  calls this function; only process 0 writes metrics.
  """
  # The batch must split evenly over the processes (CPU: data_mesh then picks
  # a count of host devices that divides it) or over all accelerators.
  lead = jax.process_index() == 0
  say = (logging.info if say is None else say) if lead else _quiet
  if jax.devices()[0].platform == "cpu":
    validate(config, jax.process_count(), unit="processes", say=say)
  else:
    validate(config, jax.device_count(), say=say)
  ds = load_data(config) if dataset is None else dataset
  check_size(config, ds)
  nets = grid_layer.Grid(config, say) if grid_spec.is_grid(config) else Single(config)
  mesh = nets.mesh(ds)
  batch_size = int(config.data.batch_size)
  errors.check(batch_size <= len(ds.train.labels),
               f"data.batch_size={batch_size} exceeds the {len(ds.train.labels)} training "
               f"examples of {ds.name}; use a smaller batch")
  workdir = files.workdir_path(workdir)
  files.check_kind(workdir, "train")
  unsaved = None if fresh else ckpt.unsaved_other_config(workdir, config)
  if unsaved:  # Nothing of it to resume: it goes aside (kept), as with --fresh.
    say(f"the earlier run in {workdir} saved no checkpoint and had another config "
        f"({unsaved}); moving it aside")
    fresh = True
  if fresh:
    with locking.workdir_lock(workdir, enabled=lead, say=say):  # Never move a run in use.
      moved = ckpt.move_aside(workdir) if lead else None  # (Its lock file goes too.)
    _barrier("resjax-fresh")
    if moved:
      say(f"moved the earlier run in {workdir} to {moved}")
  # The workdir is this run's until it returns: a second run is refused in one
  # line naming this one (process 0 holds the lock for every process).
  if lead:
    files.ensure_workdir(workdir)  # One line for a workdir that cannot be made.
  with locking.workdir_lock(workdir, enabled=lead, say=say):
    return _train_in(workdir, config, ds, nets, mesh, lead, say, should_stop)


def check_size(config: ml_collections.ConfigDict, ds: data.Dataset,
               available: dict | None = None, fraction: float = 0.9) -> int:
  """ConfigError when the training state of every net (`config` on `ds`; a grid's nets
  padded to its largest) would not fit in `fraction` of the memory there is, with
  the estimate; counted from shapes, before anything is built. Returns the bytes."""
  count = grid_spec.count(config) if grid_spec.is_grid(config) else 1
  model = grid_spec.padded_config(config) if count > 1 else config
  params, per_net = train_state.state_size(model, ds.input_shape, ds.num_classes)
  total = count * per_net * (2 if grid_spec.needs_mask(config) else 1)  # + the unit masks
  avail = memory.available_memory() if available is None else available
  if total > fraction * memory.limit(avail):
    nets = f"{count:,} nets x " if count > 1 else ""
    raise errors.ConfigError(
        f"the training state needs about {memory.size_text(total)} ({nets}{params:,} "
        f"parameters with their optimizer state{', padded' if count > 1 else ''}) but "
        f"{memory.have_text(avail)}; use a smaller model (model.* widths and depths)"
        f"{' or fewer nets (config.grid)' if count > 1 else ''}")
  return total


@dataclasses.dataclass
class _Run:
  """What the loop carries between steps."""
  config: ml_collections.ConfigDict
  workdir: str
  ds: data.Dataset
  nets: Any  # Single or grid.layer.Grid.
  mesh: jax.sharding.Mesh
  say: Callable
  mngr: Any
  meta: dict
  p_train: Callable
  p_eval: Callable
  start: int
  last_saved: int | None
  window: list = dataclasses.field(default_factory=list)   # fetched since the last log
  pending: list = dataclasses.field(default_factory=list)  # on device, not fetched yet
  timed_steps: int = 0
  timed_seconds: float = 0.0  # training time of the steps since the last log
  train_seconds: float = 0.0  # training time since the first step (compilation left out)
  progress: Progress | None = None
  watch: train_watch.Watch | None = None  # Probes during training (train.probe_every).

  @property
  def total(self) -> int:
    return int(self.config.train.steps)

  @property
  def batch_size(self) -> int:
    return int(self.config.data.batch_size)

  @property
  def eval_batch(self) -> int:
    """The evaluation's global batch: train.eval_batch_size, else the training batch."""
    return int(self.config.train.get("eval_batch_size") or 0) or self.batch_size


def _open(workdir: str, config: ml_collections.ConfigDict, ds: data.Dataset, nets: Any,
          mesh: jax.sharding.Mesh, lead: bool, say: Callable) -> tuple[_Run, Any]:
  """The run's checkpoint manager and state: restored when the workdir holds one."""
  if lead:  # This run holds the lock: no save of another is in flight.
    removed = ckpt.remove_partial_saves(workdir)
    if removed:
      say(f"removed {len(removed)} unfinished checkpoint save(s) from "
          f"{ckpt.directory(workdir)}: {', '.join(removed)}")
  # Refuse a run of another config before changing any file. Orbax's calls are
  # collective: every process must see the workdir as it was before any wrote.
  ckpt.check_same_config(workdir, None, config)
  _barrier("resjax-config-checked")
  workdir = files.ensure_workdir(workdir)
  if lead:
    files.claim_kind(workdir, "train")
  mngr = ckpt.manager(workdir, keep=int(config.train.get("keep_checkpoints", 0)))
  state = nets.create_state(mesh, ds)
  last_saved = mngr.latest_step()
  if last_saved is not None:
    try:
      state = ckpt.restore(mngr, state, last_saved)
    except errors.ConfigError:
      mngr.close()
      raise
    say(f"resumed from {ckpt.directory(workdir)} at step {step_of(state)}")
  if lead:
    ckpt.save_config(workdir, config)
  p_train, p_eval = nets.jit_steps(state, mesh)
  run = _Run(config, workdir, ds, nets, mesh, say, mngr, checkpoint_meta(config, ds),
             p_train, p_eval, step_of(state), last_saved)
  n_params = models.param_count(state.params) // nets.count
  say(f"{config.model.name} {nets.what(n_params)} on {ds.name} "
      f"({len(ds.train.labels)} train / {len(ds.test.labels)} test), batch {run.batch_size} "
      f"over {describe_mesh(mesh)}, steps {run.start} -> {run.total}")
  run.watch = train_watch.Watch.of(config, ds, nets, state, mesh, lead)
  if run.watch is not None:
    say(run.watch.describe())
  return run, state


def _train_in(workdir: str, config: ml_collections.ConfigDict, ds: data.Dataset, nets: Any,
              mesh: jax.sharding.Mesh, lead: bool, say: Callable,
              should_stop: Callable[[int], bool] | None) -> dict:
  """The body of `train_and_evaluate`, with the workdir locked."""
  run, state = _open(workdir, config, ds, nets, mesh, lead, say)
  result: dict[str, Any] = {"step": max(run.start, run.total), "stopped": False}
  # A background thread gathers and transfers the next batches while the
  # device runs the current step.
  batches = data.prefetch((nets.batch(ds.train, s, mesh) for s in range(run.start, run.total)),
                          size=2)
  with metrics.Writer(run.workdir, enabled=lead, resume_step=run.start,
                      tensorboard=train_watch.TENSORBOARD) as writer:
    if writer.dropped:
      say(f"dropped {writer.dropped} rows after step {run.start} from "
          f"{', '.join(writer.dropped_from)} (they are computed again)")
    if run.watch is not None:
      run.watch.resume(writer.kept[metrics.PROBES_FILE])
      run.watch.begin(state, run.start)
    try:
      state = _steps(run, state, batches, writer, should_stop, result)
      if run.watch is not None:
        run.watch.flush(writer)
      if run.start >= run.total:
        ev = evaluate(run.p_eval, state, ds.test, mesh, run.eval_batch, nets.merge)
        result.update({f"eval/{k}": v for k, v in ev.items()})
        say(f"nothing to train: checkpoint at step {run.start} >= train.steps={run.total}; "
            "eval " + metrics.eval_line(ev))
    finally:
      batches.close()
      try:
        run.mngr.wait_until_finished()  # An asynchronous save fails here.
      except Exception as e:  # pylint: disable=broad-except
        # Not closed: closing a manager whose save failed prints a traceback per
        # pending write ("Event loop is closed"); the process is ending anyway.
        raise faults.not_saved(e, run.last_saved, run.workdir) from None
      run.mngr.close()
  if run.last_saved is not None:
    result["checkpoint"] = os.path.join(ckpt.directory(run.workdir), str(run.last_saved))
  return nets.summarize(result, run.workdir if lead else None, say)


def _steps(run: _Run, state: Any, batches: Any, writer: metrics.Writer,
           should_stop: Callable[[int], bool] | None, result: dict) -> Any:
  """Runs the steps; fetches metrics only when logging, evaluating or saving."""
  config, mark = run.config, None
  for done, batch in enumerate(batches, run.start + 1):
    if mark is None:  # The first step compiles: wait for it, leave it untimed.
      tic = time.perf_counter()
      state, m = run.p_train(state, batch)
      jax.block_until_ready(m)
      run.say(f"step {done} (with compilation) took {time.perf_counter() - tic:.1f}s")
      run.progress = Progress(run.total, "steps", report=_quiet, every=math.inf,
                              clock=lambda: run.train_seconds)
      run.progress.update(done)  # The rate counts from here, compilation left out.
      mark = time.perf_counter()
    else:
      state, m = run.p_train(state, batch)
      run.timed_steps += 1
    if run.watch is not None:
      state = run.watch.after_step(state, done)
    run.pending.append(m)
    stop = should_stop is not None and bool(should_stop(done)) and done < run.total
    log = stop or _every(done, config.train.log_every, run.total)
    do_eval = not stop and _every(done, config.train.eval_every, run.total)
    save = stop or _every(done, config.train.checkpoint_every, run.total)
    if not (log or do_eval or save):
      continue
    # Waits for the device: the only sync.
    run.window.extend(run.nets.merge(m) for m in jax.device_get(run.pending))
    run.pending = []
    elapsed = time.perf_counter() - mark
    run.timed_seconds += elapsed
    run.train_seconds += elapsed
    run.nets.check_finite(run.window, done, last_saved=run.last_saved, workdir=run.workdir,
                          writer=writer, say=run.say)
    if log:
      result.update(_log(run, done, writer))
    if do_eval:
      result.update(_eval(run, state, done, writer))
    if run.watch is not None:  # Before the checkpoint of the step: resuming keeps the rows.
      run.watch.flush(writer)
    if save and done != run.last_saved:
      try:
        ckpt.save(run.mngr, state, run.meta)
      except Exception as e:  # pylint: disable=broad-except
        raise faults.not_saved(e, done, run.workdir, run.mngr) from None
      run.last_saved = done
    writer.flush()
    if stop:
      result.update(step=done, stopped=True)
      break
    mark = time.perf_counter()  # Evaluation and saving are not training time.
  return state


def _log(run: _Run, done: int, writer: metrics.Writer) -> dict:
  """The training row of the window since the last one; a progress line."""
  window = run.window
  mean = metrics.mean_of(window, per_net=run.nets.per_net)
  mean["lr"] = window[-1]["lr"]  # The current rate, not the mean.
  step_time = run.timed_seconds / run.timed_steps if run.timed_steps else float("nan")
  images_per_sec = run.nets.count * run.batch_size / step_time
  row = {f"train/{k}": v for k, v in mean.items()}
  if run.timed_steps:  # The first window can hold only the compiling step: no rate.
    row.update({"train/step_time": step_time, "train/images_per_sec": images_per_sec})
  run.nets.write(writer, done, row)
  run.say(metrics.progress_line(done, run.total, mean, images_per_sec,
                                run.progress.eta(done)))
  run.window, run.timed_steps, run.timed_seconds = [], 0, 0.0
  return row


def _eval(run: _Run, state: Any, done: int, writer: metrics.Writer) -> dict:
  """The evaluation row (test split; the training split too with train.eval_train)."""
  ev = evaluate(run.p_eval, state, run.ds.test, run.mesh, run.eval_batch, run.nets.merge)
  row = {f"eval/{k}": v for k, v in ev.items()}
  if run.config.train.get("eval_train", False):  # The whole training split too.
    row.update({f"eval_train/{k}": v for k, v in evaluate(
        run.p_eval, state, run.ds.train, run.mesh, run.eval_batch, run.nets.merge).items()})
  run.nets.write(writer, done, row)
  run.say(f"eval at step {done}: " + metrics.eval_line(ev))
  return row
