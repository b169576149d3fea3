"""Host-side probe statistics in float64: ranks, dormant scores, per-layer accumulators, rows.

Nothing here runs on a device: `probe.py` hands each batch's sums to a
`LayerAccumulator`, and `layer_row` turns one into the numbers of probes.csv.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

HIST_BINS = 20

def participation_ratio(cov_CxC: np.ndarray) -> float:
  """Participation ratio (sum l)^2 / sum l^2 of the covariance eigenvalues l.

  Equals tr(C)^2 / ||C||_F^2, so no eigendecomposition is needed. It is d for
  isotropic features in d dimensions and k for features spanning k equal axes;
  between those it weighs large eigenvalues more than `entropy_rank` does.
  """
  cov_CxC = np.asarray(cov_CxC, np.float64)
  trace = float(np.trace(cov_CxC))
  frob2 = float(np.sum(cov_CxC * cov_CxC))
  return trace * trace / frob2 if frob2 > 0 else 0.0


def entropy_rank(cov_CxC: np.ndarray) -> float:
  """Roy & Vetterli's effective rank exp(-sum p log p), p = l / sum l, of the
  eigenvalues l of a (symmetric, positive semi-definite) covariance.

  d for isotropic features in d dimensions, k for k equal axes, and never
  below the participation ratio (Shannon vs order-2 Renyi entropy of p).
  Eigenvalues below 0 (round-off) count as 0; an all-zero matrix gives 0.
  """
  lam = np.clip(np.linalg.eigvalsh(np.asarray(cov_CxC, np.float64)), 0.0, None)
  total = lam.sum()
  if total <= 0:
    return 0.0
  p = lam[lam > 0] / total
  return float(np.exp(-np.sum(p * np.log(p))))


def dormant_scores(mean_abs_C: np.ndarray) -> np.ndarray:
  """ReDo score per unit: mean |activation| over the layer's average of it."""
  mean_abs_C = np.asarray(mean_abs_C, np.float64)
  layer_mean = mean_abs_C.mean() if mean_abs_C.size else 0.0
  if layer_mean <= 0:
    return np.zeros_like(mean_abs_C)
  return mean_abs_C / layer_mean


