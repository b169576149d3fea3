"""Lines a launcher keeps off its stdout: gloo's connection lines.

gloo (JAX's CPU collectives) writes `[Gloo] Rank i is connected to j peer
ranks. ...` from C++ straight to file descriptor 1, one line per local device
when the first collective of a multi-process job runs. `quiet_gloo` routes
stdout through a pipe and a thread that drop them; `close` puts it back.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import Callable

# gloo's `[Gloo] Rank i is connected to j peer ranks. Expected number of connected peer
# ranks is : j`, in the pieces its C++ code writes. One thread per local device writes
# it at once, so the pieces of several copies can interleave within and across lines.
_GLOO_PIECES = (b"[Gloo] Rank ", b" is connected to ", b" peer ranks. ",
                b"Expected number of connected peer ranks is : ")


def _gloo_only(line: bytes, partial: bool = False) -> bool:
  """Whether `line` starts with `[Gloo] ` or holds nothing but pieces of gloo's message,
  numbers and spaces (an empty line too); `partial`: or may still become such a line."""
  if line.startswith(b"[Gloo] ") or (partial and b"[Gloo] ".startswith(line)):
    return True
  if partial:  # A piece cut at the end of what has come so far.
    for piece in _GLOO_PIECES:
      cut = next((k for k in range(len(piece) - 1, 0, -1) if line.endswith(piece[:k])), 0)
      if cut and _gloo_only(line[:-cut]):
        return True
  for piece in _GLOO_PIECES:
    line = line.replace(piece, b"")
  return not line.translate(None, b"0123456789 \t\r")


class _DropLines:
  """Routes file descriptor `fd` through a pipe that drops the lines `drop(line)`
  accepts; `drop(line, partial=True)`: a line without its end yet may become one."""

  def __init__(self, fd: int, drop: Callable[..., bool]):
    self.fd, self.drop = fd, drop
    with contextlib.suppress(Exception):
      sys.stdout.flush()
    self.out = os.dup(fd)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, fd)
    os.close(write_fd)
    self.thread = threading.Thread(target=self._pump, args=(read_fd,), name="drop-lines",
                                   daemon=True)
    self.thread.start()
    atexit.register(self.close)

  def _pump(self, read_fd: int) -> None:
    pending = b""
    started = False  # The start of the current line went out already: keep the rest.
    while True:
      try:
        data = os.read(read_fd, 1 << 16)
      except OSError:
        data = b""
      if not data:
        break
      *lines, pending = (pending + data).split(b"\n")
      out = b""
      for line in lines:
        if started or not self.drop(line):
          out += line + b"\n"
        started = False
      # A partial line goes out at once unless it may still become a dropped one.
      if pending and (started or not self.drop(pending, partial=True)):
        out, pending, started = out + pending, b"", True
      self._write(out)
    if pending and (started or not self.drop(pending)):
      self._write(pending)
    os.close(read_fd)

  def _write(self, data: bytes) -> None:
    while data:
      try:
        data = data[os.write(self.out, data):]
      except OSError:
        return

  def close(self) -> None:
    """Puts `fd` back and forwards what is still in the pipe (idempotent)."""
    if self.thread is None:
      return
    with contextlib.suppress(Exception):
      sys.stdout.flush()
    os.dup2(self.out, self.fd)  # The pipe's last writer is gone: the pump drains and ends.
    self.thread.join(timeout=2.0)
    self.thread = None


_filter: _DropLines | None = None


def quiet_gloo() -> None:
  """Drops gloo's `[Gloo] Rank i is connected to j peer ranks` lines from stdout.

  They carry no news once the job has assembled. Lines made only of their
  pieces (several threads write them at once), numbers and spaces go too.
  Stdout goes through a pipe and a thread from here on; `close` (called by
  `launch.runtime.exit_now`) and interpreter exit flush it.
  """
  global _filter
  if _filter is None:
    _filter = _DropLines(1, _gloo_only)


def close() -> None:
  """Forwards what the filter still holds and puts stdout back (no filter: nothing)."""
  if _filter is not None:
    _filter.close()
