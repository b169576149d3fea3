"""Probes during training: every net of a run, every activation layer, one compiled call.

`program(model, ...)` is the call: `compiled.batch_sums` on the fixed probe
batch, vmapped over the stacked nets of a grid's compiled call in their
padded model (the program the training step runs, forward only), on one
device. Each net's own layers are read out of it (`Net`): a layer's own units
are the first ones of its padded tap (grids pad units at the end), the
per-input numbers count only them (`units` masks), and a tap that a net
lacks (a gated-out block) or a padded unit never counts. So net k's rows are
the numbers `probes.run` finds for its single run at the same step.

`layer_rows` turns the fetched sums into per-layer numbers on the host in
float64 with the functions `probes.run` uses (`statistics`), vectorized over
the nets that share a layer; `Turnover` follows each unit's dead mask from
probe to probe (rebuilt from the rows kept in probes.jsonl when a run resumes).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resjax import activations
from resjax.probes import compiled, statistics

# The fields of a probe row (besides step, net, layer and the dead units' list).
FIELDS = ("units", "dead", "dead_frac", "dormant", "dormant_frac", "active_mean",
          "linear_frac", "entropy_rank", "entropy_rank_gram", "cosine", "srank")
INTS = ("units", "dead", "dormant", "srank")  # Counts, written as integers.
TURNOVER = ("newly_dead", "revived", "newly_dead_since_first", "revived_since_first",
            "dead_every_probe")
# What TensorBoard gets of each row (probes.jsonl has every field).
SCALARS = ("dead_frac", "dormant_frac", "active_mean", "linear_frac", "entropy_rank",
           "entropy_rank_gram", "cosine", "srank")
SRANK_DELTA = 0.01  # Kumar et al. (2021)'s delta.


@dataclasses.dataclass(frozen=True)
class Net:
  """One net of a compiled call: its index in the grid (0: a single run) and
  its layers in forward order as (own name, the tap holding it in the
  program's model, own units)."""
  net: int
  layers: tuple[tuple[str, str, int], ...]


def sown_layers(model: Any, variables: Any, x: Any) -> list[tuple[str, int]]:
  """(name, units) of the activation layers `model` sows, in forward order
  (`variables`, None for the model's own init, and the input `x` may be
  shapes: nothing is computed)."""
  found: list[tuple[str, int]] = []

  def trace(v, x):
    if v is None:
      v = model.init(jax.random.key(0), x, train=False)
    _, cols = model.apply(v, x, train=False, mutable=list(compiled.COLLECTIONS))
    found.extend((n, int(z.shape[-1])) for n, z in compiled.flatten(cols.get("preacts", {})).items())
    return 0

  jax.eval_shape(trace, variables, x)
  return found


def units_masks(nets: Sequence[Net], taps: Sequence[tuple[str, int]]) -> dict[str, np.ndarray]:
  """{tap: [nets, units]}: 1 on each net's own units of the tap, 0 elsewhere."""
  out = {name: np.zeros((len(nets), c), np.float32) for name, c in taps}
  for i, net in enumerate(nets):
    for _, tap, c in net.layers:
      out[tap][i, :c] = 1.0
  return out


def program(model: Any, preprocess: Callable, stacked: bool,
            compiler_options: dict | None = None) -> Callable:
  """`probe(variables, units, inputs, labels)` -> `compiled.batch_sums` of each
  net with a leading net axis (vmapped over stacked nets; a single run's
  state gets one), jitted with `compiler_options`."""
  act = activations.get(model.activation)

  def one(variables, units, inputs, labels):
    mask = jnp.ones(labels.shape, jnp.float32)
    sums = compiled.batch_sums(variables, inputs, labels, mask, model=model, act=act,
                               preprocess=preprocess, units=units)
    del sums["blocks"]
    return sums

  def probe(variables, units, inputs, labels):
    if stacked:
      return jax.vmap(one, in_axes=(0, 0, None, None))(variables, units, inputs, labels)
    return jax.tree.map(lambda a: a[None], one(variables, units, inputs, labels))

  return jax.jit(probe, compiler_options=compiler_options)


@dataclasses.dataclass
class Row:
  """One net's numbers for one layer at a probe."""
  net: int
  layer: str
  fields: dict
  dead_units: np.ndarray


def layer_rows(sums: dict, nets: Sequence[Net], threshold: float) -> list[Row]:
  """The rows of a probe from the fetched sums of `program`, net by net.

  The numbers are those of `probes.run` (statistics.layer_row) for the same
  batch: dead / dormant units, the mean active fraction per input, the
  linear-region fraction, the entropy rank of the post-activation features'
  covariance and of their uncentred Gram matrix, their srank, and the mean
  pairwise cosine of the inputs' post-activation vectors (positions of a conv
  layer pooled as samples).
  """
  shared: dict[tuple[str, int], list[int]] = {}  # (tap, own units) -> nets
  for i, net in enumerate(nets):
    for _, tap, c in net.layers:
      shared.setdefault((tap, c), []).append(i)
  found = {}
  for (tap, c), idx in shared.items():
    numbers, dead_GxC = _numbers(_own(sums["layers"][tap], idx, c), np.asarray(
        sums["examples"])[idx], threshold)
    for j, i in enumerate(idx):
      found[(i, tap)] = ({f: (int(v[j]) if f in INTS else float(v[j]))
                          for f, v in numbers.items()}, np.flatnonzero(dead_GxC[j]))
  return [Row(net.net, own, *found[(i, tap)])
          for i, net in enumerate(nets) for own, tap, _ in net.layers]


def _own(s: dict, idx: Sequence[int], c: int) -> dict:
  """A tap's sums of the nets `idx`, cut to their `c` own units."""
  out = {k: np.asarray(v)[idx] for k, v in s.items()}
  for k in ("count_C", "abs_C", "post_mean", "unit_sum"):
    out[k] = out[k][..., :c]
  out["post_m2"] = out["post_m2"][..., :c, :c]
  return out


def _numbers(s: dict, examples: Any, threshold: float) -> tuple[dict, np.ndarray]:
  """One layer's FIELDS for each of G nets ([G] each) and its dead units [G, C]."""
  samples = np.asarray(s["samples"], np.float64)
  examples = np.asarray(examples, np.float64)
  count_GxC = np.rint(np.asarray(s["count_C"])).astype(np.int64)
  dead_GxC, dormant_GxC, _ = statistics.unit_masks(count_GxC, s["abs_C"], samples, threshold)
  positions = int(round(samples[0] / max(examples[0], 1.0)))
  gram = statistics.gram(samples, s["post_mean"], s["post_m2"])
  linear_G = statistics.linear_fraction(np.asarray(s["all_B"], np.float64).mean(-1),
                                        s["pos_all"], samples, positions)
  numbers = {
      "units": np.full(samples.shape, count_GxC.shape[-1]),
      "dead": dead_GxC.sum(-1), "dead_frac": dead_GxC.mean(-1),
      "dormant": dormant_GxC.sum(-1), "dormant_frac": dormant_GxC.mean(-1),
      "active_mean": np.asarray(s["frac_B"], np.float64).mean(-1),
      "linear_frac": np.broadcast_to(linear_G, samples.shape),
      "entropy_rank": statistics.entropy_rank(statistics.covariance(samples, s["post_m2"])),
      "entropy_rank_gram": statistics.entropy_rank(gram),
      "cosine": statistics.mean_cosine(s["unit_sum"], s["nonzero"]),
      "srank": statistics.srank(gram, SRANK_DELTA),
  }
  return numbers, dead_GxC


class Turnover:
  """Each layer's dead units from probe to probe: newly dead and revived since
  the previous probe and since the first, and dead at every probe so far."""

  def __init__(self):
    self._seen: dict[tuple[int, str], tuple[frozenset, frozenset, frozenset]] = {}

  def update(self, net: int, layer: str, dead_units: Iterable[int]) -> dict[str, int]:
    """Records the dead units of (net, layer) at a probe; returns the counts (TURNOVER)."""
    dead = frozenset(int(u) for u in dead_units)
    first, previous, always = self._seen.get((net, layer), (dead, dead, dead))
    always = always & dead
    self._seen[(net, layer)] = (first, dead, always)
    return {"newly_dead": len(dead - previous), "revived": len(previous - dead),
            "newly_dead_since_first": len(dead - first),
            "revived_since_first": len(first - dead), "dead_every_probe": len(always)}

  @classmethod
  def replay(cls, rows: Iterable[dict]) -> "Turnover":
    """The record after the probe rows `rows` (of probes.jsonl, in file order)."""
    record = cls()
    for r in rows:
      if "dead_units" in r:
        record.update(int(r.get("net", 0)), r["layer"], r["dead_units"])
    return record
