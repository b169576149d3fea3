"""What stops a run: a non-finite loss or parameter (`Diverged`), a checkpoint a
full or read-only disk could not hold (`NotSaved`); each says what was kept."""
from __future__ import annotations

from typing import Any

import numpy as np

from resjax import metrics
from resjax.checkpoints import io as ckpt


class Diverged(RuntimeError):
  """The loss or the parameters became NaN or infinite; the message says where."""


class NotSaved(RuntimeError):
  """A checkpoint could not be written (a full or read-only disk); says what was kept."""


_DISK_FULL = ("No space left on device", "Disk quota exceeded", "Read-only file system")


def not_saved(e: BaseException, step: int | None, workdir: str,
              mngr: Any = None) -> BaseException:
  """NotSaved for a checkpoint that failed on a full or read-only disk, else `e`."""
  text = str(e)
  reason = next((r for r in _DISK_FULL if r in text), None)
  if reason is None and isinstance(e, OSError) and e.errno in (28, 30, 122):
    reason = e.strerror
  if reason is None:
    return e
  if mngr is not None:
    try:  # Let an earlier save still in flight finish, so it counts as kept.
      mngr.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      pass
  done = ckpt.complete_steps(workdir)
  kept = (f"the last good checkpoint is step {done[-1]} in {ckpt.directory(workdir)}"
          if done else "no checkpoint was completed")
  then = "resume from it" if done else "start again"
  return NotSaved(f"the checkpoint at step {step} could not be written ({reason}); {kept}; "
                  f"free some space and run the same command to {then}")


def check_finite(window: list[dict], done: int, last_saved: int | None, workdir: str,
                 writer: metrics.Writer) -> None:
  """Raises Diverged at the first step of `window` with a non-finite metric."""
  found = []  # (first bad index, rank, key, name): the loss goes first on a tie.
  for rank, (key, what) in enumerate((("loss", "loss"), ("grad_norm", "gradient norm"),
                                      ("param_norm", "parameter norm"))):
    bad = metrics.first_nonfinite(window, key)
    if bad is not None:
      found.append((bad, rank, key, what))
  if not found:
    return
  bad, _, key, what = min(found)
  step = done - len(window) + bad + 1
  value = float(np.asarray(window[bad][key]))
  writer.write(step, {f"train/{k}": float(np.asarray(window[bad][k])) for *_, k, _ in found})
  kept = (f"the last good checkpoint is step {last_saved} in "
          f"{ckpt.directory(workdir)}" if last_saved is not None
          else "no checkpoint was written")
  raise Diverged(f"{what} is {value} at step {step}; training stopped and {kept} "
                 "(lower opt.lr or check the data)")
