"""A study's grids: their configs, training them, reading them back, probing their nets.

Each grid of a study is an ordinary training config with `config.grid` set;
it trains with `train.train_and_evaluate(grid_config, workdir/<grid>)` (so it
resumes as `launch.train` does) and is read back as a `GridRun`: its nets in
the studies' terms (`Net`), histories per net from metrics.jsonl, and probes
(`restore.load(workdir/<grid>, net=k)` for the trained net,
`train.initial_states` of net k's config for its exact initialization).
"""
from __future__ import annotations

import collections
import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from resjax import errors, files, grid, models, probes, progress, restore, sharding, train
from resjax.studies import registry

Net = collections.namedtuple("Net", "seed width depth variant lr")


def net_of(cfg) -> Net:
  """A grid net's condition in the studies' terms (width, depth, variant: `models.traits`)."""
  return Net(int(cfg.seed), *models.traits(cfg.model.name, cfg.model), float(cfg.opt.lr))


def _num(v) -> float:
  return float("nan") if v is None else float(v)


class GridRun:
  """A trained grid: its nets, histories [net, eval] and (optional) probes."""

  def __init__(self, name: str, config, workdir: str, nets: list[Net], eval_steps,
               history: dict[str, np.ndarray], timing: dict, index=None):
    self.name, self.config, self.workdir = name, config, workdir
    self.nets, self.eval_steps, self.history = nets, np.asarray(eval_steps), history
    self.timing = timing
    self.index = list(range(len(nets))) if index is None else list(index)  # net k in the grid
    self.probes_init: dict[int, dict] = {}
    self.probes_final: dict[int, dict] = {}

  @classmethod
  def read(cls, name: str, config, workdir: str, timing: dict) -> "GridRun":
    nets = [net_of(c) for c in grid.nets(config)]
    rows: dict[tuple[int, int], dict] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        row = json.loads(line)
        if "eval/accuracy" in row:
          rows[(int(row.get("net", 0)), int(row["step"]))] = row
    steps = sorted({s for _, s in rows})
    keys = {"train_loss": "eval_train/loss", "train_acc": "eval_train/accuracy",
            "test_loss": "eval/loss", "test_acc": "eval/accuracy"}
    history = {k: np.asarray([[_num(rows.get((i, s), {}).get(v)) for s in steps]
                              for i in range(len(nets))], np.float64)
               for k, v in keys.items()}
    return cls(name, config, workdir, nets, steps, history, timing)

  def subset(self, members: Sequence[int], name: str | None = None) -> "GridRun":
    """The nets `members` (positions in this run) as a run of their own."""
    out = GridRun(name or self.name, self.config, self.workdir,
                  [self.nets[i] for i in members], self.eval_steps,
                  {k: v[list(members)] for k, v in self.history.items()}, self.timing,
                  [self.index[i] for i in members])
    out.probes_init = {j: self.probes_init[i] for j, i in enumerate(members)
                       if i in self.probes_init}
    out.probes_final = {j: self.probes_final[i] for j, i in enumerate(members)
                        if i in self.probes_final}
    return out

  def title(self) -> str:
    """The grid's nets in a few words ('MLP w16, spirals') for figure titles."""
    widths = sorted({n.width for n in self.nets})
    w = str(widths[0]) if len(widths) == 1 else "n"
    return {"mlp": f"MLP w{w}" if len(widths) == 1 else "MLP",
            "resnet": f"ResNet {w} ch.", "resnet1d": f"1-D ResNet {w} ch.",
            "invres": "inv. residual",
            "firstlayer": "width-n first layer"}[self.config.model.name] + \
        f", {self.config.data.name}"


def calls_of(g, seeds: int) -> int | None:
  """The nets per compiled call the study gives grid `g` with `seeds` seeds: for grids of
  32 nets or more, one call per value of the first model axis (None: `g`'s own)."""
  found = grid.axes(g)
  count = grid.count(g) * seeds
  first = found[0] if found else ("", ())
  if first[0] in ("model.depth", "model.width", "model.stages") and len(first[1]) > 1 \
      and count >= 32:
    return count // len(first[1])
  return None


def seeds_of(config, name: str) -> int:
  """The number of seeds of grid `name`: `config.grid_seeds.<name>` where the study sets
  one (a grid far costlier than the others), else `config.seeds`."""
  own = config.get("grid_seeds") or {}
  return int(own.get(name, config.seeds))


def grids(config) -> dict[str, Any]:
  """The study's grid configs, with the study's seeds (those its module's
  `grid_seeds(config, name)` gives a grid, else seed .. seed + `seeds_of` - 1) and, for
  grids of 32 nets or more, one compiled call per value of the first model axis (each call
  padded to its own nets only: `calls_of`)."""
  out = {}
  own = getattr(registry.get(config.study), "grid_seeds", lambda *_: None)
  for name, g in config.grids.items():
    tree = g.to_dict()  # As a dict: the study's values replace whatever the fields held.
    seeds = own(config, name)
    if seeds is None:
      seeds = tuple(range(int(config.seed), int(config.seed) + seeds_of(config, name)))
    tree["grid"]["seeds"] = tuple(int(s) for s in seeds)
    per_call = calls_of(g, len(seeds))
    if per_call is not None:
      tree["grid"]["nets_per_call"] = per_call
    out[name] = type(g)(tree)
  return out


