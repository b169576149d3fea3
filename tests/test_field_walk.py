"""Every field of every config, walked with bad values: each is refused in one line
naming the field, by the check each launcher runs before any work.

For each launcher (train: every variant of configs/cifar10.py and
configs/embedded.py; sweep: every variant of configs/collapse.py; study: every
study of configs/study.py; analyze: its flags) the walk takes every field of
every config, finds the field's rule in the launcher's table of
`resjax.schema` rules (a field without one fails the test), and tries values
of each class that slips through hand-written checks: non-finite, zero,
negative, huge, the wrong type, a bool for an int, an empty list, a list that
repeats an entry (`class_values`), plus values hypothesis draws for the field's
kind. Whether a value is allowed comes from the field's rule: a value the rule
refuses must end in a ConfigError of one line naming the field; a value it
allows must not be refused by that rule (another field's rule or a check
across fields may still refuse it, in lines of their own). The checks are
called in-process (validation only: nothing compiles, trains or writes); a
few cases per launcher also run as processes (exit 2, one `error:` line,
nothing written to the workdir).
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from configs import cifar10, collapse as collapse_configs, embedded, study
from helpers import launcher_cases, messages, subprocess_env
from resjax import analysis, collapse, errors, probes, restore, schema, studies, train

SETTINGS = hypothesis.settings(max_examples=3, deadline=None, derandomize=True, database=None,
                               suppress_health_check=list(hypothesis.HealthCheck))
# The analyze flags checked before any file is read, at their defaults.
ANALYZE_DEFAULTS = dict(split="train", batch_size=256, dormant_threshold=0.1, grad_batches=None,
                        grad_batch_size=None, max_examples=None, step=None)
ANALYZE_RULES = {**{k: r for k, r in probes.RULES.items() if k in ANALYZE_DEFAULTS},
                 "step": restore.RULES["step"]}


def _variants() -> dict[str, list[tuple[str, Any, Callable[[Any], dict], Callable[[Any], None]]]]:
  """launcher -> [(config name, config, its rules, its check)]."""
  out = {"train": [], "sweep": [], "study": [], "analyze": []}
  for module in (cifar10, embedded):
    for v in module.VARIANTS:
      out["train"].append((f"{module.__name__}.py:{v}", module.get_config(v), train.rules,
                           lambda c: train.validate(c, 1)))
  for v in (None, "ball", "sphere", "quick"):
    out["sweep"].append((f"configs/collapse.py:{v or ''}", collapse_configs.get_config(v),
                         lambda c: collapse.RULES, _sweep_check))
  for name in studies.names():
    out["study"].append((f"configs/study.py:{name}", study.get_config(name), studies.rules,
                         studies.validate))
  out["analyze"].append(("launch.analyze flags", dict(ANALYZE_DEFAULTS),
                         lambda c: ANALYZE_RULES, lambda c: analysis.check_args(**c)))
  return out


def _sweep_check(config) -> None:
  collapse.spec_from_config(config)
  collapse.spec.figure_of(config)


VARIANTS = _variants()
FAILURES: list[str] = []
COUNTS = {"fields": 0, "values": 0, "refused": 0, "allowed": 0}
ROUNDS: dict[str, int] = {}
DRAWN: dict[str, int] = {}


@contextlib.contextmanager
def _set(config: Any, field: str, value: Any) -> Iterator[Any]:
  """`config` with `field` set to `value` for the block (no ConfigDict type checks), then as
  it was. In place: a copy per value was a third of the walk's time."""
  parts = field.split(".")
  if not hasattr(config, "to_dict"):  # A flat dict of flags.
    yield {**config, field: value}
    return
  node = config
  for part in parts[:-1]:
    node = node[part]
  fields = node._fields  # pylint: disable=protected-access  (bypasses the type checks)
  before = fields[parts[-1]]
  fields[parts[-1]] = value
  try:
    yield config
  finally:
    fields[parts[-1]] = before


def class_values(rule: schema.Rule, current: Any) -> list[Any]:
  """The values of each class that hand-written checks let through, for a field of `rule`
  whose value is now `current`."""
  out = [None, "x", True, [], float("nan"), float("inf"), -float("inf"), 0, -1, 2**31, 2**64,
         1e39, 1e-39, -1e30]
  if rule.kind == "int":
    out += [1.5, np.int64(3), np.bool_(True), "3", 2**31 - 1]
  elif rule.kind == "float":
    out += [0.0, -1.0, np.float32(0.5), 1e30, "0.1", 3e38]
  elif rule.kind == "bool":
    out += [1, "True", np.bool_(False)]
  elif rule.kind in ("choice", "str", "path"):
    out += ["", "nosuch", 3, ("a", "b")]
  elif rule.kind in ("list", "ints", "floats"):
    items = schema.entries(current, rule.split) or []
    out += [(), ("nosuch",), (float("nan"),), (-1,), (2**40,), 5, "a,a", (True,)]
    if items:
      out += [(items[0], *items), tuple(items)]  # An entry repeated; the list as it is.
  return out


