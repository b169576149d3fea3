"""The sweep's spec (`SweepSpec`): what `sweep` needs from a config, checked field by field.

A SweepSpec is not a training grid: it names the cells (manifold dim d,
activation, embedding dim n, seed) of one collapse sweep. ERRORS, METRICS
and THEORY name what each cell measures and predicts, in output order.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from resjax import activations, errors, manifolds

ERRORS = ("pinv", "refit", "span", "constrained")
METRICS = ("pinv_error", "refit_error", "span_error", "constrained_error", "collapsed_frac",
           "dead_frac", "active_frac", "linear_frac")
THEORY = ("collapsed_frac_theory", "dead_frac_theory", "linear_frac_theory",
          "span_error_theory")


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
  names = names_of(config["activations"], "activations")
  errors.check(bool(names), "activations is empty; choose from: " + ", ".join(activations.names()))
  for name in names:
    errors.choice("activations", name, activations.names())
  seeds, seed, chunk = config["seeds"], config["seed"], config["chunk"]
  errors.check(isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1,
               f"seeds={seeds!r} must be an integer >= 1")
  errors.check(isinstance(seed, int) and seed >= 0, f"seed={seed!r} must be an integer >= 0")
  errors.check(isinstance(chunk, int) and chunk >= 0,
               f"chunk={chunk!r} must be an integer >= 0 (0 = no chunking)")
  m = config["manifold"]
  ds = ints_of(m["dims"], "manifold.dims", "manifold dimension d")
  manifolds.check(m["name"], ds, m["points"])
  errors.check(float(m["turns"]) > 0, f"manifold.turns={m['turns']!r} must be > 0")
  scale = m.get("scale", 1.0)
  errors.check(isinstance(scale, (int, float)) and not isinstance(scale, bool)
               and 0 < scale < math.inf, f"manifold.scale={scale!r} must be a number > 0")
  return SweepSpec(activations=tuple(dict.fromkeys(names)),
                   dims=ints_of(config["dims"], "dims", "embedding dimension n"),
                   seeds=seeds, seed=seed, manifold=m["name"], ds=ds, points=m["points"],
                   turns=float(m["turns"]), chunk=chunk, scale=float(scale))


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
