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
"""
from __future__ import annotations

import contextlib
import os
import signal
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
  # gloo is JAX's default on recent versions; older ones had no CPU collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address or None, num_processes, process_id,
                               initialization_timeout=timeout_s)
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
