"""A study's tables: condition and net rows, paired contrasts with Holm, figure series.

Every interval comes from resjax.stats: t-intervals of means (clipped to the
metric's range), geometric means with t-intervals of the logs, seed-clustered
Wilson intervals of per-net fractions, Wilson for pooled counts.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from resjax import grid
from resjax import stats as rstats
from resjax.studies.runs import GridRun


def g6(x: Any) -> Any:
  """Six significant digits for floats (JSON/CSV friendly; inf/NaN kept)."""
  if isinstance(x, (float, np.floating)):
    x = float(x)
    return x if not math.isfinite(x) else float(f"{x:.6g}")
  return x


def stat_cols(prefix: str, triple) -> dict[str, float]:
  """{prefix, prefix_lo, prefix_hi} of a (mean, lo, hi) triple."""
  mean, lo, hi = triple
  return {prefix: g6(mean), f"{prefix}_lo": g6(lo), f"{prefix}_hi": g6(hi)}


def ci95_in(values, key: str):
  """Mean and 95% t-interval clipped to the metric's range (losses >= 0, fractions [0, 1])."""
  return rstats.mean_ci(values, bounds=(0.0, math.inf) if "loss" in key else (0.0, 1.0))


def geo_ci95(values):
  """Geometric mean and 95% interval from a t-interval of the logs (floored at 1e-12)."""
  return rstats.geo_mean_ci(values, floor=1e-12)


def rate_score(losses) -> float:
  """A rate's score for the rate rules: the geometric mean of its nets' final
  training losses, +inf where any of them diverged (a rate is never scored on
  its survivors only)."""
  v = np.asarray(losses, np.float64)
  return float(geo_ci95(v)[0]) if v.size and np.isfinite(v).all() else math.inf


def series(x: Sequence[float], triples) -> dict[str, list]:
  """What a figure draws as one line with its interval: x and (mean, lo, hi) per x."""
  return {"x": [g6(float(v)) for v in x], "mean": [g6(t[0]) for t in triples],
          "lo": [g6(t[1]) for t in triples], "hi": [g6(t[2]) for t in triples]}


def final(run: GridRun, key: str) -> np.ndarray:
  """The last evaluation of `key` per net."""
  return run.history[key][:, -1]


def groups(run: GridRun, keys=("variant", "width", "depth")) -> dict[tuple, np.ndarray]:
  """Condition -> positions of its nets (ordered by seed)."""
  out: dict[tuple, list[int]] = {}
  for i, n in enumerate(run.nets):
    out.setdefault(tuple(getattr(n, k) for k in keys), []).append(i)
  return {k: np.asarray(sorted(v, key=lambda i: run.nets[i].seed)) for k, v in out.items()}


def variants(run: GridRun, order: Sequence[str]) -> list[str]:
  """The variants of `order` that `run` trains, in that order."""
  return [v for v in order if any(n.variant == v for n in run.nets)]


