"""Traced programs kept on disk beside JAX's compilation cache, so a rerun skips tracing.

JAX's persistent cache stores compiled executables, but finding one needs
the program's HLO: a rerun still traces and lowers the Python function
(0.5 s for the default sweep). `compile` also keeps the traced program
itself, serialized by `jax.export`, under `<compilation cache>/exported/`,
keyed on everything the trace can depend on: the function, its static
arguments and argument shapes, resjax's sources, the versions of JAX, Flax,
NumPy and Python, JAX's config values, the backend and its devices. A rerun
with the same key deserializes the program (about a millisecond) and loads its
executable from JAX's cache. Results are the same either way: the first run
compiles from the deserialized program as well.

With the compilation cache off (no directory) nothing is kept. A program
that cannot be exported (a custom call outside JAX's stable set), or an entry
that cannot be read, is traced as `jax.jit` would; a bad entry is replaced.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from resjax import files

SUBDIR = "exported"
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml_dtypes", "flatbuffers")


@functools.lru_cache(maxsize=1)
def sources_digest() -> str:
  """SHA-256 of every .py file of the resjax package (paths and contents)."""
  root = os.path.dirname(os.path.abspath(__file__))
  digest = hashlib.sha256()
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      if name.endswith(".py"):
        path = os.path.join(dirpath, name)
        digest.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
          digest.update(f.read() + b"\0")
  return digest.hexdigest()


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "-"


def _aval(a: Any) -> tuple:
  sharding = getattr(a, "sharding", None)
  return (tuple(np.shape(a)), str(jax.numpy.result_type(a)),
          str(sharding) if isinstance(a, jax.Array) else None)


def key(fn: Callable, args: Sequence[Any], static: Mapping[str, Any],
        compiler_options: Optional[Mapping[str, Any]]) -> str:
  """The entry name of `fn(*args, **static)`: a SHA-256 of what its trace depends on."""
  devices = jax.devices()
  parts = [
      f"{fn.__module__}.{fn.__qualname__}", repr(sorted(static.items())),
      repr(jax.tree.map(_aval, list(args))), repr(jax.tree.structure(list(args))),
      repr(sorted((compiler_options or {}).items())), sources_digest(),
      repr([(p, _version(p)) for p in _PACKAGES]), platform.python_version(),
      repr(sorted((k, repr(v)) for k, v in jax.config.values.items())),
      jax.default_backend(), repr(sorted({d.device_kind for d in devices})), str(len(devices)),
  ]
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cache_dir() -> Optional[str]:
  """Where exported programs are kept: a subdirectory of JAX's compilation cache, or None."""
  base = jax.config.jax_compilation_cache_dir
  return os.path.join(base, SUBDIR) if base else None


def _compile_exported(blob: bytes, name: str, args: Sequence[Any],
                      compiler_options: Optional[Mapping[str, Any]]) -> jax.stages.Compiled:
  exported = jax.export.deserialize(bytearray(blob))

  def call(*a):
    return exported.call(*a)

  call.__name__ = call.__qualname__ = name  # JAX's cache names the executable after it.
  return jax.jit(call).lower(*args).compile(dict(compiler_options) if compiler_options else None)


def compile(fn: Callable, args: Sequence[Any], *,  # pylint: disable=redefined-builtin
            static: Optional[Mapping[str, Any]] = None,
            compiler_options: Optional[Mapping[str, Any]] = None,
            directory: Optional[str] = None) -> jax.stages.Compiled:
  """`jax.jit(fn, static)` lowered and compiled for `args`, traced only when not kept.

  `static`: keyword arguments bound into the program (hashable values whose
  repr says what they are). `directory`: where entries live (default
  `cache_dir()`; None there means no cache). The result is called with `args`'
  shapes: `compiled(*args)`.
  """
  static = dict(static or {})
  bound = functools.partial(fn, **static) if static else fn
  options = dict(compiler_options) if compiler_options else None
  directory = cache_dir() if directory is None else directory
  if not directory:
    return jax.jit(bound).lower(*args).compile(options)
  path = os.path.join(directory, key(fn, args, static, compiler_options) + ".bin")
  try:
    with open(path, "rb") as f:
      return _compile_exported(f.read(), fn.__name__, args, compiler_options)
  except Exception:  # pylint: disable=broad-except  # Absent or unreadable: trace it again.
    pass
  avals = [jax.ShapeDtypeStruct(np.shape(a), jax.numpy.result_type(a)) for a in args]
  try:
    blob = bytes(jax.export.export(jax.jit(bound))(*avals).serialize())
  except Exception:  # pylint: disable=broad-except  # Not exportable: as jax.jit would.
    return jax.jit(bound).lower(*args).compile(options)
  try:
    files.write_bytes(path, blob)
  except OSError:
    pass  # A read-only cache: still correct, only not kept.
  return _compile_exported(blob, fn.__name__, args, compiler_options)
