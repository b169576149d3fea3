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
from resjax import analysis, errors, files, train
from resjax.plotting import analysis as analysis_plots
from resjax.plotting import layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNGS = ("units.png", "effective_rank.png", "gradients.png", "energy.png")


def _train(workdir, plain, checkpoint_every=0, variant="tiny"):
  config = embedded.get_config(variant)
  if variant == "tiny":
    config.model.plain = plain
  config.train.checkpoint_every = checkpoint_every  # 0: only the final checkpoint
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
  plain = _train(root / "plain", plain=True, checkpoint_every=2)  # steps 2 and 4
  residual = _train(root / "residual", plain=False, checkpoint_every=2)
  out = _launch(f"--workdir={plain}", f"--compare={residual}", "--grad_batches=2",
                "--grad_batch_size=64", "--batch_size=128")
  assert out.returncode == 0, out.stderr[-3000:]
  return plain, residual, out.stdout


def _csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_writes_every_file_and_prints_progress(analysed):
  plain, _, stdout = analysed
  out_dir = os.path.join(plain, "analysis", "step_4")  # named by the checkpoint step
  for name in ("probes.csv", "probes.json", "report.md", *PNGS):
    assert os.path.getsize(os.path.join(out_dir, name)) > 0, name
  # One result set: every name links into the same version directory.
  version = files.result_set_path(out_dir)
  assert {os.path.dirname(os.path.realpath(os.path.join(out_dir, n))) for n in PNGS} == {version}
  for name in PNGS:
    import matplotlib.image
    img = matplotlib.image.imread(os.path.join(out_dir, name))
    assert img.shape[0] > 300 and img.shape[1] > 600, name
  # The training split by default (1437 digits): progress per batch group for
  # each run, then the summary table.
  assert len(re.findall(r"batch 12/12: 1437 examples", stdout)) == 2
  assert "probing plain: plain-8 at step 4 on digits (1437 train examples)" in stdout
  summary = stdout[stdout.index("run "):]
  assert "plain-8" in summary and "resnet-8" in summary
  md = open(os.path.join(out_dir, "report.md")).read()
  for name in PNGS:
    assert f"]({name})" in md
  for claim in ("C4", "C5", "C7", "C3"):
    assert f"## {claim}:" in md
  # Which BatchNorm statistics each probe used, and the conv linear region per position.
  assert "runs the net in eval mode, on its running averages" in md
  assert "gradient norms run it in training mode, on the statistics of each gradient batch" in md
  assert "whole train split, without augmentation" in md
  assert "For conv layers the fraction is per (input, position)" in md


def test_csv_json_and_report_agree(analysed):
  plain, residual, _ = analysed
  out_dir = os.path.join(plain, "analysis", "step_4")
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
      assert float(row["participation_pre"]) == pytest.approx(layer["participation_pre"])
      assert float(row["entropy_rank_pre"]) == pytest.approx(layer["entropy_rank_pre"])
      assert float(row["participation_pre"]) <= float(row["entropy_rank_pre"]) + 1e-9
    # The per-layer table of the report carries the CSV's numbers.
    section = md[md.index(f"### {run['run']} ("):]
    table = [line for line in section.splitlines()[4:] if line.startswith("| ")]
    cols = ("dead", "dead_frac", "dormant_frac", "active_mean", "active_p025",
            "active_p975", "linear_frac", "participation_pre", "participation_post",
            "entropy_rank_pre", "entropy_rank_post")
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
  files.write_csv(os.path.join(out_dir, "again.csv"), analysis.rows(data["runs"]))
  assert _csv(os.path.join(out_dir, "again.csv")) == rows
  os.remove(os.path.join(out_dir, "again.csv"))
  assert analysis.report_markdown(data["runs"], data["command"]) == md


def test_bad_workdirs_are_one_line_errors(analysed, tmp_path):
  plain, residual, _ = analysed
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(errors.ConfigError, match="does not exist"):
    analysis.analyze(str(tmp_path / "missing"))
  with pytest.raises(errors.ConfigError, match="no checkpoints in"):
    analysis.analyze(str(empty))
  with pytest.raises(errors.ConfigError, match="step=3 has no checkpoint"):
    analysis.analyze(plain, step=3)
  with pytest.raises(errors.ConfigError, match="twice"):
    analysis.analyze(plain, compare=[plain])
  # A corrupt checkpoint: every file of the saved state overwritten.
  broken = tmp_path / "broken"
  shutil.copytree(residual, broken, ignore=shutil.ignore_patterns("analysis"))
  for dirpath, _, names in os.walk(broken / "checkpoints"):
    for name in names:
      with open(os.path.join(dirpath, name), "wb") as f:
        f.write(b"\x00garbage")
  with pytest.raises(errors.ConfigError, match="cannot be read") as e:
    analysis.analyze(plain, compare=[str(broken)])
  assert str(broken) in str(e.value) and "\n" not in str(e.value)
  # Nothing was written for the failed analysis: the earlier one is intact.
  assert os.path.isfile(os.path.join(plain, "analysis", "step_4", "report.md"))


def test_launcher_turns_bad_input_into_one_line(tmp_path):
  out = _launch(f"--workdir={tmp_path / 'missing'}")
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1] == (
      f"error: workdir {tmp_path / 'missing'} does not exist; pass the --workdir of a "
      "training run (python -m launch.train ... --workdir=DIR)")
  assert "Traceback" not in out.stderr


def _quick(**kwargs):
  return dict(max_examples=64, grad_batches=1, grad_batch_size=32, batch_size=64,
              say=lambda *_: None, **kwargs)


