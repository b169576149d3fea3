"""Probes on hand-built networks whose answers are known in advance."""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resjax import activations, analysis, data, errors, probes, sharding
from resjax.probes import statistics


def _const(values):
  return lambda key, shape, dtype=jnp.float32: jnp.asarray(values, dtype).reshape(shape)


def _small_uniform(key, shape, dtype=jnp.float32):
  return jax.random.uniform(key, shape, dtype, -0.1, 0.1)


class Toy(nn.Module):
  """Dense layer with fixed biases, an all-on layer, a residual and a plain block."""
  bias: Sequence[float]
  activation: str = "relu"

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = activations.fn(self.activation)
    z = nn.Dense(len(self.bias), kernel_init=_small_uniform, bias_init=_const(self.bias),
                 name="dense_hidden")(x)
    self.sow("preacts", "hidden", z)
    h = act(z)
    z = nn.Dense(5, kernel_init=_small_uniform, bias_init=nn.initializers.constant(10.0),
                 name="dense_on")(h)
    self.sow("preacts", "all_on", z)
    h = act(z)
    # Residual block: output = h + 2h, so the shortcut carries 1/5 of the energy.
    b = nn.Dense(5, kernel_init=_const(2.0 * np.eye(5)), use_bias=False, name="res")(h)
    self.sow("shortcut", "res_block", h)
    self.sow("branch", "res_block", b)
    h = h + b
    # Plain block: output = branch only.
    b = nn.Dense(5, name="plain")(h)
    self.sow("branch", "plain_block", b)
    return nn.Dense(3, name="head")(b)


class ConvToy(nn.Module):
  """One 3x3 conv whose channel 0 has a bias no input can overcome."""
  activation: str = "relu"

  @nn.compact
  def __call__(self, x, train: bool = False):
    z = nn.Conv(3, (3, 3), kernel_init=_small_uniform, bias_init=_const([-5.0, 1.0, 1.0]),
                name="conv0")(x)
    self.sow("preacts", "conv", z)
    h = nn.relu(z)
    return nn.Dense(2, name="head")(h.mean((1, 2)))


class Linear(nn.Module):
  """Identity weights: the pre-activation is the input itself."""
  dim: int
  activation: str = "relu"

  @nn.compact
  def __call__(self, x, train: bool = False):
    z = nn.Dense(self.dim, kernel_init=_const(np.eye(self.dim)), name="identity")(x)
    self.sow("preacts", "id", z)
    return nn.Dense(2, name="head")(nn.relu(z))


class BatchNormToy(nn.Module):
  activation: str = "relu"

  @nn.compact
  def __call__(self, x, train: bool = False):
    z = nn.Dense(8, name="dense0")(x)
    z = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(z)
    self.sow("preacts", "layer0", z)
    z = nn.Dense(8, name="dense1")(nn.relu(z))
    self.sow("preacts", "layer1", z)
    return nn.Dense(4, name="head")(nn.relu(z))


def _batches(x, y, batch_size, pad_value=0.0):
  n = len(y)
  for start in range(0, n, batch_size):
    xb, yb = x[start:start + batch_size], y[start:start + batch_size]
    pad = batch_size - len(yb)
    mask = np.r_[np.ones(len(yb)), np.zeros(pad)].astype(np.float32)
    if pad:
      xb = np.concatenate([xb, np.full((pad,) + xb.shape[1:], pad_value, xb.dtype)])
      yb = np.concatenate([yb, np.zeros(pad, yb.dtype)])
    yield {"inputs": xb, "labels": yb, "mask": mask}


def _data(n, shape, seed=0, classes=3):
  rng = np.random.default_rng(seed)
  return (rng.uniform(-1, 1, (n,) + shape).astype(np.float32),
          rng.integers(0, classes, n).astype(np.int32))


def _init(model, x):
  return model.init(jax.random.key(0), jnp.asarray(x[:2]))


