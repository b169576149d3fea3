"""`python -m launch.sweep` end to end and its one-line errors, in subprocesses."""
import csv
import json
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SMALL = ["--config.activations=relu,identity", "--config.dims=1,2,3,5", "--config.seeds=4",
          "--config.manifold.points=200", "--config.figure.dims=2,3,5"]


def _launch(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
  return subprocess.Popen([sys.executable, "-m", "launch.sweep", *args], cwd=_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _messages(stderr: str) -> list[str]:
  """stderr without absl's log lines (I1126 12:00:00.000 ...)."""
  return [line for line in stderr.splitlines()
          if line.strip() and not (line[:1] in "IWE" and line[1:5].isdigit())]


def test_sweep_writes_csv_json_png(tmp_path):
  proc = _launch(f"--workdir={tmp_path}", "--config=configs/collapse.py:quick", *_SMALL)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  rows = list(csv.DictReader(open(tmp_path / "collapse.csv")))
  assert len(rows) == 2 * 4
  for col in ("activation", "d", "dim", "seeds", "pinv_error_mean", "pinv_error_lo",
              "pinv_error_hi", "refit_error_mean", "refit_error_lo", "refit_error_hi",
              "span_error_mean", "span_error_lo", "span_error_hi", "span_error_theory",
              "constrained_error_mean", "constrained_error_lo", "constrained_error_hi",
              "collapsed_frac", "collapsed_frac_theory", "dead_frac", "active_frac",
              "linear_frac"):
    assert col in rows[0], col
  relu = {int(r["dim"]): r for r in rows if r["activation"] == "relu"}
  assert float(relu[2]["collapsed_frac_theory"]) == pytest.approx(0.75)
  saved = json.load(open(tmp_path / "collapse.json"))
  assert saved["config"]["seeds"] == 4 and saved["grid"]["dims"] == [1, 2, 3, 5]
  assert len(saved["results"]) == len(rows)
  with open(tmp_path / "collapse.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "collapse.csv" in out and "collapse.png" in out and "relu" in out


def test_bad_input_ends_with_one_line_and_exit_2(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  cases = {  # default config (no --config): the flags alone are wrong
      "activation": ([f"--workdir={tmp_path}/w", "--config.activations=relu,swish"], "swish"),
      "dims": ([f"--workdir={tmp_path}/w", "--config.dims=0,2"], "dims=(0, 2) is not allowed"),
      "seeds": ([f"--workdir={tmp_path}/w", "--config.seeds=0"], "seeds=0"),
      "manifold": ([f"--workdir={tmp_path}/w", "--config.manifold.name=torus"], "torus"),
      "scale": ([f"--workdir={tmp_path}/w", "--config.manifold.scale=0"], "manifold.scale=0"),
      "workdir": ([f"--workdir={blocker}/sub"], "workdir"),
  }
  procs = {name: _launch(*args) for name, (args, _) in cases.items()}
  for name, proc in procs.items():
    _, err = proc.communicate(timeout=300)
    lines = _messages(err)
    assert proc.returncode == 2, (name, err)
    assert "Traceback" not in err, (name, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, lines)
    assert cases[name][1] in lines[0], (name, lines)
  assert not os.path.exists(tmp_path / "w" / "collapse.csv")
