"""End to end: train a tiny plain and a tiny residual net, analyse both, check the report."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import embedded
from resjax import errors, files, report, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNGS = ("units.png", "effective_rank.png", "gradients.png", "energy.png")


def _train(workdir, plain):
  config = embedded.get_config("tiny")
  config.model.plain = plain
  config.train.checkpoint_every = 0  # only the final checkpoint
  train.train_and_evaluate(config, str(workdir))
  return str(workdir)


def _launch(*args, devices=1):
  """launch.analyze in a fresh process with `devices` host devices."""
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}"
  return subprocess.run([sys.executable, "-m", "launch.analyze", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  # Trained on 8 devices here, restored and probed on 1 in the launcher.
  plain = _train(root / "plain", plain=True)
  residual = _train(root / "residual", plain=False)
  out = _launch(f"--workdir={plain}", f"--compare={residual}", "--grad_batches=2",
                "--grad_batch_size=64", "--batch_size=128")
  assert out.returncode == 0, out.stderr[-3000:]
  return plain, residual, out.stdout


def _csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_writes_every_file_and_prints_progress(analysed):
  plain, _, stdout = analysed
  out_dir = os.path.join(plain, "analysis")
  for name in ("probes.csv", "probes.json", "report.md", *PNGS):
    assert os.path.getsize(os.path.join(out_dir, name)) > 0, name
  for name in PNGS:
    import matplotlib.image
    img = matplotlib.image.imread(os.path.join(out_dir, name))
    assert img.shape[0] > 300 and img.shape[1] > 600, name
  # Progress per batch group for each run, then the summary table.
  assert len(re.findall(r"batch 3/3: 360 examples", stdout)) == 2
  assert "probing plain: plain-8 at step 4 on digits" in stdout
  summary = stdout[stdout.index("run "):]
  assert "plain-8" in summary and "resnet-8" in summary
  md = open(os.path.join(out_dir, "report.md")).read()
  for name in PNGS:
    assert f"]({name})" in md
  for claim in ("C4", "C5", "C7", "C3"):
    assert f"## {claim}:" in md


def test_csv_json_and_report_agree(analysed):
  plain, residual, _ = analysed
  out_dir = os.path.join(plain, "analysis")
  rows = _csv(os.path.join(out_dir, "probes.csv"))
  runs = json.load(open(os.path.join(out_dir, "probes.json")))["runs"]
  md = open(os.path.join(out_dir, "report.md")).read()
  assert [r["run"] for r in runs] == ["plain", "residual"]
  for run in runs:
    mine = [r for r in rows if r["run"] == run["run"]]
    acts = [r for r in mine if r["kind"] == "activation"]
    blocks = [r for r in mine if r["kind"] == "block"]
    weights = [r for r in mine if r["kind"] == "weights"]
    # ResNet-8: stem + 3 blocks x 2 activations; 3 blocks; 8 weight layers.
    assert len(acts) == len(run["layers"]) == 7
    assert len(blocks) == len(run["blocks"]) == 3
    assert len(weights) == len(run["weights"]) == 8
    for row, layer in zip(acts, run["layers"]):
      assert row["layer"] == layer["layer"]
      assert int(row["dead"]) == len(layer["dead_units"])
      assert float(row["erank_pre"]) == pytest.approx(layer["erank_pre"])
    # The per-layer table of the report carries the CSV's numbers.
    section = md[md.index(f"### {run['run']} ("):]
    table = [line for line in section.splitlines()[4:] if line.startswith("| ")]
    cols = ("dead", "dead_frac", "dormant_frac", "active_mean", "active_p025",
            "active_p975", "linear_frac", "erank_pre", "erank_post")
    for line, row in zip(table, acts):
      cells = [c.strip() for c in line.strip("|").split("|")]
      assert cells[0] == row["layer"] and int(cells[1]) == int(row["units"])
      for cell, col in zip(cells[2:], cols):
        assert float(cell) == pytest.approx(float(row[col]), abs=5.1e-5), (row["layer"], col)
    # The C4 sentence adds up the CSV's dead units.
    dead, units = sum(int(r["dead"]) for r in acts), sum(int(r["units"]) for r in acts)
    assert f"**{run['run']}** ({run['model']}): {dead} of {units} units dead" in md
    # The C5 sentence is the mean over blocks with a shortcut.
    fracs = [float(r["shortcut_frac"]) for r in blocks if r["has_shortcut"] == "True"]
    if fracs:
      assert f"shortcut carries on average {100 * np.mean(fracs):.1f}%" in md
    else:
      assert run["run"] == "plain"
  assert {r["has_shortcut"] for r in rows if r["run"] == "plain" and r["kind"] == "block"} == {
      "False"}
  # probes.json alone regenerates the same tables and report.
  data = json.load(open(os.path.join(out_dir, "probes.json")))
  files.write_csv(os.path.join(out_dir, "again.csv"), report.rows(data["runs"]))
  assert _csv(os.path.join(out_dir, "again.csv")) == rows
  os.remove(os.path.join(out_dir, "again.csv"))
  assert report.report_markdown(data["runs"], data["command"]) == md


def test_bad_workdirs_are_one_line_errors(analysed, tmp_path):
  plain, residual, _ = analysed
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(errors.ConfigError, match="does not exist"):
    report.analyze(str(tmp_path / "missing"))
  with pytest.raises(errors.ConfigError, match="no checkpoints in"):
    report.analyze(str(empty))
  with pytest.raises(errors.ConfigError, match="step=3 has no checkpoint"):
    report.analyze(plain, step=3)
  with pytest.raises(errors.ConfigError, match="twice"):
    report.analyze(plain, compare=[plain])
  # A corrupt checkpoint: every file of the saved state overwritten.
  broken = tmp_path / "broken"
  shutil.copytree(residual, broken, ignore=shutil.ignore_patterns("analysis"))
  for dirpath, _, names in os.walk(broken / "checkpoints"):
    for name in names:
      with open(os.path.join(dirpath, name), "wb") as f:
        f.write(b"\x00garbage")
  with pytest.raises(errors.ConfigError, match="cannot be read") as e:
    report.analyze(plain, compare=[str(broken)])
  assert str(broken) in str(e.value) and "\n" not in str(e.value)
  # Nothing was written for the failed analysis: the earlier one is intact.
  assert os.path.isfile(os.path.join(plain, "analysis", "report.md"))


def test_launcher_turns_bad_input_into_one_line(tmp_path):
  out = _launch(f"--workdir={tmp_path / 'missing'}")
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1] == (
      f"error: workdir {tmp_path / 'missing'} does not exist; pass the --workdir of a "
      "training run (python -m launch.train ... --workdir=DIR)")
  assert "Traceback" not in out.stderr
