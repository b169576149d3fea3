"""Traced programs kept on disk beside JAX's compilation cache, so a rerun skips tracing.

JAX's persistent cache stores compiled executables, but finding one needs
the program's HLO: a rerun still traces and lowers the Python function
(0.5 s for the default sweep). `compile` also keeps the traced program
itself, serialized by `jax.export`, under `<compilation cache>/exported/`,
keyed on everything the trace can depend on: the function, its static
arguments and argument shapes, resjax's sources, the versions of JAX, Flax,
NumPy and Python, JAX's and Flax's config values, the backend and its devices. A rerun
with the same key deserializes the program (about a millisecond) and loads its
executable from JAX's cache. Results are the same either way: the first run
compiles from the deserialized program as well.

`outputs` serves a program whose outputs depend on nothing but its inputs'
values (initializers) another way: it keeps the outputs themselves, up to
MAX_KEPT_BYTES each and KEPT_TOTAL_BYTES in all (the oldest go first), keyed
as above, on the machine (`_machine`) and on the inputs' bytes, so a rerun reads
them without tracing, loading or running anything. It compiles with plain
`jax.jit` (the executable still goes to JAX's cache): exporting first would
cost a first run more than it saves a run with other inputs.

With the compilation cache off (no directory) nothing is kept on disk; the
newest outputs are kept in the process's memory instead (MEMORY_TOTAL_BYTES),
so building the same nets again in one process reads them. A program
that cannot be exported (a custom call outside JAX's stable set, an output
tree that does not pickle), or an entry that cannot be read, is traced as
`jax.jit` would; a bad entry is replaced. Entries are pickles: keep the
compilation cache where only you can write.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import importlib.metadata
import os
import pickle
import platform
import sys
import threading
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from resjax import files

SUBDIR = "exported"
MAX_KEPT_BYTES = 64 << 20  # `outputs` keeps no larger results (the initial states of big grids)
KEPT_TOTAL_BYTES = 512 << 20  # and removes the oldest it kept beyond this.
# Without a cache directory `outputs` keeps its newest results in memory, up to this
# much: a process that builds the same nets again (a study's analysis after training)
# reads them there.
MEMORY_TOTAL_BYTES = 128 << 20
_MEMORY: "collections.OrderedDict[str, tuple[Any, list[np.ndarray], int]]" = (
    collections.OrderedDict())
_MEMORY_LOCK = threading.Lock()
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


def _flax_flags() -> str:
  """Flax's config flags (some change what a module traces to, e.g. its RNG streams)."""
  flax = sys.modules.get("flax")
  if flax is None:
    return ""
  return repr(sorted((name, repr(getattr(flax.config, name))) for name in dir(flax.config)
                     if name.startswith(("flax_", "nnx_"))))


def cpu_options(options: Mapping[str, Any], platform: str) -> Optional[dict[str, Any]]:
  """`options` (flags of XLA's CPU backend) where programs run on `platform` 'cpu'; else None."""
  return dict(options) if platform == "cpu" else None


def key(fn: Callable, args: Sequence[Any], static: Mapping[str, Any],
        compiler_options: Optional[Mapping[str, Any]], closure: str = "") -> str:
  """The entry name of `fn(*args, **static)`: a SHA-256 of what its trace depends on."""
  devices = jax.devices()
  parts = [
      f"{fn.__module__}.{fn.__qualname__}", repr(sorted(static.items())), closure,
      repr(jax.tree.map(_aval, list(args))), repr(jax.tree.structure(list(args))),
      repr(sorted((compiler_options or {}).items())), sources_digest(),
      repr([(p, _version(p)) for p in _PACKAGES]), platform.python_version(),
      repr(sorted((k, repr(v)) for k, v in jax.config.values.items())), _flax_flags(),
      jax.default_backend(), repr(sorted({d.device_kind for d in devices})), str(len(devices)),
  ]
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cache_dir() -> Optional[str]:
  """Where exported programs are kept: a subdirectory of JAX's compilation cache, or None."""
  base = jax.config.jax_compilation_cache_dir
  return os.path.join(base, SUBDIR) if base else None


