"""The grid benchmark runs both ways and checks they end at the same losses."""
import importlib.util

from benchmarks import grid as bench_grid


def test_quick_grid_benchmark_compares_both_ways(capsys):
  figures = bench_grid.run(quick=True)
  for name in ("mlp", "resnet"):
    f = figures[name]
    assert f["grid_s"] > 0 and f["sequential_s"] > 0
    assert f["max_abs_final_loss_diff"] < 1e-3, f  # A few steps: rounding only.
  out = capsys.readouterr().out
  assert "(b)/(a)" in out and "whole process, MLP grid, wall" in out
  assert "whole process, MLP grid, CPU" in out
  processes = figures["whole_process"]
  assert processes["resjax_first_s"] > 0 and processes["resjax_rerun_s"] > 0
  # The children's CPU time: a second process of JAX spends well over 0.1 s.
  assert processes["resjax_first_cpu_s"] > 0.1 and processes["resjax_rerun_cpu_s"] > 0.1
  if importlib.util.find_spec("torch") is not None:  # The bench extra.
    assert figures["mlp"]["torch_sequential_s"] > 0 and figures["mlp"]["torch_vmap_s"] > 0
    assert processes["torch_sequential_s"] > 0 and processes["torch_sequential_cpu_s"] > 0.1


def test_torch_vmap_trains_the_nets_the_sequential_loop_trains():
  """The PyTorch competitor's two layouts compute the same nets (same init, same Adam)."""
  import pytest  # pylint: disable=import-outside-toplevel
  torch_mlp = pytest.importorskip("benchmarks.torch_mlp")
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(64, 2)).astype(np.float32), rng.integers(0, 3, size=64)
  nets = [(0, 8, 2), (1, 8, 2), (2, 4, 3)]
  data = torch_mlp.batches(x, y, 16, 20)
  seq = torch_mlp.train_sequential(nets, data, 1e-2, 2, 3)
  vm = torch_mlp.train_vmapped(nets, data, 1e-2, 2, 3)
  np.testing.assert_allclose(vm, seq, rtol=1e-4)
  assert len(set(np.round(seq, 4))) == 3  # Three different nets, not one copied.


def test_layout_table_times_both_layouts_and_one_net():
  from benchmarks import layouts  # pylint: disable=import-outside-toplevel
  figures = layouts.run(quick=True)
  assert len(figures) == 2  # --quick: the MLP and the ResNet.
  for t in figures.values():
    assert t["vmap"] > 0 and t["map"] > 0 and t["alone"] > 0 and t["auto"] in ("vmap", "map")


def test_quick_probes_benchmark_times_both_ways(capsys):
  from benchmarks import probes as bench_probes
  figures = bench_probes.run(quick=True)
  assert figures["without_s"] > 0 and figures["with_s"] > 0
  # Steps 0, 5, .., 20 x 2 widths x 2 seeds x 2 layers (depth 2).
  assert figures["probe_rows"] == 5 * 2 * 2 * 2
  assert "overhead" in capsys.readouterr().out


def test_quick_restore_benchmark_times_both_ways(capsys):
  from benchmarks import restore as bench_restore  # pylint: disable=import-outside-toplevel
  figures = bench_restore.run(quick=True)
  assert figures["nets"] == 4 and figures["each_s"] > 0 and figures["once_s"] > 0
  assert "load_nets" in capsys.readouterr().out


def test_grid_devices_table_times_every_count_that_divides_the_nets():
  from benchmarks import grid_devices  # pylint: disable=import-outside-toplevel
  figures = grid_devices.run(quick=True)
  assert len(figures) == 2  # --quick: one dense and one conv grid, on 1 and 2 devices.
  for f in figures.values():
    assert set(f["per_devices"]) == {1, 2}
    assert all(r["cpu_ms"] > 0 and r["wall_ms"] > 0 for r in f["per_devices"].values())
    assert f["forward_flops_at_1"] > 0
  dense, conv = figures["32 MLPs (bench grid)"], figures["8 tiny ResNets (digits)"]
  assert dense["forward_flops_per_param_per_example"] < 8 < conv[
      "forward_flops_per_param_per_example"]
