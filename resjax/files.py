"""Workdir checks and atomic writes: a failed run never destroys an earlier result."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from typing import Any, Iterable, Mapping

from resjax import errors


def workdir_path(path: str) -> str:
  """The absolute path of a --workdir, checked to be given and not a file (not created)."""
  errors.check(bool(path), "--workdir is required: pass --workdir=DIR")
  path = os.path.abspath(os.path.expanduser(path))
  errors.check(not os.path.isfile(path),
               f"workdir {path} is a file; pass a directory to --workdir")
  return path


def ensure_workdir(path: str) -> str:
  """Creates `path` if needed and checks it is a writable directory."""
  path = workdir_path(path)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(
        f"cannot create workdir {path} ({e.strerror}); pass a writable --workdir") from None
  errors.check(os.access(path, os.W_OK | os.X_OK),
               f"workdir {path} is not writable; pass a writable --workdir")
  return path


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically (temp file in the same dir, then rename)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode())


def write_json(path: str, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_csv(path: str, rows: Iterable[Mapping[str, Any]]) -> None:
  """Writes dict rows as CSV; columns in first-seen order."""
  rows = list(rows)
  fields: list[str] = []
  for row in rows:
    fields.extend(k for k in row if k not in fields)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  write_text(path, buf.getvalue())


def save_figure(fig, path: str, dpi: int = 150) -> list[str]:
  """Saves a matplotlib figure atomically as PNG at `path` and as PDF (vector) beside it.

  Returns the paths written: `x.png` and `x.pdf` for path `x.png`.
  """
  root, ext = os.path.splitext(path)
  paths = [path, root + ".pdf"] if ext.lower() == ".png" else [path]
  for out in paths:
    buf = io.BytesIO()
    fmt = os.path.splitext(out)[1][1:].lower() or "png"
    # Fixed metadata: the same figure gives the same PDF bytes on every run.
    meta = {"CreationDate": None} if fmt == "pdf" else {}
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", metadata=meta)
    write_bytes(out, buf.getvalue())
  return paths


def _jsonable(x: Any) -> Any:
  if hasattr(x, "tolist"):
    return x.tolist()
  if hasattr(x, "to_dict"):
    return x.to_dict()
  return str(x)
