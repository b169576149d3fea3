"""The ReLU-collapse sweep (MobileNetV2 Fig. 1 and Appendix A; claims C1-C3, C7).

  python -m launch.sweep --workdir=/tmp/collapse
  python -m launch.sweep --workdir=/tmp/collapse --config.dims=2,3,5,15,30 --config.seeds=256
  python -m launch.sweep --config=configs/collapse.py:ball --workdir=/tmp/collapse_ball

Expected (default, a 3-turn spiral, 64 seeds): for ReLU the refit error falls
from about 0.48 at n=2 to 0.14 at n=15 and 0.08 at n=30; the span decoder
loses 0.51 / 0.31 / 0.11 at n = 2 / 3 / 5 (theory 0.50 / 0.31 / 0.11) and the
constrained decoder 0.47 / 0.25 / 0.07; the collapsed fraction follows
P(Binomial(n, 1/2) < 2) (0.75 at n=2, 0.19 at n=5) within its 95% interval;
identity has ~0 error in all four measures for n >= 2. About 10 s on a
2-core Intel Xeon at load 0.7 with the compilation cache off (compile 3.2 s,
run 2.5 s; 2026-12-05); 8.7 s on a slower 2-core AMD EPYC with an empty
cache and 5.4 s on a rerun (2026-12-07, whole processes, docs/performance.md).

`--config.manifold.scale=20` pushes the spiral (radius <= 1) out to radius
20, where ReLU6 saturates (z >= 6) and tanh flattens out (README).

Variants (`:name`): `ball` / `sphere` sweep the manifold dimension d
(uniform in / on the unit ball in d dimensions), so collapse can be read
against n/d (C3); `quick` is a seconds-long smoke run.
"""
import ml_collections

from resjax import activations, errors


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Base PRNG seed: T for seed s is drawn from fold_in(key(seed), s).
  config.activations = activations.names()  # Activation names, e.g. relu,tanh.
  config.dims = tuple(range(1, 65))  # Embedding dimensions n, e.g. 2,3,5,15,30.
  config.seeds = 64  # Random embeddings T per (d, activation, n).
  # Draws of T per call; 0 = all in one call. On a CPU they run one after
  # another inside the call; on accelerators they are vmapped (a chunk then
  # bounds memory). Progress is reported per call.
  config.chunk = 2

  config.manifold = ml_collections.ConfigDict()
  config.manifold.name = "spiral"  # spiral (2-D), ball or sphere (d-dimensional).
  config.manifold.dims = (2,)  # Manifold dimensions d (the spiral is 2-D only).
  config.manifold.points = 1000  # Points on the manifold.
  config.manifold.turns = 3.0  # Turns of the spiral.
  config.manifold.scale = 1.0  # Multiplier of the points (all within radius 1 at scale 1).

  config.figure = ml_collections.ConfigDict()
  config.figure.activation = "relu"  # Activation of the Fig. 1 panels.
  config.figure.dims = (2, 3, 5, 15, 30)  # Embedding dims of the Fig. 1 panels.

  if arg in ("ball", "sphere"):
    config.manifold.name = arg
    config.manifold.dims = (1, 2, 3, 4, 6, 8)
  elif arg == "quick":
    config.dims = (1, 2, 3, 5, 8, 15, 30)
    config.seeds = 8
    config.manifold.points = 300
  elif arg:
    raise errors.ConfigError(
        f"config variant {arg!r} is not known; use configs/collapse.py[:ball|:sphere|:quick]")
  return config
