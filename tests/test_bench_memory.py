"""The malloc benchmark runs both modes and sees the page faults launch.memory removes."""
import sys

import pytest

from benchmarks import memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_memory_bench_counts_the_faults_of_each_mode():
  figures = memory.run(quick=True)
  default, kept = figures["summary"]["glibc_default"], figures["summary"]["launch_memory"]
  assert default["kept"] == [False] and kept["kept"] == [True]
  # ResNet-6 at batch 128 needs a temporary buffer above glibc's 32 MiB mmap
  # threshold: mapped afresh, and faulted in, at every step by default.
  assert default["faults_per_step"] > 10_000, default
  assert kept["faults_per_step"] < 1_000, kept
  assert figures["ratio"] > 0