class Moments:
  """Running mean and centred second moment, merged batch by batch (Chan et al.)."""

  def __init__(self, c: int):
    self.n = 0.0
    self.mean = np.zeros(c)
    self.m2 = np.zeros((c, c))

  def add(self, n_b: float, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
    if n_b <= 0:
      return
    n = self.n + n_b
    delta = np.asarray(mean_b, np.float64) - self.mean
    self.m2 += np.asarray(m2_b, np.float64) + np.outer(delta, delta) * (self.n * n_b / n)
    self.mean += delta * (n_b / n)
    self.n = n

  def cov(self) -> np.ndarray:
    return self.m2 / max(self.n - 1.0, 1.0)


class LayerAccumulator:
  """One activation layer's sums over the batches: on-duty counts, |activation|, moments."""

  def __init__(self, c: int, positions: int):
    self.units, self.positions = c, positions
    self.count = np.zeros(c, np.int64)
    self.abs_sum = np.zeros(c)
    self.samples = 0.0
    self.pos_all = 0.0
    self.frac: list[np.ndarray] = []
    self.all: list[np.ndarray] = []
    self.pre, self.post = Moments(c), Moments(c)

  def add(self, s: Mapping[str, np.ndarray], valid_B: np.ndarray) -> None:
    self.count += np.rint(s["count_C"]).astype(np.int64)
    self.abs_sum += s["abs_C"]
    self.samples += float(s["samples"])
    self.pos_all += float(s["pos_all"])
    self.frac.append(np.asarray(s["frac_B"], np.float64)[valid_B])
    self.all.append(np.asarray(s["all_B"], bool)[valid_B])
    self.pre.add(float(s["samples"]), s["pre_mean"], s["pre_m2"])
    self.post.add(float(s["samples"]), s["post_mean"], s["post_m2"])


def layer_row(index: int, name: str, acc: LayerAccumulator,
              threshold: float) -> tuple[dict, np.ndarray]:
  """The probes.csv row of one activation layer and its per-input active fractions."""
  frac_N = np.concatenate(acc.frac) if acc.frac else np.zeros(0)
  all_N = np.concatenate(acc.all) if acc.all else np.zeros(0, bool)
  dead_C = acc.count == 0
  mean_abs_C = acc.abs_sum / max(acc.samples, 1.0)
  scores_C = dormant_scores(mean_abs_C)
  hist, _ = np.histogram(frac_N, bins=HIST_BINS, range=(0.0, 1.0))
  q = (np.quantile(frac_N, [0.025, 0.5, 0.975]) if frac_N.size else np.full(3, np.nan))
  linear_input = float(all_N.mean()) if all_N.size else float("nan")
  linear_position = acc.pos_all / max(acc.samples, 1.0)
  pre_cov, post_cov = acc.pre.cov(), acc.post.cov()
  row = {
      "index": index,
      "layer": name,
      "units": acc.units,
      "positions": acc.positions,
      "dead": int(dead_C.sum()),
      "dead_frac": float(dead_C.mean()),
      "dormant": int((scores_C <= threshold).sum()),
      "dormant_frac": float((scores_C <= threshold).mean()),
      "active_mean": float(frac_N.mean()) if frac_N.size else float("nan"),
      "active_std": float(frac_N.std()) if frac_N.size else float("nan"),
      "active_min": float(frac_N.min()) if frac_N.size else float("nan"),
      "active_p025": float(q[0]),
      "active_median": float(q[1]),
      "active_p975": float(q[2]),
      "active_max": float(frac_N.max()) if frac_N.size else float("nan"),
      "linear_frac": linear_position if acc.positions > 1 else linear_input,
      "linear_frac_input": linear_input,
      "linear_frac_position": linear_position,
      "participation_pre": participation_ratio(pre_cov),
      "participation_post": participation_ratio(post_cov),
      "entropy_rank_pre": entropy_rank(pre_cov),
      "entropy_rank_post": entropy_rank(post_cov),
      "dead_units": np.flatnonzero(dead_C).tolist(),
      "unit_active_rate": (acc.count / max(acc.samples, 1.0)).tolist(),
      "dormant_score": scores_C.tolist(),
      "active_hist": hist.tolist(),
  }
  return row, frac_N


# Per-layer fields that are lists (kept in JSON, left out of CSV rows).
LIST_FIELDS = ("dead_units", "unit_active_rate", "dormant_score", "active_hist")


def table_rows(results: Mapping[str, Any], **head: Any) -> list[dict]:
  """CSV rows from `Results.to_dict()` (or a run of probes.json), `head` first.

  One row per activation layer, block and weight layer ('kind'); the block
  name goes in the 'layer' column; per-unit lists are left out.
  """
  out = []
  for kind, group in (("activation", "layers"), ("block", "blocks"), ("weights", "weights")):
    for row in results[group]:
      flat = {("layer" if k == "block" else k): v for k, v in row.items()
              if k not in LIST_FIELDS}
      out.append({**head, "kind": kind, **flat})
  return out


@dataclasses.dataclass
class Results:
  """What the probes found; `rows()` for CSV, `to_dict()` for JSON."""
  layers: list[dict]       # one per sown pre-activation, forward order
  blocks: list[dict]       # one per residual / plain block
  weights: list[dict]      # one per weight layer (gradient norms)
  summary: dict            # examples, accuracy, loss, activation, threshold
  active_fraction: dict[str, np.ndarray]  # layer -> per-input active fraction [N]

  def layer(self, name: str) -> dict:
    for row in self.layers:
      if row["layer"] == name:
        return row
    raise KeyError(name)

  def rows(self, run: str = "run") -> list[dict]:
    """Flat rows, one per layer: kind is 'activation', 'block' or 'weights'."""
    return table_rows(self.to_dict(), run=run)

  def to_dict(self) -> dict:
    return {"summary": self.summary, "layers": self.layers, "blocks": self.blocks,
            "weights": self.weights}

  def table(self) -> str:
    """A fixed-width per-layer summary for stdout.

    linear: per input (dense) or per (input, position) (conv); PR: participation
    ratio; erank: entropy effective rank; both before > after the activation.
    """
    head = (f"{'layer':<28} {'units':>5} {'dead':>6} {'dorm':>6} {'active':>13} "
            f"{'linear':>7} {'PR pre>post':>13} {'erank pre>post':>14}")
    lines = [head, "-" * len(head)]
    for r in self.layers:
      lines.append(
          f"{r['layer'][-28:]:<28} {r['units']:>5} {r['dead_frac']:>6.3f} "
          f"{r['dormant_frac']:>6.3f} {r['active_mean']:>6.3f}+-{r['active_std']:<5.3f} "
          f"{r['linear_frac']:>7.3f} "
          f"{r['participation_pre']:>6.2f}>{r['participation_post']:<6.2f} "
          f"{r['entropy_rank_pre']:>7.2f}>{r['entropy_rank_post']:<6.2f}")
    for r in self.blocks:
      lines.append(f"{'block ' + r['block']:<28} shortcut energy {r['shortcut_frac']:.3f}")
    s = self.summary
    split = f" of the {s['split']} split" if s.get("split") else ""
    lines.append(f"{s['examples']} examples{split}, accuracy {s['accuracy']:.4f}, "
                 f"loss {s['loss']:.4f}")
    return "\n".join(lines)


