"""The grid benchmark runs both ways and checks they end at the same losses."""
from benchmarks import grid as bench_grid


def test_quick_grid_benchmark_compares_both_ways(capsys):
  figures = bench_grid.run(quick=True)
  for name in ("mlp", "resnet"):
    f = figures[name]
    assert f["grid_s"] > 0 and f["sequential_s"] > 0
    assert f["max_abs_final_loss_diff"] < 1e-3, f  # A few steps: rounding only.
  assert "(b)/(a)" in capsys.readouterr().out