def train_grid(name: str, g, workdir: str, log, should_stop) -> dict:
  """Trains (or resumes) one grid in workdir/<name>; returns its timing."""
  gdir = os.path.join(workdir, name)
  done = os.path.join(gdir, "study_done.json")
  if os.path.exists(done):
    if log:
      log(f"[{name}] already trained: {gdir}")
    with open(done) as f:
      return json.load(f)
  if log:
    log(f"[{name}] {len(grid.nets(g))} nets of {g.model.name} on {g.data.name} "
        f"({', '.join(f'{f} x{len(v)}' for f, v in grid.axes(g))}), {g.train.steps} steps each")
  tic = time.perf_counter()
  # The training lines go where the study's own lines go (none when it is silent).
  result = train.train_and_evaluate(g, gdir, should_stop=should_stop,
                                    say=log if log else lambda _: None)
  timing = {"train_s": time.perf_counter() - tic, "nets": len(grid.nets(g))}
  if result.get("stopped"):
    timing["stopped_at"] = int(result["step"])
    return timing
  files.write_json(done, timing)
  return timing


def _probe_one(state, ds, grad: bool) -> dict:
  """What the studies read from `probes.run` on the training split."""
  n = len(ds.train)  # Gradient norms: 4 batches of 64, at most what the split holds.
  size = min(64, n)
  res = probes.run(state, None, ds, split="train", batch_size=2048,
                   grad_batches=min(4, max(n // size, 1)) if grad else 0, grad_batch_size=size,
                   mesh=sharding.make_mesh(jax.devices()[:1]))
  layers = []
  for row in res.layers:
    frac = np.asarray(res.active_fraction[row["layer"]], np.float64)
    on = frac * row["units"] * row["positions"]
    layers.append({"layer": row["layer"], "units": int(row["units"]),
                   "dead_units": [int(u) for u in row["dead_units"]],
                   "all_on": float(row["linear_frac"]), "all_off": float(np.mean(on < 0.5)),
                   "few_on": float(np.mean(on < 1.5))})
  weights = [{"layer": w["layer"], "grad_norm": float(w["grad_norm"])} for w in res.weights
             if w["layer"] != "classifier"]
  return {"layers": layers, "weights": weights}


def probe_grid(run: GridRun, log: Callable[[str], None] | None,
               grad_at_init: Callable[[Net], bool] = lambda n: False,
               which: Callable[[Net], bool] = lambda n: True) -> None:
  """Probes nets of `run` at init and after training (cached in <grid>/study_probes.json)."""
  path = os.path.join(run.workdir, "study_probes.json")
  cached = {}
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
  ds = train.load_data(run.config)
  nets = grid.nets(run.config)
  todo = [i for i, n in enumerate(run.nets) if which(n)]
  tic = time.perf_counter()
  new = [i for i in todo if str(run.index[i]) not in cached]
  inits = dict(zip(new, train.initial_states([nets[run.index[i]] for i in new], ds.input_shape,
                                              ds.num_classes, mean=ds.mean, std=ds.std)))
  meter = progress.Progress(len(new), "nets", report=log, every=10.0) if log and new else None
  finals = restore.load_nets(run.workdir, [run.index[i] for i in new],
                             devices=jax.devices()[:1]) if new else iter(())
  for count, (i, (_, final)) in enumerate(zip(new, finals)):
    k = run.index[i]
    cached[str(k)] = {"init": _probe_one(inits.pop(i), ds, grad_at_init(run.nets[i])),
                      "final": _probe_one(final, ds, False)}
    if meter:
      meter.update(count + 1, f"[{run.name}] probed")
  for i in todo:
    run.probes_init[i] = cached[str(run.index[i])]["init"]
    run.probes_final[i] = cached[str(run.index[i])]["final"]
  files.write_json(path, cached)
  run.timing["probes_s"] = time.perf_counter() - tic


def read_probes(workdir: str) -> dict[int, list[tuple[int, dict[str, dict]]]]:
  """probes.jsonl of a grid: net -> [(step, {layer: row})] in step order ('reset' on its own)."""
  out: dict[int, dict[int, dict[str, dict]]] = {}
  with open(os.path.join(workdir, "probes.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      net = out.setdefault(int(r.get("net", 0)), {})
      net.setdefault(int(r["step"]), {})[r["layer"]] = r
  return {k: sorted(v.items()) for k, v in out.items()}


def check_last_probe(name: str, g) -> None:
  """ConfigError unless grid `name` probes during training and at its last step."""
  every, steps = int(g.train.probe_every), int(g.train.steps)
  errors.check(every > 0 and steps % every == 0,
               f"grids.{name}.train.probe_every={every} is not allowed; the study reads "
               f"the last step's probe: use a divisor of train.steps={steps}")
