"""What every launcher shares: one-line errors and a device log."""
from __future__ import annotations

import functools
import sys
from typing import Callable

from absl import logging

from resjax import errors


def readable_errors(main: Callable) -> Callable:
  """Wraps an absl `main` so bad input ends with one line and exit code 2."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except errors.ConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  return wrapped


def log_devices() -> None:
  """Logs the process index and the devices JAX sees."""
  import jax
  logging.info("process %d/%d, %d local / %d global devices: %s",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices())