@pytest.fixture(scope="module")
def toy():
  model = Toy(bias=(10.0, -5.0, 10.0, 10.0, -5.0, 0.45))
  x, y = _data(100, (4,))
  variables = _init(model, x)
  res = probes.probe(variables, model, _batches(x, y, 16), mesh=sharding.make_mesh())
  return model, variables, x, y, res


def test_negative_bias_kills_exactly_those_units(toy):
  *_, res = toy
  hidden = res.layer("hidden")
  assert hidden["dead_units"] == [1, 4]
  assert hidden["dead"] == 2 and hidden["dead_frac"] == pytest.approx(2 / 6)
  # Four of six units are on for every input: no spread, never linear.
  assert hidden["active_mean"] == pytest.approx(4 / 6)
  assert hidden["active_std"] == pytest.approx(0.0, abs=1e-12)
  assert hidden["linear_frac"] == 0.0
  # ReDo: the dead units and the faint unit 5 (bias 0.45, always on) are dormant.
  scores = np.array(hidden["dormant_score"])
  assert scores[[1, 4]].max() == 0.0
  assert 0 < scores[5] < 0.1 < scores[[0, 2, 3]].min()
  assert hidden["dormant"] == 3


def test_all_active_layer_is_linear_for_every_input(toy):
  *_, res = toy
  on = res.layer("all_on")
  assert on["linear_frac"] == 1.0 and on["linear_frac_position"] == 1.0
  assert on["dead"] == 0 and on["active_min"] == 1.0
  assert res.summary["examples"] == 100


def test_shortcut_and_branch_energy(toy):
  *_, res = toy
  blocks = {b["block"]: b for b in res.blocks}
  assert [b["block"] for b in res.blocks] == ["res_block", "plain_block"]
  assert blocks["res_block"]["shortcut_frac"] == pytest.approx(0.2, rel=1e-5)
  assert blocks["res_block"]["cosine"] == pytest.approx(1.0, rel=1e-5)
  assert blocks["plain_block"]["shortcut_frac"] == 0.0
  assert not blocks["plain_block"]["has_shortcut"]


def test_layers_come_in_forward_order(toy):
  *_, res = toy
  assert [r["layer"] for r in res.layers] == ["hidden", "all_on"]
  assert [r["index"] for r in res.layers] == [0, 1]


def test_padding_is_masked_out(toy):
  model, variables, x, y, res = toy
  # Garbage in the padded rows would flip units on and shift every moment.
  padded = probes.probe(variables, model, _batches(x, y, 24, pad_value=1e3))
  for a, b in zip(res.layers, padded.layers):
    for key in ("dead_units", "dormant", "active_mean", "linear_frac"):
      assert a[key] == b[key], key
    for key in ("participation_pre", "participation_post", "entropy_rank_pre",
                "entropy_rank_post", "entropy_rank_gram_post", "cosine_post"):
      assert a[key] == pytest.approx(b[key], rel=1e-4), key
  assert padded.summary["examples"] == 100
  assert padded.summary["accuracy"] == pytest.approx(res.summary["accuracy"])


def test_conv_channels_are_units_and_positions_are_samples():
  model = ConvToy()
  x, y = _data(24, (6, 5, 2), classes=2)
  res = probes.probe(_init(model, x), model, _batches(x, y, 8))
  conv = res.layer("conv")
  assert conv["units"] == 3 and conv["positions"] == 30
  assert conv["dead_units"] == [0]
  assert conv["active_mean"] == pytest.approx(2 / 3)
  assert conv["linear_frac"] == 0.0 and conv["linear_frac_position"] == 0.0
  assert conv["linear_frac_input"] == 0.0
  # Pre-activation variance is tiny next to nothing: rank defined, finite.
  assert 1.0 <= conv["participation_pre"] <= conv["entropy_rank_pre"] <= 3.0


