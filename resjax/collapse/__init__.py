"""ReLU collapse (claims C1-C3, C7): embed a manifold, activate, try to get it back.

For one sweep cell (manifold dim d, activation, embedding dim n, seed): draw
T_NxD Gaussian, compute y = act(T x) for every point x, and measure four
relative errors sum ||x - x_rec||^2 / sum ||x||^2 of decoders that know T
and read y:

  pinv         x_rec = T^+ y, as in MobileNetV2 Fig. 1;
  refit        x_rec = the best linear map (least squares over the cell's
               points) applied to T^+ y: how much of the shape survives;
  span         least squares on the units on duty (where the activation has a
               usable inverse, `activations`): act^-1(y_i) = T_i x there, so
               with k < d units on duty this is x's projection onto the span
               of their rows, and x itself once d are on duty (it solves the
               first d). It ignores what the silent units say, so for ReLU
               (whose active set y shows) it is an upper bound on the
               information lost, not the information lost;
  constrained  the same least squares, also enforcing the silent units'
               constraints: T_i x' <= lo for units below the region (ReLU:
               T_i x' <= 0), T_i x' >= hi above it (ReLU6: >= 6). Among the x'
               that fit y it takes the one of least norm, as the span decoder
               does, so it is never worse than the span decoder (a QP per
               point: `decoders.constrained_errors` solves it in closed form
               where one direction is free, else `decoders.min_norm_qp`).

plus the fraction of points with fewer than d units on duty (collapsed), with
none (dead), the mean fraction on duty, and the fraction with all units on
duty (the layer is linear there, Lemma 1), and their Binomial theory.

Modules, in import order: `spec` (SweepSpec, the config's checks),
`embedding` (draws of T), `linalg`, `decoders` (span solutions, the
constrained QP and its float64 twin), `cells` (per-cell metric math),
`theory` (Binomial predictions), `memory` (estimate and check), `compiled`
(`sweep`: the whole sweep in one compiled program), `reference` (the float64
NumPy reference), `results` (summary rows, text table) and `job` (`run`:
lock, sweep, write one result set, report through `log`).
"""
from resjax.collapse.cells import cell_metrics, prefix_metrics
from resjax.collapse.compiled import compile_sweep, compiler_options, sweep
from resjax.collapse.decoders import QP_BATCH, QP_STEPS, QP_TOL, QP_WINDOW, least_norm_qp
from resjax.collapse.embedding import draw_embedding, embedding_key
from resjax.collapse.job import run
from resjax.collapse.linalg import GRAM_RTOL, PINV_RTOL
from resjax.collapse.memory import available_memory, check_memory, memory_estimate
from resjax.collapse.reference import NUMPY_FNS, figure_recoveries, recover, reference_metrics
from resjax.collapse.results import summarize, table
from resjax.collapse.spec import (ERRORS, METRICS, RULES, THEORY, SweepSpec, config_of,
                                  sequential_draws, spec_from_config, unused)

__all__ = [
    "ERRORS", "GRAM_RTOL", "METRICS", "NUMPY_FNS", "PINV_RTOL", "QP_BATCH", "QP_STEPS",
    "QP_TOL", "QP_WINDOW", "RULES", "SweepSpec", "THEORY", "available_memory", "cell_metrics",
    "check_memory", "compile_sweep", "compiler_options", "config_of", "draw_embedding",
    "embedding_key", "figure_recoveries", "least_norm_qp", "memory_estimate", "prefix_metrics",
    "recover", "reference_metrics", "run", "sequential_draws", "spec_from_config", "summarize",
    "sweep", "table", "unused",
]
