"""Studies by name: `resjax/studies/<name>.py` is study `name` (found with importlib)."""
from __future__ import annotations

import functools
import importlib
import os
import pkgutil
import types

from resjax import errors

# Modules of the package that are shared pieces, not studies.
SHARED = ("figures", "registry", "runner", "runs", "summary", "tables")


@functools.cache
def names() -> tuple[str, ...]:
  """The studies: every module of resjax/studies/ but the shared ones, sorted
  (listed once per process: validation asks for them at every field)."""
  here = os.path.dirname(os.path.abspath(__file__))
  return tuple(sorted(m.name for m in pkgutil.iter_modules([here])
                      if m.name not in SHARED and not m.name.startswith("_")))


def get(name: str) -> types.ModuleType:
  """The module of study `name` (ConfigError naming the studies when unknown)."""
  errors.choice("study", name, names())
  return importlib.import_module(f"resjax.studies.{name}")
