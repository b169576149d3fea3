"""Process memory setup that must run before JAX starts its threads.

Importing this module calls `keep_freed_memory()`. XLA's CPU runtime
allocates each execution's temporary buffer with `malloc` and frees it at the
end. glibc serves a block above 32 MiB (a ResNet-20 step at batch 128 on one
host device needs about 290 MiB) with a fresh `mmap` and unmaps it on `free`,
so every step the kernel zeroes and maps those pages again as the step's
kernels first touch them: about 74,000 page faults per ResNet-20 step, in
the middle of the convolutions. `keep_freed_memory` has glibc serve every
block from one heap (one arena, no `mmap`) and keep what is freed there, so
the next step reuses the same pages: 73,700 faults per step became
15,000-44,000 and a step on one host device took 0.8 of the time (the side
by side is in docs/performance.md, "Training speed against PyTorch"). Allocators
that keep memory (jemalloc, tcmalloc) are the usual advice for CPU training
for the same reason; glibc's own settings need no extra library.

The cost: memory freed by the process stays in it until it exits (resident
size grows to the largest working set it has seen, plus fragmentation:
about 3.8 GB for ResNet-56 at batch 128, the peak it reached with a 1 GiB
trim threshold too) instead of going back to the system, and every thread
allocates from the one arena (small blocks still come from each thread's
own cache). The training loop with its input pipeline ran at 101% of the
bare step's rate with these settings (`python -m launch.bench train`, "end
to end").

Only glibc on Linux is affected, and only when the user set none of
MALLOC_ARENA_MAX, MALLOC_MMAP_MAX_, MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES
(which take precedence: e.g. GLIBC_TUNABLES=glibc.malloc.mmap_max=65536
restores glibc's default). The same settings from the shell, for a process
that does not import this module:
MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=18446744073709551615.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Mapping

# mallopt(3) parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# Free memory at the top of the heap is never returned to the system
# (mallopt(3): -1 turns trimming off). A threshold let the heap shrink and grow
# again: at 1 GiB a ResNet-56 step at batch 128 (a temporary buffer of about
# 790 MiB) gave back 1.6 GB at one step and faulted 790 MiB in at the next.
TRIM_THRESHOLD = -1
USER_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
                 "GLIBC_TUNABLES")


def _libc() -> ctypes.CDLL | None:
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  except OSError:
    return None
  return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def keep_freed_memory(environ: Mapping[str, str] | None = None) -> bool:
  """Makes glibc's malloc keep freed memory for reuse; whether it did.

  False (nothing changed) off glibc, or when the environment already holds a
  malloc setting of the user's.
  """
  environ = os.environ if environ is None else environ
  if any(environ.get(name) for name in USER_SETTINGS):
    return False
  libc = _libc()
  if libc is None:
    return False
  settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
  return all(libc.mallopt(param, value) == 1 for param, value in settings)


KEPT = keep_freed_memory()
