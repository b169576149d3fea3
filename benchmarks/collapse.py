"""The collapse sweep three ways, timed in one process on the same grid.

  python -m launch.bench collapse [--quick] [--out=FILE.json]

(a) `collapse.sweep`'s one compiled call for the whole grid;
(b) a straightforward NumPy loop over (activation, n, seed) calling the
    float64 `collapse.reference_metrics` per cell (timed on the first seeds
    of the grid and extrapolated per cell when the full loop would take
    long: the printout says so);
(c) a loop over n that jits one program per n (vmapped over seeds, all
    activations unrolled) and runs it: one compile per n.
For each: compile time, first-run and steady-state time; then the ratios and
the peak memory of (a). Then, for the rule that picks the program the sweep
starts with (`compiled.starts_with_solver`), how many draws leave a QP to the
active-set solver: the spiral at scales 1-20 and the ball and the sphere at
d = 1-8 (4 seeds), each beside what the rule picks.
"""
from __future__ import annotations

import dataclasses
import resource
import time
from typing import Any

import jax
import numpy as np

import configs.collapse
from resjax import collapse, manifolds


def _numpy_loop(grid: collapse.SweepSpec, x_PxD: np.ndarray, seeds: int) -> float:
  """Seconds for the NumPy loop over (activation, n, seed < seeds)."""
  start = time.perf_counter()
  for name in grid.activations:
    for n in grid.dims:
      for s in range(seeds):
        t_NxD = np.random.default_rng([grid.seed, s]).standard_normal((n, x_PxD.shape[1]))
        collapse.reference_metrics(x_PxD, t_NxD, name)
  return time.perf_counter() - start


def _per_n_loop(grid: collapse.SweepSpec, x_PxD: np.ndarray) -> tuple[float, float, float]:
  """(compile s, first-run s, steady-state s) of a loop that jits one program per n."""
  d = x_PxD.shape[1]
  seeds = jax.numpy.arange(grid.seeds)

  def make(n):
    def cells(seed_S):
      def one(s):
        key = jax.random.fold_in(jax.random.key(grid.seed), s)
        return collapse.cell_metrics(x_PxD, collapse.draw_embedding(key, n, d), n, d,
                                     grid.activations)
      return jax.vmap(one)(seed_S)
    return jax.jit(cells)

  compile_s = run_s = 0.0
  compiled = []
  for n in grid.dims:
    start = time.perf_counter()
    fn = make(n).lower(seeds).compile(collapse.compiler_options(grid.draws))
    compile_s += time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(fn(seeds))
    run_s += time.perf_counter() - start
    compiled.append(fn)
  start = time.perf_counter()
  for fn in compiled:
    jax.block_until_ready(fn(seeds))
  return compile_s, run_s, time.perf_counter() - start


def _by_chunk(grid: collapse.SweepSpec, chunks: tuple[int, ...]) -> dict[int, float]:
  """(a)'s steady run at each chunk size (draws vmapped per call), alternated over 2 rounds."""
  programs = {c: collapse.compile_sweep(dataclasses.replace(grid, chunk=c))[:2] for c in chunks}
  times: dict[int, list[float]] = {c: [] for c in chunks}
  for _ in range(2):
    for c, (program, args) in programs.items():
      jax.block_until_ready(program(*args))
      start = time.perf_counter()
      jax.block_until_ready(program(*args))
      times[c].append(time.perf_counter() - start)
  best = {c: min(t) for c, t in times.items()}
  print("    steady run by chunk size (draws per call; best of 2): " + ", ".join(
      f"{c}: {t:.2f} s" for c, t in best.items()), flush=True)
  return best


def _chunk_program():
  """The sweep's chunk program, jitted with its static arguments named (compiled by callers)."""
  return jax.jit(collapse.compiled._chunk_fn,  # pylint: disable=protected-access
                 static_argnames=("names", "n_max", "dims", "sequential", "solve"))


