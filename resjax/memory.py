"""What memory there is (host, accelerator) and sizes in words; the sweep and the
trainer check their estimates against it before building anything."""
from __future__ import annotations

import os
from typing import Any

import jax


def available_memory() -> dict[str, Any]:
  """{'host': bytes of this machine (or its cgroup limit), 'device': bytes or None}.

  'device' is the accelerator's memory limit from `memory_stats()`; None on the
  CPU, whose buffers are host memory.
  """
  host = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
      with open(path) as f:
        text = f.read().strip()
    except OSError:
      continue
    if text.isdigit():
      host = min(host, int(text))
  device = None
  if jax.default_backend() != "cpu":
    try:
      device = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    except Exception:  # pylint: disable=broad-except  (not every backend reports it)
      device = None
  return {"host": int(host), "device": device}


def size_text(nbytes: float) -> str:
  """'1.5 GB', '120 kB', ..."""
  for unit, scale in (("EB", 1e18), ("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
    if nbytes >= scale:
      return f"{nbytes / scale:.3g} {unit}"
  return f"{nbytes / 1e3:.3g} kB"


def have_text(avail: dict[str, Any]) -> str:
  """What memory there is, in words ('this machine has 8 GB')."""
  if avail.get("device") is not None:
    return f"the device has {size_text(avail['device'])} and the host {size_text(avail['host'])}"
  return f"this machine has {size_text(avail['host'])}"


def limit(avail: dict[str, Any]) -> int:
  """Bytes a computation's device buffers may use: the accelerator's, else the host's."""
  return int(avail["device"] if avail.get("device") is not None else avail["host"])