def _strategy(rule: schema.Rule) -> st.SearchStrategy:
  """Values drawn for a field of `rule`'s kind (mostly wrong ones)."""
  number = st.one_of(st.integers(-2**70, 2**70), st.floats(), st.sampled_from([0, 0.0, -0.0]))
  junk = st.one_of(st.none(), st.booleans(), st.text(max_size=4), number)
  if rule.kind in ("list", "ints", "floats"):
    return st.one_of(junk, st.lists(junk, max_size=3).map(tuple))
  return junk


def _check(launcher: str, name: str, config: Any, table: dict, check: Callable, field: str,
           value: Any) -> None:
  rule = table[field]
  with _set(config, field, value) as changed:
    allowed = rule.ok(value) or (rule.when is not None and not rule.when(changed))
    try:
      check(changed)
      lines = []
    except errors.ConfigError as e:
      lines = str(e).splitlines()
  COUNTS["values"] += 1
  shown = f"{launcher} {name}: {field}={schema.show(value)}"
  if allowed:
    COUNTS["allowed"] += 1
    own = schema.problem(field, value, rule)
    if own is not None or any(line.startswith(f"{field}=") and rule.advice() in line
                              for line in lines):
      FAILURES.append(f"{shown}: its rule allows it, yet it was refused by it: {lines}")
    return
  COUNTS["refused"] += 1
  if len(lines) != 1 or field not in lines[0]:
    FAILURES.append(f"{shown}: expected one line naming {field}, got {lines or 'no error'}")


def _walked(launcher: str, config: Any) -> list[str]:
  """The fields the walk visits: all, but of a study's grids only the first of each set of
  grids with the same fields (a study of 54 grids of one training config walks one; each
  check still validates the whole study config)."""
  seen, out = set(), []
  grids = schema.get(config, "grids") if launcher == "study" else None
  first = {}
  for name, g in (grids.items() if hasattr(grids, "items") else ()):
    fields = frozenset(schema.leaves(g))
    if fields not in seen:
      seen.add(fields)
      first[name] = True
  for field in schema.leaves(config):
    parts = field.split(".")
    if launcher == "study" and parts[0] == "grids" and parts[1] not in first:
      continue
    out.append(field)
  return out


def _walk(launcher: str, draw: Callable[[schema.Rule], Any] | None = None,
          round_: int = 0, only: int | None = None) -> None:
  """Walks every field of every config of `launcher` with the class values (`draw`:
  one drawn value each). A study's grid fields, the training fields that the train
  walk gives every class value, get two class values each, in rotation through the
  classes (drawn: one in three rounds), so the walk stays within seconds."""
  for index, (name, config, rules_of, check) in enumerate(VARIANTS[launcher]):
    if only is not None and index != only:
      continue
    table = rules_of(config)
    for i, field in enumerate(_walked(launcher, config)):
      if field not in table:
        FAILURES.append(f"{launcher} {name}: {field} has no rule")
        continue
      COUNTS["fields"] += draw is None
      rule, current = table[field], schema.get(config, field)
      sample = launcher == "study" and field.startswith("grids.")
      if draw is not None:
        values = [draw(rule)] if not sample or (i + round_) % 3 == 0 else []
      else:
        values = class_values(rule, current)
        if sample:
          values = [values[i % len(values)], values[(7 * i + 3) % len(values)]]
      for value in values:
        _check(launcher, name, config, table, check, field, value)


@pytest.mark.parametrize("launcher", ["train", "sweep", "study", "analyze"])
def test_every_field_refuses_each_class_of_bad_value_in_one_line(launcher):
  FAILURES.clear()
  COUNTS.update(dict.fromkeys(COUNTS, 0))
  start = time.perf_counter()
  _walk(launcher)
  assert not FAILURES, "\n".join(FAILURES[:20]) + f"\n({len(FAILURES)} in all)"
  print(f"{launcher}: {len(VARIANTS[launcher])} configs, {COUNTS['fields']} fields, "
        f"{COUNTS['values']} values ({COUNTS['refused']} refused by their rule, "
        f"{COUNTS['allowed']} allowed) in {time.perf_counter() - start:.1f} s")


# One test per config variant: the draws of one example stay within hypothesis's
# buffer (all variants of a launcher in one example overran it and stalled).
DRAWN_CASES = [(launcher, i) for launcher in ("train", "sweep", "study", "analyze")
               for i in range(len(VARIANTS[launcher]))]


