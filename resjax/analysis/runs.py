"""From training workdirs to probe tables, figures and a report.

`analyze(workdir, compare=...)` restores each run's checkpoint on whatever
devices are present, probes it on the run's own training split (or `split=
'test'`; `resjax.probes.run`) and writes one result set (`files.result_set`:
a reader sees the old set or the new one, never a mix) into `out`, by default
`workdir/analysis/step_<N>/` for checkpoint step N:

  probes.csv            one row per layer and run (kind: activation, block, weights)
  probes.json           the same plus per-unit lists and the run summaries
  units.png             dead / dormant fraction, active-fraction spread and
                        linear-region fraction per layer (C4, C7)
  effective_rank.png    participation ratio and entropy effective rank before
                        and after the activation (C3)
  trajectories.png      runs with probes during training (probes.jsonl): each
                        fraction and rank against step per layer, mean and 95%
                        interval over each condition's seeds; trajectories.csv
  gradients.png         gradient norm per weight layer with 95% intervals (C4)
  energy.png            shortcut share of the block energy per block (C5)
  conditions.csv        grid runs: per condition, mean and interval over seeds
  report.md             the figures and, in numbers, what they show per claim

Runs compared in one figure share a dataset and a model family (refused
otherwise); their layers are aligned by name, so nets of different depth put
each layer on its own tick (report.md says what was aligned).

`write(out_dir, runs)` redraws everything from the runs' JSON form, so the
figures can be regenerated from probes.json without restoring anything.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging

from resjax import errors, files, grid, locking, models, probes, restore, schema, train
from resjax.analysis import trajectories
from resjax.analysis.markdown import FIGURES, report_markdown
from resjax.analysis.tables import condition_rows, condition_table, rows, summary_table
from resjax.plotting import analysis as figures
from resjax.plotting.layers import alignment_note
from resjax.plotting.trajectories import plot_trajectories


def describe(config) -> str:
  """A short model name from a training config: 'resnet-20', 'plain-20', ... (`models.describe`)."""
  return models.describe(config.model.name, config.model)


def _check_workdir(path: str) -> str:
  errors.check(bool(path), "--workdir is required: pass --workdir=DIR of a training run")
  full = os.path.abspath(os.path.expanduser(path))
  problem = "is a file" if os.path.isfile(full) else "does not exist"
  errors.check(os.path.isdir(full), f"workdir {full} {problem}; pass the --workdir of "
               "a training run (python -m launch.train ... --workdir=DIR)")
  return full


def _labels(dirs: Sequence[str]) -> list[str]:
  """Run names: the workdirs' base names, made unique."""
  labels = []
  for d in dirs:
    base = os.path.basename(os.path.normpath(d)) or d
    label, k = base, 2
    while label in labels:
      label, k = f"{base}-{k}", k + 1
    labels.append(label)
  return labels


def _dataset_of(config) -> dict:
  """What makes two runs' data the same dataset: the name and generator options
  (not the batch, augmentation, normalization, data seed or location)."""
  return {f"data.{k}": v for k, v in config.data.to_dict().items()
          if k not in ("batch_size", "augment", "pad", "flip", "normalize", "seed", "data_dir")}


def _check_comparable(entries: Sequence[dict]) -> None:
  """Refuses runs of different datasets or model families in one analysis."""
  first = entries[0]
  for entry in entries[1:]:
    for what, of in (("datasets", _dataset_of),
                     ("model families", lambda c: {"model.name": c.model.name})):
      a, b = of(first["config"]), of(entry["config"])
      if a != b:
        show = lambda d: ", ".join(f"{k}={v}" for k, v in sorted(d.items()))  # noqa: E731
        raise errors.ConfigError(
            f"cannot compare runs of different {what}: {first['dir']} has {show(a)}, "
            f"{entry['dir']} has {show(b)}; --compare runs of one dataset and model family")


def _output_dir(out: str | None, workdir: str, step: int) -> str:
  """The analysis folder, created; a ConfigError suggesting --out if it cannot be."""
  path = (files.workdir_path(out) if out
          else os.path.join(workdir, "analysis", f"step_{step}"))
  files.check_kind(path, "analysis", "--out")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(f"cannot write the analysis to {path} ({e.strerror}); "
                             "pass --out=DIR, a writable directory") from None
  errors.check(os.access(path, os.W_OK | os.X_OK), f"cannot write the analysis to {path} "
               "(not writable); pass --out=DIR, a writable directory")
  return path


