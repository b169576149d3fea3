"""Training metrics: JSONL + TensorBoard from process 0, progress lines on stdout.

`workdir/metrics.jsonl` holds one JSON object per line, `{"step": s, "<group>/<name>":
value, ...}`; groups are `train` (means over the steps since the previous line)
and `eval` (the full test split). `workdir/probes.jsonl` holds the probes taken
during training (`train.probe_every`), one row per step, net and layer
(`resjax.train.watch`). `workdir/tensorboard/` holds the same scalars for
`tensorboard --logdir` (probe rows under `probes/<layer>/<field>`).

A run that resumes from the checkpoint at step k first rewinds all of them to
step k: rows written after it (by a run that crashed later) are dropped, since
the resumed run computes those steps again, so every step appears once, in order.
"""
from __future__ import annotations

import glob
import json
import os
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from resjax import files
from resjax.progress import format_duration

METRICS_FILE = "metrics.jsonl"
PROBES_FILE = "probes.jsonl"
FILES = (METRICS_FILE, PROBES_FILE)  # What a writer appends to and a resumed run rewinds.
TENSORBOARD_DIR = "tensorboard"
# Row fields that say where a row belongs rather than what was measured.
KEYS = ("step", "net", "layer")


class Writer:
  """Appends rows to `workdir/metrics.jsonl` (or `probes.jsonl`) and TensorBoard events.

  A writer with `enabled=False` (every process but 0) accepts calls and writes
  nothing, so callers need no `if process_index == 0` of their own.

  With `resume_step` set (the step the run starts from), rows after it are
  dropped first from every file (see `rewind`); `kept[file]` holds the rows kept.
  `tensorboard` names, per file, the fields that go to TensorBoard (default:
  every number of a row).
  """

  def __init__(self, workdir: str, enabled: bool = True, *, resume_step: int | None = None,
               tensorboard: Mapping[str, Sequence[str]] | None = None):
    self.enabled = enabled
    self._tb_fields = {name: frozenset(fields) for name, fields in (tensorboard or {}).items()}
    self.workdir = workdir
    self.path = os.path.join(workdir, METRICS_FILE)
    self.dropped = 0
    self.dropped_from: list[str] = []
    self.kept: dict[str, list[dict]] = {name: [] for name in FILES}
    self._tb = None
    if enabled:
      logdir = os.path.join(workdir, TENSORBOARD_DIR)
      if resume_step is not None:
        for name in FILES:
          dropped, self.kept[name] = rewind(workdir, resume_step, name)
          self.dropped += dropped
          if dropped:
            self.dropped_from.append(os.path.join(workdir, name))
      old_events = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
      suffix = f".{time.time_ns()}"  # Tells this writer's event file from the old ones.
      self._tb = _summary_writer(logdir, suffix)
      if self.dropped:  # Rebuild from the rows kept; the new event file replaces the old.
        for name in FILES:
          for r in self.kept[name]:
            self._add(r, name)
        self._tb.flush()
        for path in old_events:
          if not path.endswith(suffix):
            os.remove(path)

  def write(self, step: int, scalars: Mapping[str, Any], net: int | None = None, *,
            layer: str | None = None, file: str = METRICS_FILE) -> None:
    """Records `scalars` (name -> number, or a list of numbers kept in JSON only) at
    `step`; of net `net` of a grid if given (the row gets a 'net' field; TensorBoard
    tags become 'net<k>/<name>'), of layer `layer` if given ('probes/<layer>/<name>')."""
    self.write_rows([row(step, scalars, net, layer)], file)

  def write_rows(self, rows: Iterable[Mapping[str, Any]], file: str = METRICS_FILE) -> None:
    """Appends complete rows (from `row`) to `file` in one write; never half a line."""
    if not self.enabled:
      return
    rows = list(rows)
    if not rows:
      return
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    with open(os.path.join(self.workdir, file), "ab") as f:
      size = f.tell()
      try:
        f.write(data)
        f.flush()
      except OSError:  # A full disk: never leave half a line behind.
        f.truncate(size)
        raise
    for r in rows:
      self._add(r, file)

  def _add(self, row: Mapping[str, Any], file: str) -> None:
    prefix = f"net{row['net']}/" if "net" in row else ""
    if "layer" in row:
      prefix += f"probes/{row['layer']}/"
    wanted = self._tb_fields.get(file)
    values = [_summary_value(prefix + name, value) for name, value in row.items()
              if name not in KEYS and not isinstance(value, (list, str))
              and (wanted is None or name in wanted)]
    if values:
      self._tb.add_summary(_summary(values), global_step=int(row["step"]))

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


def row(step: int, scalars: Mapping[str, Any], net: int | None = None,
        layer: str | None = None) -> dict:
  """A JSON row: step (net, layer), then each value as a float (lists as lists)."""
  out: dict[str, Any] = {"step": int(step)}
  if net is not None:
    out["net"] = int(net)
  if layer is not None:
    out["layer"] = str(layer)
  out.update({k: _jsonable(v) for k, v in scalars.items()})
  return out


def _summary_writer(logdir: str, suffix: str):
  """A tensorboardX FileWriter (one event per row: `_add`).

  Imported here, lazily: tensorboardX is slow to import, and imports PyTorch
  when that is installed (launchers import it first without PyTorch:
  `launch.runtime.import_tensorboardx`).
  """
  from tensorboardX import FileWriter  # pylint: disable=g-import-not-at-top
  return FileWriter(logdir=logdir, flush_secs=30, filename_suffix=suffix)


def _summary_value(tag: str, value: Any):
  from tensorboardX.proto.summary_pb2 import Summary  # pylint: disable=g-import-not-at-top
  return Summary.Value(tag=tag, simple_value=float(value))


def _summary(values: list):
  """One TensorBoard summary holding every scalar of a row (one add_scalar each
  costs about 0.1 ms; a grid's probe rows number in the hundreds)."""
  from tensorboardX.proto.summary_pb2 import Summary  # pylint: disable=g-import-not-at-top
  return Summary(value=values)


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


def read(workdir: str, file: str = METRICS_FILE) -> list[dict]:
  """All rows of `workdir/metrics.jsonl` (or `file`), in file order (empty if none yet).

  A row cut short by a crash (the last line without a newline) is skipped.
  """
  return _read(os.path.join(workdir, file))[0]


def rewind(workdir: str, step: int, file: str = METRICS_FILE) -> tuple[int, list[dict]]:
  """Drops the rows of `workdir/metrics.jsonl` (or `file`) after `step` (and torn lines).

  Rewrites the file atomically, only when something is dropped. Returns
  (how many lines were dropped, the rows kept).
  """
  path = os.path.join(workdir, file)
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


def _jsonable(v: Any) -> Any:
  """An integer as an int, another number as a float; a list or array of numbers
  as a list of Python numbers."""
  if isinstance(v, (list, tuple)) or np.ndim(v) > 0:
    return np.asarray(v).tolist()
  if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
    return int(v)
  return float(np.asarray(v))
