"""The step profile: HLO convolutions classified with their FLOPs; traced time attributed."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from benchmarks import profile
from benchmarks import train as bench_train


def _conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_convolutions_are_classified_with_their_flops():
  x = jnp.ones((4, 8, 8, 3))
  w1, w2 = jnp.ones((3, 3, 3, 8)), jnp.ones((3, 3, 8, 8))
  loss = lambda ws: jnp.sum(_conv(jax.nn.relu(_conv(x, ws[0])), ws[1]) ** 2)
  text = jax.jit(jax.grad(loss)).lower((w1, w2)).compile().as_text()
  hlo = profile.parse_hlo(text)
  flops = dict.fromkeys(profile.KINDS, 0.0)
  for name, (kind, f) in profile.classify(hlo).items():
    flops[kind] += f
  pixels = 4 * 8 * 8
  macs1, macs2 = pixels * 9 * 3 * 8, pixels * 9 * 8 * 8
  assert flops["conv forward"] == 2 * (macs1 + macs2)
  assert flops["conv weight-grad"] == 2 * (macs1 + macs2)
  assert flops["conv input-grad"] == 2 * macs2  # The input x needs no gradient.


def test_the_traced_step_is_attributed_to_its_ops():
  batch, widths = 32, bench_train.QUICK_WIDTHS
  config = bench_train._config(6, False, batch, widths)  # pylint: disable=protected-access
  result = profile.profile_step(config, jax.devices()[:1], steps=2)
  assert result["devices"] == 1 and result["wall_s"] > 0
  dense = widths[-1] * bench_train.NUM_CLASSES
  conv_flops = 2 * (bench_train.resnet_macs(6, widths) - dense) * batch
  for kind in ("conv forward", "conv weight-grad"):
    assert result["flops"][kind] == pytest.approx(conv_flops, rel=1e-6), kind
    assert result["op_s"][kind] > 0, kind  # The trace's op names matched the HLO's.
  rows = profile._rows(result)  # pylint: disable=protected-access
  assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
  assert sum(r["wall_ms"] for r in rows.values()) == pytest.approx(1e3 * result["wall_s"])
  assert all(np.isfinite(r["gflops"]) for r in rows.values() if r["gflops"] is not None)
  assert result["unmatched_s"] < 0.1 * sum(result["op_s"].values())


def test_flops_count_the_whole_batch_on_a_split_mesh():
  # The compiled program holds one device's slice; the profile scales it back.
  config = bench_train._config(6, False, 32, bench_train.QUICK_WIDTHS)  # pylint: disable=protected-access
  one = profile.profile_step(config, jax.devices()[:1], steps=1)
  two = profile.profile_step(config, jax.devices()[:2], steps=1)
  assert two["devices"] == 2
  for kind in ("conv forward", "conv input-grad", "conv weight-grad"):
    assert two["flops"][kind] == pytest.approx(one["flops"][kind], rel=1e-9), kind
  rows = profile._rows(two)  # pylint: disable=protected-access
  assert all(r["gflops"] is None for r in rows.values())  # No rate where devices share cores.