def check_args(*, step: int | None = None, **probe_args: Any) -> None:
  """ConfigError (one line) for a bad argument of `analyze` (`launch.analyze`'s flags of
  the same names), before any file is read: `step` and the arguments of `probes.run`."""
  probes.check_args(**probe_args)
  schema.check_value("step", step, restore.RULES["step"])


def analyze(workdir: str, *, step: int | None = None, compare: Sequence[str] = (),
            split: str = "train", out: str | None = None,
            batch_size: int = 256, dormant_threshold: float = 0.1,
            grad_batches: int | None = None, grad_batch_size: int | None = None,
            max_examples: int | None = None,
            command: str | None = None,
            say: Callable[[str], None] = logging.info) -> dict:
  """Probes the run in `workdir` (and the `compare` runs) on their `split`.

  `step` picks the checkpoint of every run (default: each run's latest). The
  results go to `out` (default: workdir/analysis/step_<N>, N the step of the
  checkpoint of `workdir`), locked while they are written and written as one
  set. Progress and tables go to `say` (absl logging by default; the launcher
  prints). Returns {'dir': output folder, 'files': written paths, 'runs': [...]}.
  """
  check_args(step=step, split=split, batch_size=batch_size,
             dormant_threshold=dormant_threshold, grad_batches=grad_batches,
             grad_batch_size=grad_batch_size, max_examples=max_examples)
  dirs = [_check_workdir(d) for d in (workdir, *compare)]
  errors.check(len(set(dirs)) == len(dirs), "--compare names a workdir twice; "
               "pass each run once")
  entries = _restore(dirs, step)  # fail fast on any bad run
  _check_comparable(entries)
  datasets = _datasets(entries, split, grad_batches, grad_batch_size, max_examples)
  out_dir = _output_dir(out, dirs[0], int(np.asarray(entries[0]["state"].step)))
  with locking.workdir_lock(out_dir, fix="wait for it to finish or pass another --out",
                            say=say):
    return _probe_and_write(out_dir, entries, datasets, split=split, batch_size=batch_size,
                            dormant_threshold=dormant_threshold, grad_batches=grad_batches,
                            grad_batch_size=grad_batch_size, max_examples=max_examples,
                            command=command, say=say)


def _restore(dirs: Sequence[str], step: int | None) -> list[dict]:
  """One entry per net to probe: a run, or each net of a grid run (its own
  config and state, `restore.load_each`), labelled and with its
  condition (the grid's axes but the seed)."""
  entries = []
  for label, d in zip(_labels(dirs), dirs):
    config, nets = restore.load_each(d, step)  # One restore, a grid's nets cut out of it.
    if not grid.is_grid(config):
      (_, state), = nets
      entries.append({"label": label, "dir": d, "config": config, "state": state})
      continue
    for k, (net_label, (net_config, net_state)) in enumerate(zip(grid.labels(config), nets)):
      entries.append({"label": f"{label}/net{k}", "dir": d, "config": net_config,
                      "state": net_state, "grid": label,
                      "condition": grid.condition_name(net_label),
                      "seed": int(net_config.seed)})
  return entries


def _datasets(entries: Sequence[dict], split: str, grad_batches: int | None,
              grad_batch_size: int | None, max_examples: int | None) -> list:
  """Each entry's dataset, as its trainer loaded it (loaded once per dataset), checked
  to serve the gradient batches asked for before any run is probed."""
  loaded: dict[str, Any] = {}
  out = []
  for entry in entries:
    config = entry["config"]
    key = json.dumps({k: v for k, v in config.data.to_dict().items()
                      if k not in ("batch_size", "augment", "pad", "flip")},
                     sort_keys=True, default=str)
    if key not in loaded:
      loaded[key] = train.load_data(config)
      ds = loaded[key]
      n = len(getattr(ds, split))
      n = n if max_examples is None else min(n, max_examples)
      probes.grad_sizes(n, 1, grad_batches, grad_batch_size, f"the {split} split of {ds.name}")
    out.append(loaded[key])
  return out


