"""The device-split and tried-variants benchmarks run and report what they measured."""
import numpy as np

from benchmarks import split, tried
from resjax.kernels import onednn


def test_split_times_every_count_and_names_the_pick():
  figures = split.run(quick=True)
  assert figures["counts"] == [1, 2, 4, 8]
  for name, row in figures["models"].items():
    assert len(row["ms"]) == 4 and all(np.isfinite(v) and v > 0 for v in row["ms"]), name
  assert figures["models"]["MLP 2 x 8, spirals, batch 32"]["picked"] == 1
  # oneDNN's convolutions use every core per call: one device; XLA's split over 4.
  picked = 1 if onednn.available() else 4
  assert figures["models"]["ResNet-6 (8, 16), CIFAR, batch 32"]["picked"] == picked


def test_tried_times_each_variant_and_flag():
  figures = tried.run(quick=True)
  for label, row in figures["variants"].items():
    assert set(row["ms"]) == {"base", "barrier", "cond"}, label
    assert all(v > 0 for v in row["ms"].values())
  assert figures["flags"]["base_ms"] > 0 and all(v > 0 for v in figures["flags"]["ms"].values())
  assert figures["bare_transpose_ms"] > 0
