"""Workdir checks and atomic writes: a failed run never destroys an earlier result."""
from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import errno
import io
import json
import math
import os
import secrets
import shutil
import tempfile
import time
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

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


# ---------------------------------------------------------------- run kinds

# What a workdir holds, recorded in it when a run first writes there: one kind
# per workdir, so that a launcher of another kind never writes beside it.
KIND_FILE = ".resjax-kind"
KINDS = {"train": ("a training run", "launch.train"), "sweep": ("a collapse sweep", "launch.sweep"),
         "study": ("a study", "launch.study"), "analysis": ("an analysis", "launch.analyze")}
# Files that show the kind of a workdir written before kinds were recorded.
_SHOWS = (("study", "study.json"), ("sweep", "collapse.json"), ("sweep", "collapse.csv"),
          ("analysis", "probes.json"), ("train", "checkpoints"), ("train", "metrics.jsonl"))


def kind_of(workdir: str) -> tuple[str | None, str]:
  """(kind, the file that shows it) of what `workdir` holds; (None, '') when it holds no run."""
  try:
    with open(os.path.join(workdir, KIND_FILE)) as f:
      kind = f.read().strip()
  except OSError:
    kind = ""
  if kind in KINDS:
    return kind, KIND_FILE
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
  except (OSError, ValueError):
    config = None
  if isinstance(config, dict):
    return ("study" if "grids" in config and "study" in config else "train"), "config.json"
  for kind, name in _SHOWS:
    if os.path.lexists(os.path.join(workdir, name)):
      return kind, name
  return None, ""


def check_kind(workdir: str, kind: str, flag: str = "--workdir") -> None:
  """ConfigError unless `workdir` is new or holds a run of `kind` (changes nothing);
  `flag` names the option that chose the directory."""
  found, shown = kind_of(workdir)
  if found in (None, kind):
    return
  raise errors.ConfigError(
      f"{workdir} holds {KINDS[found][0]} ({shown}); {KINDS[kind][1]} would write "
      f"{KINDS[kind][0]} beside it and mix the two: pass another {flag} "
      f"({KINDS[found][1]} is the launcher of that one)")


def claim_kind(workdir: str, kind: str) -> None:
  """Records that `workdir` holds a run of `kind` (after `check_kind`); call it just
  before the run writes its first file there. A run that writes a result set
  records its kind in the set instead (`write_kind` into the set's directory), so
  that a failed set leaves the workdir as it was."""
  check_kind(workdir, kind)
  if not os.path.exists(os.path.join(workdir, KIND_FILE)):
    write_kind(workdir, kind)


def write_kind(directory: str, kind: str) -> None:
  """Writes the kind file into `directory` (a workdir, or a result set's directory)."""
  write_text(os.path.join(directory, KIND_FILE), kind + "\n")


def _umask() -> int:
  """The process's umask, read once at import.

  Linux tells it in /proc/self/status; elsewhere it is read by setting and
  restoring it (another thread could create a file in between, hence once).
  """
  with contextlib.suppress(OSError, ValueError):
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