class IdentityConv(nn.Module):
  """A 1x1 conv with identity weights: channel c at a position is the input's."""
  activation: str = "relu"

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = x.shape[-1]
    z = nn.Conv(c, (1, 1), kernel_init=_const(np.eye(c)), use_bias=False, name="conv1x1")(x)
    self.sow("preacts", "conv", z)
    return nn.Dense(2, name="head")(nn.relu(z).mean((1, 2)))


def test_conv_linear_region_is_per_position_and_dense_per_input():
  x, y = _data(40, (3, 4, 2), seed=2, classes=2)
  x[:6] = np.abs(x[:6]) + 0.01  # six inputs with every unit on at every position
  model = IdentityConv()
  conv = probes.probe(_init(model, x), model, _batches(x, y, 8)).layer("conv")
  on_position = (x > 0).all(-1)                     # [N, H, W]: all channels on
  assert conv["linear_frac_position"] == pytest.approx(on_position.mean(), abs=1e-12)
  assert conv["linear_frac"] == conv["linear_frac_position"]
  assert 0.3 < conv["linear_frac"] < 0.5            # far from the ~0 of whole inputs
  assert conv["linear_frac_input"] == pytest.approx(on_position.all((1, 2)).mean())
  assert conv["linear_frac_input"] == pytest.approx(6 / 40)
  # A dense layer keeps the per-input meaning.
  dense_x = x.reshape(40, -1)
  dense = probes.probe(_init(Linear(dim=24), dense_x), Linear(dim=24),
                       _batches(dense_x, y, 8)).layer("id")
  assert dense["positions"] == 1
  assert dense["linear_frac"] == dense["linear_frac_input"] == pytest.approx(6 / 40)


def test_effective_rank_isotropic_and_rank_k():
  d, k, n = 8, 3, 4000
  rng = np.random.default_rng(1)
  iso = rng.standard_normal((n, d)).astype(np.float32)
  basis, _ = np.linalg.qr(rng.standard_normal((d, k)))
  low = (rng.standard_normal((n, k)) @ basis.T).astype(np.float32)
  y = np.zeros(n, np.int32)
  model = Linear(dim=d)
  variables = _init(model, iso)
  res_iso = probes.probe(variables, model, _batches(iso, y, 400)).layer("id")
  res_low = probes.probe(variables, model, _batches(low, y, 400)).layer("id")
  for key in ("participation", "entropy_rank"):
    assert res_iso[f"{key}_pre"] == pytest.approx(d, rel=0.03), key
    assert res_low[f"{key}_pre"] == pytest.approx(k, rel=0.03), key
    # ReLU of independent coordinates stays isotropic.
    assert res_iso[f"{key}_post"] == pytest.approx(d, rel=0.03), key
  # The probe's numbers are the two formulas applied to the pooled covariance.
  lam = np.clip(np.linalg.eigvalsh(np.cov(low.T)), 0, None)
  p = lam[lam > 1e-9 * lam.max()] / lam.sum()
  assert res_low["participation_pre"] == pytest.approx(1 / np.sum(p ** 2), rel=1e-3)
  assert res_low["entropy_rank_pre"] == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-3)


