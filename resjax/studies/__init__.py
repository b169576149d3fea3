"""The studies of claims C1-C7: one module per study, found by name.

A study is a named set of ordinary grid runs (configs/study.py) plus its
analysis and figure. Study `name` is the module `resjax.studies.<name>`; it
declares

  FAMILIES                       the model families its grids may train
  analyze(config, runs, workdir, log) -> tables
                                 statistics only: plain dicts and lists of rows
  figure(tables) -> Figure       drawn from the tables (study.json) alone
  RULES                          (optional) the study config's fields it reads
                                 besides study, seed and seeds, with their rules
  tiny(config)                   (optional) its part of the ',tiny' shrink
  validate(config)               (optional) checks of its own config fields
  headline(study_json) -> {claim: sentence}
                                 (optional) its verdicts for RESULTS.md's summary
                                 table, from study.json alone (summary.py)
  grid_seeds(config, name)       (optional) a grid's own seeds (None: the study's)
  prepare(config, name, grid, trained) -> grid
                                 (optional) a grid's config from the grids trained
                                 before it (in name order), e.g. a pilot's rate

`get(name)` gives the module, `names()` lists the studies, `run(config,
workdir)` trains and analyses one (runner.py), `redraw(workdir)` draws a
finished study's figure again from its study.json.

  degradation  final training loss / accuracy vs depth, plain vs residual (C5)
  dead_units   dead units per layer and per unit, init vs trained (C4, C7)
  collapse     accuracy vs first-layer width n on 2-D spirals, beside the
               untrained collapse curve of `resjax.collapse.sweep` (C1-C3)
  bottleneck   inverted-residual nets, linear vs ReLU6 bottleneck (C6)
  convergence  steps to reach a target training loss, plain vs residual (C5)
  redundancy   whether n / d or n puts the ReLU damage of tasks of intrinsic
               dimension d on one curve (C3)
  pilot        the learning-rate pilot (reported, not applied)
  revival      dead units during training without and with ReDo resets, and
               whether learning comes back with them (C4)
  identification  which of n/d, n - d, P(Bin(n, 1/2) < d) and n carries the
               ReLU damage, in cells chosen to tell them apart (C3)
  power        C6 at bottleneck widths 2, 4 and C1 at n = 3 with the seeds a
               power computation gives, each variant at its own pilot rate
"""
from resjax.studies.registry import get, names
from resjax.studies.runner import machine, redraw, rules, run, unused, validate
from resjax.studies.runs import grids

__all__ = ["get", "grids", "machine", "names", "redraw", "rules", "run", "unused", "validate"]
