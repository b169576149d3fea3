"""The grid benchmark runs both ways and checks they end at the same losses."""
from benchmarks import grid as bench_grid


def test_quick_grid_benchmark_compares_both_ways(capsys):
  figures = bench_grid.run(quick=True)
  for name in ("mlp", "resnet"):
    f = figures[name]
    assert f["grid_s"] > 0 and f["sequential_s"] > 0
    assert f["max_abs_final_loss_diff"] < 1e-3, f  # A few steps: rounding only.
  assert "(b)/(a)" in capsys.readouterr().out


def test_quick_probes_benchmark_times_both_ways(capsys):
  from benchmarks import probes as bench_probes
  figures = bench_probes.run(quick=True)
  assert figures["without_s"] > 0 and figures["with_s"] > 0
  assert figures["probe_rows"] == 5 * 2 * (2 + 3) * 2  # steps 0, 5, .., 20 x nets x layers
  assert "overhead" in capsys.readouterr().out
