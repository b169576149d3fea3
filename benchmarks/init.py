"""Initial states' programs with and without their draws merged (`resjax.merged_draws`).

  python -m launch.bench init [--quick] [--out=FILE.json]

For a CIFAR ResNet-56, a ResNet-20 on the 8x8 digits and the 32-MLP grid of
`launch.bench grid` (`--quick`: the ResNet-20 and a 4-net grid), in
alternating rounds on the default device: the init program as traced
(`jax.jit(init)`) against the one whose threefry hashes come one call per
wave, each traced, lowered and compiled with the library's init options
from an empty in-memory cache. Prints the hash calls of each, the seconds,
the ratio, and whether both programs give the same arrays bit for bit.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax
import numpy as np

from benchmarks import grid as bench_grid
from configs import cifar10, embedded
from resjax import grid, merged_draws, program_cache
from resjax.grid import state as grid_state
from resjax.train import state as train_state


def _cases(quick: bool) -> list[tuple[str, Callable, tuple]]:
  cases = []
  if not quick:
    cases.append(("ResNet-56, CIFAR", train_state.init_fn(
        cifar10.get_config("resnet56"), (32, 32, 3), 10, None, None), train_state.rngs(0)))
  cases.append(("ResNet-20, 8x8 digits", train_state.init_fn(
      embedded.get_config("digits_resnet20"), (8, 8, 1), 10, None, None), train_state.rngs(0)))
  config = bench_grid.mlp_config(quick)
  nets = grid.nets(config)
  program = grid_state.init_program(nets, (2,), 2)
  cases.append((f"{len(nets)}-MLP grid", program.fn, (program.seeds,)))
  return cases


def _timed(fn: Callable, args: tuple, options: Any) -> tuple[float, float, Any]:
  jax.clear_caches()
  t0 = time.perf_counter()
  lowered = jax.jit(fn).lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile(compiler_options=options)
  return t1 - t0, time.perf_counter() - t1, compiled


def run(quick: bool = False) -> dict[str, Any]:
  """Prints one row per init program; returns the figures."""
  platform = jax.devices()[0].platform
  options = program_cache.cpu_options(train_state.INIT_COMPILER_OPTIONS, platform)
  rounds = 1 if quick else 3
  print(f"init programs on {platform}, median of {rounds} alternating round(s); seconds "
        "traced and lowered + compiled")
  figures: dict[str, Any] = {"rounds": rounds, "platform": platform, "programs": {}}
  for label, fn, args in _cases(quick):
    ways = {"as traced": fn, "merged": merged_draws.merged_draws(fn, platform)}
    times: dict[str, list] = {w: [] for w in ways}
    compiled = {}
    for _ in range(rounds):
      for way, f in ways.items():
        lower_s, compile_s, compiled[way] = _timed(f, args, options)
        times[way].append((lower_s, compile_s))
    outs = [jax.tree.leaves(c(*args)) for c in compiled.values()]
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(*outs))
    calls = merged_draws.threefry_calls(fn, *args)
    med = {w: [statistics.median(t[i] for t in times[w]) for i in (0, 1)] for w in ways}
    whole = {w: sum(med[w]) for w in ways}
    print(f"  {label}: hash calls {calls[0]} -> {calls[1]}; as traced "
          f"{med['as traced'][0]:.2f} + {med['as traced'][1]:.2f} s, merged "
          f"{med['merged'][0]:.2f} + {med['merged'][1]:.2f} s: "
          f"{whole['as traced'] / whole['merged']:.2f}x; same numbers: {same}")
    figures["programs"][label] = {
        "hash_calls": list(calls), "times": times, "median_s": med, "same": same,
        "speedup": whole["as traced"] / whole["merged"]}
  return figures
