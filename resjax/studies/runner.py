"""Running a study: validate, train its grids, analyse, write the result set; redraw.

`run(config, workdir)` trains each grid of `config.study` (runs.train_grid) in
name order, each first through the study module's `prepare(config, name, grid,
trained)` where it has one (settings chosen on the grids trained before it, e.g. a
learning rate picked on a validation split), reads them back (runs.GridRun),
calls the study module's `analyze` and writes to `workdir`, as one result set
(files.result_set):

  study.csv   one row per condition (the tables' `rows`)
  nets.csv    one row per trained net (`net_rows`)
  study.json  the tables (rows, contrasts, curves, what the figure draws) plus
              the config, the machine and timings
  <study>.png the study module's `figure` of those tables (and <study>.pdf)

`redraw(workdir)` draws the figure again from study.json alone.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shutil
import time
from typing import Any, Callable

import jax
from absl import logging

from resjax import collapse, errors, files, locking, schema, train
from resjax.grid import spec as grid_spec
from resjax.studies import registry, runs


# A study config's own fields (its grids are training configs: `train.rules`).
RULES = {
    "study": schema.Choice(registry.names),
    "seeds": schema.Int(2, 10_000, fix="use an integer in [2, 10000] (intervals over seeds)"),
    "seed": schema.SEED,
}
# Fields every study config carries (configs/study.py) and only some studies read
# (those whose module RULES name them).
SHARED = {"target_loss": schema.Float(0, low_open=True, optional=True),
          **{f"collapse.{k}": dataclasses.replace(r, optional=True)
             for k, r in collapse.RULES.items() if k.split(".")[0] not in ("dims", "figure")}}


def _module(config):
  study = schema.get(config, "study")
  return registry.get(study) if isinstance(study, str) and study in registry.names() else None


def rules(config) -> dict[str, schema.Rule]:
  """Every field of a study config with its rule; a grid's fields are `grids.<name>.<field>`."""
  module = _module(config)
  out = {**RULES, **SHARED, **getattr(module, "RULES", {})}
  grids = schema.get(config, "grids")
  for name, g in (grids.items() if hasattr(grids, "items") else ()):
    out.update({f"grids.{name}.{k}": r for k, r in train.rules(g).items()})
    out[f"grids.{name}.grid.seeds"] = _STUDY_SEEDS
  return out


# A grid's seeds are the study's (runs.grids): its own must stay empty.
_STUDY_SEEDS = schema.List(schema.Rule("any", test=lambda v: False), optional=True, fix=(
    "leave it empty: the study gives every grid the seeds seed .. seed + seeds - 1; set "
    "--config.seed / --config.seeds"))


def unused(config) -> dict[str, str]:
  """Fields of a study config its study does not read (or its grids do not): field -> why."""
  module = _module(config)
  own = getattr(module, "RULES", {})
  out = {k: f"study {config.study!r} does not read it" for k in SHARED
         if k not in own and schema.get(config, k) is not schema.MISSING}
  grids = schema.get(config, "grids")
  seeds = schema.get(config, "seeds")
  for name, g in (grids.items() if hasattr(grids, "items") else ()):
    out.update({f"grids.{name}.{k}": v for k, v in train.unused(g).items()
                if k != "grid.nets_per_call"})
    out[f"grids.{name}.grid.seeds"] = _STUDY_SEEDS.fix
    own_seeds = schema.get(config, f"grid_seeds.{name}")
    count = own_seeds if RULES["seeds"].ok(own_seeds) else seeds
    if RULES["seeds"].ok(count) and not grid_spec.validate(g) and runs.calls_of(g, count):
      out[f"grids.{name}.grid.nets_per_call"] = (
          "the study splits this grid into one compiled call per value of its first axis")
  return out


def validate(config) -> None:
  """ConfigError unless `config` names a known study with well-formed grids."""
  schema.require_config(config, "a study config (configs/study.py)")
  table = rules(config)
  module = _module(config)
  # The study's own fields, and the grid fields it replaces (runs.grids) as they are.
  found = schema.problems(config, {k: r for k, r in table.items() if not k.startswith("grids.")
                                   or k.endswith((".grid.seeds", ".grid.nets_per_call"))})
  if module is not None:  # Which fields a study has depends on the study.
    found += [f"config.{f} is not a field of study {config.study!r}; remove it"
              for f in schema.uncovered(config, table) if not f.startswith("grids.")]
  if found:
    raise errors.ConfigError("\n".join(found))
  errors.check(len(config.grids) > 0, f"study {config.study!r} has no grids")
  for name, g in runs.grids(config).items():
    errors.choice(f"grids.{name}.model.name", g.model.name, module.FAMILIES)
    try:
      train.validate(g, 1)
    except errors.ConfigError as e:
      raise errors.ConfigError("\n".join(
          f"grids.{name}.{line}" if re.match(r"[\w.]+=", line) else f"grids.{name}: {line}"
          for line in str(e).splitlines())) from None
  if hasattr(module, "validate"):
    module.validate(config)


