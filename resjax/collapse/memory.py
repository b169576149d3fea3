"""Memory: what the compiled sweep needs, what there is, what to cut when it does not fit."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax

from resjax import errors
from resjax.collapse import spec as spec_lib
from resjax.memory import available_memory, have_text, size_text as _size


def memory_estimate(spec: spec_lib.SweepSpec, chunk: Optional[int] = None,
                    sequential: Optional[bool] = None) -> dict[str, int]:
  """Bytes the compiled sweep needs, from the spec alone (nothing is compiled).

  Per vmapped draw (N = n_max, P points, D = d_max, A activations), the terms
  that dominate XLA's buffers: the hidden layer and what is built on it, T^+ y
  of every prefix n for every activation [A, N, P, D], the duty counts
  [R, N, P], the decoders' inverses and the constrained decoder's batch of QPs
  [A, QP_BATCH D P, N] (about 8.1 A D + 6 floats per unit and point; measured
  on the CPU), and the prefixes of T with their SVDs and pseudo-inverses
  [N, N, D] (about 2.5 N^2 D floats). `chunk` draws run at once, or one at
  a time where they run one after another (`sequential`; default: as
  `spec.sequential_draws` says for this platform). The output
  [draws, A, len(dims), METRICS] lives on the device and twice on the host
  (the copy and its transpose). Checked
  against `compiled.memory_analysis()` (tests/test_reliability.py).

  Returns {'per_draw', 'chunk', 'device', 'host', 'total'} (total = device + host).
  """
  n, p, d, a = max(spec.dims), spec.points, max(spec.ds), len(spec.activations)
  draws = spec.draws
  chunk = (spec.chunk if chunk is None else chunk) or draws
  chunk = min(chunk, draws)
  if sequential is None:
    sequential = spec_lib.sequential_draws(jax.default_backend())
  per_draw = 4 * (n * p * (8.1 * a * d + 6) + 2.5 * n * n * d)
  out = 4 * (draws + -draws % chunk) * a * len(spec.dims) * len(spec_lib.METRICS)
  device = (1 if sequential else chunk) * per_draw + out + 4 * len(spec.ds) * p * d + 8 * draws
  return {"per_draw": int(per_draw), "chunk": int(chunk), "device": int(device),
          "host": int(2 * out), "total": int(device + 2 * out)}


def check_memory(spec: spec_lib.SweepSpec, available: Optional[dict[str, Any]] = None,
                 fraction: float = 0.9, sequential: Optional[bool] = None) -> dict[str, int]:
  """Raises ConfigError when the sweep would not fit in `fraction` of the memory.

  The message names the estimated size, the memory there is and the fix: the
  largest --config.chunk that fits, else how far to cut n_max or the seeds.
  Returns the estimate when it fits. `sequential`: as in `memory_estimate`.
  """
  avail = available_memory() if available is None else available
  on_device = avail.get("device") is not None
  if sequential is None:
    sequential = spec_lib.sequential_draws(jax.default_backend())
  one_chunk = "" if sequential else " (with --config.chunk=1)"

  def fits(g: spec_lib.SweepSpec, chunk: Optional[int] = None) -> bool:
    est = memory_estimate(g, chunk, sequential)
    if on_device:
      return est["device"] <= fraction * avail["device"] and est["host"] <= fraction * avail["host"]
    return est["total"] <= fraction * avail["host"]

  est = memory_estimate(spec, sequential=sequential)
  if fits(spec):
    return est
  have = have_text(avail)
  chunks = [c for c in (64, 32, 16, 8, 4, 2, 1) if c < est["chunk"] and fits(spec, c)]
  if chunks:
    need = _size(memory_estimate(spec, chunks[0], sequential)["total"])
    fix = f"pass --config.chunk={chunks[0]} (about {need}), or fewer --config.seeds / --config.dims"
  else:
    one = dataclasses.replace(spec, chunk=1)
    if not fits(dataclasses.replace(one, seeds=1)):  # One draw is too big: n_max or points.
      n_fit = max([n for n in (2 ** k for k in range(1, 21))
                   if fits(dataclasses.replace(one, seeds=1, dims=(n,)))] or [0])
      fix = (f"keep --config.dims at most n={n_fit}{one_chunk}, or fewer "
             "--config.manifold.points" if n_fit else "pass fewer --config.manifold.points")
    else:  # The results themselves: draws x activations x dims.
      s_fit = max([s for s in (2 ** k for k in range(40))
                   if s <= spec.seeds and fits(dataclasses.replace(one, seeds=s))] or [1])
      fix = (f"pass at most about {s_fit:,} --config.seeds{one_chunk}, or fewer "
             "--config.dims / activations")
  at_once = "one at a time" if sequential else f"{est['chunk']} at a time"
  raise errors.ConfigError(
      f"the sweep needs about {_size(est['total'])} of memory (n_max={max(spec.dims)}, "
      f"{spec.points} points, {spec.draws:,} draws, {at_once}) but {have}; {fix}")
