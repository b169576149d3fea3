"""Probes during training: every net of a run, every activation layer, one compiled call.

`program(groups, ...)` builds the call: each `Group` is a set of nets of one
compiled call that share a model at their own size; their parameters are cut
out of the padded, stacked state (`grid.padding.crop`) and
`compiled.batch_sums` runs vmapped over them on the fixed probe batch. So
every net is probed at its own size, with its own layer names, as
`probes.run` probes its single run (net k of a grid included), and a padded
unit or a gated-out block never counts as a dead unit.

`layer_rows` turns the fetched sums into per-layer numbers on the host in
float64 with the functions `probes.run` uses (`statistics`), vectorized over
each group's nets; `Turnover` follows each unit's dead mask from probe to
probe (rebuilt from the rows kept in probes.jsonl when a run resumes).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resjax import activations
from resjax.grid import padding
from resjax.probes import compiled, statistics

# The fields of a probe row (besides step, net, layer and the dead units' list).
FIELDS = ("units", "dead", "dead_frac", "dormant", "dormant_frac", "active_mean",
          "linear_frac", "entropy_rank", "srank")
TURNOVER = ("newly_dead", "revived", "newly_dead_since_first", "revived_since_first",
            "dead_every_probe")
# What TensorBoard gets of each row (probes.jsonl has every field).
SCALARS = ("dead_frac", "dormant_frac", "active_mean", "linear_frac", "entropy_rank", "srank")
SRANK_DELTA = 0.01  # Kumar et al. (2021)'s delta.
INTS = ("units", "dead", "dormant", "srank")  # Counts, written as integers.


@dataclasses.dataclass
class Group:
  """Nets of one compiled call with one model at their own size.

  `nets`: their indices in the grid (0 for a single run); `rows`: their
  positions in the call's stacked state (None: a single run's state, no net
  axis); `model`: the flax module at their size; `like`: their variables
  {'params', 'batch_stats'} as shapes; `layers`: the sown activation layers
  in forward order (recorded when the program is traced).
  """
  nets: tuple[int, ...]
  rows: tuple[int, ...] | None
  model: Any
  like: dict
  layers: list[str] = dataclasses.field(default_factory=list)


def own_variables(params: Any, batch_stats: Any, group: Group) -> dict:
  """The group's nets' variables at their own size, stacked along a leading axis."""
  tree = {"params": params, "batch_stats": batch_stats}
  if group.rows is None:
    tree = jax.tree.map(lambda a: a[None], tree)
    own = {k: tree[k] for k in group.like}
  else:
    rows = jnp.asarray(group.rows)
    taken = jax.tree.map(lambda a: jnp.take(a, rows, axis=0), tree)
    own = padding.crop(taken, group.like, lead=1)
  return {k: v for k, v in own.items() if k == "params" or v}


def program(groups: Sequence[Group], preprocess: Callable,
            replicated: jax.sharding.Sharding) -> Callable:
  """`probe(params, batch_stats, inputs, labels)` -> one dict of sums per group
  (`compiled.batch_sums` of each net, a leading net axis), jitted; every
  output is replicated."""

  def one_group(group: Group, params, batch_stats, inputs, labels):
    variables = jax.lax.with_sharding_constraint(
        own_variables(params, batch_stats, group), replicated)
    mask = jnp.ones(labels.shape, jnp.float32)
    act = activations.get(group.model.activation)

    def net(v):
      sums = compiled.batch_sums(v, inputs, labels, mask, model=group.model, act=act,
                                 preprocess=preprocess)
      group.layers[:] = list(sums["layers"])  # Forward order, seen while tracing.
      del sums["blocks"]
      return sums

    return jax.vmap(net)(variables)

  def probe(params, batch_stats, inputs, labels):
    return tuple(one_group(g, params, batch_stats, inputs, labels) for g in groups)

  return jax.jit(probe, out_shardings=replicated)


@dataclasses.dataclass
class Row:
  """One net's numbers for one layer at a probe."""
  net: int
  layer: str
  fields: dict
  dead_units: np.ndarray


def layer_rows(fetched: Sequence[dict], groups: Sequence[Group], threshold: float) -> list[Row]:
  """The rows of a probe from the fetched sums of `program` (one per group).

  The numbers are those of `probes.run` (statistics.layer_row) for the same
  batch: dead / dormant units, the mean active fraction per input, the
  linear-region fraction, and the entropy rank and srank of the
  post-activation features (covariance and Gram matrix; positions of a conv
  layer pooled as samples).
  """
  out = []
  for group, sums in zip(groups, fetched):
    per_layer = {name: _numbers(sums["layers"][name], sums["examples"], threshold)
                 for name in group.layers}
    for i, k in enumerate(group.nets):
      for name, (numbers, dead_GxC) in per_layer.items():
        fields = {f: (int(v[i]) if f in INTS else float(v[i])) for f, v in numbers.items()}
        out.append(Row(k, name, fields, np.flatnonzero(dead_GxC[i])))
  return sorted(out, key=lambda r: r.net)  # Stable: each net's layers in forward order.


def _numbers(s: dict, examples: Any, threshold: float) -> tuple[dict, np.ndarray]:
  """One layer's FIELDS for each net of a group ([G] each) and its dead units [G, C]."""
  samples = np.asarray(s["samples"], np.float64)
  examples = np.asarray(examples, np.float64)
  count_GxC = np.rint(np.asarray(s["count_C"])).astype(np.int64)
  dead_GxC, dormant_GxC, _ = statistics.unit_masks(count_GxC, s["abs_C"], samples, threshold)
  positions = int(round(samples[0] / max(examples[0], 1.0)))
  linear_G = statistics.linear_fraction(np.asarray(s["all_B"], np.float64).mean(-1),
                                        s["pos_all"], samples, positions)
  numbers = {
      "units": np.full(samples.shape, count_GxC.shape[-1]),
      "dead": dead_GxC.sum(-1), "dead_frac": dead_GxC.mean(-1),
      "dormant": dormant_GxC.sum(-1), "dormant_frac": dormant_GxC.mean(-1),
      "active_mean": np.asarray(s["frac_B"], np.float64).mean(-1),
      "linear_frac": np.broadcast_to(linear_G, samples.shape),
      "entropy_rank": statistics.entropy_rank(statistics.covariance(samples, s["post_m2"])),
      "srank": statistics.srank(statistics.gram(samples, s["post_mean"], s["post_m2"]),
                                SRANK_DELTA),
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
