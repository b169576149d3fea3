"""Each study, shrunk to seconds, runs end to end and writes sound results."""
import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import study as study_configs
from resjax import errors, study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _run(name, workdir, **kw):
  config = study_configs.get_config(f"{name},tiny")
  return config, study.run(config, str(workdir), devices=jax.devices()[:1], log=None, **kw)


@pytest.mark.parametrize("name", study_configs.STUDIES)
def test_study_runs_end_to_end(name, tmp_path):
  config, out = _run(name, tmp_path)
  for f in ("study.csv", "nets.csv", "study.json", f"{name}.png", "config.json"):
    assert os.path.getsize(tmp_path / f) > 0, f
  with open(tmp_path / f"{name}.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  rows = _read_csv(tmp_path / "study.csv")
  nets = _read_csv(tmp_path / "nets.csv")
  expected = sum(len(g.model.widths) * len(g.model.depths) * len(g.model.variants)
                 for g in config.grids.values())
  assert len(rows) == expected
  assert len(nets) == expected * config.seeds
  # Every interval holds its estimate; accuracies are proportions.
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
  assert saved["rows"] == out["rows"] and saved["figure"] == f"{name}.png"
  if name == "dead_units":
    # Width-2 nets: a dead fraction is a multiple of 1/(2 * depth) units.
    fracs = [float(n["dead_trained"]) for n in nets if n["width"] == "2"]
    assert all(0.0 <= f <= 1.0 for f in fracs)
  if name == "collapse":
    curve = saved["curves"]["untrained"]
    assert curve["dims"] == list(config.grids.bottleneck.model.widths)
    # P(Bin(n, 1/2) < 2) for n = 2, 3: 3/4 and 1/2.
    np.testing.assert_allclose(curve["collapsed_frac_theory"], [0.75, 0.5], atol=0.05)
  if name == "convergence":
    assert all("steps_to_target" in n for n in nets)


def test_study_resumes_after_interruption(tmp_path):
  class Stop(Exception):
    pass

  def stop(line):
    if "step 10/20" in line:
      raise Stop()

  config = study_configs.get_config("convergence,tiny")
  with pytest.raises(Stop):
    study.run(config, str(tmp_path / "a"), devices=jax.devices()[:1], log=stop)
  assert not os.path.exists(tmp_path / "a" / "study.csv")
  lines = []
  study.run(config, str(tmp_path / "a"), devices=jax.devices()[:1], log=lines.append)
  assert any("resumed at step 10/20" in l for l in lines)
  study.run(config, str(tmp_path / "b"), devices=jax.devices()[:1], log=None)
  resumed, fresh = _read_csv(tmp_path / "a" / "nets.csv"), _read_csv(tmp_path / "b" / "nets.csv")
  for r, f in zip(resumed, fresh):
    np.testing.assert_allclose(float(r["train_loss"]), float(f["train_loss"]), rtol=1e-5)
  # A finished grid is not trained again; a different config is refused.
  lines = []
  study.run(config, str(tmp_path / "a"), devices=jax.devices()[:1], log=lines.append)
  assert any("already trained" in l for l in lines)
  other = study_configs.get_config("convergence,tiny")
  other.seeds = 3
  with pytest.raises(errors.ConfigError, match="different config"):
    study.run(other, str(tmp_path / "a"), log=None)


def test_bad_configs_are_one_line_errors(tmp_path):
  config = study_configs.get_config("degradation,tiny")
  config.grids.mlp.model.variants = ("plain", "dense")
  with pytest.raises(errors.ConfigError, match="variants"):
    study.validate(config)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
      [sys.executable, "-m", "launch.study", "--config=configs/study.py:nosuch",
       f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: study='nosuch'")
  assert "Traceback" not in proc.stderr


def test_statistics():
  # The study's helpers call resjax.stats (its formulas: tests/test_stats.py).
  mean, lo, hi = study.ci95_in([0.5, 0.7, 0.9], "acc")
  assert mean == pytest.approx(0.7) and hi == 1.0  # t(0.975, 2) = 4.303: 0.7 + 0.497 clipped to 1
  np.testing.assert_allclose(mean - lo, 4.3027 * 0.2 / np.sqrt(3), rtol=1e-3)
  g, lo, hi = study.geo_ci95([0.0, 1e-4])
  assert g == pytest.approx(1e-8) and lo < g < hi
  p, lo, hi = study.wilson(0, 8)
  assert p == 0 and lo == 0 and 0.3 < hi < 0.4
  med, lo, hi = study.median_ci([10, 20, 30, np.inf, np.inf])
  assert med == 30 and hi == np.inf
