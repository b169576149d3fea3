"""Training metrics: JSONL + TensorBoard from process 0, progress lines on stdout.

`workdir/metrics.jsonl` holds one JSON object per line, `{"step": s, "<group>/<name>":
value, ...}`; groups are `train` (means over the steps since the previous line)
and `eval` (the full test split). `workdir/tensorboard/` holds the same scalars
for `tensorboard --logdir`.

A run that resumes from the checkpoint at step k first rewinds both to step k:
rows written after it (by a run that crashed later) are dropped, since the
resumed run computes those steps again, so every step appears once, in order.
"""
from __future__ import annotations

import glob
import json
import os
import time
from typing import Any, Mapping

import numpy as np

from resjax import files
from resjax.progress import format_duration

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class Writer:
  """Appends scalars to `workdir/metrics.jsonl` and TensorBoard events.

  A writer with `enabled=False` (every process but 0) accepts calls and writes
  nothing, so callers need no `if process_index == 0` of their own.

  With `resume_step` set (the step the run starts from), rows after it are
  dropped first (see `rewind`).
  """

  def __init__(self, workdir: str, enabled: bool = True, *, resume_step: int | None = None):
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self.dropped = 0
    self._tb = None
    if enabled:
      logdir = os.path.join(workdir, TENSORBOARD_DIR)
      kept = None
      if resume_step is not None:
        self.dropped, kept = rewind(workdir, resume_step)
      old_events = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
      suffix = f".{time.time_ns()}"  # Tells this writer's event file from the old ones.
      self._tb = _summary_writer(logdir, suffix)
      if self.dropped:  # Rebuild from the rows kept; the new event file replaces the old.
        for row in kept:
          self._add(row)
        self._tb.flush()
        for path in old_events:
          if not path.endswith(suffix):
            os.remove(path)

  def write(self, step: int, scalars: Mapping[str, Any], net: int | None = None) -> None:
    """Records `scalars` (name -> number) at `step`; of net `net` of a grid if given
    (the row gets a 'net' field; TensorBoard tags become 'net<k>/<name>')."""
    if not self.enabled:
      return
    row = {"step": int(step)}
    if net is not None:
      row["net"] = int(net)
    row.update({k: _to_float(v) for k, v in scalars.items()})
    line = (json.dumps(row) + "\n").encode()
    with open(self.path, "ab") as f:
      size = f.tell()
      try:
        f.write(line)
        f.flush()
      except OSError:  # A full disk: never leave half a line behind.
        f.truncate(size)
        raise
    self._add(row)

  def _add(self, row: Mapping[str, Any]) -> None:
    prefix = f"net{row['net']}/" if "net" in row else ""
    for name, value in row.items():
      if name not in ("step", "net"):
        self._tb.add_scalar(prefix + name, value, global_step=int(row["step"]))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> "Writer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _summary_writer(logdir: str, suffix: str):
  """A tensorboardX SummaryWriter.

  Imported here, lazily: tensorboardX is slow to import, and imports PyTorch
  when that is installed (launchers import it first without PyTorch:
  `launch.runtime.import_tensorboardx`).
  """
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter(logdir=logdir, flush_secs=30, filename_suffix=suffix)


def _read(path: str) -> tuple[list[dict], bool]:
  """(complete rows, whether a torn or unreadable line was skipped)."""
  if not os.path.exists(path):
    return [], False
  rows, torn = [], False
  with open(path) as f:
    for line in f:
      try:
        if not line.endswith("\n"):
          raise ValueError("no newline")
        rows.append(json.loads(line))
      except ValueError:
        torn = True
  return rows, torn


def read(workdir: str) -> list[dict]:
  """All rows of `workdir/metrics.jsonl`, in file order (empty if none yet).

  A row cut short by a crash (the last line without a newline) is skipped.
  """
  return _read(os.path.join(workdir, METRICS_FILE))[0]


def rewind(workdir: str, step: int) -> tuple[int, list[dict]]:
  """Drops the rows of `workdir/metrics.jsonl` after `step` (and torn lines).

  Rewrites the file atomically, only when something is dropped. Returns
  (how many lines were dropped, the rows kept).
  """
  path = os.path.join(workdir, METRICS_FILE)
  rows, torn = _read(path)
  kept = [r for r in rows if int(r.get("step", 0)) <= step]
  dropped = len(rows) - len(kept) + int(torn)
  if dropped:
    files.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
  return dropped, kept


def series(rows: list[dict], name: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of one metric across `rows` (those that carry it)."""
  picked = [(r["step"], r[name]) for r in rows if name in r]
  if not picked:
    return np.zeros(0, np.int64), np.zeros(0)
  steps, values = zip(*picked)
  return np.asarray(steps), np.asarray(values, np.float64)


def mean_of(per_step: list[Mapping[str, Any]], per_net: bool = False) -> dict[str, Any]:
  """Per-key mean of a list of fetched per-step metric dicts (floats); with
  `per_net`, each value has a leading net axis and the means are arrays [nets]."""
  keys = per_step[0].keys()
  if per_net:
    return {k: np.mean(np.stack([np.asarray(m[k], np.float64) for m in per_step]), axis=0)
            for k in keys}
  return {k: float(np.mean([np.asarray(m[k], np.float64) for m in per_step])) for k in keys}


def first_nonfinite(per_step: list[Mapping[str, Any]], key: str = "loss") -> int | None:
  """Index of the first entry whose `key` is NaN or inf; None when all are finite."""
  for i, m in enumerate(per_step):
    if not np.isfinite(np.asarray(m[key])).all():
      return i
  return None


def _spread(v: Any, fmt: str, scale: float = 1.0) -> str:
  """A number, or for several nets their mean and [min, max] (NaNs left out)."""
  v = np.asarray(v, np.float64) * scale
  if v.ndim == 0 or v.size == 1:
    return format(float(v.reshape(-1)[0]), fmt)
  finite = v[np.isfinite(v)]
  if finite.size == 0:
    return "nan"
  return (f"{format(float(finite.mean()), fmt)} [{format(float(finite.min()), fmt)}"
          f"-{format(float(finite.max()), fmt)}]")


def progress_line(step: int, total: int, train: Mapping[str, Any],
                  images_per_sec: float, eta_s: float) -> str:
  """One human-readable line: step, loss, accuracy, lr, images/s, ETA.

  With per-net arrays (a grid), each number is the mean over nets with the
  [min-max] range beside it; images/s counts every net's images.
  """
  width = len(str(total))
  nets = np.size(train["loss"])
  over = f" over {nets} nets" if nets > 1 else ""
  return (f"step {step:>{width}}/{total}  loss {_spread(train['loss'], '.4f')}  "
          f"acc {_spread(train['accuracy'], '.2f', 100)}%  lr {_spread(train['lr'], '.3g')}"
          f"{over}  {images_per_sec:8.1f} img/s  ETA {format_duration(eta_s)}")


def eval_line(ev: Mapping[str, Any]) -> str:
  """'loss .. accuracy ..% error ..%' (a grid: mean [min-max] over nets)."""
  nets = np.size(ev["loss"])
  return (f"loss {_spread(ev['loss'], '.4f')}  accuracy {_spread(ev['accuracy'], '.2f', 100)}%"
          f"  error {_spread(ev['error'], '.2f', 100)}%" + (f" over {nets} nets" if nets > 1
                                                            else ""))


def _to_float(v: Any) -> float:
  return float(np.asarray(v))