class Program:
  """A compiled program whose flat outputs are put back into their tree."""

  def __init__(self, compiled: jax.stages.Compiled, out_tree: Any):
    self.compiled, self.out_tree = compiled, out_tree

  def __call__(self, *args: Any) -> Any:
    return jax.tree.unflatten(self.out_tree, self.compiled(*args))

  def memory_analysis(self) -> Any:
    return self.compiled.memory_analysis()

  def as_text(self) -> str:
    return self.compiled.as_text()


def _jit_compile(fn: Callable, args: Sequence[Any], static: Mapping[str, Any],
                 compiler_options: Optional[Mapping[str, Any]]) -> jax.stages.Compiled:
  """`fn` with `static` bound, traced and compiled as `jax.jit` would for `args`."""
  bound = functools.partial(fn, **static) if static else fn
  return jax.jit(bound).lower(*args).compile(
      dict(compiler_options) if compiler_options else None)


def _pickled(entry: dict, out_tree: Any) -> bytes:
  """`entry` pickled; ValueError when its 'out_tree' does not come back equal."""
  data = pickle.dumps(entry)
  if pickle.loads(data)["out_tree"] != out_tree:
    raise ValueError("the output tree does not survive pickling")
  return data


def _compile_exported(blob: bytes, out_tree: Any, name: str, args: Sequence[Any],
                      compiler_options: Optional[Mapping[str, Any]]) -> Program:
  exported = jax.export.deserialize(bytearray(blob))

  def call(*a):
    return exported.call(*a)

  call.__name__ = call.__qualname__ = name  # JAX's cache names the executable after it.
  return Program(_jit_compile(call, args, {}, compiler_options), out_tree)


def _read(path: str) -> tuple[bytes, Any]:
  with open(path, "rb") as f:
    entry = pickle.load(f)
  return entry["exported"], entry["out_tree"]


def compile(fn: Callable, args: Sequence[Any], *,  # pylint: disable=redefined-builtin
            static: Optional[Mapping[str, Any]] = None,
            compiler_options: Optional[Mapping[str, Any]] = None,
            closure: str = "", directory: Optional[str] = None) -> Program | jax.stages.Compiled:
  """`jax.jit(fn, static)` lowered and compiled for `args`, traced only when not kept.

  `static`: keyword arguments bound into the program (hashable values whose
  repr says what they are). `closure`: for a `fn` that closes over values, a
  text that says all of them (e.g. the JSON of the configs it was built
  from): it joins the key. `args`: arrays or trees of them. `directory`:
  where entries live (default `cache_dir()`; None there means no cache). The
  result is called with `args`' shapes, `program(*args)`, and returns what
  `fn` returns; `fn`'s output tree (dicts, lists, tuples, named tuples) is
  kept beside the program (pickled), so `fn` must not return objects that
  carry functions.
  """
  static = dict(static or {})
  bound = functools.partial(fn, **static) if static else fn
  directory = cache_dir() if directory is None else directory
  if not directory:
    return _jit_compile(fn, args, static, compiler_options)
  path = os.path.join(directory, key(fn, args, static, compiler_options, closure) + ".bin")
  try:
    return _compile_exported(*_read(path), fn.__name__, args, compiler_options)
  except Exception:  # pylint: disable=broad-except  # Absent or unreadable: trace it again.
    pass
  avals = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jax.numpy.result_type(a)),
                       list(args))
  out_tree = []

  def flat(*a):
    leaves, tree = jax.tree.flatten(bound(*a))
    out_tree.append(tree)
    return leaves

  try:
    blob = bytes(jax.export.export(jax.jit(flat))(*avals).serialize())
    entry = _pickled({"exported": blob, "out_tree": out_tree[0]}, out_tree[0])
  except Exception:  # pylint: disable=broad-except  # Not exportable: as jax.jit would.
    return _jit_compile(fn, args, static, compiler_options)
  try:
    files.write_bytes(path, entry)
  except OSError:
    pass  # A read-only cache: still correct, only not kept.
  return _compile_exported(blob, out_tree[0], fn.__name__, args, compiler_options)


def _values_digest(args: Sequence[Any]) -> str:
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(list(args)):
    a = np.asarray(leaf)
    digest.update(f"{a.dtype.str}{a.shape}".encode() + np.ascontiguousarray(a).tobytes())
  return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _cpu() -> str:
  """The processor's architecture and instruction sets (Linux: /proc/cpuinfo's flags)."""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((l for l in f if l.startswith(("flags", "Features"))), "")
  except OSError:
    flags = platform.processor()
  return f"{platform.machine()} {flags.strip()}"