@pytest.mark.parametrize("launcher,variant", DRAWN_CASES)
@SETTINGS
@hypothesis.given(data=st.data())
def test_every_field_refuses_drawn_values_by_its_rule(launcher, variant, data):
  FAILURES.clear()
  key = (launcher, variant)
  ROUNDS[key] = ROUNDS.get(key, -1) + 1
  before = COUNTS["values"]
  _walk(launcher, lambda rule: data.draw(_strategy(rule)), ROUNDS[key], only=variant)
  DRAWN[launcher] = DRAWN.get(launcher, 0) + COUNTS["values"] - before
  assert not FAILURES, "\n".join(FAILURES[:20]) + f"\n({len(FAILURES)} in all)"


def test_the_walk_covers_every_launcher_config_and_field():
  """Each launcher's configs are all there, and the tables hold no rule for a field
  that no config has (a stale rule would hide a renamed field)."""
  assert len(VARIANTS["train"]) == len(cifar10.VARIANTS) + len(embedded.VARIANTS)
  assert len(VARIANTS["study"]) == len(studies.names()) == 13
  fields = sum(len(schema.leaves(c)) for k in VARIANTS for _, c, _, _ in VARIANTS[k])
  assert fields > 1500, fields
  seen = {k: set() for k in VARIANTS}
  for launcher, entries in VARIANTS.items():
    for _, config, rules_of, _ in entries:
      seen[launcher] |= set(schema.leaves(config))
  for launcher, entries in VARIANTS.items():
    for name, config, rules_of, _ in entries:
      required = {f for f, r in rules_of(config).items() if not r.optional and r.when is None}
      assert required <= set(schema.leaves(config)), (launcher, name, required - seen[launcher])


# ----------------------------------------------------------------------------- as processes


def _cases(root) -> list[tuple[str, list[str], str]]:
  """(module, args, what the error line says) of a few bad inputs per launcher."""
  w = lambda k: f"--workdir={root}/w{k}"  # noqa: E731  A new workdir each: nothing may appear.
  tiny = ["--config=configs/embedded.py:tiny_mlp", "--config.train.steps=2"]
  sweep = ["--config=configs/collapse.py:quick"]
  study_cfg = "--config=configs/study.py:degradation,tiny"
  return [
      ("launch.train", [*tiny, w(0), "--config.opt.lr=inf"], "opt.lr=inf is not allowed"),
      ("launch.train", [*tiny, w(1), "--config.grid.opt.momentum=0.1,0.9"],
       "grid.opt.momentum=(0.1, 0.9) is not allowed; leave it empty: opt.name='adam'"),
      ("launch.train", ["--config=configs/embedded.py:spirals_mlp", w(2),
                        "--config.data.noise=1e39"], "data.noise=1e+39 is not allowed"),
      ("launch.train", [*tiny, w(3), "--config.grid.seeds=1,1"], "grid.seeds=(1, 1)"),
      ("launch.train", [*tiny, w(4), "--config.opt.momentum=0.5"],
       "--config.opt.momentum=0.5 is not used"),
      ("launch.sweep", [*sweep, w(5), "--config.dims=2,3", "--config.dims=2,2"],
       "dims=(2, 2) is not allowed"),
      ("launch.sweep", [*sweep, w(6), "--config.manifold.turns=inf"], "manifold.turns=inf"),
      ("launch.sweep", [*sweep, w(7), "--config.seed=4294967296"], "seed=4294967296"),
      ("launch.study", [study_cfg, w(8), "--config.seeds=1"], "seeds=1 is not allowed"),
      ("launch.study", [study_cfg, w(9), "--config.grids.mlp.opt.lr=nan"],
       "grids.mlp.opt.lr=nan is not allowed"),
      ("launch.study", ["--config=configs/study.py:collapse,tiny", w(10),
                        "--config.collapse.seeds=0"], "collapse.seeds=0 is not allowed"),
      ("launch.analyze", [w(11), "--grad_batch_size=0"], "grad_batch_size=0 is not allowed"),
      ("launch.analyze", [w(12), "--dormant_threshold=1.5"], "dormant_threshold=1.5"),
      ("launch.analyze", [w(13), "--step=-1"], "step=-1 is not allowed"),
  ]


def test_launchers_refuse_in_one_line_with_exit_2_and_write_nothing(tmp_path):
  cases = _cases(tmp_path)
  results = launcher_cases([(m, a) for m, a, _ in cases], tmp_path / "out",
                           subprocess_env(tmp_path / "jax-cache"), timeout=600)
  bad = []
  for (module, args, expected), (code, err, out) in zip(cases, results):
    lines = messages(err)
    if not (code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
            and expected in lines[0] and "Traceback" not in err + out):
      bad.append(f"{module} {args[-1]}: exit {code}, {lines[-3:]}")
  assert not bad, "\n".join(bad)
  assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("w")]  # No workdir made.
