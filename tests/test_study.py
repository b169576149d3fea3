"""Each study, shrunk to seconds, runs end to end on the grid trainer and writes
sound results; an interrupted study resumes."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import study as study_configs
from resjax import errors, grid, studies, train
from resjax.studies import runs, tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _conditions(config):
  """Conditions a study's rows cover (a degradation lr grid: two views of it)."""
  total = 0
  for g in studies.grids(config).values():
    per = len(grid.nets(g)) // len(g.grid.seeds)
    lrs = len(g.grid.opt.lr)
    total += per // lrs * 2 if lrs > 1 and config.study == "degradation" else per
  return total


@pytest.mark.parametrize("name", studies.names())
def test_study_runs_end_to_end(name, tmp_path):
  config = study_configs.get_config(f"{name},tiny")
  out = studies.run(config, str(tmp_path), log=None)
  for f in ("study.csv", "nets.csv", "study.json", f"{name}.png", f"{name}.pdf", "config.json"):
    assert os.path.getsize(tmp_path / f) > 0, f
  with open(tmp_path / f"{name}.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  rows = _read_csv(tmp_path / "study.csv")
  nets = _read_csv(tmp_path / "nets.csv")
  assert len(rows) == _conditions(config)
  assert len(nets) == sum(len(grid.nets(g)) for g in studies.grids(config).values())
  # Every interval is there and holds its estimate; accuracies are proportions.
  assert any(k.endswith("_lo") for k in rows[0])
  for row in rows:
    for key, value in row.items():
      if key + "_lo" in row and value not in ("nan", "inf", ""):
        lo, hi = float(row[key + "_lo"]), float(row[key + "_hi"])
        if np.isfinite(lo) and np.isfinite(hi):
          assert lo - 1e-9 <= float(value) <= hi + 1e-9, (key, row)
  for net in nets:
    assert 0.0 <= float(net["test_acc"]) <= 1.0
    assert np.isfinite(float(net["train_loss"]))
  with open(tmp_path / "study.json") as f:
    saved = json.load(f)
  assert saved["study"] == name and saved["machine"]["cpu_count"] >= 1
  assert saved["rows"] == json.loads(json.dumps(out["rows"])) and saved["figure"] == f"{name}.png"
  assert all("p_holm" in c for c in saved["contrasts"].values())
  if name == "dead_units":
    for row in rows:
      assert int(row["units_recovered"]) <= int(row["units_dead_init"])
      assert int(row["units_died"]) <= int(row["units_alive_init"])
    assert all(0.0 <= float(n["dead_trained"]) <= 1.0 for n in nets)
  if name == "collapse":
    curve = saved["curves"]["untrained"]
    assert curve["dims"] == [2, 3]
    # P(Bin(n, 1/2) < 2) for n = 2, 3: 3/4 and 1/2.
    np.testing.assert_allclose(curve["collapsed_frac_theory"], [0.75, 0.5], atol=0.05)
    assert {r["variant"] for r in rows} == {"relu", "linear", "residual"}
  if name == "degradation":
    assert {r["view"] for r in rows if r["grid"].startswith("mlp")} == {
        "mlp, lr 0.01", "mlp, best lr per net"}
  if name == "convergence":
    assert all("steps_to_target" in n for n in nets)
  if name == "redundancy":
    assert {(r["d"], r["width"]) for r in rows} == {("1", "1"), ("1", "2"), ("2", "2"), ("2", "3")}
    for row in rows:  # P(Bin(n, 1/2) < d) at initialization, beside the trained layer.
      n, d = int(row["width"]), int(row["d"])
      assert float(row["ratio"]) == pytest.approx(n / d)
      assert float(row["collapsed_theory_init"]) == pytest.approx(
          {(1, 1): 0.5, (2, 1): 0.25, (2, 2): 0.75, (3, 2): 0.5}[(n, d)])
      if row["variant"] == "relu":
        assert 0.0 <= float(row["collapsed_trained"]) <= 1.0
    assert len(saved["contrasts"]) == 4 and saved["contrasts"][next(iter(saved["contrasts"]))][
        "family_size"] == 4  # linear minus ReLU in 4 cells, one family
    fit = saved["one_curve"]
    assert fit["cells"] == 4 and fit["better"] in ("n/d", "n", "not told apart")
    assert fit["r2_diff_lo"] <= fit["r2_diff"] <= fit["r2_diff_hi"]
  if name == "revival":
    _check_revival(rows, nets, saved)
  if name == "rank_collapse":
    _check_rank_collapse(rows, nets, saved)
  if name == "identification":
    _check_identification(rows, saved)
  if name == "linear_regime":
    _check_linear_regime(config, rows, nets, saved)
  if name == "power":
    _check_power(config, rows, nets, saved)
  if name == "mnist1d":
    _check_mnist1d(rows, nets, saved)
  if name == "pilot":
    chosen = saved["chosen"]
    assert set(chosen) == {"mlp"}
    for name_, c in chosen.items():
      losses = {float(k): v for k, v in c["train_loss_geomean_per_lr"].items()}
      assert c["chosen_lr"] == min(losses, key=losses.get)  # the lowest final training loss
      assert c["study_lr"] == {"mlp": 1e-2, "conv": 3e-2, "invres": 1e-2}[name_]
    assert sum(r["chosen"] == "True" for r in rows) == 2 * len(chosen)  # both variants
  # The figure is drawn from study.json alone: redrawn, it replaces the old one; the
  # other files stay as they were.
  before = {f: (tmp_path / f).read_bytes() for f in ("study.csv", "nets.csv", "study.json")}
  assert studies.redraw(str(tmp_path)) == str(tmp_path / f"{name}.png")
  with open(tmp_path / f"{name}.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert {f: (tmp_path / f).read_bytes() for f in before} == before


def _check_linear_regime(config, rows, nets, saved):
  assert sum(n["grid"] == "invres" for n in nets) == 8  # grid_seeds.invres: 2 seeds, 4 conditions
  high = f"bias {saved['high_bias']:g}"
  for row in rows:
    assert 0.0 <= float(row["share_init"]) <= 1.0 and 0.0 <= float(row["share_trained"]) <= 1.0
    if row["arm"] == high:  # The premise of the ablation: every unit on for every input at init.
      assert float(row["share_init"]) == 1.0
    if row["grid"] != "invres":  # Dense layers: a sample is an input.
      assert row["share_init"] == row["input_share_init"]
  families = {}
  for c in saved["contrasts"].values():
    families.setdefault(c["family"], []).append(c)
    assert c["verdict"].startswith("detected") if c["holm_reject"] else c["verdict"].startswith("not")
  assert {f: len(v) for f, v in families.items() if f != "regime"} == {
      "damage": 6, "gap": 3, "arm": 6}
  assert all(c["family_size"] == len(families[c["family"]]) for c in saved["contrasts"].values())
  c = saved["contrasts"]
  for n in (2, 3):  # The interaction is the damage at bias 0 minus the damage at the high bias.
    d0, dh, inter = (c[k]["mean"] for k in c if k.startswith(f"n = {n}:"))
    assert inter == pytest.approx(d0 - dh, abs=1e-5)
  lines = studies.get("linear_regime").headline(saved)
  assert set(lines) == {"C1", "C6", "C7"} and all(any(ch.isdigit() for ch in v)
                                                  for v in lines.values())
def _check_mnist1d(rows, nets, saved):
  """Each test grid trained at the rate of best mean validation accuracy of its selection
  grid; verdicts follow Holm; the headline quotes study.json."""
  for family in ("resnet1d", "invres"):
    select = [n for n in nets if n["grid"] == f"select_{family}"]
    means = {lr: np.mean([float(n["test_acc"]) for n in select if float(n["lr"]) == lr])
             for lr in sorted({float(n["lr"]) for n in select})}
    chosen = saved["selection"][family]["rate"]
    assert chosen == max(means, key=means.get) and len(means) == 2
    assert {float(n["lr"]) for n in nets if n["grid"] == f"test_{family}"} == {chosen}
    assert saved["selection"][family]["num_val"] == 500
  assert {r["split"] for r in rows} == {"validation", "test"}
  for c in saved["contrasts"].values():
    assert c["verdict"].startswith("detected") == c["holm_reject"], c
    assert c["family_size"] == 2 and c["n"] == 2  # tiny: 2 depths / widths (variants), 2 seeds
  lines = studies.get("mnist1d").headline(saved)
  assert set(lines) == {"C5", "C6"} and all("MNIST-1D" in v for v in lines.values())
  c = saved["contrasts"]["invres/width 2: test_acc(linear) - test_acc(relu6)"]
  assert f"{100 * c['mean']:+.1f}" in lines["C6"]


def _check_revival(rows, nets, saved):
  """Both arms start from the same nets; unit counts add up; verdicts follow the intervals."""
  assert {r["resets"] for r in rows} == {"none", "reset"}
  arms = {}
  for n in nets:
    arms.setdefault((n["variant"], n["width"], n["depth"], n["seed"]), {})[n["resets"]] = n
  assert len(arms) == len(nets) // 2
  for pair in arms.values():
    none, reset = pair["none"], pair["reset"]
    for key in ("dead_init", "units_dead_init", "dead_layer_init", "units"):
      assert none[key] == reset[key], key  # The same initialization in both arms.
    assert int(float(none["units_reset"])) == 0
    for n in (none, reset):
      assert float(n["units_revived_init"]) <= float(n["units_dead_init"])
      assert float(n["units_dead_since_init"]) <= float(n["units_dead_init"])
      assert float(n["units_revived_init"]) <= float(n["units_revived"])
  assert sum(float(p["reset"]["units_reset"]) for p in arms.values()) > 0
  families = {}
  for c in saved["contrasts"].values():
    families.setdefault(c["family"], []).append(c)
    # Detected only where the interval excludes 0 and Holm rejects in its family.
    assert c["verdict"].startswith("detected") == (c["excludes_zero"] and c["holm_reject"]), c
    if not c["excludes_zero"] and c["sd"]:
      assert "not detected at this power" in c["verdict"] and c["detectable"] > 0
  cells = len(arms) // 2
  assert {f: len(v) for f, v in families.items() if "per cell" in f} == {
      "train_loss per cell": cells, "test_acc per cell": cells, "dead_final per cell": cells}
  assert all(c["family_size"] == len(v) for v in families.values() for c in v)


def _check_rank_collapse(rows, nets, saved):
  """Init geometry is the same for every rate and optimizer of a seed; geometry is in
  range; each cell's best rate has its lowest mean loss; verdicts follow Holm."""
  init = {}
  for n in nets:
    key = (n["variant"], n["depth"], n["seed"])
    init.setdefault(key, set()).add((round(float(n["cosine_init"]), 5),
                                     round(float(n["erank_init"]), 4)))
    assert 0.0 <= float(n["cosine_init"]) <= 1.0 and 1.0 <= float(n["erank_init"]) <= 16.0
    assert float(n["erank_cov_end"]) >= 0.0
  assert all(len(v) == 1 for v in init.values()) and len(init) == len(nets) // 4
  cells = {}
  for r in rows:
    cells.setdefault((r["optimizer"], r["variant"], r["depth"]), []).append(r)
  for cell in cells.values():
    best = [r for r in cell if r["best"] == "True"]
    assert len(best) == 1
    assert float(best[0]["train_loss"]) == min(float(r["train_loss"]) for r in cell)
    assert best[0]["bracketed"] == "False"  # Two rates: the best is at an edge.
  assert {b["optimizer"] for b in saved["best"]} == {"adam", "sgd"}
  sizes = {}
  for c in saved["contrasts"].values():
    sizes.setdefault(c["family"], []).append(c["family_size"])
    assert c["verdict"].startswith("detected") == bool(c["holm_reject"]), c
  assert {f: len(v) for f, v in sizes.items()} == {
      "convergence: steps": 4, "convergence: mean log loss": 4, "geometry at init": 4,
      "geometry at the end": 8, "init collapse predicts loss": 8}
  assert all(s == len(v) for v in sizes.values() for s in v)
  line = studies.get("rank_collapse").headline(saved)["C5"]
  assert f"Holm over {sizes['convergence: steps'][0]}" in line
def test_linear_regime_grids_have_their_own_seeds_and_a_high_bias_that_turns_every_unit_on():
  config = study_configs.get_config("linear_regime")
  got = studies.grids(config)
  assert {k: len(g.grid.seeds) for k, g in got.items()} == {"widths": 8, "bias": 8, "invres": 4}
  assert len(grid.nets(got["invres"])) == 32 and len(grid.nets(got["bias"])) == 64
  config.grid_seeds.invres = 1
  with pytest.raises(errors.ConfigError, match="grid_seeds.invres=1"):
    studies.validate(config)
  # The high bias exceeds what the widest first-layer row can take off on the widest input.
  ds = train.load_data(got["bias"])
  x = (ds.train.inputs - ds.mean) / ds.std
  radius = float(np.max(np.linalg.norm(x, axis=1)))
  row_bound = 2 * np.sqrt(1 / 2) / 0.87962566103423978 * np.sqrt(2)  # truncated at 2 SD
  assert radius * row_bound < study_configs.LINEAR_REGIME_HIGH_BIAS < 1.2 * radius * row_bound
def _check_power(config, rows, nets, saved):
  """Pilot seeds apart from the main ones; each main grid at its variant's lowest-loss rate;
  the verdicts follow Holm over the family; the headline quotes the json."""
  pilot = {int(n["seed"]) for n in nets if n["grid"].startswith("lr_")}
  main = {int(n["seed"]) for n in nets if n["grid"].startswith("main_")}
  assert pilot and main and not pilot & main
  for family, picks in saved["rates"].items():
    for variant, p in picks.items():
      losses = dict(zip(p["rates"], p["train_loss_geomean"]))
      assert p["lr"] == min(losses, key=losses.get)
      assert p["at_edge"] == (p["lr"] in (min(p["rates"]), max(p["rates"])))
      used = {float(n["lr"]) for n in nets
              if n["grid"] == f"main_{family}_{variant}"}
      assert used == {p["lr"]}, (family, variant, used)
  assert {r["phase"] for r in rows} == {"rate pilot", "main"}
  contrasts = saved["contrasts"]
  assert {c["claim"] for c in contrasts.values()} == {"C1", "C6"}
  for c in contrasts.values():
    assert c["family_size"] == len(contrasts)
    assert c["verdict"].startswith("detected") == c["holm_reject"], c
    assert c["n"] == (config.seeds if c["claim"] == "C6" else config.spirals_seeds)
  heads = studies.get("power").headline(saved)
  assert set(heads) == {"C1", "C6"}
  c1 = next(c for c in contrasts.values() if c["claim"] == "C1")
  assert f"{100 * c1['mean']:+.1f}" in heads["C1"] and c1["verdict"].split(" (")[0] in heads["C1"]
  assert saved["design"]["c6_width4"]["pairs_needed"] == 19  # From RESULTS.md's interval.


def test_power_picks_the_lowest_loss_rate_and_checks_its_seeds():
  power = studies.get("power")
  nets, losses = [], []
  for variant, best in (("linear", 1e-2), ("relu6", 1e-3)):
    for lr in (1e-3, 3e-3, 1e-2):
      for seed in (1000, 1001):
        nets.append(runs.Net(seed, 2, 2, variant, lr))
        losses.append(0.01 * (1 + seed - 1000) if lr == best else 0.5)
  run = runs.GridRun("lr_invres", None, "", nets, [600],
                             {"train_loss": np.asarray(losses)[:, None]}, {})
  picks = power.pick_rates(run)
  assert {v: p["lr"] for v, p in picks.items()} == {"linear": 1e-2, "relu6": 1e-3}
  assert picks["linear"]["at_edge"] and picks["relu6"]["at_edge"]
  assert picks["linear"]["train_loss_geomean"][2] == pytest.approx(np.sqrt(0.01 * 0.02), rel=1e-5)
  config = study_configs.get_config("power")
  assert config.seeds == max(study_configs.power_seeds()[k] for k in ("c6_width2", "c6_width4")) == 19
  assert config.spirals_seeds == study_configs.power_seeds()["c1_n3"] == 15
  config.rate_seed = 3  # Inside the main seeds 0..14.
  with pytest.raises(errors.ConfigError, match="rate_seed=3 is not allowed"):
    studies.validate(config)


def test_revival_counts_units_from_probe_rows():
  def probe(step, dead, always):  # Two layers of 4 units: their dead units, dead_every_probe.
    return step, {layer: {"units": 4, "dead": len(d), "dead_units": d, "dead_every_probe": a}
                  for layer, d, a in zip(("layer0", "layer1"), dead, always)}
  rows = [probe(0, ([0, 1], [0, 1, 2, 3]), (2, 4)), probe(10, ([1], [0, 1, 2, 3]), (1, 4)),
          probe(20, ([1, 2], [0, 1, 2]), (1, 3))]
  rows.insert(2, (15, {"layer0": {"reset": 1}, "layer1": {"reset": 4}}))
  got = studies.get("revival").net_numbers(rows)
  assert got["dead_init"] == 6 / 8 and got["dead_final"] == 5 / 8
  assert got["dead_layer_init"] == 1.0  # layer1: all 4 units dead at step 0
  assert got["units_revived"] == 2  # unit 0 of layer0 (at 10), unit 3 of layer1 (at 20)
  assert got["units_revived_init"] == 2 and got["revived_init"] == 2 / 6
  assert got["units_dead_since_init"] == 4 and got["units_reset"] == 5


def test_revival_config_is_checked():
  config = study_configs.get_config("revival,tiny")
  studies.validate(config)
  config.power = 1.0
  with pytest.raises(errors.ConfigError, match=r"^power=1.0 is not allowed"):
    studies.validate(config)
  config = study_configs.get_config("revival,tiny")
  config.grids.mlp.grid.train.reset_dead_every = (0,)
  with pytest.raises(errors.ConfigError, match="reset_dead_every"):
    studies.validate(config)
  config = study_configs.get_config("revival,tiny")
  config.grids.mlp.train.probe_every = 7
  with pytest.raises(errors.ConfigError, match="probe_every=7"):
    studies.validate(config)


def test_one_curve_fit_is_isotonic_and_tells_the_coordinates_apart():
  # Damage that depends on n / d only: the n / d fit is exact, the n fit is not.
  cells = [(d, n) for d in (1, 2, 4) for n in (d, 2 * d, 4 * d)]
  damage = {1: 0.3, 2: 0.1, 4: 0.0}
  y = [damage[n // d] for d, n in cells]
  assert studies.get("redundancy").one_curve_r2([n / d for d, n in cells], y) == pytest.approx(1.0)
  assert studies.get("redundancy").one_curve_r2([n for d, n in cells], y) < 0.7
  fit = studies.get("redundancy").isotonic_decreasing([3, 1, 2, 2], [1.0, 0.0, 2.0, 4.0])
  np.testing.assert_allclose(fit, [1.0, 2.0, 2.0, 2.0])  # pooled violators, non-increasing
  rng = np.random.default_rng(0)
  diffs = np.asarray(y)[:, None] + 0.01 * rng.standard_normal((len(cells), 8))
  out = studies.get("redundancy")._one_curve(cells, diffs, draws=200, seed=0)
  assert out["better"] == "n/d" and out["predicts"] == ["n/d"], out


def test_study_resumes_after_interruption(tmp_path):
  config = study_configs.get_config("convergence,tiny")
  out = studies.run(config, str(tmp_path / "a"), log=None, should_stop=lambda step: step == 10)
  assert out["stopped"] and out["step"] == 10
  assert not os.path.exists(tmp_path / "a" / "study.csv")
  lines = []
  studies.run(config, str(tmp_path / "a"), log=lines.append)
  studies.run(config, str(tmp_path / "b"), log=None)
  resumed, fresh = _read_csv(tmp_path / "a" / "nets.csv"), _read_csv(tmp_path / "b" / "nets.csv")
  assert len(resumed) == len(fresh) == 8
  for r, f in zip(resumed, fresh):
    np.testing.assert_allclose(float(r["train_loss"]), float(f["train_loss"]), rtol=1e-5)
  # A finished grid is not trained again; a different config is refused.
  lines = []
  studies.run(config, str(tmp_path / "a"), log=lines.append)
  assert any("already trained" in l for l in lines)
  other = study_configs.get_config("convergence,tiny")
  other.seeds = 3
  with pytest.raises(errors.ConfigError, match="different config"):
    studies.run(other, str(tmp_path / "a"), log=None)


def test_bad_configs_are_one_line_errors(tmp_path):
  config = study_configs.get_config("collapse,tiny")
  config.grids.firstlayer.grid.model.first = ("relu", "dense")
  with pytest.raises(errors.ConfigError, match="first"):
    studies.validate(config)
  config = study_configs.get_config("convergence,tiny")
  config.seeds = 1
  with pytest.raises(errors.ConfigError, match="seeds=1"):
    studies.validate(config)
  config = study_configs.get_config("collapse,tiny")
  config.collapse.seeds = 0  # The untrained curve's sweep: refused before any grid trains.
  with pytest.raises(errors.ConfigError, match=r"^collapse.seeds=0 is not allowed"):
    studies.validate(config)
  for field, value in (("seed", True), ("target_loss", float("inf")), ("seed", 2**32)):
    config = study_configs.get_config("convergence,tiny")
    config[field] = value
    with pytest.raises(errors.ConfigError, match=f"^{field}={value!r} is not allowed"):
      studies.validate(config)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
      [sys.executable, "-m", "launch.study", "--config=configs/study.py:nosuch",
       f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: study='nosuch'")
  assert "Traceback" not in proc.stderr
  # No --config: refused in one line naming --config and the studies, before any work.
  proc = subprocess.run([sys.executable, "-m", "launch.study", f"--workdir={tmp_path}/new"],
                        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, lines
  assert lines[0].startswith("error: --config is required") and all(
      n in lines[0] for n in studies.names()), lines
  assert not os.path.exists(tmp_path / "new")


def test_studies_are_found_by_name():
  assert set(studies.names()) == {"degradation", "dead_units", "collapse", "bottleneck",
                                  "convergence", "redundancy", "pilot", "revival",
                                  "rank_collapse", "identification", "linear_regime",
                                  "power", "mnist1d"}
  for name in studies.names():
    module = studies.get(name)
    assert callable(module.analyze) and callable(module.figure) and module.FAMILIES
    assert study_configs.get_config(name).grids  # Its config function in configs/study.py.
  with pytest.raises(errors.ConfigError, match="study='nosuch' is not known"):
    studies.get("nosuch")


def test_statistics_come_from_resjax_stats():
  mean, lo, hi = tables.ci95_in([0.5, 0.7, 0.9], "acc")
  assert mean == pytest.approx(0.7) and hi == 1.0  # t(0.975, 2) = 4.303: 0.7 + 0.497 clipped
  np.testing.assert_allclose(mean - lo, 4.3027 * 0.2 / np.sqrt(3), rtol=1e-3)
  g, lo, hi = tables.geo_ci95([0.0, 1e-4])
  assert g == pytest.approx(1e-8) and lo < g < hi
  contrasts = tables.holm({"a": {"p": 0.01}, "b": {"p": 0.04}, "c": {"p": 0.5}})
  assert contrasts["a"]["holm_reject"] and not contrasts["b"]["holm_reject"]
  assert contrasts["a"]["p_holm"] == pytest.approx(0.03) and contrasts["a"]["family_size"] == 3


def test_coordinate_fits_tell_the_candidate_coordinates_apart():
  from resjax.studies import redundancy
  d = [1, 1, 2, 2, 2, 3, 3, 3, 4, 4]
  n = [1, 2, 2, 4, 6, 3, 6, 9, 4, 8]
  below = [redundancy.binom_below(b, a) for a, b in zip(d, n)]
  damage = [30 * p**2 for p in below]  # Rises with the random-layer collapse probability alone.
  fits = redundancy.coordinate_fits(d, n, damage)
  assert set(fits) == {"n/d", "n", "n - d", "P(Bin(n, 1/2) < d)"}
  assert fits["P(Bin(n, 1/2) < d)"]["r2"] == pytest.approx(1.0)
  assert fits["P(Bin(n, 1/2) < d)"]["r2_leave_one_d_out"] > 0.9
  assert max(f["r2"] for k, f in fits.items() if k != "P(Bin(n, 1/2) < d)") < 0.99


def test_rank_collapse_best_rate_rule():
  """Lowest mean final training loss over seeds; a diverged net makes its rate lose; ties
  go to the lower rate; the grid's edges are not bracketed."""
  from resjax.studies import rank_collapse, runs
  nets, loss = [], []
  table = {("plain", 1e-3): (0.5, 0.5), ("plain", 1e-2): (0.1, float("nan")),
           ("plain", 1e-1): (0.3, 0.3), ("residual", 1e-3): (0.2, 0.2),
           ("residual", 1e-2): (0.2, 0.2), ("residual", 1e-1): (0.9, 0.9)}
  for (v, lr), values in table.items():
    for seed, x in enumerate(values):
      nets.append(runs.Net(seed, 16, 4, v, lr))
      loss.append(x)
  run = runs.GridRun("g", None, "", nets, [0], {}, {})
  best = rank_collapse.best_rates(run, np.asarray(loss))
  assert best[("plain", 4)]["best_lr"] == 1e-1 and not best[("plain", 4)]["bracketed"]
  assert best[("residual", 4)]["best_lr"] == 1e-3 and not best[("residual", 4)]["bracketed"]
  table[("plain", 1e-2)] = (0.1, 0.1)
  loss = [x for values in table.values() for x in values]
  best = rank_collapse.best_rates(run, np.asarray(loss))
  assert best[("plain", 4)]["best_lr"] == 1e-2 and best[("plain", 4)]["bracketed"]
def _check_identification(rows, saved):
  """Both label functions, the cells of the tiny grids, the fixed families, the headline."""
  from resjax.studies import identification
  assert {(r["d"], r["width"], r["shift"]) for r in rows} == {
      (d, n, s) for d, n in (("1", "3"), ("2", "4")) for s in ("0.0", "0.25")}
  assert set(saved["identification"]) == {"even labels", "labels shifted by 0.25"}
  assert saved["families"] == {"R^2 differences": 12, "direct contrasts": 2, "per cell": 4}
  for c in saved["contrasts"].values():
    assert c["family_size"] == saved["families"][c["family"]]
    assert c["lo"] <= c["mean"] <= c["hi"] and c["verdict"]
  for fit in saved["identification"].values():
    assert fit["replicates"] == 2 and fit["winner"]["best"] in identification.COORDS
  line = identification.headline(saved)["C3"]
  assert "even labels" in line and "shifted" in line


def _synthetic(coordinate, reps=9, noise=0.002, seed=0):
  """The full design's cells with damage a falling function of one coordinate plus noise."""
  from configs import study as study_configs
  from resjax.studies import identification
  cells = [(d, n) for d, ns in study_configs.IDENTIFICATION_CELLS.items() for n in ns]
  sign = 1.0 if coordinate.startswith("P(") else -1.0
  x = np.asarray([identification.coordinates(d, n)[coordinate] for d, n in cells])
  truth = 0.1 / (1 + np.exp(-sign * (x - np.median(x)) / x.std()))
  rng = np.random.default_rng(seed)
  return {"cells": cells, "diffs": truth[:, None] + noise * rng.standard_normal((len(cells), reps))}


@pytest.mark.parametrize("coordinate", ["n/d", "n - d", "P(Bin(n, 1/2) < d)", "n"])
def test_identification_names_the_coordinate_that_carries_the_damage(coordinate):
  from resjax.studies import identification
  fit, contrasts = identification.fits("t", _synthetic(coordinate), 300, 0, 0.8)
  tables.holm(contrasts)
  identification._verdicts(contrasts, 0.8)  # pylint: disable=protected-access
  r2 = {k: c["r2_loo"] for k, c in fit["coords"].items()}
  assert max(r2, key=r2.get) == coordinate and r2[coordinate] > 0.8, r2
  win = identification.winner(fit, contrasts)
  assert win["best"] == coordinate
  for c in contrasts.values():
    assert c["lo"] <= c["mean"] <= c["hi"] and 0 < c["p"] <= 1
  # With noise the size of the effect nothing is told apart.
  noisy, contrasts = identification.fits("t", _synthetic(coordinate, reps=3, noise=0.3), 300, 0,
                                         0.8)
  tables.holm(contrasts)
  identification._verdicts(contrasts, 0.8)  # pylint: disable=protected-access
  assert not identification.winner(noisy, contrasts)["identified"]


def test_identification_direct_contrasts_have_the_predicted_signs():
  from resjax.studies import identification
  # P(Bin(n, 1/2) < d) is higher at d = 12 than at d = 8 at n/d = 1.5 and 2, lower at 3.
  signs = {"n/d": (1, 0), "n - d": (0, -1), "P(Bin(n, 1/2) < d)": (1, None), "n": (-1, -1)}
  for coordinate, (slope_sign, gap_sign) in signs.items():
    got = identification.slices("t", _synthetic(coordinate, noise=0.0), 0.8)
    slope, gap = (c["mean"] for c in got.values())
    for value, sign in ((slope, slope_sign), (gap, gap_sign)):
      if sign is not None:
        assert (abs(value) < 1e-9) if sign == 0 else (np.sign(value) == sign), (coordinate, got)