@pytest.mark.parametrize("spectrum", [
    [1.0, 1.0, 1.0, 0.0, 0.0],            # 3 equal axes: both are 3
    [5.0, 0.0, 0.0, 0.0],                 # rank one: both are 1
    [4.0, 2.0, 1.0, 0.5, 0.25, 0.125],    # geometric decay
    [1.0] * 7 + [1e-6],                   # almost 7
    [9.0, 1.0],
])
def test_participation_ratio_and_entropy_rank_against_numpy(spectrum):
  lam = np.asarray(spectrum)
  q, _ = np.linalg.qr(np.random.default_rng(len(lam)).standard_normal((len(lam),) * 2))
  cov = (q * lam) @ q.T                   # a rotated covariance with that spectrum
  p = lam[lam > 0] / lam.sum()
  want_pr = lam.sum() ** 2 / np.sum(lam ** 2)
  want_erank = np.exp(-np.sum(p * np.log(p)))
  assert probes.participation_ratio(cov) == pytest.approx(want_pr, rel=1e-9)
  assert probes.entropy_rank(cov) == pytest.approx(want_erank, rel=1e-6)
  assert probes.participation_ratio(cov) <= probes.entropy_rank(cov) * (1 + 1e-9)
  k = np.count_nonzero(lam)
  if np.allclose(lam[lam > 0], lam.max()):
    assert probes.participation_ratio(cov) == pytest.approx(k)
    assert probes.entropy_rank(cov) == pytest.approx(k, rel=1e-6)
  # Geometric halving: the two measures differ, so they are not the same number.
  if spectrum[0] == 4.0:
    assert probes.entropy_rank(cov) - probes.participation_ratio(cov) > 0.3
  assert probes.participation_ratio(np.zeros((3, 3))) == probes.entropy_rank(np.zeros((3, 3))) == 0


@pytest.fixture(scope="module")
def bn_runs():
  """The BatchNorm toy probed on a 1-device and an 8-device mesh."""
  assert jax.device_count() == 8
  model = BatchNormToy()
  x, y = _data(200, (5,), classes=4)
  variables = _init(model, x)
  variables = {"params": variables["params"],
               "batch_stats": jax.tree.map(lambda v: v + 0.3, variables["batch_stats"])}
  grads = list(_batches(x[:64], y[:64], 32))
  one, eight = (probes.probe(variables, model, _batches(x, y, 64), grad_batches=grads,
                             mesh=sharding.make_mesh(devices))
                for devices in (jax.devices()[:1], jax.devices()))
  return model, variables, grads, one, eight


def test_gradient_norms_match_jax_grad(bn_runs):
  import optax
  model, variables, batches, _, res = bn_runs
  assert [w["layer"] for w in res.weights] == ["dense0", "dense1", "head"]

  def loss(p, b):
    logits, _ = model.apply({"params": p, "batch_stats": variables["batch_stats"]},
                            b["inputs"], train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, b["labels"]).mean()

  grad = jax.jit(jax.grad(loss))
  want = np.array([[float(jnp.linalg.norm(grad(variables["params"], b)[m]["kernel"]))
                    for m in ("dense0", "dense1", "head")] for b in batches])
  got = np.array([w["grad_norm"] for w in res.weights])
  np.testing.assert_allclose(got, np.exp(np.log(want).mean(0)), rtol=1e-4)
  for w in res.weights:
    assert w["grad_norm_lo"] < w["grad_norm"] < w["grad_norm_hi"]
    assert w["grad_batches"] == 2 and w["param_norm"] > 0


def test_same_numbers_on_one_and_eight_devices(bn_runs):
  *_, one, eight = bn_runs
  assert one.summary["devices"] == 1 and eight.summary["devices"] == 8
  assert len(one.rows()) == len(eight.rows()) == 5
  for a, b in zip(one.rows(), eight.rows()):
    assert a.keys() == b.keys()
    for key, va in a.items():
      if isinstance(va, float):
        assert va == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["layer"], key)
      else:
        assert va == b[key], (a["layer"], key)
  for name in one.active_fraction:
    np.testing.assert_array_equal(one.active_fraction[name], eight.active_fraction[name])


