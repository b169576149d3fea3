"""`launch.bench startup`: the sweep and the grid as whole processes, against their goals."""
import pytest

from benchmarks import startup


@pytest.mark.slow
def test_quick_round_times_every_process_and_prints_the_goals(capsys):
  figures = startup.run(quick=True)
  out = capsys.readouterr().out
  for name in ("sweep_first", "sweep_rerun", "grid_first", "grid_rerun"):
    (wall, cpu), = figures["wall_s"][name]
    assert wall > 0 and cpu > 0 and figures["median_wall_s"][name] == wall
  assert "goal <= 8 s" in out and "goal <= 5 s" in out
  if "torch" in figures["wall_s"]:
    assert figures["grid_rerun_x"] == pytest.approx(
        figures["median_wall_s"]["torch"] / figures["median_wall_s"]["grid_rerun"])
    assert "goal >= 3x" in out
  else:
    assert "PyTorch left out" in out
