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

# The sweep config's scalar fields (the lists are parsed by `names_of` / `ints_of`;
# the manifold's name and size are `manifolds.RULES`, checked by `manifolds.check`).
RULES = {
    "seeds": schema.POSITIVE,
    "seed": schema.SEED,
    "chunk": schema.Int(0, fix="use an integer >= 0 (0 = no chunking)"),
    "manifold.turns": schema.Float(0, 1e6, low_open=True),
    "manifold.scale": schema.Float(*SCALE_RANGE, optional=True, fix=(
        f"use a number in [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}] (outside it the scaled "
        "points' float32 sums of squares underflow or overflow)")),
}


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
  chunk: int = 8  # draws of T (d, seed) per vmapped chunk; 0 = all at once
  scale: float = 1.0  # multiplier of the manifold's points

  @property
  def cells(self) -> int:
    """Sweep cells (d, activation, n, seed)."""
    return len(self.ds) * len(self.activations) * len(self.dims) * self.seeds

  @property
  def draws(self) -> int:
    """Draws of T, one per (d, seed): each serves every activation and n."""
    return len(self.ds) * self.seeds


def names_of(value: Any, field: str) -> tuple[str, ...]:
  """A tuple of names from a tuple or a comma-separated string."""
  if isinstance(value, str):
    value = (value,)
  out = []
  for item in value:
    errors.check(isinstance(item, str), f"{field} contains {item!r}; give names like relu,tanh")
    out.extend(part.strip() for part in item.split(",") if part.strip())
  return tuple(out)


def ints_of(value: Any, field: str, what: str) -> tuple[int, ...]:
  """A sorted tuple of distinct integers >= 1 from ints or a comma-separated string."""
  if isinstance(value, (int, str)):
    value = (value,)
  out = []
  for item in value:
    parts = item.split(",") if isinstance(item, str) else [item]
    for part in parts:
      try:
        number = int(part)
        ok = not isinstance(part, (bool, float)) and number >= 1
      except (TypeError, ValueError):
        ok = False
      errors.check(ok, f"{field} contains {part!r}; each {what} must be an integer >= 1")
      out.append(number)
  errors.check(bool(out), f"{field} is empty; give at least one {what} >= 1")
  return tuple(sorted(set(out)))


def spec_from_config(config: Any) -> SweepSpec:
  """Validates a collapse config (ConfigDict, dict or SweepSpec); ConfigError on bad input."""
  if isinstance(config, SweepSpec):
    config = config_of(config)
  errors.check(hasattr(config, "keys"), f"config={config!r} is not allowed; pass a collapse "
               "config (a ConfigDict or dict, see configs/collapse.py) or a SweepSpec")
  names = names_of(config["activations"], "activations")
  errors.check(bool(names), "activations is empty; choose from: " + ", ".join(activations.names()))
  for name in names:
    errors.choice("activations", name, activations.names())
  schema.check(config, RULES)
  seeds, seed, chunk = config["seeds"], config["seed"], config["chunk"]
  m = config["manifold"]
  ds = ints_of(m["dims"], "manifold.dims", "manifold dimension d")
  manifolds.check(m["name"], ds, m["points"])
  scale = m.get("scale", 1.0)
  return SweepSpec(activations=tuple(dict.fromkeys(names)),
                   dims=ints_of(config["dims"], "dims", "embedding dimension n"),
                   seeds=int(seeds), seed=int(seed), manifold=m["name"], ds=ds,
                   points=int(m["points"]), turns=float(m["turns"]), chunk=int(chunk),
                   scale=float(scale))


def config_of(spec: SweepSpec) -> dict[str, Any]:
  """The config dict that `spec_from_config` turns into `spec`."""
  return {"activations": spec.activations, "dims": spec.dims, "seeds": spec.seeds,
          "seed": spec.seed, "chunk": spec.chunk,
          "manifold": {"name": spec.manifold, "dims": spec.ds, "points": spec.points,
                       "turns": spec.turns, "scale": spec.scale}}


def figure_of(config: Any) -> tuple[str, tuple[int, ...]]:
  """The figure group's activation and embedding dims, checked; ConfigError on bad input."""
  fig = config["figure"]
  name = errors.choice("figure.activation", fig["activation"], activations.names())
  return name, ints_of(fig["dims"], "figure.dims", "embedding dimension n")