def test_readable_errors():
  model = Toy(bias=(1.0, 1.0))
  x, y = _data(16, (4,))
  variables = _init(model, x)

  class Silent(nn.Module):
    activation: str = "relu"

    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(2)(x)

  with pytest.raises(errors.ConfigError, match="sows no pre-activations"):
    probes.probe(_init(Silent(), x), Silent(), _batches(x, y, 8))
  with pytest.raises(errors.ConfigError, match="activation='swish'"):
    probes.probe(variables, model, _batches(x, y, 8), activation="swish")
  with pytest.raises(errors.ConfigError,
                     match="^activation='swish' is not allowed; use an activation name or None$"):
    probes.check_args(activation="swish")
  with pytest.raises(errors.ConfigError, match="does not divide over 8 devices"):
    probes.probe(variables, model, _batches(x, y, 6))
  with pytest.raises(errors.ConfigError, match="empty"):
    probes.probe(variables, model, iter(()))


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size="64"), "batch_size='64' is not allowed; use an integer >= 1"),
    (dict(batch_size=0), "batch_size=0 is not allowed; use an integer >= 1"),
    (dict(grad_batches=True), "grad_batches=True is not allowed; use an integer >= 0, or None "
     "(8, at most what the split holds)"),
    (dict(grad_batch_size=-2), "grad_batch_size=-2 is not allowed; use an integer >= 1, or "
     "None (64, at most the split)"),
    (dict(max_examples=0.5), "max_examples=0.5 is not allowed; use an integer >= 1 or None"),
    (dict(split="val"), "split='val' is not allowed; choose one of: train, test"),
    (dict(split=1), "split=1 is not allowed; choose one of: train, test"),
    (dict(dormant_threshold=1.0), "dormant_threshold=1.0 is not allowed; use a number in [0, 1)"),
    (dict(dormant_threshold="0.1"), "dormant_threshold='0.1' is not allowed; use a number in [0, 1)"),
    (dict(dormant_threshold=float("nan")), "dormant_threshold=nan is not allowed; use a number "
     "in [0, 1) (a finite float32 value: 0 or |x| in [1.18e-38, 3.4e+38])"),
    (dict(batch_size=np.int64(0)), "batch_size=0 is not allowed; use an integer >= 1"),
])
def test_run_checks_its_arguments_as_launch_analyze_does(kwargs, message):
  ds = data.load("spirals", num_train=16, num_test=8)
  with pytest.raises(errors.ConfigError) as api:
    probes.run({"params": {}}, None, ds, **kwargs)
  assert str(api.value) == message
  # analysis.analyze (what launch.analyze calls with its flags of the same names)
  # refuses with the same line before it reads any workdir.
  with pytest.raises(errors.ConfigError) as launcher:
    analysis.analyze("/nonexistent/run", **kwargs)
  assert str(launcher.value) == message


def test_run_names_a_wrong_dataset_state_or_model():
  ds = data.load("spirals", num_train=16, num_test=8)
  with pytest.raises(errors.ConfigError, match="dataset is a str; pass a resjax.data.Dataset"):
    probes.run({"params": {}}, None, "spirals")
  with pytest.raises(errors.ConfigError, match="state is a str; pass a TrainState"):
    probes.run("runs/spirals_mlp", None, ds)
  with pytest.raises(errors.ConfigError, match="model is a str; pass a flax module"):
    probes.run({"params": {}}, "mlp", ds)
  with pytest.raises(errors.ConfigError, match="pass the model"):
    probes.run({"params": {}}, None, ds)