def machine() -> dict[str, Any]:
  """What ran the study (for RESULTS.md)."""
  return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "devices": [str(d) for d in jax.devices()],
          "jax": jax.__version__, "python": platform.python_version()}


def run(config, workdir: str, *, log: Callable[[str], None] | None = logging.info,
        should_stop: Callable[[int], bool] | None = None) -> dict[str, Any]:
  """Runs study `config.study` into `workdir`; returns what study.json holds.

  `log` gets each progress line (None: silent). `should_stop(step)` is passed
  to each grid's training (see `train.train_and_evaluate`): when it says True
  the grid saves its state and `run` returns {'stopped': True, ...} without
  analysing; running again resumes. The workdir is locked for the run
  (`locking.workdir_lock`); study.csv, nets.csv, study.json and the figure are
  written as one set (`files.result_set`).
  """
  validate(config)
  files.check_kind(files.workdir_path(workdir), "study")
  workdir = files.ensure_workdir(workdir)
  with locking.workdir_lock(workdir):
    return _run(config, workdir, log, should_stop)


def _check_config(config, workdir: str) -> dict:
  """The config as JSON; refuses a workdir that holds a run of another config."""
  cfg = json.loads(json.dumps(config.to_dict(), default=list))
  cfg_path = os.path.join(workdir, "config.json")
  if os.path.exists(cfg_path):
    with open(cfg_path) as f:
      errors.check(json.load(f) == cfg,
                   f"--workdir {workdir} holds a run of a different config; "
                   "use a new --workdir (or the same config to resume)")
  else:
    files.claim_kind(workdir, "study")
    files.write_json(cfg_path, cfg)
  return cfg


def _run(config, workdir: str, log, should_stop) -> dict[str, Any]:
  cfg = _check_config(config, workdir)
  t0 = time.perf_counter()
  trained, timing = {}, {}
  todo = runs.grids(config)
  module = registry.get(config.study)
  for i, (name, g) in enumerate(todo.items()):
    if log:
      log(f"study {config.study}: grid {i + 1}/{len(todo)} '{name}'")
    if hasattr(module, "prepare"):  # E.g. its rate from a pilot grid trained before it.
      g = module.prepare(config, name, g, trained)
      train.validate(g, 1)
    timing[name] = runs.train_grid(name, g, workdir, log, should_stop)
    if "stopped_at" in timing[name]:
      if log:
        log(f"study {config.study} stopped in grid '{name}' at step "
            f"{timing[name]['stopped_at']}; run the same command to resume")
      return {"stopped": True, "grid": name, "step": timing[name]["stopped_at"]}
    trained[name] = runs.GridRun.read(name, g, os.path.join(workdir, name), timing[name])
  out = module.analyze(config, trained, workdir, log)
  rows, net_rows = out["rows"], out.pop("net_rows")
  out.update({"study": config.study, "config": cfg, "machine": machine(), "timing": timing,
              "wall_s": time.perf_counter() - t0,  # this invocation (resumed parts excluded)
              "figure": f"{config.study}.png", "stopped": False})
  out = files.jsonable(out)
  fig = module.figure(out)
  with files.result_set(workdir) as new:
    files.save_figure(fig, os.path.join(new, f"{config.study}.png"), dpi=200)
    files.write_csv(os.path.join(new, "study.csv"), rows)
    files.write_csv(os.path.join(new, "nets.csv"), net_rows)
    files.write_json(os.path.join(new, "study.json"), out)
  if log:
    log(f"study {config.study} done: {workdir}/study.csv, study.json, {config.study}.png")
  return out


def redraw(workdir: str) -> str:
  """Draws a finished study's figure again from its study.json alone; returns the PNG path.

  The figure replaces the old one in a new result set holding the same other files.
  """
  workdir = os.path.abspath(workdir)
  current = files.result_set_path(workdir)
  errors.check(current is not None and os.path.exists(os.path.join(current, "study.json")),
               f"no study.json in {workdir}; run the study there first")
  with open(os.path.join(current, "study.json")) as f:
    tables = json.load(f)
  fig = registry.get(tables["study"]).figure(tables)
  png = tables["figure"]
  with locking.workdir_lock(workdir), files.result_set(workdir) as new:
    for name in os.listdir(current):
      if name not in (png, os.path.splitext(png)[0] + ".pdf"):
        shutil.copy2(os.path.join(current, name), os.path.join(new, name))
    files.save_figure(fig, os.path.join(new, png), dpi=200)
  return os.path.join(workdir, png)
