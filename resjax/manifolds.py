"""Point clouds for the collapse experiment, as float32 NumPy arrays [P, d].

`spiral` is the 2-D spiral of MobileNetV2 Fig. 1. `ball` and `sphere` fill
(or cover the surface of) the unit ball in d dimensions, so the input spans
all d directions and claim C3 can be swept over d. `scale` multiplies the
points (every cloud lies within radius 1 before it), so saturating
activations such as ReLU6 can be pushed past their bound.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from resjax import errors, schema

NAMES = ("spiral", "ball", "sphere")


def spiral(points: int, turns: float = 3.0) -> np.ndarray:
  """Archimedean spiral x_Px2 with radius growing from 0 to 1 over `turns` turns.

  Points are evenly spaced in the spiral's parameter and sit at the centres of
  `points` equal steps, so none lies on the origin (where every unit is silent).
  """
  t_P = (np.arange(points) + 0.5) / points
  angle_P = 2 * np.pi * turns * t_P
  return np.stack([t_P * np.cos(angle_P), t_P * np.sin(angle_P)], -1).astype(np.float32)


def sphere(points: int, d: int, seed: int = 0) -> np.ndarray:
  """Points x_PxD uniform on the unit sphere in d dimensions (seeded)."""
  g_PxD = np.random.default_rng([seed, d]).standard_normal((points, d))
  return (g_PxD / np.linalg.norm(g_PxD, axis=-1, keepdims=True)).astype(np.float32)


def ball(points: int, d: int, seed: int = 0) -> np.ndarray:
  """Points x_PxD uniform in the unit ball in d dimensions (seeded)."""
  rng = np.random.default_rng([seed, d, 1])
  g_PxD = rng.standard_normal((points, d))
  radius_P = rng.uniform(size=points) ** (1.0 / d)
  return (g_PxD / np.linalg.norm(g_PxD, axis=-1, keepdims=True)
          * radius_P[:, None]).astype(np.float32)


# The manifold's fields (`config.manifold` of a sweep), checked by `check`.
RULES = {"name": schema.Choice(NAMES), "points": schema.POSITIVE}
DIM = schema.Int(1, fix="each d must be an integer >= 1")


def check(name: str, ds: Sequence[int], points: int) -> None:
  """Raises a ConfigError for an unknown manifold or sizes it cannot have."""
  schema.check({"name": name, "points": points}, RULES, prefix="manifold.")
  errors.check(len(ds) >= 1, "manifold.dims=() is empty; give at least one dimension d >= 1")
  for d in ds:
    schema.check_value("manifold.dims", d, DIM)
  if name == "spiral":
    errors.check(tuple(ds) == (2,),
                 f"manifold.dims={tuple(ds)} but the spiral is 2-D: use manifold.dims=2, "
                 "or manifold.name=ball or sphere to sweep d")


def sample(name: str, points: int, d: int, *, seed: int = 0, turns: float = 3.0,
           scale: float = 1.0) -> np.ndarray:
  """The point cloud x_PxD called `name` in d dimensions, its points multiplied by `scale`."""
  check(name, (d,), points)
  if name == "spiral":
    x_PxD = spiral(points, turns)
  else:
    x_PxD = {"ball": ball, "sphere": sphere}[name](points, d, seed)
  return x_PxD if scale == 1.0 else (x_PxD * np.float32(scale)).astype(np.float32)


def padded(name: str, points: int, ds: Sequence[int], *, seed: int = 0,
           turns: float = 3.0, scale: float = 1.0) -> np.ndarray:
  """One cloud per d, stacked as x_KxPxDmax with zero coordinates beyond each d."""
  check(name, ds, points)
  x_KxPxD = np.zeros((len(ds), points, max(ds)), np.float32)
  for k, d in enumerate(ds):
    x_KxPxD[k, :, :d] = sample(name, points, d, seed=seed, turns=turns, scale=scale)
  return x_KxPxD
