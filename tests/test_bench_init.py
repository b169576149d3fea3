"""The init benchmark compiles each program both ways and finds the same numbers."""
from benchmarks import init


def test_init_bench_times_both_ways_and_the_merged_program_hashes_less():
  figures = init.run(quick=True)
  assert set(figures["programs"]) == {"ResNet-20, 8x8 digits", "4-MLP grid"}
  for label, row in figures["programs"].items():
    assert row["same"], label
    before, after = row["hash_calls"]
    assert after < before, (label, before, after)
    assert all(s > 0 for way in row["median_s"].values() for s in way), label
