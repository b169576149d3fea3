"""The sweep's spec (`SweepSpec`): what `sweep` needs from a config, checked field by field.

A SweepSpec is not a training grid: it names the cells (manifold dim d,
activation, embedding dim n, seed) of one collapse sweep. ERRORS, METRICS
and THEORY name what each cell measures and predicts, in output order.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from resjax import activations, errors, manifolds, schema

ERRORS = ("pinv", "refit", "span", "constrained")
METRICS = ("pinv_error", "refit_error", "span_error", "constrained_error", "collapsed_frac",
           "dead_frac", "active_frac", "linear_frac")
THEORY = ("collapsed_frac_theory", "dead_frac_theory", "linear_frac_theory",
          "span_error_theory")

# Where the scaled points' float32 sums of squares stay finite and normal, with
# margin: measured without NaN from 1e-18 to 1e16; NaN at 1e-20 and 1e19.
SCALE_RANGE = (1e-12, 1e12)

_ACTIVATION = schema.Choice(activations.names)
_DIM = schema.Int(1, fix="use an integer >= 1")


def sequential_draws(platform: str) -> bool:
  """Whether a chunk's draws run one after another (`lax.map`), not vmapped, on `platform`.

  On the CPU they do. The default sweep's program (2-core AMD EPYC, one
  process each way, twice, alternated; `compile_sweep`, then three runs, in
  a one-off script): compiled in 4.6 s against 5.9 s vmapped and ran in
  1.8 s against 2.35 s, the same numbers within float32 rounding. Vmapped,
  XLA batches the decoder's loops and conditionals (every carried value
  selected per draw, the QP solver run whenever any draw needs it). Accelerators keep the
  vmapped chunk, which fills them with work (not measured there). A chunk
  then bounds the memory of its draws only where they are vmapped
  (`memory_estimate`).
  """
  return platform == "cpu"


def _list(item: schema.Rule, **kw) -> schema.Rule:
  """A non-empty list of distinct values, or the same as comma-separated text."""
  return schema.List(item, split=True, nonempty=True, unique=True, **kw)


# Every field of a sweep config, with its rule (manifold.name / points are
# `manifolds.RULES`; what one field cannot say, `manifolds.check` adds).
RULES = {
    "activations": _list(_ACTIVATION),
    "dims": _list(_DIM),
    "seeds": schema.POSITIVE,
    "seed": schema.SEED,
    "chunk": schema.Int(0, fix="use an integer >= 0 (0 = no chunking)"),
    **{f"manifold.{k}": r for k, r in manifolds.RULES.items()},
    "manifold.dims": _list(manifolds.DIM),
    "manifold.turns": schema.Float(0, 1e6, low_open=True, optional=True),
    "manifold.scale": schema.Float(*SCALE_RANGE, optional=True, fix=(
        f"use a number in [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}] (outside it the scaled "
        "points' float32 sums of squares underflow or overflow)")),
    "figure.activation": dataclasses.replace(_ACTIVATION, optional=True),
    "figure.dims": _list(_DIM, optional=True),
}


def unused(config: Any) -> dict[str, str]:
  """Fields of a sweep config its other choices make unused: dotted field -> why."""
  name = schema.get(config, "manifold.name")
  if name in manifolds.NAMES and name != "spiral":
    return {"manifold.turns": f"manifold.name={name!r} has no turns (only the spiral)"}
  return {}


@dataclasses.dataclass(frozen=True)
class SweepSpec:
  """A validated sweep spec (what `sweep` needs from a config)."""
  activations: tuple[str, ...]
  dims: tuple[int, ...]  # embedding dimensions n
  seeds: int
  seed: int = 0
  manifold: str = "spiral"
  ds: tuple[int, ...] = (2,)  # manifold (input) dimensions d
  points: int = 1000
  turns: float = 3.0
  chunk: int = 2  # draws of T (d, seed) per call (`sequential_draws`); 0 = all at once
  scale: float = 1.0  # multiplier of the manifold's points

  @property
  def cells(self) -> int:
    """Sweep cells (d, activation, n, seed)."""
    return len(self.ds) * len(self.activations) * len(self.dims) * self.seeds

  @property
  def draws(self) -> int:
    """Draws of T, one per (d, seed): each serves every activation and n."""
    return len(self.ds) * self.seeds


def _names(value: Any) -> tuple[str, ...]:
  return tuple(schema.entries(value, split=True))


def _ints(value: Any) -> tuple[int, ...]:
  """A checked list field's integers, sorted."""
  return tuple(sorted(int(v) for v in schema.entries(value, split=True)))


def spec_from_config(config: Any) -> SweepSpec:
  """Validates a collapse config (ConfigDict, dict or SweepSpec); ConfigError on bad input."""
  if isinstance(config, SweepSpec):
    config = config_of(config)
  schema.require_config(config, "a collapse config (a ConfigDict or dict, see "
                        "configs/collapse.py) or a SweepSpec")
  schema.check(config, RULES)
  extra = schema.uncovered(config, RULES)
  errors.check(not extra, f"config.{extra[0] if extra else ''} is not a field of a sweep "
               "config; remove it (fields: configs/collapse.py)")
  m = config["manifold"]
  ds = _ints(m["dims"])
  manifolds.check(m["name"], ds, m["points"])
  return SweepSpec(activations=_names(config["activations"]), dims=_ints(config["dims"]),
                   seeds=int(config["seeds"]), seed=int(config["seed"]), manifold=m["name"],
                   ds=ds, points=int(m["points"]), turns=float(m.get("turns", 3.0)),
                   chunk=int(config["chunk"]), scale=float(m.get("scale", 1.0)))


def config_of(spec: SweepSpec) -> dict[str, Any]:
  """The config dict that `spec_from_config` turns into `spec`."""
  return {"activations": spec.activations, "dims": spec.dims, "seeds": spec.seeds,
          "seed": spec.seed, "chunk": spec.chunk,
          "manifold": {"name": spec.manifold, "dims": spec.ds, "points": spec.points,
                       "turns": spec.turns, "scale": spec.scale}}


def figure_of(config: Any) -> tuple[str, tuple[int, ...]]:
  """The figure group's activation and embedding dims, checked; ConfigError on bad input."""
  schema.check(config, {k: dataclasses.replace(r, optional=False) for k, r in RULES.items()
                        if k.startswith("figure.")})
  return config["figure"]["activation"], _ints(config["figure"]["dims"])
