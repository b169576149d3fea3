"""`launch.bench imports`: the import floor, timed in fresh processes."""
import sys

import pytest

from benchmarks import imports
from resjax import errors


def test_quick_run_times_each_statement_in_this_interpreter(monkeypatch, capsys):
  monkeypatch.delenv("RESJAX_BENCH_PYTHONS", raising=False)
  figures = imports.run(quick=True)
  (only,) = figures["pythons"]
  assert only["python"] == sys.executable
  assert "ml_dtypes" in only["versions"]
  assert set(only["imports"]) == {"numpy", "numpy + ml_dtypes"}
  for row in only["imports"].values():
    assert 0 < row["wall_s"] < 60 and row["cpu_s"] > 0
  assert "numpy + ml_dtypes" in capsys.readouterr().out


def test_a_statement_that_fails_in_an_interpreter_shows_a_dash(monkeypatch, capsys):
  monkeypatch.setenv("RESJAX_BENCH_PYTHONS", sys.executable)
  calls = []

  def timed(python, code):
    calls.append(python)
    return None if len(calls) == 3 else (0.1, 0.2)  # The second interpreter's first statement.

  monkeypatch.setattr(imports, "_timed", timed)
  figures = imports.run(quick=True)
  assert figures["pythons"][0]["imports"]["numpy"] == {"wall_s": 0.1, "cpu_s": 0.2}
  assert "numpy" not in figures["pythons"][1]["imports"]
  second = capsys.readouterr().out.split(f"[1] {sys.executable}")[1]
  assert second.splitlines()[2].split() == ["numpy", "-", "-"]


def test_an_interpreter_that_is_not_a_file_is_refused(monkeypatch):
  monkeypatch.setenv("RESJAX_BENCH_PYTHONS", "/nonexistent/python")
  with pytest.raises(errors.ConfigError, match="RESJAX_BENCH_PYTHONS: /nonexistent/python"):
    imports.run(quick=True)