def test_run_points_to_the_fix_for_a_grid_state_other_inputs_and_gradient_batches():
  from configs import embedded
  from resjax import train
  config = embedded.get_config("tiny_mlp")
  config.data.num_train, config.data.num_test = 48, 16
  ds = train.load_data(config)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = train.create_train_state(config, mesh, ds.input_shape, ds.num_classes,
                                   mean=ds.mean, std=ds.std)
  config.grid.seeds = (0, 1)
  stacked = train.create_grid_state(config, sharding.grid_mesh(jax.devices()[:1], 1),
                                    ds.input_shape, ds.num_classes, mean=ds.mean, std=ds.std)
  with pytest.raises(errors.ConfigError, match=r"^state holds the stacked nets of a grid; "
                     r"probe one net: config, state = checkpoints.load\(workdir, net=k\)$"):
    probes.run(stacked, None, ds)
  digits = data.load("digits")  # 8x8 images into a net trained on 2-D points.
  with pytest.raises(errors.ConfigError, match=r"^the inputs of the train split of digits "
                     r"\(shape \(8, 8, 1\)\) do not fit the state's model"):
    probes.run(state, None, digits)
  # Gradient batches: a size set beyond the split is refused, never cut; the default is
  # 64 at most the split (48 here), 8 batches at most what the split holds (1).
  with pytest.raises(errors.ConfigError, match=r"^grad_batch_size=49 exceeds the 48 examples "
                     r"of the train split of spirals; use 1..48"):
    probes.run(state, None, ds, mesh=mesh, grad_batch_size=49)
  with pytest.raises(errors.ConfigError, match=r"^grad_batches=3 batches of 16 need 48 "):
    probes.run(state, None, ds, mesh=mesh, grad_batch_size=16, grad_batches=3, max_examples=40)
  res = probes.run(state, None, ds, mesh=mesh)
  assert res.summary["grad_batch_size"] == 48
  assert probes.grad_sizes(48, 8, None, None, "x") == (1, 48)
  assert probes.grad_sizes(1000, 8, None, 60, "x") == (8, 56)  # Whole batches per device.


def test_progress_lines_and_table(toy):
  model, variables, x, y, _ = toy
  lines = []
  res = probes.probe(variables, model, _batches(x, y, 8), num_batches=13,
                     progress=lines.append, progress_every=5)
  assert lines[0].startswith("  batch 1 compiled and ran in")
  assert [l.split(":")[0] for l in lines[1:]] == ["  batch 5/13", "  batch 10/13", "  batch 13/13"]
  assert lines[-1].startswith("  batch 13/13: 100 examples")
  table = res.table()
  assert "hidden" in table and "all_on" in table and "100 examples" in table
  rows = res.rows("toy")
  assert {r["kind"] for r in rows} == {"activation", "block"}
  assert all(r["run"] == "toy" for r in rows)
  assert not any(k in r for r in rows for k in probes.LIST_FIELDS)


def test_cosine_and_uncentred_rank_against_numpy():
  """Inputs near one direction: cosine near 1 and uncentred rank near 1, while the centred
  rank still sees the spread (why the uncentred one measures rank collapse); the numbers
  equal the formulas on the post-activation features, all-zero rows and padding left out."""
  d, n = 6, 300
  rng = np.random.default_rng(2)
  x = (3.0 + 0.05 * rng.standard_normal((n, d))).astype(np.float32)  # ReLU keeps them as they are.
  x[:7] = -1.0  # All-zero after the ReLU: no direction, left out of the cosine.
  y = np.zeros(n, np.int32)
  model = Linear(dim=d)
  variables = _init(model, x)
  row = probes.probe(variables, model, _batches(x, y, 64, pad_value=1e3)).layer("id")
  h = np.maximum(x.astype(np.float64), 0.0)
  u = h[7:] / np.linalg.norm(h[7:], axis=1, keepdims=True)
  cos = u @ u.T
  m = len(u)
  assert row["cosine_post"] == pytest.approx((cos.sum() - m) / (m * (m - 1)), rel=1e-5)
  s2 = np.linalg.svd(h, compute_uv=False) ** 2
  p = s2 / s2.sum()
  assert row["entropy_rank_gram_post"] == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-4)
  assert row["cosine_post"] > 0.99 and row["entropy_rank_gram_post"] < 1.2
  spread = probes.probe(variables, model, _batches(x[7:], y[7:], 64)).layer("id")
  assert spread["entropy_rank_post"] > 5.5  # Centred: the noise around the shared direction.
  assert spread["entropy_rank_gram_post"] < 1.2 and spread["cosine_post"] > 0.99
  assert np.isnan(statistics.mean_cosine(np.zeros(3), 1))  # Below two vectors.
