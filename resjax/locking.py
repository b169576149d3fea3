"""One owner per workdir: an advisory lock taken at start, refused while another holds it.

  with locking.workdir_lock(workdir):
    ...  # train, sweep, study or analyse into workdir

The lock is `fcntl.flock` on `DIR/.resjax.lock`, which holds the owner as JSON
(pid, host, start time, command). The kernel drops a flock when its process
ends, however it ends, so a lock left by a process that died (killed, out of
memory, power cut) is free: the next run takes it over and prints whose it was.
A live holder makes a second run fail at once with one line (a ConfigError):

  <workdir> is in use by pid N on HOST since TIME; wait for it or pass another --workdir

Where the filesystem has no flock (some network or FUSE mounts) the JSON alone
decides: a holder whose pid is alive on this host, or any holder on another
host, refuses; a dead pid on this host is taken over.

Multi-process runs: process 0 takes the lock (`enabled=jax.process_index() == 0`)
and the other processes do not; they write only what process 0 coordinates,
and process 0 refusing ends the job.

The lock file is left in place when released (emptied, not deleted): deleting
it would let two processes lock two different files of the same name.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Callable, Iterator

from resjax import errors

LOCK_NAME = ".resjax.lock"

# Directory (realpath) -> [fd, depth] for the locks this process holds.
_held: dict[str, list[int]] = {}
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL)


def _owner() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "command": " ".join(sys.argv)}


def _read(fd: int) -> dict | None:
  """The holder recorded in the lock file, or None when it is empty or unreadable."""
  try:
    data = os.pread(fd, 65536, 0)
    holder = json.loads(data.decode()) if data.strip() else None
  except (OSError, ValueError):
    return None
  return holder if isinstance(holder, dict) else None


def _alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, TypeError, ValueError, OverflowError):
    return True  # Exists (another user's), or unreadable: assume it is alive.
  return True


def _describe(holder: dict | None) -> str:
  if not holder:
    return "another process (it has not written its pid yet)"
  return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
          f"since {holder.get('since', '?')}")


def _write(fd: int) -> None:
  data = (json.dumps(_owner()) + "\n").encode()
  os.ftruncate(fd, 0)
  os.pwrite(fd, data, 0)
  os.fsync(fd)


def holder(directory: str) -> dict | None:
  """Who holds the lock on `directory` now (its JSON), or None if nobody does."""
  path = os.path.join(os.path.abspath(directory), LOCK_NAME)
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return _read(fd) or {}
    except OSError as e:
      if e.errno not in _NO_FLOCK:
        raise
      found = _read(fd)
      return found if found and _alive(found.get("pid")) else None
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None
  finally:
    os.close(fd)


@contextlib.contextmanager
def workdir_lock(directory: str, *, fix: str = "wait for it or pass another --workdir",
                 enabled: bool = True, say: Callable[[str], None] = print) -> Iterator[str]:
  """Holds the advisory lock on `directory` (created if missing) for the `with` block.

  Args:
    directory: the workdir (or output directory) to own.
    fix: the end of the refusal's line, what the user can do.
    enabled: False takes no lock (the other processes of a multi-process job).
    say: where the take-over of a stale lock is reported.

  Yields the lock file's path. Raises errors.ConfigError naming the holder when
  another process holds the lock. Re-entrant within one process.
  """
  directory = os.path.abspath(directory)
  path = os.path.join(directory, LOCK_NAME)
  if not enabled:
    yield path
    return
  key = os.path.realpath(directory)
  if key in _held:
    _held[key][1] += 1
    try:
      yield path
    finally:
      _held[key][1] -= 1
    return
  try:
    os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  except OSError as e:
    raise errors.ConfigError(f"cannot create the lock file {path} ({e.strerror}); "
                             "pass a writable directory") from None
  try:
    _acquire(fd, directory, fix, say)
  except BaseException:
    os.close(fd)
    raise
  _held[key] = [fd, 1]
  try:
    yield path
  finally:
    del _held[key]
    _release(fd)


def _acquire(fd: int, directory: str, fix: str, say: Callable[[str], None]) -> None:
  refusal = f"; {fix}"
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    found = _read(fd)
    for _ in range(10):  # The holder writes its JSON just after taking the lock.
      if found:
        break
      time.sleep(0.05)
      found = _read(fd)
    raise errors.ConfigError(f"{directory} is in use by {_describe(found)}{refusal}") from None
  except OSError as e:
    if e.errno not in _NO_FLOCK:
      raise
    found = _read(fd)  # No flock here: the recorded pid decides.
    if found and found.get("pid") != os.getpid() and (
        found.get("host") != socket.gethostname() or _alive(found.get("pid"))):
      raise errors.ConfigError(f"{directory} is in use by {_describe(found)}{refusal}") from None
  else:
    found = _read(fd)
  if found:  # Nobody holds the lock, yet an owner is recorded: it ended without releasing.
    gone = ("that process is gone" if found.get("host") == socket.gethostname()
            and not _alive(found.get("pid")) else "it no longer holds the lock")
    say(f"taking over the stale lock of {directory} left by {_describe(found)} ({gone})")
  _write(fd)


def _release(fd: int) -> None:
  try:
    os.ftruncate(fd, 0)
  except OSError:
    pass
  finally:
    os.close(fd)  # Closing the last descriptor drops the flock.


def release_all() -> None:
  """Empties and releases every lock this process holds (before an immediate exit)."""
  while _held:
    _, (fd, _) = _held.popitem()
    _release(fd)
