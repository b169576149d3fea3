"""The sweep in one compiled program: every (d, activation, n, seed) cell, then the theory beside it.

T is drawn once per (d, seed) at [n_max, d] (zero-padded to d_max columns;
each d has its own key, so the T's of different d are independent), and T_n
is its first n rows, exactly the unpadded draw for n. Everything that
depends on n is a sum over the first n units, so prefix sums over the unit
axis give every n at once (`cells`). Draws run in chunks, one compiled
program run chunk after chunk (memory stays bounded): on accelerators a
chunk's draws are vmapped, on a CPU they run one after another inside the
call (`spec.sequential_draws`). The activations are unrolled inside that program,
sharing T x, the pseudo-inverses and the duty statistics. The program holds
the constrained decoder's active-set solver only where a draw needs it
(`SweepProgram`, `starts_with_solver`).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from resjax import activations, manifolds, program_cache
from resjax.collapse import cells, embedding, memory, theory
from resjax.collapse import spec as spec_lib


# Sweeps of at most this many draws of T (the default has 64) are compile-bound
# on a CPU: they compile with XLA's older CPU emitters.
FAST_COMPILE_DRAWS = 256


def compiler_options(draws: int = 0) -> Optional[dict[str, Any]]:
  """XLA options for a sweep of `draws` draws of T: on the CPU, LLVM at -O1, and for
  up to FAST_COMPILE_DRAWS draws, XLA's older CPU fusion emitters.

  Measured on the default sweep (64 draws, 2-core CPU). Whole processes
  (`python -m launch.bench startup`): a first run took 8.0 s against 8.8 with
  the newer emitters, a rerun from the cache 4.9 s against 4.5. In one process
  (`python -m launch.bench collapse`, which prints both): compile 1.76 s
  against 2.05, steady run 2.89 s against 2.30; part of the newer emitters'
  compile cost is paid once per process. The run's loss grows with the draws
  and outweighs the compile's gain past a few hundred. -O1 and -O2 measured
  alike in one-off runs.
  """
  options: dict[str, Any] = {"xla_backend_optimization_level": 1}
  if draws <= FAST_COMPILE_DRAWS:
    options["xla_cpu_use_fusion_emitters"] = False
  return program_cache.cpu_options(options, jax.default_backend())


def _chunk_fn(x_KxPxD, d_K, k_c, s_c, seed, *, names, n_max, dims, sequential=False,
              solve=True):
  """(metrics [chunk, A, len(dims), M], left [chunk], T [chunk, n_max, d_max]) for one chunk
  of draws (manifold dim k, seed s); left and solve as `decoders.constrained_errors` gives and
  takes them."""
  d_max = x_KxPxD.shape[-1]
  pick_N = np.asarray(dims) - 1

  def one(k, s):
    key = embedding.embedding_key(seed, s, d_K[k])
    t_NxD = embedding.draw_padded(key, n_max, d_K[k], n_max, d_max)
    metrics, left = cells.prefix_metrics(x_KxPxD[k], t_NxD, d_K[k], names, solve=solve)
    return metrics[:, pick_N], left, t_NxD

  if sequential:
    return jax.lax.map(lambda ks: one(*ks), (k_c, s_c))
  return jax.vmap(one)(k_c, s_c)


# A sweep starts with the QP solver compiled in where a silent unit's constraint
# that x = 0 breaks (a finite bound other than 0) is within this many times the
# largest |x| (T x is N(0, |x|^2) per unit), or where d >= 3.
SOLVER_REACH = 2.5


def starts_with_solver(spec: spec_lib.SweepSpec, x_KxPxD: np.ndarray) -> bool:
  """Whether the sweep's program is compiled with `decoders.min_norm_qp` from the start.

  Elsewhere it starts without (`SweepProgram`). Measured on the spiral at d = 2
  (64 draws, all activations): no draw needed the solver at scale 1, 1.25 or
  1.5; 2 at scale 2, 20 at 3, 42 at 4 and all 64 at 20. The ball and the
  sphere needed it in every draw at d = 3 to 8 (4 seeds) and in none at d = 1, 2
  (`python -m launch.bench collapse` counts them).
  """
  if max(spec.ds) >= 3:
    return True
  bounds = [abs(b) for a in spec.activations for b in activations.get(a).region
            if math.isfinite(b) and b != 0]
  reach = SOLVER_REACH * float(np.max(np.linalg.norm(x_KxPxD, axis=-1)))
  return bool(bounds) and min(bounds) <= reach


# Chunks dispatched ahead of the one being read back.
IN_FLIGHT = 2


class SweepProgram:
  """The sweep's compiled program, run once per chunk of draws.

  It starts with the chunk program compiled without `decoders.min_norm_qp`
  (`solve=False`): most draws pose no QP that needs it (none of the default
  sweep's), and that program compiles in about half the time. A chunk that
  left a QP unsolved is run again with the full program, compiled by
  `with_solver` when first needed, and the chunks after it run that program
  (a sweep that needs it once, at large scale or d >= 3, needs it for most
  draws). A draw that leaves no QP gets the same numbers from either program,
  bit for bit (the default sweep, and tests/test_collapse.py at two scales).

  Up to IN_FLIGHT chunks are dispatched ahead of the one read back, so
  `progress(chunks_done, chunks)` is reported from the host as each chunk ends.
  (Dispatching every chunk first held the first report back until most
  chunks had run: 20 s into a 256-seed sweep on a 2-core CPU.) With no callback
  inside, both programs are ones that JAX's persistent compilation cache
  stores: a rerun loads them.
  """

  def __init__(self, compiled: Any, chunk: int,
               with_solver: Optional[Callable[[], Any]] = None):
    self.compiled = compiled  # jax.stages.Compiled of one chunk (without the solver if with_solver)
    self.chunk = chunk
    self.with_solver = with_solver
    # The program with the solver, once compiled (`compiled` itself without with_solver).
    self.full: Any = None if with_solver is not None else compiled
    self.solver_compile_s = 0.0
    self.rerun_chunks = 0  # Chunks run again with it.
    self.first_draw: Optional[np.ndarray] = None  # T [n_max, d_max] of the first draw run.

  def __call__(self, x_KxPxD, d_K, k_C, s_C, seed, *,
               progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """Metrics [draws (padded to a multiple of chunk), A, len(dims), M] as NumPy."""
    chunks = len(k_C) // self.chunk
    k_C, s_C = (np.asarray(a).reshape(chunks, self.chunk) for a in (k_C, s_C))
    run = lambda program, i: (program, program(x_KxPxD, d_K, k_C[i], s_C[i], seed))
    pending = [run(self._current(), i) for i in range(min(IN_FLIGHT, chunks))]
    out = []
    for i in range(chunks):
      if i + len(pending) < chunks:
        pending.append(run(self._current(), i + len(pending)))
      program, (metrics, left, t_CxNxD) = pending.pop(0)
      if i == 0:
        self.first_draw = np.asarray(t_CxNxD)[0]  # (Indexing on the device would compile.)
      if program is not self.full and np.any(left):
        self._compile_full()
        self.rerun_chunks += 1
        metrics = run(self.full, i)[1][0]
      out.append(np.asarray(metrics))
      if progress is not None:
        progress(i + 1, chunks)
    return np.concatenate(out)

  def _current(self) -> Any:
    return self.compiled if self.full is None else self.full

  def _compile_full(self) -> None:
    if self.full is None:
      start = time.perf_counter()
      self.full = self.with_solver()
      self.solver_compile_s = time.perf_counter() - start

  def memory_analysis(self) -> Any:
    """XLA's memory analysis of the full chunk program (compiled here if it was not yet)."""
    self._compile_full()
    return self.full.memory_analysis()


def draw_axes(spec: spec_lib.SweepSpec) -> tuple[np.ndarray, np.ndarray]:
  """(manifold-dim index, seed index) of every draw of T, int32 [draws], dims major."""
  k_C, s_C = np.meshgrid(np.arange(len(spec.ds)), np.arange(spec.seeds), indexing="ij")
  return k_C.ravel().astype(np.int32), s_C.ravel().astype(np.int32)


def compile_sweep(spec: spec_lib.SweepSpec) -> tuple[SweepProgram, tuple, dict[str, Any]]:
  """Lowers and compiles the sweep's program: returns (program, args, meta).

  `program(*args)` -> metrics [draws, A, len(spec.dims), M] over the
  (manifold dim, seed) draws; meta holds what unpacks it and the compile time
  (of the program it starts with: `starts_with_solver`).
  """
  x_KxPxD = manifolds.padded(spec.manifold, spec.points, spec.ds, seed=spec.seed,
                             turns=spec.turns, scale=spec.scale)
  k_C, s_C = draw_axes(spec)
  draws = k_C.size
  chunk = draws if spec.chunk <= 0 else min(spec.chunk, draws)
  pad = -draws % chunk
  k_C, s_C = (np.concatenate([a, np.repeat(a[:1], pad)]) for a in (k_C, s_C))
  args = (x_KxPxD, np.asarray(spec.ds, np.int32), k_C, s_C, np.uint32(spec.seed))
  static = {"names": spec.activations, "n_max": max(spec.dims), "dims": spec.dims,
            "sequential": spec_lib.sequential_draws(jax.default_backend())}
  compile_chunk = lambda solve: program_cache.compile(
      _chunk_fn, (*args[:2], k_C[:chunk], s_C[:chunk], args[4]),
      static={**static, "solve": solve}, compiler_options=compiler_options(draws))
  full = starts_with_solver(spec, x_KxPxD)
  start = time.perf_counter()
  compiled = compile_chunk(full)
  meta = {"x": x_KxPxD, "draws": draws, "chunk": chunk,
          "compile_s": time.perf_counter() - start}
  return SweepProgram(compiled, chunk, None if full else lambda: compile_chunk(True)), args, meta


def sweep(config: Any, *, progress: Optional[Callable[[int, int], None]] = None,
          on_compiled: Optional[Callable[[], Any]] = None) -> dict[str, Any]:
  """Runs the whole sweep: one compiled program over every n, run chunk by chunk of draws.

  The config is validated as the launcher validates it (`spec_from_config`,
  then `check_memory`): a bad value or a sweep too large for this machine
  raises errors.ConfigError with the launcher's message, before compiling.

  Args:
    config: a collapse ConfigDict / dict (see configs/collapse.py) or a SweepSpec.
    progress: optional `progress(chunks_done, chunks)`, called from the host after each chunk.
    on_compiled: optional, called once the program is compiled, before it runs
      (host work started there overlaps the run, which holds no GIL).

  Returns:
    NumPy arrays over the sweep: each of METRICS as [K, A, N, S] (manifold dims,
    activations, embedding dims, seeds), each of THEORY as [K, A, N], plus the
    spec's axes, timings, and first_draw: T [max(dims), max(d)] of the first
    manifold dim and seed index 0, zero padded.
  """
  spec = spec_lib.spec_from_config(config)
  memory.check_memory(spec)
  program, args, meta = compile_sweep(spec)
  if on_compiled is not None:
    on_compiled()
  start = time.perf_counter()
  out_CxAxNxM = program(*args, progress=progress)
  run_s = time.perf_counter() - start - program.solver_compile_s
  out = out_CxAxNxM[:meta["draws"]].reshape(
      len(spec.ds), spec.seeds, len(spec.activations), len(spec.dims), len(spec_lib.METRICS))
  out = out.transpose(0, 2, 3, 1, 4)
  results = {"manifold": spec.manifold, "d": np.asarray(spec.ds),
             "activations": spec.activations, "dims": np.asarray(spec.dims),
             "seeds": spec.seeds, "seed": spec.seed, "points": spec.points,
             "turns": spec.turns, "scale": spec.scale, "cells": spec.cells,
             "chunk": meta["chunk"],
             "compile_s": meta["compile_s"] + program.solver_compile_s, "run_s": run_s,
             "rerun_chunks": program.rerun_chunks,
             "first_draw": program.first_draw}
  results.update({m: out[..., i] for i, m in enumerate(spec_lib.METRICS)})
  results.update(theory.predict(meta["x"], spec.ds, spec.activations, spec.dims))
  return results
