"""The launchers: thin `python -m launch.<name>` programs over the resjax library.

Started as `python -m launch.<name>`, a launcher pauses Python's cyclic
garbage collector while it imports the libraries (JAX, Flax, Orbax, SciPy
allocate about a million objects, and the collections they trigger cost
0.2 s); `common.parse_flags` turns it back on once the flags are read
(`resume_gc`).
"""
import gc
import sys


def _started_as_launcher() -> bool:
  """Whether Python is starting `python -m launch.<name>` (while it finds the
  module, sys.argv[0] is "-m")."""
  argv = getattr(sys, "orig_argv", [])
  return sys.argv[:1] == ["-m"] and any(
      a == "-m" and b.startswith("launch.") for a, b in zip(argv, argv[1:]))


if _started_as_launcher():
  gc.disable()


def resume_gc() -> None:
  """Turns the collector back on; what the imports made is left out of its scans."""
  if not gc.isenabled():
    gc.freeze()
    gc.enable()