def _probe_and_write(out_dir: str, entries: Sequence[dict], datasets: Sequence[Any], *,
                     split: str, batch_size: int,
                     dormant_threshold: float, grad_batches: int | None,
                     grad_batch_size: int | None, max_examples: int | None,
                     command: str | None, say: Callable[[str], None]) -> dict:
  runs = []
  for entry, ds in zip(entries, datasets):
    label, d, config, state = entry["label"], entry["dir"], entry["config"], entry["state"]
    at = int(np.asarray(state.step))
    part = len(getattr(ds, split))
    n = part if max_examples is None else min(part, max_examples)
    say(f"probing {label}: {describe(config)} at step {at} on {ds.name} "
        f"({n} {split} examples)")
    res = probes.run(state, None, ds, split=split, batch_size=batch_size,
                     dormant_threshold=dormant_threshold, grad_batches=grad_batches,
                     grad_batch_size=grad_batch_size, max_examples=max_examples, progress=say)
    say(res.table())
    runs.append({"run": label, "workdir": d, "step": at, "model": describe(config),
                 "dataset": ds.name, "split": split,
                 **{k: entry[k] for k in ("grid", "condition", "seed") if k in entry},
                 **files.jsonable(res.to_dict())})
  # The figures draw every net: each seed of a grid condition in its colour.
  note = alignment_note(runs)
  if note:
    say(f"the figures align {note}")
  conditions = condition_rows(runs)
  labels = {e["dir"]: e.get("grid", e["label"]) for e in entries}
  paths = [trajectories.rows(d, run=label) for d, label in labels.items()
           if trajectories.has_probes(d)]
  written = write(out_dir, runs, command=command, conditions=conditions,
                  trajectories=[r for table in paths for r in table])
  say(summary_table(runs))
  if conditions:
    say(condition_table(conditions))
  say(f"analysis written to {out_dir}: {', '.join(os.path.basename(p) for p in written)}")
  return {"dir": out_dir, "files": written, "runs": runs, "conditions": conditions}


def write(out_dir: str, runs: Sequence[dict], command: str | None = None,
          figure_runs: Sequence[dict] | None = None,
          conditions: Sequence[dict] = (), trajectories: Sequence[dict] = ()) -> list[str]:
  """Writes probes.csv, probes.json, the figures, conditions.csv (grid runs),
  trajectories.csv and its figure (runs probed during training) and report.md
  into `out_dir` as one result set (`files.result_set`).

  The figures draw `figure_runs` (default: every run). Returns the paths of
  the files as readers see them, `out_dir/<name>`.
  """
  out_dir = files.ensure_workdir(out_dir)
  files.check_kind(out_dir, "analysis", "--out")
  runs = files.jsonable(list(runs))
  figure_runs = runs if figure_runs is None else files.jsonable(list(figure_runs))
  names: list[str] = []
  with files.result_set(out_dir) as tmp:
    files.write_kind(tmp, "analysis")  # In the set: a failed set leaves out_dir as it was.

    def path(name):
      names.append(name)
      return os.path.join(tmp, name)

    files.write_csv(path("probes.csv"), rows(runs))
    files.write_json(path("probes.json"), {"command": command, "runs": runs})
    for key, plot in (("units", figures.plot_units), ("rank", figures.plot_rank),
                      ("gradients", figures.plot_gradients), ("energy", figures.plot_energy)):
      if key == "energy" and not any(r["blocks"] for r in figure_runs):
        continue
      if key == "gradients" and not any(r["weights"] for r in figure_runs):
        continue
      written = files.save_figure(plot(figure_runs), os.path.join(tmp, FIGURES[key]), dpi=200)
      names.extend(os.path.basename(p) for p in written)
    if conditions:
      files.write_csv(path("conditions.csv"), list(conditions))
    if trajectories:
      files.write_csv(path("trajectories.csv"), list(trajectories))
      written = files.save_figure(plot_trajectories(trajectories),
                                  os.path.join(tmp, FIGURES["trajectories"]), dpi=200)
      names.extend(os.path.basename(p) for p in written)
    files.write_text(path("report.md"), report_markdown(runs, command,
                                                        trajectories=bool(trajectories)))
  return [os.path.join(out_dir, n) for n in names]
