"""probes.regions: the share of inputs on which a named module's outputs lie in an
activation's linear region, for tapped and untapped (linear) layers alike."""
import jax
import numpy as np

from resjax import data, models, probes
from resjax.probes import regions


def _dataset(shape, n=96, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, *shape)).astype(np.float32)
  y = rng.integers(0, 3, n).astype(np.int32)
  mean, std = x.mean(0).reshape(-1)[:shape[-1]] * 0, np.ones(shape[-1], np.float32)
  return data.Dataset("toy", data.Split(x, y), data.Split(x[:8], y[:8]), 3,
                      mean.astype(np.float32), std)


def test_first_layer_share_is_the_all_positive_share_and_matches_the_probes():
  ds = _dataset((2,))
  for first, bias in (("relu", 0.0), ("relu", 0.3), ("linear", -0.2)):
    model = models.build("firstlayer", 3, width=3, first=first, head_width=8,
                         first_bias_init=bias)
    variables = model.init(jax.random.key(1), ds.train.inputs[:2])
    got = regions.linear_shares(variables, ds.train.inputs, ("first_dense",), "relu",
                                model=model, mean=ds.mean, std=ds.std)
    p = variables["params"]["first_dense"]
    z = ds.train.inputs @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
    want = float(np.mean(np.all(z > 0, -1)))
    assert got["first_dense"] == {"input": want, "position": want} and got["all"]["input"] == want
    assert 0.0 < want < 1.0  # The data leave room for a wrong answer either way.
    if first == "relu":  # The probes see the same layer as the activation input 'first'.
      res = probes.run(variables, model, ds, grad_batches=0)
      assert res.layer("first")["linear_frac_input"] == want


def test_high_first_bias_puts_every_unit_on():
  ds = _dataset((2,))
  model = models.build("firstlayer", 3, width=3, first="relu", head_width=8, first_bias_init=50.0)
  variables = model.init(jax.random.key(2), ds.train.inputs[:2])
  got = regions.linear_shares(variables, ds.train.inputs, ("first_dense",), "relu", model=model,
                              mean=ds.mean, std=ds.std)
  assert got["all"]["input"] == 1.0


def test_bottleneck_share_matches_the_probes_for_relu6_and_exists_for_linear():
  ds = _dataset((6, 6, 1), n=40)
  kw = dict(expansion=2, stem_width=4, head_width=8, stages=((3, 2, 1),), round_to=1)
  relu6 = models.build("invres", 3, bottleneck="relu6", **kw)
  variables = relu6.init(jax.random.key(3), ds.train.inputs[:2])
  got = regions.linear_shares(variables, ds.train.inputs, ("project_bn",), "relu6", model=relu6,
                              mean=ds.mean, std=ds.std, batch_size=16)  # Three batches.
  assert set(got) == {"stage1_block0/project_bn", "stage1_block1/project_bn", "all"}
  res = probes.run(variables, relu6, ds, grad_batches=0)
  for b in (0, 1):
    row, mine = res.layer(f"stage1/block{b}/bottleneck"), got[f"stage1_block{b}/project_bn"]
    np.testing.assert_allclose(mine["position"], row["linear_frac_position"], rtol=1e-12)
    assert mine["input"] == row["linear_frac_input"]
    assert 0.0 < mine["position"] < 1.0
  assert got["all"]["input"] <= min(got[k]["input"] for k in got if k != "all")
  linear = models.build("invres", 3, bottleneck="linear", **kw)  # Untapped by the probes.
  same = regions.linear_shares(variables, ds.train.inputs, ("project_bn",), "relu6",
                               model=linear, mean=ds.mean, std=ds.std)
  # The same weights: the first bottleneck's output does not depend on the variant.
  assert same["stage1_block0/project_bn"] == got["stage1_block0/project_bn"]
