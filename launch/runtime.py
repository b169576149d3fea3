"""What a launcher changes in its own process: signals, exits, stdout, hooks.

The library (`resjax/`) never does any of this; launchers call it here and
pass what the library needs in (a `should_stop` callable).

`stop_on_signals` turns SIGTERM (preemption notice) and SIGINT (Ctrl-C) into a
`should_stop(step)` predicate for the training loop. With one process it is a
flag set by the signal handler. With several, JAX's preemption service decides:
the process that gets the signal tells the coordinator, and every process
answers True at the same step, so all of them save the same checkpoint.

`exit_on_signals` is for jobs that keep their work in files as they go (the
sweep, the studies): a signal ends the process at once, even while the main
thread is inside a long XLA call, with one line saying what was kept and exit
code 128 + the signal number (130 for SIGINT, 143 for SIGTERM).

`initialize` joins a multi-process job (`resjax.distributed.initialize`) and
ends the process in one line when the other processes do not come in time or
Ctrl-C is pressed while waiting (`launch/stdout_filter.py` keeps gloo's lines
out of stdout once it has). `quiet_orbax` keeps
Orbax's per-save INFO lines, its read-only warning and its closed-loop
tracebacks off the terminal. `import_tensorboardx` imports tensorboardX
without PyTorch.
"""
from __future__ import annotations

import contextlib
import importlib
import logging as py_logging
import os
import re
import signal
import sys
import threading
from typing import Callable, Iterator

from absl import app, logging
import jax
from jax.experimental import multihost_utils

from launch import stdout_filter
from resjax import distributed, locking

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
      stdout_filter.close()
    with contextlib.suppress(Exception):
      if message:
        print(message, file=sys.stderr, flush=True)
    with contextlib.suppress(Exception):
      locking.release_all()
    os._exit(code)


def run(main: Callable[[list[str]], None], flags_parser: Callable) -> None:
  """absl's `app.run(main)`; after a run that returns normally in a single process,
  exits at once (`exit_now`, code 0).

  By then every result is written whole (`resjax.files`); skipping the
  interpreter's teardown (XLA's client, modules, exit hooks) ends the process
  0.2 s sooner (`launch.sweep`'s rerun: 4.6 s against 4.8, measured side by
  side). A multi-process run ends as usual, so that `jax.distributed` shuts
  down with every process.
  """
  def then_exit(argv):
    main(argv)
    if jax.process_count() == 1:
      exit_now("", 0)

  app.run(then_exit, flags_parser=flags_parser)


# ----------------------------------------------------------------------------- joining a job


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, *, auto: bool, timeout_s: int) -> bool:
  """`resjax.distributed.initialize`, ended in one line when the job does not assemble.

  Waits at most `timeout_s` for every process to join, then ends the process
  with `error: <distributed.late_message(...)>` and exit 1 (JAX would abort in
  C++ later). Ctrl-C while waiting ends it at once (exit 130). Returns whether
  a multi-process runtime was started.
  """
  @contextlib.contextmanager
  def waiting(address: str | None, processes: int | None, index: int | None) -> Iterator[None]:
    where = address or "the coordinator found in the cluster environment"
    late = lambda: distributed.late_message(  # noqa: E731
        address, processes, index, timeout_s, auto=auto)
    with _watchdog(timeout_s, late), \
        exit_on_signals(lambda sig: f"stopped by {sig} while waiting for the other processes "
                        f"of the job at {where}; nothing was started",
                        # SIGTERM: JAX installs its preemption handler while starting.
                        signals=(signal.SIGINT,)):
      yield

  return distributed.initialize(coordinator_address, num_processes, process_id, auto=auto,
                                timeout_s=timeout_s, waiting=waiting)


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


# ----------------------------------------------------------------------------- signals


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
  handlers come back on exit. Over 60 lines: the handler, the timer and the
  watcher thread share the state set up here.
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
      return multihost_utils.reached_preemption_sync_point(int(step))
    return requested.is_set()

  try:
    yield should_stop
  finally:
    for signum, handler in previous.items():
      if handler is not None:
        signal.signal(signum, handler)


# ----------------------------------------------------------------------------- Orbax, tensorboardX


def _orbax_log(record: py_logging.LogRecord) -> bool:
  """False for Orbax's INFO lines and its read-only warning.

  They would bury the progress; its ERROR lines (tracebacks from background
  save threads) reach the caller as the save's exception, which the launchers
  report in one line.
  """
  if record.name == "asyncio":  # A failed read of Orbax's, after the restore has failed.
    return not _orbax_task_left(record.getMessage())
  if "/orbax/" not in record.pathname:
    return True
  if "Given directory is read only" in record.getMessage():  # Every read-only restore.
    return False
  return record.levelno in (py_logging.WARNING, py_logging.CRITICAL)


def _orbax_task_left(message: str) -> bool:
  """Whether an asyncio log message reports an Orbax task whose exception nobody read.

  When one read of a restore fails, Orbax raises it and closes the restore's
  event loop; the other reads that failed too are reported by asyncio when the
  garbage collector meets them ("Task exception was never retrieved", with a
  traceback), at a moment no one chooses: sometimes before the launcher's
  one-line error, sometimes never.
  """
  return ("exception was never retrieved" in message
          and re.search(r"coro=<[^>]* defined at [^>]*/orbax/", message) is not None)


def _read_only_warning(record: py_logging.LogRecord) -> bool:
  return not str(record.msg).startswith("Given directory is read only")


def _late_callback(unraisable) -> bool:
  """Whether an unraisable exception is a read finishing onto a closed event loop.

  Orbax runs each restore in an event loop of its own and closes it as soon as
  one read fails; TensorStore then completes the reads still in flight by
  calling `loop.call_soon_threadsafe`, which raises this, once per read.
  """
  if not (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed"):
    return False
  tb = unraisable.exc_traceback
  names = []
  while tb is not None:
    names.append(tb.tb_frame.f_code.co_name)
    tb = tb.tb_next
  return "call_soon_threadsafe" in names


def quiet_orbax() -> None:
  """Keeps Orbax's noise off the terminal (idempotent).

  Its per-save INFO lines and the "Given directory is read only" warning of
  every read-only manager; the `RuntimeError: Event loop is closed`
  traceback of each read still in flight when a restore fails, and asyncio's
  report of each failed read whose exception the failed restore left unread.
  """
  handler = logging.get_absl_handler()
  if _orbax_log not in handler.filters:
    handler.addFilter(_orbax_log)
  absl_logger = py_logging.getLogger("absl")
  if _read_only_warning not in absl_logger.filters:
    absl_logger.addFilter(_read_only_warning)
  previous = sys.unraisablehook
  if getattr(previous, "_resjax_quiet", False):
    return

  def hook(unraisable):
    if not _late_callback(unraisable):
      previous(unraisable)

  hook._resjax_quiet = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def import_tensorboardx() -> None:
  """Imports tensorboardX (what `resjax.metrics` writes TensorBoard events with)
  without PyTorch.

  tensorboardX imports PyTorch when it is installed, only to accept torch
  tensors, which are never passed; that costs seconds per start. `import torch`
  fails fast inside it while it loads; a later `import torch` works as usual.
  """
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    return
  sys.modules["torch"] = None  # Makes `import torch` raise ImportError at once.
  try:
    importlib.import_module("tensorboardX")
  finally:
    del sys.modules["torch"]