def _emitters(grid: collapse.SweepSpec, args: tuple, chunk: int) -> dict[str, dict[str, float]]:
  """(a) compiled with XLA's older CPU fusion emitters and with the newer ones."""
  out = {}
  fn = _chunk_program()
  x, d, k, s, seed = args
  # The program the sweep starts with (`compile_sweep`).
  layout = {"sequential": collapse.sequential_draws(jax.default_backend()),
            "solve": collapse.compiled.starts_with_solver(grid, x)}
  for name, older in (("older", True), ("newer", False)):
    options = {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": not older}
    start = time.perf_counter()
    compiled = fn.lower(x, d, k[:chunk], s[:chunk], seed, names=grid.activations,
                        n_max=max(grid.dims), dims=grid.dims, **layout).compile(options)
    compile_s = time.perf_counter() - start
    with_solver = lambda options=options: fn.lower(
        x, d, k[:chunk], s[:chunk], seed, names=grid.activations, n_max=max(grid.dims),
        dims=grid.dims, **{**layout, "solve": True}).compile(options)
    one = collapse.compiled.SweepProgram(compiled, chunk,
                                         None if layout["solve"] else with_solver)
    one(*args)
    start = time.perf_counter()
    one(*args)
    out[name] = {"compile_s": compile_s, "steady_s": time.perf_counter() - start}
  print("    XLA's CPU fusion emitters: " + "; ".join(
      f"{n} compile {v['compile_s']:.2f} s, steady run {v['steady_s']:.2f} s"
      for n, v in out.items()) + f" (older ones used up to {collapse.compiled.FAST_COMPILE_DRAWS}"
        f" draws; this grid has {grid.draws})", flush=True)
  return out


def _solver_need(grid: collapse.SweepSpec, cases: tuple[tuple[str, float, int], ...]
                 ) -> list[dict[str, Any]]:
  """Per (manifold, scale, seeds) case of `grid`: the draws whose QPs need the solver, per d."""
  fn = _chunk_program()
  rows = []
  for manifold, scale, seeds in cases:
    ds = grid.ds if manifold == "spiral" else (1, 2, 3, 4, 6, 8)
    spec = dataclasses.replace(grid, manifold=manifold, scale=scale, seeds=seeds, ds=ds)
    x = manifolds.padded(spec.manifold, spec.points, spec.ds, seed=spec.seed, turns=spec.turns,
                         scale=spec.scale)
    k_C, s_C = collapse.compiled.draw_axes(spec)
    left = np.asarray(fn(x, np.asarray(ds, np.int32), k_C, s_C, np.uint32(spec.seed),
                         names=spec.activations, n_max=max(spec.dims), dims=spec.dims,
                         sequential=collapse.sequential_draws(jax.default_backend()),
                         solve=False)[1])
    row = {"manifold": manifold, "scale": scale, "draws": int(left.size),
           "need": {int(d): int(left[k_C == k].sum()) for k, d in enumerate(ds)},
           "starts_with_solver": collapse.compiled.starts_with_solver(spec, x)}
    rows.append(row)
    print(f"    {manifold} at scale {scale:g}: draws needing the solver by d "
          f"{row['need']} of {seeds} each; starts {'with' if row['starts_with_solver'] else 'without'}"
          " it", flush=True)
  return rows


def run(quick: bool = False) -> dict[str, Any]:
  """Times (a), (b), (c) on the default collapse grid (a small one when quick)."""
  config = configs.collapse.get_config("quick" if quick else None)
  if quick:
    config.dims, config.seeds, config.activations = (2,), 2, ("relu",)
    config.manifold.points = 100
  grid = collapse.spec_from_config(config)
  x_PxD = manifolds.sample(grid.manifold, grid.points, grid.ds[0], seed=grid.seed,
                           turns=grid.turns)
  cells = grid.cells
  print(f"collapse benchmark on {jax.devices()[0].platform}: {len(grid.activations)} "
        f"activations x {len(grid.dims)} dims (n <= {max(grid.dims)}) x {grid.seeds} seeds = "
        f"{cells:,} cells, {grid.points} points", flush=True)

  # (a) the one-call sweep.
  compiled, args, meta = collapse.compile_sweep(grid)
  start = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  a_first = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  a_steady = time.perf_counter() - start
  a_compile = meta["compile_s"]
  started_with_solver = compiled.with_solver is None
  reruns = compiled.rerun_chunks
  mem = compiled.memory_analysis()  # The full program's: compiled here if the sweep never needed it.
  temp_mb = getattr(mem, "temp_size_in_bytes", 0) / 2 ** 20 if mem else float("nan")
  rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"(a) one-call sweep: compile {a_compile:.2f} s, first run {a_first:.2f} s, "
        f"steady {a_steady:.3f} s; XLA temp memory {temp_mb:.0f} MiB "
        f"(chunk={meta['chunk']} draws), process peak RSS {rss_mb:.0f} MiB", flush=True)
  print("    " + ("started with the QP solver compiled in" if started_with_solver else
                  f"started without the QP solver; {reruns} chunks ran again with it; the "
                  f"program with it compiled in {compiled.solver_compile_s:.2f} s"), flush=True)
  figures = {"cells": cells, "a_compile_s": a_compile, "a_first_s": a_first,
             "a_steady_s": a_steady, "a_temp_mib": temp_mb, "a_peak_rss_mib": rss_mb,
             "a_started_with_solver": started_with_solver, "a_rerun_chunks": reruns,
             "a_solver_compile_s": compiled.solver_compile_s}
  if not quick:
    unchunked = collapse.compile_sweep(dataclasses.replace(grid, chunk=0))[0]
    mem0 = unchunked.memory_analysis()
    figures["a_temp_mib_unchunked"] = getattr(mem0, "temp_size_in_bytes", 0) / 2 ** 20
    print(f"    without chunking XLA would hold {figures['a_temp_mib_unchunked']:.0f} MiB "
          "of temporaries", flush=True)

  figures["a_steady_s_by_chunk"] = _by_chunk(grid, (1, 2) if quick else (1, 2, 4, 8, 16))
  figures["a_emitters"] = _emitters(grid, args, meta["chunk"])
  print("    the program the sweep starts with (`compiled.starts_with_solver`):", flush=True)
  figures["a_solver_need"] = _solver_need(grid, (("spiral", 1.0, 2), ("spiral", 20.0, 2)) if quick
                                          else tuple(("spiral", s, grid.seeds) for s in
                                                     (1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 20.0))
                                          + (("ball", 1.0, 4), ("sphere", 1.0, 4)))

  # (b) NumPy loop; on the first seeds only when the whole loop would be long.
  b_seeds = grid.seeds if quick else min(grid.seeds, 2)
  b_time = _numpy_loop(grid, x_PxD, b_seeds)
  b_cells = len(grid.activations) * len(grid.dims) * b_seeds
  b_total = b_time / b_cells * cells
  how = ("measured" if b_seeds == grid.seeds else
         f"extrapolated from {b_cells:,} cells ({b_seeds} of {grid.seeds} seeds) at "
         f"{b_time / b_cells * 1e3:.2f} ms per cell")
  print(f"(b) NumPy loop: {b_total:.1f} s for the grid ({how}); no compile", flush=True)
  figures.update(b_s=b_total, b_measured_cells=b_cells, b_measured_s=b_time)

  # (c) one jit per n.
  c_compile, c_first, c_steady = _per_n_loop(grid, x_PxD)
  print(f"(c) jit per n ({len(grid.dims)} programs): compile {c_compile:.1f} s, "
        f"first run {c_first:.2f} s, steady {c_steady:.3f} s", flush=True)
  figures.update(c_compile_s=c_compile, c_first_s=c_first, c_steady_s=c_steady)

  a_total = a_compile + a_first
  ratios = {
      "b_over_a_total": b_total / a_total,
      "b_over_a_steady": b_total / a_steady,
      "c_over_a_total": (c_compile + c_first) / a_total,
      "c_over_a_steady": c_steady / a_steady,
  }
  figures.update(ratios)
  print(f"ratios: NumPy loop / one-call = {ratios['b_over_a_total']:.0f}x including (a)'s "
        f"compile, {ratios['b_over_a_steady']:.0f}x steady (target >= 50x)")
  print(f"        jit-per-n / one-call = {ratios['c_over_a_total']:.1f}x with compiles, "
        f"{ratios['c_over_a_steady']:.1f}x steady (target >= 5x with compiles)")
  print("note: (a) serves every n from one draw of T per seed (T_n is its first n rows: one "
        "batched SVD of the prefixes, one matmul, prefix counts), which (b) and (c) cannot.")
  if b_seeds < grid.seeds:
    print(f"note: (b) ran every activation and n on {b_seeds} of {grid.seeds} seeds; the cost "
          "per cell does not depend on the seed, so the grid time is per-cell time x cells.")
  return figures
