"""One job over several processes (hosts): starting JAX's distributed runtime.

`initialize` starts it with the coordinator address, process count and process
id given explicitly, or (`auto=True`) found by JAX in the cluster environment
(SLURM, Open MPI, Cloud TPU, Kubernetes). CPU processes talk through gloo
collectives. Bad values raise ConfigError before anything starts.

With `auto`, the layout is read (`detected`) before the wait, through JAX's own
cluster detection, so a job that does not assemble can be reported as "process
1 of 2 did not join the job at node001:62000": JAX keeps that detection in a
private module (`jax._src.clusters`); where it moves, JAX detects the layout
itself and the report names no process.

What a launcher does around it (a watchdog that ends the process in one line
when a peer never comes, Ctrl-C while waiting, signals that stop training)
changes the process, so it lives in `launch/runtime.py`, not here.
"""
from __future__ import annotations

import contextlib
import socket
from typing import Callable, ContextManager

import jax

from resjax import errors

try:  # JAX's cluster detection (SLURM, Open MPI, Cloud TPU, ...); private, see above.
  from jax._src import clusters as jax_clusters
except ImportError:
  jax_clusters = None

# JAX's own wait ends this long after `timeout_s`, so a launcher's watchdog
# (launch.runtime) comes first and can say who is missing.
JAX_TIMEOUT_MARGIN_S = 30


def _check(coordinator_address: str | None, num_processes: int | None,
           process_id: int | None, auto: bool, timeout_s: int) -> bool:
  """Raises ConfigError for inconsistent values; returns whether to start at all."""
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
  return True


def detected(coordinator_address: str | None, num_processes: int | None,
             process_id: int | None, timeout_s: int) -> tuple:
  """(coordinator_address, num_processes, process_id, local_device_ids): the values
  given, the rest as JAX finds them in the cluster environment (None where it finds
  none, or where its detection moved)."""
  given = (coordinator_address or None, num_processes, process_id, None)
  try:
    return tuple(jax_clusters.ClusterEnv.auto_detect_unset_distributed_params(
        *given[:3], None, None, timeout_s))
  except (AttributeError, TypeError):  # No such private API in this JAX.
    return given


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False,
               timeout_s: int = 300,
               waiting: Callable[..., ContextManager] = lambda *layout: contextlib.nullcontext()
               ) -> bool:
  """Starts `jax.distributed` when asked to; returns whether it did.

  Nothing is given and `auto` is False: a single-process run (returns False).
  All three of coordinator_address ('host:port' of process 0), num_processes
  and process_id: those are used. `auto`: JAX fills in whatever is missing from
  the cluster environment. Must run before anything touches a JAX device.
  Raises ConfigError for inconsistent values, no cluster found, or a job that
  did not assemble (where JAX reports it rather than aborting).

  `waiting(address, num_processes, process_id)` (the layout as far as it is
  known) is entered around the wait for the other processes, which lasts up to
  `timeout_s` + JAX_TIMEOUT_MARGIN_S (launch.runtime passes a watchdog and a
  Ctrl-C handler).
  """
  if not _check(coordinator_address, num_processes, process_id, auto, timeout_s):
    return False
  # gloo is JAX's default on recent versions; older ones had no CPU collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    layout = (detected(coordinator_address, num_processes, process_id, timeout_s) if auto
              else (coordinator_address or None, num_processes, process_id, None))
    with waiting(*layout[:3]):
      jax.distributed.initialize(*layout, initialization_timeout=timeout_s + JAX_TIMEOUT_MARGIN_S)
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


def _reachable(address: str) -> bool:
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
      return True
  except (OSError, ValueError):
    return False


def late_message(address: str | None, num_processes: int | None, process_id: int | None,
                 timeout_s: int, *, auto: bool = False) -> str:
  """The one line for a job whose processes did not all arrive within `timeout_s`.

  Names the process that did not arrive where that can be known (process 1 of
  2 seen from process 0; process 0 when its address does not answer), else the
  count expected and the coordinator address. `auto`: the layout came from the
  cluster environment (--multihost), and so does the fix.
  """
  fix = ("start every process with the same --coordinator_address and --num_processes and "
         "its own --process_id, or raise --coordinator_timeout")
  if auto:
    fix = ("check that every task of the job started `python -m launch.train --multihost`, "
           "or raise --coordinator_timeout")
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


def is_multiprocess() -> bool:
  """Whether this process is one of several (JAX's distributed runtime is up)."""
  return jax.distributed.is_initialized() and jax.process_count() > 1