_UMASK = _umask()


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically (temp file in the same dir, then rename)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    os.fchmod(fd, 0o666 & ~_UMASK)  # As open() would: collaborators may read results.
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

  The figure is drawn twice, not three times: the PNG's one draw (Agg, at
  `dpi`) also lays it out, its tight bounding box crops that image and is
  passed to the PDF as it is (a PNG whose box reaches outside the figure is
  drawn again by `savefig`). Returns the paths written: `x.png` and `x.pdf`
  for path `x.png`.
  """
  # Slow imports (about 0.5 s): only what draws a figure pays them.
  import matplotlib  # pylint: disable=g-import-not-at-top
  from matplotlib import image  # pylint: disable=g-import-not-at-top
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  root, ext = os.path.splitext(path)
  paths = [path, root + ".pdf"] if ext.lower() == ".png" else [path]
  fmts = [os.path.splitext(out)[1][1:].lower() or "png" for out in paths]
  dpi_before, canvas_before = fig.dpi, fig.canvas
  fig.set_dpi(dpi)  # Text extents depend on the dpi: lay out as the files are drawn.
  try:
    canvas = backend_agg.FigureCanvasAgg(fig)
    canvas.draw()
    tight = fig.get_tightbbox(canvas.get_renderer())
    pixels = np.asarray(canvas.buffer_rgba())
  finally:
    fig.set_dpi(dpi_before)
    fig.set_canvas(canvas_before)
  bbox = tight.padded(matplotlib.rcParams["savefig.pad_inches"])
  inside = (tight.x0 >= 0 and tight.y0 >= 0 and tight.x1 <= fig.bbox_inches.x1
            and tight.y1 <= fig.bbox_inches.y1)

  facecolor = fig.get_facecolor()

  def encode_png() -> bytes:
    buf = io.BytesIO()
    image.imsave(buf, _crop(pixels, bbox, dpi, facecolor), format="png",
                 origin="upper", dpi=dpi)
    return buf.getvalue()

  # The PNG's compression (zlib, which releases the GIL) runs on a thread
  # while the PDF draws: 0.2 s of the sweep's figure on a 2-core CPU.
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    encoded = {}
    for out, fmt in zip(paths, fmts):
      if fmt == "png" and inside:
        encoded[out] = pool.submit(encode_png)
      else:  # Artists outside the figure are not in that image: draw again. Fixed metadata:
        meta = {"CreationDate": None} if fmt == "pdf" else {}  # the same PDF bytes every run.
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches=bbox, metadata=meta)
        encoded[out] = buf.getvalue()
    for out in paths:
      data = encoded[out]
      write_bytes(out, data if isinstance(data, bytes) else data.result())
  return paths


def _crop(pixels: np.ndarray, bbox, dpi: float, facecolor) -> np.ndarray:
  """The part of a drawn figure (RGBA rows from the top) in `bbox` (inches); the padding
  beyond the figure's edges in its background colour, as savefig draws it."""
  height, width = int(bbox.height * dpi), int(bbox.width * dpi)
  top, left = round(pixels.shape[0] - bbox.y1 * dpi), round(bbox.x0 * dpi)
  out = np.empty((height, width, 4), np.uint8)
  out[:] = np.round(np.asarray(facecolor, np.float64) * 255).astype(np.uint8)
  r0, c0 = max(top, 0), max(left, 0)
  r1, c1 = min(top + height, pixels.shape[0]), min(left + width, pixels.shape[1])
  out[r0 - top:r1 - top, c0 - left:c1 - left] = pixels[r0:r1, c0:c1]
  return out


def _jsonable(x: Any) -> Any:
  if hasattr(x, "tolist"):
    return x.tolist()
  if hasattr(x, "to_dict"):
    return x.to_dict()
  return str(x)


