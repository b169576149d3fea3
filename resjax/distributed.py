"""One job over several processes (hosts), and stopping it cleanly on a signal.

`initialize` starts JAX's distributed runtime, with the coordinator address,
process count and process id given explicitly, or (`auto=True`) found by JAX in
the cluster environment (SLURM, Open MPI, Cloud TPU, Kubernetes). CPU processes
talk through gloo collectives.

`stop_on_signals` turns SIGTERM (preemption notice) and SIGINT (Ctrl-C) into a
`should_stop(step)` predicate for the training loop. With one process it is a
flag set by the signal handler. With several, JAX's preemption service decides:
the process that gets the signal tells the coordinator, and every process
answers True at the same step, so all of them save the same checkpoint.

`exit_on_signals` is for jobs that keep their work in files as they go (the
sweep, the studies): a signal ends the process at once, even while the main
thread is inside a long XLA call, with one line saying what was kept and exit
code 128 + the signal number (130 for SIGINT, 143 for SIGTERM).

`quiet_gloo` keeps gloo's `[Gloo] Rank i is connected to ...` lines (written
by C++ to stdout, one per local device when the first collective runs) out of
a launcher's output.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import sys
import threading
from typing import Callable, Iterator

import jax

from resjax import errors


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False,
               timeout_s: int = 300) -> bool:
  """Starts `jax.distributed` when asked to; returns whether it did.

  Nothing is given and `auto` is False: a single-process run (returns False).
  All three of coordinator_address ('host:port' of process 0), num_processes
  and process_id: those are used. `auto`: JAX fills in whatever is missing from
  the cluster environment. Must run before anything touches a JAX device.
  Raises ConfigError for inconsistent values or no cluster found.

  Waits at most `timeout_s` for every process to join, then ends the process
  with one line naming the process that did not arrive where that can be known
  (process 1 of 2 seen from process 0; process 0 when its address does not
  answer), else the count expected and the coordinator address; exit 1.
  Ctrl-C while waiting ends it at once (exit 130).
  """
  given = {"--coordinator_address": coordinator_address or None,
           "--num_processes": num_processes, "--process_id": process_id}
  missing = [name for name, value in given.items() if value is None]
  if not auto and len(missing) == len(given):
    return False
  if not auto and missing:
    raise errors.ConfigError(
        f"{', '.join(missing)} missing: pass --coordinator_address, --num_processes and "
        "--process_id together, or --multihost alone to read them from the cluster "
        "environment")
  if num_processes is not None:
    errors.check(num_processes >= 1, f"--num_processes={num_processes} must be >= 1")
  if process_id is not None:
    errors.check(process_id >= 0 and (num_processes is None or process_id < num_processes),
                 f"--process_id={process_id} must be in [0, --num_processes="
                 f"{num_processes})")
  if coordinator_address:
    host, _, port = coordinator_address.rpartition(":")
    errors.check(bool(host) and port.isdigit() and 0 < int(port) < 65536,
                 f"--coordinator_address={coordinator_address!r} must be HOST:PORT of "
                 "process 0, e.g. 10.0.0.1:1234")
  errors.check(isinstance(timeout_s, int) and not isinstance(timeout_s, bool) and timeout_s >= 1,
               f"--coordinator_timeout={timeout_s!r} must be a whole number of seconds >= 1")
  # gloo is JAX's default on recent versions; older ones had no CPU collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  where = coordinator_address or "the coordinator found in the cluster environment"
  try:
    # JAX aborts the process (in C++) when its own timeout passes: ours comes first
    # and ends in one line; Ctrl-C works while waiting.
    with _watchdog(timeout_s, lambda: _late(coordinator_address, num_processes, process_id,
                                            timeout_s)), \
        exit_on_signals(lambda sig: f"stopped by {sig} while waiting for the other processes "
                        f"of the job at {where}; nothing was started",
                        # SIGTERM: JAX installs its preemption handler while starting.
                        signals=(signal.SIGINT,)):
      jax.distributed.initialize(coordinator_address or None, num_processes, process_id,
                                 initialization_timeout=timeout_s + _JAX_TIMEOUT_MARGIN_S)
  except ValueError as e:
    reason = errors.first_line(e) or type(e).__name__
    raise errors.ConfigError(
        f"no cluster environment found ({reason}); pass --coordinator_address, "
        "--num_processes and --process_id") from None
  except RuntimeError as e:
    if "must be called before" in str(e) or "only be called once" in str(e):
      raise
    reason = errors.first_line(e) or type(e).__name__
    raise errors.ConfigError(
        f"cannot join the job at {coordinator_address or 'the detected coordinator'} "
        f"within {timeout_s} s ({reason[:200]}); check that every process got the same "
        "address and a distinct --process_id") from None
  return True


_JAX_TIMEOUT_MARGIN_S = 30


def _reachable(address: str) -> bool:
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
      return True
  except (OSError, ValueError):
    return False


def _late(address: str | None, num_processes: int | None, process_id: int | None,
          timeout_s: int) -> str:
  """The one line for a job whose processes did not all arrive within `timeout_s`."""
  fix = ("start every process with the same --coordinator_address and --num_processes and "
         "its own --process_id, or raise --coordinator_timeout")
  at = address or "the coordinator found in the cluster environment"
  if num_processes is None or process_id is None:
    return f"the job at {at} did not assemble within {timeout_s} s; {fix}"
  if process_id != 0 and address and not _reachable(address):
    return (f"process 0 (the coordinator, {address}) did not start within {timeout_s} s: "
            f"this is process {process_id} of {num_processes}; {fix}")
  others = [i for i in range(num_processes) if i != process_id]
  if process_id == 0 and len(others) == 1:
    return (f"process {others[0]} of {num_processes} did not join the job at {at} within "
            f"{timeout_s} s; {fix}")
  return (f"not all {num_processes} processes joined the job at {at} within {timeout_s} s "
          f"(this is process {process_id}; expected {', '.join(map(str, others))}); {fix}")


@contextlib.contextmanager
def _watchdog(timeout_s: float, message: Callable[[], str]) -> Iterator[None]:
  """Ends the process with `error: <message()>` and exit 1 unless the block ends in time."""
  done = threading.Event()

  def watch():
    if not done.wait(timeout_s):
      exit_now(f"error: {message()}", 1)

  thread = threading.Thread(target=watch, name="watchdog", daemon=True)
  thread.start()
  try:
    yield
  finally:
    done.set()


class _DropLines:
  """Routes file descriptor `fd` through a pipe that drops lines starting with `prefix`."""

  def __init__(self, fd: int, prefix: bytes):
    self.fd, self.prefix = fd, prefix
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

  def _keep(self, line: bytes) -> bool:
    return not line.startswith(self.prefix)

  def _pump(self, read_fd: int) -> None:
    pending = b""
    while True:
      try:
        data = os.read(read_fd, 1 << 16)
      except OSError:
        data = b""
      if not data:
        break
      *lines, pending = (pending + data).split(b"\n")
      out = b"".join(l + b"\n" for l in lines if self._keep(l))
      # A partial line goes out at once unless it may still become a dropped one.
      if pending and not (pending.startswith(self.prefix) or self.prefix.startswith(pending)):
        out, pending = out + pending, b""
      self._write(out)
    if pending and self._keep(pending):
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


_stdout_filter: _DropLines | None = None


def quiet_gloo() -> None:
  """Drops gloo's `[Gloo] Rank i is connected to j peer ranks` lines from stdout.

  They carry no news once the job has assembled. Stdout goes through a pipe
  and a thread from here on; `exit_now` and interpreter exit flush it.
  """
  global _stdout_filter
  if _stdout_filter is None:
    _stdout_filter = _DropLines(1, b"[Gloo] ")


_exit_lock = threading.Lock()
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_now(message: str, code: int) -> None:
  """Prints `message` on stderr, releases this process's workdir locks and exits with `code`.

  At once (`os._exit`), from any thread: no cleanup that could wait on a running
  XLA computation. Files written with `resjax.files` are whole or absent.
  """
  with _exit_lock:  # One message, even if two threads get here.
    with contextlib.suppress(Exception):
      sys.stdout.flush()
    with contextlib.suppress(Exception):
      if _stdout_filter is not None:
        _stdout_filter.close()
    with contextlib.suppress(Exception):
      if message:
        print(message, file=sys.stderr, flush=True)
    with contextlib.suppress(Exception):
      from resjax import locking  # pylint: disable=g-import-not-at-top
      locking.release_all()
    os._exit(code)


class Stop:
  """`should_stop(step)` of `exit_on_signals`: True once a signal asked to stop."""

  def __init__(self):
    self.signum: int | None = None
    self.seen = threading.Event()  # The block was told (it is stopping: saving).

  def __call__(self, step: int | None = None) -> bool:  # pylint: disable=unused-argument
    if self.signum is None:
      return False
    self.seen.set()
    return True

  @property
  def name(self) -> str | None:
    """'SIGINT' / 'SIGTERM' once one came, else None."""
    return signal.Signals(self.signum).name if self.signum else None


@contextlib.contextmanager
def exit_on_signals(message: Callable[[str], str], signals: tuple[int, ...] = _SIGNALS, *,
                    grace_s: float | None = None, saving_s: float = 0.0) -> Iterator[Stop]:
  """SIGINT or SIGTERM (`signals`) inside the block ends the process within a moment.

  `message(signal_name)` gives the one line printed on stderr (say what was
  kept); the exit code is 128 + the signal number (130 for SIGINT, 143 for
  SIGTERM), without a traceback. The main thread may be inside a long XLA
  call: the signal's byte reaches a watcher thread through
  `signal.set_wakeup_fd`, which exits.

  With `grace_s`, the block gets that long to stop by itself first: the
  yielded `should_stop(step)` turns True (pass it to a training loop, which
  saves and returns; then exit with 128 + `should_stop.signum`), and only if
  the block is still running after `grace_s` (or a second signal comes) does
  the process end as above. Without it, `should_stop` never turns True. A
  block that has been told (it called `should_stop` and got True, so it is
  saving) gets up to `saving_s` more before that, unless a second signal comes.

  Must be entered from the main thread (elsewhere it only yields). Previous
  handlers come back on exit.
  """
  should_stop = Stop()
  if threading.current_thread() is not threading.main_thread():
    yield should_stop
    return
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  done = threading.Event()
  timers = []

  def finish(signum: int, patient: bool = False) -> None:
    if patient and should_stop.seen.is_set():
      done.wait(saving_s)
    if not done.is_set():
      exit_now(message(signal.Signals(signum).name), 128 + signum)

  def on_signal(signum: int) -> None:
    if grace_s is None or should_stop.signum is not None:
      finish(signum)
    should_stop.signum = signum
    timers.append(threading.Timer(grace_s, finish, (signum, True)))
    timers[-1].daemon = True
    timers[-1].start()

  def watch():  # Every delivered signal writes its number here, whatever the main thread does.
    while not done.is_set():
      try:
        data = os.read(read_fd, 64)
      except OSError:
        return
      for signum in data:
        if signum in signals and not done.is_set():
          on_signal(signum)

  previous = {s: signal.getsignal(s) for s in signals}
  for s in signals:  # A Python-level handler, so that CPython's C handler writes the byte.
    signal.signal(s, lambda signum, frame: None)
  previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  thread = threading.Thread(target=watch, name="exit-on-signals", daemon=True)
  thread.start()
  try:
    yield should_stop
  finally:
    done.set()
    for timer in timers:
      timer.cancel()
    signal.set_wakeup_fd(previous_fd)
    for s, handler in previous.items():
      signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    with contextlib.suppress(OSError):
      os.write(write_fd, b"\0")
    thread.join(timeout=1.0)
    os.close(write_fd)
    if not thread.is_alive():
      os.close(read_fd)


def is_multiprocess() -> bool:
  """Whether this process is one of several (JAX's distributed runtime is up)."""
  return jax.distributed.is_initialized() and jax.process_count() > 1


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[int], bool]]:
  """Yields `should_stop(step)`: True once SIGTERM or SIGINT asked to stop.

  Call it after every training step with the step just finished (the same
  sequence on every process). A second SIGINT interrupts at once
  (KeyboardInterrupt). The previous handlers come back on exit. Must be
  entered from the main thread.
  """
  requested = threading.Event()
  multi = jax.distributed.is_initialized()
  previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

  def on_signal(signum, frame):  # pylint: disable=unused-argument
    if signum == signal.SIGINT and requested.is_set():
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt
    requested.set()
    if multi and signum == signal.SIGINT:
      # JAX's preemption service listens for SIGTERM; pass Ctrl-C on to it.
      os.kill(os.getpid(), signal.SIGTERM)

  signal.signal(signal.SIGINT, on_signal)
  if not multi:  # With the runtime up, JAX's own SIGTERM handler is in place.
    signal.signal(signal.SIGTERM, on_signal)

  def should_stop(step: int) -> bool:
    if multi:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(int(step))
    return requested.is_set()

  try:
    yield should_stop
  finally:
    for signum, handler in previous.items():
      if handler is not None:
        signal.signal(signum, handler)
