"""Host-side probe statistics in float64: ranks, dormant scores, per-layer accumulators, rows.

Nothing here runs on a device: `probe.py` hands each batch's sums to a
`LayerAccumulator`, and `layer_row` turns one into the numbers of probes.csv.
The numbers (ranks, ReDo scores, dead and dormant masks, the linear-region
fraction) take stacks too (leading axes, e.g. the nets of a grid), so the
probes during training (`probes.training`) compute them with the same code.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

HIST_BINS = 20

def _scalar(x: np.ndarray) -> Any:
  """A 0-d result as a Python float, anything larger as it is."""
  return float(x) if np.ndim(x) == 0 else x


def participation_ratio(cov_CxC: np.ndarray) -> Any:
  """Participation ratio (sum l)^2 / sum l^2 of the covariance eigenvalues l.

  Equals tr(C)^2 / ||C||_F^2, so no eigendecomposition is needed. It is d for
  isotropic features in d dimensions and k for features spanning k equal axes;
  between those it weighs large eigenvalues more than `entropy_rank` does.
  A stack [..., C, C] gives one number per matrix.
  """
  cov_CxC = np.asarray(cov_CxC, np.float64)
  trace = np.trace(cov_CxC, axis1=-2, axis2=-1)
  frob2 = np.sum(cov_CxC * cov_CxC, axis=(-2, -1))
  return _scalar(np.where(frob2 > 0, trace * trace / np.where(frob2 > 0, frob2, 1.0), 0.0))


def _spectrum(sym_CxC: np.ndarray) -> np.ndarray:
  """Eigenvalues of symmetric positive semi-definite matrices [..., C], below 0 (round-off) as 0."""
  return np.clip(np.linalg.eigvalsh(np.asarray(sym_CxC, np.float64)), 0.0, None)


def entropy_rank(cov_CxC: np.ndarray) -> Any:
  """Roy & Vetterli's effective rank exp(-sum p log p), p = l / sum l, of the
  eigenvalues l of a (symmetric, positive semi-definite) covariance.

  d for isotropic features in d dimensions, k for k equal axes, and never
  below the participation ratio (Shannon vs order-2 Renyi entropy of p).
  Eigenvalues below 0 (round-off) count as 0; an all-zero matrix gives 0.
  A stack [..., C, C] gives one number per matrix.
  """
  lam = _spectrum(cov_CxC)
  total = lam.sum(-1, keepdims=True)
  p = lam / np.where(total > 0, total, 1.0)
  plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
  return _scalar(np.where(total[..., 0] > 0, np.exp(-plogp.sum(-1)), 0.0))


def srank(gram_CxC: np.ndarray, delta: float = 0.01) -> Any:
  """Kumar et al. (2021)'s srank: the smallest k whose k largest singular values
  of a feature matrix F [N, C] hold at least 1 - delta of their sum.

  Takes the Gram matrix F^T F (its eigenvalues are the squared singular
  values), so features summed over batches give the same answer. An all-zero
  matrix gives 0. A stack [..., C, C] gives one number per matrix.
  """
  sigma = np.sqrt(_spectrum(gram_CxC))[..., ::-1]
  total = sigma.sum(-1, keepdims=True)
  held = np.cumsum(sigma, -1) >= (1.0 - delta) * total
  k = np.where(total[..., 0] > 0, np.argmax(held, -1) + 1, 0)
  return int(k) if np.ndim(k) == 0 else k


def mean_cosine(unit_sum_C: np.ndarray, nonzero: Any) -> Any:
  """The mean cosine similarity over the pairs i != j of M nonzero feature vectors,
  from the sum S of their unit vectors: (|S|^2 - M) / (M (M - 1)) (uncentred: 1 when
  all point the same way; NaN below two vectors). A stack [..., C] gives one per row."""
  s = np.asarray(unit_sum_C, np.float64)
  m = np.asarray(nonzero, np.float64)
  pairs = m * (m - 1.0)
  return _scalar(np.where(pairs > 0, (np.sum(s * s, -1) - m) / np.where(pairs > 0, pairs, 1.0),
                          np.nan))


def covariance(n: Any, m2_CxC: np.ndarray) -> np.ndarray:
  """The sample covariance from a count and a centred second moment ([..., C, C])."""
  n = np.asarray(n, np.float64)[..., None, None]
  return np.asarray(m2_CxC, np.float64) / np.maximum(n - 1.0, 1.0)


def gram(n: Any, mean_C: np.ndarray, m2_CxC: np.ndarray) -> np.ndarray:
  """F^T F of the features F from their count, mean and centred second moment."""
  n = np.asarray(n, np.float64)[..., None, None]
  mean_C = np.asarray(mean_C, np.float64)
  return np.asarray(m2_CxC, np.float64) + n * (mean_C[..., :, None] * mean_C[..., None, :])


def dormant_scores(mean_abs_C: np.ndarray) -> np.ndarray:
  """ReDo score per unit: mean |activation| over the layer's average of it
  (the last axis holds the layer's units; all zeros for a silent layer)."""
  mean_abs_C = np.asarray(mean_abs_C, np.float64)
  if not mean_abs_C.shape[-1]:
    return np.zeros_like(mean_abs_C)
  layer_mean = mean_abs_C.mean(-1, keepdims=True)
  return np.where(layer_mean > 0, mean_abs_C / np.where(layer_mean > 0, layer_mean, 1.0), 0.0)


def unit_masks(count_C: np.ndarray, abs_sum_C: np.ndarray, samples: Any,
               threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(dead, dormant, ReDo score) per unit from on-duty counts and |activation| sums
  over `samples` ([..., C]): dead units are on duty for no sample, dormant ones
  score at or below `threshold`."""
  samples = np.maximum(np.asarray(samples, np.float64), 1.0)[..., None]
  scores_C = dormant_scores(np.asarray(abs_sum_C, np.float64) / samples)
  return np.asarray(count_C) == 0, scores_C <= threshold, scores_C


def linear_fraction(all_on: Any, pos_all: Any, samples: Any, positions: int) -> Any:
  """The linear-region fraction: per sample (input, or (input, position) for a
  conv layer, `positions` > 1) where every unit of the layer is on duty.
  `all_on` is the share of inputs with every unit on at every position."""
  if positions > 1:
    return _scalar(np.asarray(pos_all, np.float64) / np.maximum(np.asarray(samples, np.float64),
                                                                1.0))
  return all_on


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
    return covariance(self.n, self.m2)

  def gram(self) -> np.ndarray:
    return gram(self.n, self.mean, self.m2)


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
    self.unit_sum, self.nonzero = np.zeros(c), 0.0  # `mean_cosine`'s terms (post-activation).

  def add(self, s: Mapping[str, np.ndarray], valid_B: np.ndarray) -> None:
    self.count += np.rint(s["count_C"]).astype(np.int64)
    self.abs_sum += s["abs_C"]
    self.samples += float(s["samples"])
    self.pos_all += float(s["pos_all"])
    self.frac.append(np.asarray(s["frac_B"], np.float64)[valid_B])
    self.all.append(np.asarray(s["all_B"], bool)[valid_B])
    self.pre.add(float(s["samples"]), s["pre_mean"], s["pre_m2"])
    self.post.add(float(s["samples"]), s["post_mean"], s["post_m2"])
    self.unit_sum += np.asarray(s["unit_sum"], np.float64)
    self.nonzero += float(s["nonzero"])


def layer_row(index: int, name: str, acc: LayerAccumulator,
              threshold: float) -> tuple[dict, np.ndarray]:
  """The probes.csv row of one activation layer and its per-input active fractions."""
  frac_N = np.concatenate(acc.frac) if acc.frac else np.zeros(0)
  all_N = np.concatenate(acc.all) if acc.all else np.zeros(0, bool)
  dead_C, dormant_C, scores_C = unit_masks(acc.count, acc.abs_sum, acc.samples, threshold)
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
      "dormant": int(dormant_C.sum()),
      "dormant_frac": float(dormant_C.mean()),
      "active_mean": float(frac_N.mean()) if frac_N.size else float("nan"),
      "active_std": float(frac_N.std()) if frac_N.size else float("nan"),
      "active_min": float(frac_N.min()) if frac_N.size else float("nan"),
      "active_p025": float(q[0]),
      "active_median": float(q[1]),
      "active_p975": float(q[2]),
      "active_max": float(frac_N.max()) if frac_N.size else float("nan"),
      "linear_frac": linear_fraction(linear_input, acc.pos_all, acc.samples, acc.positions),
      "linear_frac_input": linear_input,
      "linear_frac_position": linear_position,
      "participation_pre": participation_ratio(pre_cov),
      "participation_post": participation_ratio(post_cov),
      "entropy_rank_pre": entropy_rank(pre_cov),
      "entropy_rank_post": entropy_rank(post_cov),
      "entropy_rank_gram_post": entropy_rank(acc.post.gram()),
      "cosine_post": mean_cosine(acc.unit_sum, acc.nonzero),
      "srank_pre": srank(acc.pre.gram()),
      "srank_post": srank(acc.post.gram()),
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