def jsonable(x: Any) -> Any:
  """The one JSON conversion: NaN / inf -> None (null), NumPy scalars and arrays -> Python, recursively."""
  if isinstance(x, dict):
    return {k: jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return jsonable(x.tolist())
  if isinstance(x, (np.integer, np.bool_)):
    return x.item()
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  return x


# ---------------------------------------------------------------- result sets

RESULTS_STORE = ".results"  # DIR/.results/<version>/ holds each set; `current` names one.


class ResultsNotWritten(RuntimeError):
  """A result set could not be written; the earlier set (if any) is unchanged.

  The message is one line: the directory, the reason, and what was kept.
  """


@contextlib.contextmanager
def result_set(directory: str) -> Iterator[str]:
  """Yields an empty directory to write a set of result files into; commits them as one.

  Write every file of the set into the yielded directory (the names users see,
  e.g. collapse.csv, collapse.json, collapse.png). On a clean exit the set
  becomes visible all at once:

    DIR/.results/<version>/   the files of each set
    DIR/.results/current      a symlink to the version in force
    DIR/<name>                a symlink to .results/current/<name>

  Switching versions is one atomic rename of `current`, so at every instant
  all of DIR/<name> show the old set or all show the new set, never a mix,
  whenever the writer stops (crash, kill, full disk). Names only in the new
  set are absent before the switch; names only in the old one disappear with
  it. A reader that opens several files at different times, and must not
  straddle a rerun, resolves `DIR/.results/current` once
  (`result_set_path(DIR)`) and reads from there: the version it found is kept
  until the commit after the next. Files a previous release wrote directly as
  DIR/<name> are adopted (hard-linked into a version first) without ever
  changing what a reader sees.

  A failure while writing or committing (an OSError such as ENOSPC, or an
  interrupt) removes the new version and leaves the earlier set as it was;
  OSErrors are raised as ResultsNotWritten with one line naming the reason.
  """
  directory = os.path.abspath(directory)
  store = os.path.join(directory, RESULTS_STORE)
  had = os.path.lexists(os.path.join(store, "current"))
  version = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)
  tmp = os.path.join(store, "tmp-" + version)
  try:
    os.makedirs(store, exist_ok=True)
    os.mkdir(tmp)  # Honours the umask (mkdtemp would make it 0700).
    yield tmp
    names = sorted(n for n in os.listdir(tmp) if os.path.isfile(os.path.join(tmp, n)))
    had = had or any(_is_plain_file(os.path.join(directory, n)) for n in names)
    _commit(directory, store, tmp, version, names)
  except OSError as e:
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(os.path.join(store, version), ignore_errors=True)
    kept = "the earlier results are kept" if had else "no results were written"
    raise ResultsNotWritten(f"could not write the results to {directory} "
                            f"({e.strerror or e}); {kept}") from None
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def result_set_path(directory: str) -> str | None:
  """The version directory the set in `directory` consists of now (None: no set)."""
  current = os.path.join(os.path.abspath(directory), RESULTS_STORE, "current")
  return os.path.realpath(current) if os.path.lexists(current) else None


def _is_plain_file(path: str) -> bool:
  return os.path.isfile(path) and not os.path.islink(path)


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _replace_with_link(target: str, path: str) -> None:
  """Makes `path` a symlink to `target` with one rename (no moment without `path`)."""
  tmp = os.path.join(os.path.dirname(path), f".tmp-link-{secrets.token_hex(4)}")
  os.symlink(target, tmp)
  try:
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def _commit(directory: str, store: str, tmp: str, version: str, names: list[str]) -> None:
  for name in names:
    if os.path.isdir(os.path.join(directory, name)) and not os.path.islink(
        os.path.join(directory, name)):
      raise OSError(errno.EISDIR, f"{os.path.join(directory, name)} is a directory; move it away")
  _fsync_dir(tmp)
  os.rename(tmp, os.path.join(store, version))
  current = os.path.join(store, "current")
  previous = os.readlink(current) if os.path.islink(current) else None
  legacy = [n for n in names if _is_plain_file(os.path.join(directory, n))]
  if legacy and previous is None:
    # Files of an earlier release: the same bytes become a version first, so
    # turning each name into a link changes nothing a reader sees.
    previous = f"{version}-adopted"
    os.mkdir(os.path.join(store, previous))
    for name in legacy:
      src, dst = os.path.join(directory, name), os.path.join(store, previous, name)
      try:
        os.link(src, dst)
      except OSError:
        shutil.copy2(src, dst)
    _replace_with_link(previous, current)
  for name in names:
    path, target = os.path.join(directory, name), os.path.join(RESULTS_STORE, "current", name)
    if not (os.path.islink(path) and os.readlink(path) == target):
      _replace_with_link(target, path)
  _fsync_dir(directory)
  _replace_with_link(version, current)  # The switch: one rename. Nothing after it fails.
  with contextlib.suppress(OSError):
    _fsync_dir(store)
    # Tidy up: links of names the new set lacks, versions older than the previous one.
    prefix = os.path.join(RESULTS_STORE, "current", "")
    for name in os.listdir(directory):
      path = os.path.join(directory, name)
      if name not in names and os.path.islink(path) and os.readlink(path).startswith(prefix):
        os.unlink(path)
    for name in os.listdir(store):
      if name not in (version, previous, "current"):
        shutil.rmtree(os.path.join(store, name), ignore_errors=True)