def _machine() -> str:
  """What else can change a compiled program's bits: XLA's flags (fast math), the
  backend's version (a CUDA driver) and, on CPU, the processor's instruction sets."""
  backend = jax.devices()[0].client
  return "\n".join([f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}",
                    f"LIBTPU_INIT_ARGS={os.environ.get('LIBTPU_INIT_ARGS', '')}",
                    str(getattr(backend, "platform_version", "")), _cpu()])


def _evict(directory: str, keep_bytes: int) -> None:
  """Removes the oldest kept outputs until those left take at most `keep_bytes`."""
  entries = []
  for name in os.listdir(directory):
    if name.endswith(".out"):
      try:
        st = os.stat(os.path.join(directory, name))
      except OSError:
        continue
      entries.append((st.st_mtime, st.st_size, name))
  total = sum(size for _, size, _ in entries)
  for _, size, name in sorted(entries):
    if total <= keep_bytes:
      return
    with contextlib.suppress(OSError):  # Another process may have removed it.
      os.remove(os.path.join(directory, name))
    total -= size


def outputs(fn: Callable, args: Sequence[Any], *, static: Optional[Mapping[str, Any]] = None,
            compiler_options: Optional[Mapping[str, Any]] = None, closure: str = "",
            directory: Optional[str] = None, max_bytes: int = MAX_KEPT_BYTES) -> Any:
  """`fn(*args)` fetched to host NumPy arrays; with the same key and the same
  argument values, read back from disk instead of computed.

  Only for deterministic programs (an initializer: same inputs, same bits).
  The key is `key`'s, with XLA's flags, the backend's version and the
  processor's instruction sets (`_machine`: a cache shared by other machines
  keeps theirs apart), and the bytes of `args` (host arrays). Results over
  `max_bytes` are computed and not kept; the kept ones together stay under
  KEPT_TOTAL_BYTES (the oldest go first). A rerun gets exactly what the first
  run computed. Each call gets arrays of its own (copies of those kept in memory).
  """
  directory = cache_dir() if directory is None else directory
  path = None
  name = key(fn, args, dict(static or {}), compiler_options, f"{closure}\n{_machine()}")
  name = f"{name}-{_values_digest(args)}"
  if not directory:
    with _MEMORY_LOCK:
      held = _MEMORY.get(name)
      if held is not None:
        _MEMORY.move_to_end(name)
    if held is not None:
      return jax.tree.unflatten(held[0], [np.array(a) for a in held[1]])
  else:
    path = os.path.join(directory, f"{name}.out")
    try:
      with open(path, "rb") as f:
        entry = pickle.load(f)
      out = jax.tree.unflatten(entry["out_tree"], entry["leaves"])
      with contextlib.suppress(OSError):
        os.utime(path)  # Recently used: evicted last.
      return out
    except Exception:  # pylint: disable=broad-except  # Absent or unreadable: compute it.
      pass
  program = _jit_compile(fn, args, dict(static or {}), compiler_options)
  out = jax.tree.map(np.asarray, jax.device_get(program(*args)))
  leaves, tree = jax.tree.flatten(out)
  if not directory:
    _hold(name, tree, leaves, max_bytes)
  if path and sum(a.nbytes for a in leaves) <= max_bytes:
    try:
      files.write_bytes(path, _pickled({"out_tree": tree, "leaves": leaves}, tree))
      _evict(directory, KEPT_TOTAL_BYTES)
    except Exception:  # pylint: disable=broad-except  # A read-only cache, a tree that
      pass             # does not pickle: only not kept.
  return out


def _hold(name: str, tree: Any, leaves: Sequence[np.ndarray], max_bytes: int) -> None:
  """Keeps a copy of an `outputs` result in this process (the newest MEMORY_TOTAL_BYTES)."""
  size = sum(np.asarray(a).nbytes for a in leaves)
  if size > min(max_bytes, MEMORY_TOTAL_BYTES):
    return
  with _MEMORY_LOCK:
    _MEMORY[name] = (tree, [np.array(a) for a in leaves], size)
    _MEMORY.move_to_end(name)
    while sum(entry[2] for entry in _MEMORY.values()) > MEMORY_TOTAL_BYTES:
      _MEMORY.popitem(last=False)