def net_rows(run: GridRun, extra: dict[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
  """One row per trained net: its condition and final numbers (nets.csv)."""
  rows = []
  for i, n in enumerate(run.nets):
    row = {"grid": run.name, "net": run.index[i], **n._asdict()}
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
      row[key] = g6(run.history[key][i, -1])
    for key, values in (extra or {}).items():
      row[key] = g6(values[i])
    rows.append(row)
  return rows


def condition_rows(run: GridRun, metrics: dict[str, np.ndarray],
                   head: dict | None = None) -> list[dict[str, Any]]:
  """One row per condition (variant, width, depth): means and 95% intervals over seeds
  (study.csv), through the one per-condition summary (`grid.condition_rows`); losses
  also get their geometric mean."""
  spec, nets = [], []
  for key in metrics:
    spec.append((key, lambda v, _, key=key: tuple(g6(x) for x in ci95_in(v, key))))
    if "loss" in key:
      spec.append((f"{key}_geomean", lambda v, _: tuple(g6(x) for x in geo_ci95(v))))
  for (variant, width, depth), idx in groups(run).items():
    head_k = {"grid": run.name, **(head or {}), "variant": variant, "width": width,
              "depth": depth, "lr": run.nets[idx[0]].lr}
    for i in idx:
      values = {key: v[i] for key, v in metrics.items()}
      nets.append({"head": head_k, **values,
                   **{f"{k}_geomean": v for k, v in values.items() if "loss" in k}})
  return grid.condition_rows(nets, metrics=spec, group=lambda r: r["head"], count="n",
                             keep_empty=True)


def fractions(rows: list[dict], run: GridRun, metrics: dict[str, np.ndarray],
              size: Callable[[dict], float]) -> None:
  """Replaces the t-intervals of per-net fractions in `rows` by seed-clustered Wilson
  intervals (stats.cluster_wilson: checked coverage near 0 and 1); `size(row)` is
  the number of trials (inputs or units) behind one net's fraction."""
  by = groups(run)
  for row in rows:
    idx = by[(row["variant"], row["width"], row["depth"])]
    for key, values in metrics.items():
      v = np.asarray(values, np.float64)[idx]
      if np.isfinite(v).sum() >= 2:
        row.update(stat_cols(key, rstats.cluster_wilson(v[np.isfinite(v)], size=size(row))))


def paired(run: GridRun, metric: np.ndarray, a: tuple, b: tuple) -> dict[str, Any]:
  """Mean of metric[a] - metric[b] over the seeds both conditions share, 95% t-interval,
  and the SD of the differences."""
  by = groups(run)
  seeds_a = {run.nets[i].seed: i for i in by[a]}
  seeds_b = {run.nets[i].seed: i for i in by[b]}
  common = sorted(set(seeds_a) & set(seeds_b))
  a_, b_ = [metric[seeds_a[s]] for s in common], [metric[seeds_b[s]] for s in common]
  c = rstats.paired(a_, b_)  # Pairs with a non-finite value (a diverged net) drop out.
  sd = c["sd"]
  return {**{k: g6(c[k]) for k in ("mean", "lo", "hi", "p")}, "n": c["n"],
          "dropped": len(common) - c["n"], "excludes_zero": c["excludes_zero"], "sd": g6(sd),
          "detectable": g6(rstats.detectable(sd, c["n"]))}


def correlation_interval(r: float, size: float, factor: float = 1.0) -> dict[str, Any]:
  """A correlation's 95% Fisher-z interval (`stats.fisher_ci`, standard error
  sqrt(factor / size): size n - 3 for n pairs, factor 1.06 for Spearman's rho)
  and whether it excludes 0."""
  lo, hi = rstats.fisher_ci(r, math.sqrt(factor / size) if size > 0 else math.nan)
  return {"lo": g6(lo), "hi": g6(hi),
          "excludes_zero": bool(math.isfinite(lo) and (lo > 0 or hi < 0))}


def holm(contrasts: dict[str, dict]) -> dict[str, dict]:
  """Adds Holm-adjusted p-values over `contrasts` (the ones read together). A
  contrast without a p (too few pairs) still counts in the family, as p = 1, so
  'Holm among k' is a correction over all k; its own adjusted p stays empty."""
  keys = [k for k, c in contrasts.items() if "p" in c]
  p = [contrasts[k]["p"] for k in keys]
  tested = [x is not None and math.isfinite(float(x)) for x in p]
  adjusted, reject = rstats.holm([float(x) if t else 1.0 for x, t in zip(p, tested)])
  for k, a, r, t in zip(keys, adjusted, reject, tested):
    contrasts[k].update(p_holm=g6(a) if t else float("nan"), holm_reject=bool(r and t),
                        family_size=len(keys))
  return contrasts


def bounds_text(c: Mapping[str, Any], scale: float = 1.0, digits: int = 2,
                sign: str = "") -> str:
  """'[0.50, 0.74]' of a contrast's interval (times `scale`; `sign` '+' signs both);
  '[no interval]' where it has none (`stats.paired`: too few pairs, all alike)."""
  lo, hi = (float("nan") if c.get(k) is None else scale * float(c[k]) for k in ("lo", "hi"))
  if not (math.isfinite(lo) and math.isfinite(hi)):
    return "[no interval]"
  return f"[{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


def interval_text(c: Mapping[str, Any], scale: float = 1.0, digits: int = 2) -> str:
  """'+0.62 [0.50, 0.74]' of a contrast's mean and interval (times `scale`)."""
  return f"{scale * float(c['mean']):+.{digits}f} {bounds_text(c, scale, digits)}"


def holm_count(contrasts: Mapping[str, Mapping[str, Any]], family: str | None = None,
               ) -> tuple[int, int]:
  """(contrasts that survive Holm, family size) over `contrasts` (those whose 'family'
  is `family`, when given)."""
  chosen = [c for c in contrasts.values() if family is None or c.get("family") == family]
  return sum(bool(c.get("holm_reject")) for c in chosen), len(chosen)


def detectable_of(c: Mapping[str, Any], power: float = 0.8) -> float:
  """The smallest effect a paired contrast could detect with `power` (stats.detectable),
  from its SD, or from its 95% t-interval where the SD was not stored."""
  n = int(c["n"])
  sd = c.get("sd")
  if sd is None and n > 1:
    sd = rstats.paired_sd(float(c["lo"]), float(c["hi"]), n)
  return rstats.detectable(float("nan") if sd is None else float(sd), n, power)


def verdict(c: Mapping[str, Any], power: float = 0.8, scale: float = 1.0,
            unit: str = "", note: str = "") -> str:
  """What a contrast supports, worded the same in every study:
  'detected (Holm among k)' where its interval excludes 0 and Holm rejects; 'not
  detected: identical in every pair'; 'not detected after Holm among k (the unadjusted
  interval excludes 0; ...)'; else 'not detected at this power (...)', where ... is the
  smallest effect the design detects with `power` (c['detectable'] where the study
  stored it, else from the contrast's SD or interval), times `scale`, in `unit`, then
  `note` (a study's qualifier of that effect)."""
  k = c.get("family_size")
  among = f" among {k}" if k else ""
  if c.get("holm_reject") and c.get("excludes_zero", True):
    return f"detected (Holm{among})"
  if int(c.get("n", 0)) >= 2 and c.get("sd") == 0:
    return no_spread(c, among)
  least = c.get("detectable")
  if least is None and all(c.get(f) is not None for f in ("n", "lo", "hi")):
    least = detectable_of(c, power)
  need = ("" if least is None or not math.isfinite(float(least)) else
          f"{power:.0%} power needs |effect| >= {scale * float(least):.3g}{unit}{note}")
  if c.get("excludes_zero"):
    return (f"not detected after Holm{among} (the unadjusted interval excludes 0"
            + (f"; {need})" if need else ")"))
  return "not detected at this power" + (f" ({need})" if need else "")


def no_spread(c: Mapping[str, Any], among: str = "") -> str:
  """The verdict of paired differences that do not vary (SD 0) and were not detected:
  none at all, or one difference in every pair, which only the sign test
  (`stats.paired`) reads."""
  if float(c.get("mean", 0.0)) == 0.0:
    return "not detected: identical in every pair"
  p = f"sign test p = {float(c['p']):.3g}" if c.get("p") is not None else "sign test"
  if c.get("p_holm") is not None and among:
    p += f", {float(c['p_holm']):.3g} after Holm{among}"
  return f"not detected: the same difference in all {int(c['n'])} pairs ({p})"


def verdict_text(c: Mapping[str, Any], scale: float = 1.0, digits: int = 2,
                 power: float = 0.8, unit: str = "") -> str:
  """'<estimate [interval]>, <verdict>' of a contrast (times `scale`; see `verdict`)."""
  return f"{interval_text(c, scale, digits)}{unit}, {verdict(c, power, scale, unit)}"


def verdicts(family: dict[str, dict], name: str, power: float) -> dict[str, dict]:
  """Holm over `family` (contrasts with mean, lo, hi, p, n, sd, excludes_zero), then each
  one's smallest detectable effect (a paired t-test of its n and SD with `power`,
  stats.detectable) and its `verdict`."""
  holm(family)
  for c in family.values():
    sd = np.nan if c.get("sd") is None else c["sd"]
    c.update(family=name, detectable=g6(rstats.detectable(sd, c["n"], power)))
    c["verdict"] = verdict(c, power)
  return family
