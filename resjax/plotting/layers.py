"""What the analysis figures put on their axes: layer names, their alignment, run names.

Runs here are the JSON form of probed runs (a run of probes.json). The nets of
a grid are series: every seed of a condition is drawn, in the condition's
colour, under one legend entry that says how many seeds it holds.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from resjax.plotting import style


def display_name(name: str) -> str:
  """A layer name as every figure writes it: the probes' 'stage1/block0/...' form.

  Weight layers are module paths ('stage1_block0/conv1'); their block part is
  rewritten to the probe names' 'stage1/block0'.
  """
  return re.sub(r"\b(stage\d+)_(block\d+)\b", r"\1/\2", name)


def merged(lists: Sequence[Sequence[str]]) -> list[str]:
  """One forward order holding every name: each list's names in its own order,
  a name absent so far placed after the last name the list shares."""
  order: list[str] = []
  for names in lists:
    at = 0
    for name in names:
      if name in order:
        at = order.index(name) + 1
      else:
        order.insert(at, name)
        at += 1
  return order


def aligned(runs: Sequence[dict], group: str, key: str) -> tuple[list[str], list[np.ndarray]]:
  """The merged names of `group` and, per run, the tick of each of its entries."""
  lists = [[r[key] for r in run[group]] for run in runs]
  names = merged(lists)
  where = {n: i for i, n in enumerate(names)}
  return names, [np.asarray([where[n] for n in l], np.float64) for l in lists]


def alignment_note(runs: Sequence[dict]) -> str | None:
  """What the figures aligned by name, when the runs' layers differ (else None)."""
  if len(runs) < 2:
    return None
  parts = []
  for group, key, what in (("layers", "layer", "activation layers"),
                           ("blocks", "block", "blocks"), ("weights", "layer", "weight layers")):
    lists = [[r[key] for r in run[group]] for run in runs]
    if all(l == lists[0] for l in lists):
      continue
    shared = set.intersection(*map(set, lists))
    only = [f"{run['run']} {len(set(l) - shared)}" for run, l in zip(runs, lists)
            if set(l) - shared]
    parts.append(f"{what} by name ({len(shared)} in every run; only in {', '.join(only)})")
  return "; ".join(parts) or None


def split_of(run: dict) -> str:
  """The split a run was probed on (probes.json of earlier releases: the test split)."""
  return run.get("split") or run["summary"].get("split") or "test"


def title(runs: Sequence[dict]) -> str:
  """'plain-8 vs resnet-8 on digits train set (step 4)': models, data, split, steps."""
  steps = sorted({r["step"] for r in runs})
  data = sorted({r["dataset"] for r in runs})
  splits = sorted({split_of(r) for r in runs})
  at = f"step {steps[0]}" if len(steps) == 1 else "steps " + ", ".join(map(str, steps))
  return (f"{' vs '.join(r['model'] for r in runs)} on {', '.join(data)} "
          f"{'/'.join(splits)} set ({at})")


def _series_key(run: dict) -> tuple:
  """Runs with one key are one series: the seeds of a grid condition, else the run."""
  return (run["grid"], run["condition"]) if "condition" in run else (run["run"],)


def series_sizes(runs: Sequence[dict]) -> list[int]:
  """How many runs each run's series holds (the seeds of its grid condition, else 1)."""
  keys = [_series_key(r) for r in runs]
  return [keys.count(k) for k in keys]


def series_labels(runs: Sequence[dict]) -> list[str]:
  """The legend label of each run's series: the seeds of a grid condition share one."""
  out = []
  for run, n in zip(runs, series_sizes(runs)):
    if "condition" in run:
      out.append(f"{run['grid']} {run['condition']} ({run['model']}, "
                 f"{n} seed{'s' if n > 1 else ''})")
    else:
      out.append(run["run"] if run["run"] == run["model"] else f"{run['run']} ({run['model']})")
  return out


def series_colors(runs: Sequence[dict]) -> list[str]:
  """One colour per series (so every seed of a condition has its condition's colour)."""
  keys = list(dict.fromkeys(_series_key(r) for r in runs))
  palette = dict(zip(keys, style.colors(len(keys))))
  return [palette[_series_key(r)] for r in runs]


def figure_title(runs: Sequence[dict]) -> str:
  """`title` of one run per series (a grid condition's first net stands for its seeds)."""
  first = {}
  for run in runs:
    first.setdefault(_series_key(run), run)
  return title(list(first.values()))
