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
from resjax import errors, grid, studies
from resjax.studies import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _conditions(config):
  """Conditions a study's rows cover (a degradation lr grid: two views of it)."""
  total = 0
  for g in studies.grids(config).values():
    per = len(grid.nets(g)) // config.seeds
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
    assert c["verdict"].startswith("detected") == c["excludes_zero"], c
    if not c["excludes_zero"] and c["sd"]:
      assert "not detected at this power" in c["verdict"] and c["detectable"] > 0
  cells = len(arms) // 2
  assert {f: len(v) for f, v in families.items() if "per cell" in f} == {
      "train_loss per cell": cells, "test_acc per cell": cells, "dead_final per cell": cells}
  assert all(c["family_size"] == len(v) for v in families.values() for c in v)


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
                                  "convergence", "redundancy", "pilot", "revival", "mnist1d"}
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
  below = [redundancy._binom_below(b, a) for a, b in zip(d, n)]  # pylint: disable=protected-access
  damage = [30 * p**2 for p in below]  # Rises with the random-layer collapse probability alone.
  fits = redundancy.coordinate_fits(d, n, damage)
  assert set(fits) == {"n/d", "n", "n - d", "P(Bin(n, 1/2) < d)"}
  assert fits["P(Bin(n, 1/2) < d)"]["r2"] == pytest.approx(1.0)
  assert fits["P(Bin(n, 1/2) < d)"]["r2_leave_one_d_out"] > 0.9
  assert max(f["r2"] for k, f in fits.items() if k != "P(Bin(n, 1/2) < d)") < 0.99