def test_out_dir_named_by_step_and_writable_elsewhere(analysed, tmp_path):
  plain, _, _ = analysed
  # By default each step gets its own folder: a second --step keeps the first.
  before = open(os.path.join(plain, "analysis", "step_4", "probes.json")).read()
  assert analysis.analyze(plain, step=2, **_quick())["dir"] == f"{plain}/analysis/step_2"
  runs = json.load(open(os.path.join(plain, "analysis", "step_2", "probes.json")))["runs"]
  assert runs[0]["step"] == 2 and runs[0]["split"] == "train"
  assert open(os.path.join(plain, "analysis", "step_4", "probes.json")).read() == before
  # A run whose folder cannot take the analysis: the error names --out, which works.
  run = tmp_path / "run"
  shutil.copytree(plain, run, ignore=shutil.ignore_patterns("analysis"))
  (run / "analysis").write_text("in the way")
  with pytest.raises(errors.ConfigError) as e:
    analysis.analyze(str(run), **_quick())
  assert str(e.value).startswith(f"cannot write the analysis to {run}/analysis/step_4 (")
  assert str(e.value).endswith("; pass --out=DIR, a writable directory")
  out = analysis.analyze(str(run), out=str(tmp_path / "elsewhere"), step=2, split="test",
                         **_quick())
  assert out["dir"] == str(tmp_path / "elsewhere")
  got = json.load(open(tmp_path / "elsewhere" / "probes.json"))["runs"][0]
  assert got["step"] == 2 and got["split"] == "test" and got["summary"]["examples"] == 64
  assert "whole test split" in open(tmp_path / "elsewhere" / "report.md").read()
  assert (run / "analysis").read_text() == "in the way"  # the run is left as it was


def test_figures_align_layers_by_name(analysed):
  plain, _, _ = analysed
  full = json.load(open(os.path.join(plain, "analysis", "step_4", "probes.json")))["runs"][1]
  short = json.loads(json.dumps(full))  # a shallower net: no stage2 layers
  short["run"] = "short"
  short["layers"] = [l for l in short["layers"] if not l["layer"].startswith("stage2/")]
  short["weights"] = [w for w in short["weights"] if "stage2" not in w["layer"]]
  names = [l["layer"] for l in full["layers"]]
  assert layers.alignment_note([full, full]) is None
  note = layers.alignment_note([full, short])
  assert note.startswith(f"activation layers by name ({len(short['layers'])} in every run; "
                         f"only in residual {len(names) - len(short['layers'])})")
  fig = analysis_plots.plot_units([short, full])  # the shorter run first: ticks still by name
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == names or \
      [t.get_text() for t in fig.axes[-1].get_xticklabels()] == names
  want = [names.index(l["layer"]) for l in short["layers"]]
  assert list(ax.get_lines()[0].get_xdata()) == want
  assert list(ax.get_lines()[2].get_xdata()) == list(range(len(names)))
  assert f"The figures align {note}" in analysis.report_markdown([full, short])


def test_compare_of_another_dataset_is_refused_in_one_line(analysed, tmp_path):
  plain, _, _ = analysed
  mlp = _train(tmp_path / "mlp", plain=False, variant="tiny_mlp")  # spirals, an MLP
  out = _launch(f"--workdir={plain}", f"--compare={mlp}")
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1] == (
      f"error: cannot compare runs of different datasets: {plain} has data.name=digits, "
      f"{mlp} has data.name=spirals; --compare runs of one dataset and model family")
  assert "Traceback" not in out.stderr
  assert not os.path.exists(os.path.join(mlp, "analysis"))


def test_grid_figures_draw_every_seed_of_every_condition(tmp_path, monkeypatch):
  """Each net of a grid has its own lines (the seeds of a condition in one colour,
  one legend entry saying how many seeds), never only the first seed."""
  config = embedded.get_config("tiny_mlp")
  config.data.num_train, config.data.num_test = 256, 64
  config.grid.seeds = (0, 1)
  config.grid.model.residual = (False, True)
  config.train.steps = 2
  train.train_and_evaluate(config, str(tmp_path / "g"))
  drawn = {}
  save = files.save_figure

  def capture(fig, path, **kwargs):
    drawn[os.path.basename(path)] = fig
    return save(fig, path, **kwargs)

  monkeypatch.setattr(files, "save_figure", capture)
  out = analysis.analyze(str(tmp_path / "g"), **_quick())
  runs = out["runs"]
  assert len(runs) == 4 and {r["seed"] for r in runs} == {0, 1}
  units = drawn["units.png"]
  means = [list(l.get_ydata()) for l in units.axes[1].get_lines() if l.get_marker() == "o"]
  grads = [list(l.get_ydata()) for l in drawn["gradients.png"].axes[0].get_lines()]
  for run in runs:  # panel (b): the mean active fraction of every net
    assert [l["active_mean"] for l in run["layers"]] in means, run["run"]
    assert [w["grad_norm"] for w in run["weights"]] in grads, run["run"]
  legend = [t.get_text() for t in units.legends[0].get_texts()]
  assert legend == [f"g {c} ({m}, 2 seeds)" for c, m in (
      ("model.residual=False", "mlp-2x8"), ("model.residual=True", "residual-mlp-2x8"))]
  colors = {}
  for run, line in zip(runs, [l for l in units.axes[0].get_lines() if l.get_marker() == "o"]):
    colors.setdefault(run["condition"], set()).add(line.get_color())
  assert all(len(c) == 1 for c in colors.values()) and len(set.union(*colors.values())) == 2
