"""MNIST-1D (generated offline by the `mnist1d` package) and the 1-D ResNet / plain family."""
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import embedded
from resjax import checkpoints, data, errors, models, train
from resjax.data import embedded as embedded_data
from resjax.models import layers


def _global_states():
  return np.random.get_state(), random.getstate()


def _same_states(a, b) -> bool:
  (np_a, py_a), (np_b, py_b) = a, b
  return py_a == py_b and all(np.array_equal(x, y) for x, y in zip(np_a, np_b))


def test_dataset_is_the_published_one_and_leaves_the_global_random_states_alone():
  from mnist1d import data as mnist1d_data
  np.random.seed(123)
  random.seed(456)
  before = _global_states()
  embedded_data._mnist1d_arrays.cache_clear()  # pylint: disable=protected-access
  ds = data.load("mnist1d")
  assert _same_states(before, _global_states())
  assert ds.input_shape == (40, 1) and ds.num_classes == 10 and not ds.is_image
  assert (len(ds.train), len(ds.test)) == (4000, 1000)
  assert ds.train.inputs.dtype == np.float32 and ds.train.labels.dtype == np.int32
  for split in (ds.train, ds.test):
    counts = np.bincount(split.labels, minlength=10)
    assert len(counts) == 10 and counts.min() > 0.08 * len(split)
  # The package's own default call (which does move the global states: restored here).
  published = mnist1d_data.make_dataset(mnist1d_data.get_dataset_args())
  np.random.set_state(before[0])
  random.setstate(before[1])
  np.testing.assert_array_equal(ds.train.inputs[..., 0], published["x"].astype(np.float32))
  np.testing.assert_array_equal(ds.test.labels, published["y_test"])


def test_dataset_is_cached_deterministic_and_seeded():
  a = data.load("mnist1d")
  a.train.inputs[0] = 99.0  # A caller's copy: the cache stays as generated.
  b = data.load("mnist1d")
  assert not np.any(b.train.inputs[0] == 99.0)
  embedded_data._mnist1d_arrays.cache_clear()  # pylint: disable=protected-access
  c = data.load("mnist1d")
  np.testing.assert_array_equal(b.train.inputs, c.train.inputs)
  other = data.load("mnist1d", seed=1)
  assert other.train.inputs.shape == b.train.inputs.shape
  assert not np.array_equal(other.train.inputs, b.train.inputs)
  with pytest.raises(errors.ConfigError, match="data.num_test is not an option"):
    data.load("mnist1d", num_test=10)


def test_generated_set_is_kept_beside_the_compilation_cache_and_read_back(tmp_path,
                                                                          monkeypatch):
  from mnist1d import data as mnist1d_data
  want = data.load("mnist1d", seed=2)  # Generated here (or in an earlier test).
  from resjax import program_cache  # Where the compilation cache keeps results.
  monkeypatch.setattr(program_cache, "cache_dir", lambda: str(tmp_path / "exported"))
  embedded_data._mnist1d_arrays.cache_clear()  # pylint: disable=protected-access
  data.load("mnist1d", seed=2)
  (kept,) = (tmp_path / "exported").glob("mnist1d-*.npz")
  embedded_data._mnist1d_arrays.cache_clear()  # pylint: disable=protected-access
  generate = mnist1d_data.make_dataset
  monkeypatch.setattr(mnist1d_data, "make_dataset", None)  # Nothing may generate now.
  got = data.load("mnist1d", seed=2)
  for a, b in ((got.train, want.train), (got.test, want.test)):
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.inputs.dtype == np.float32 and a.labels.dtype == np.int32
  kept.write_bytes(kept.read_bytes()[:1000])  # Cut short: generated again and replaced.
  embedded_data._mnist1d_arrays.cache_clear()  # pylint: disable=protected-access
  monkeypatch.setattr(mnist1d_data, "make_dataset", generate)
  again = data.load("mnist1d", seed=2)
  np.testing.assert_array_equal(again.train.inputs, want.train.inputs)
  assert kept.stat().st_size > 100_000
  embedded_data._mnist1d_arrays.cache_clear()  # pylint: disable=protected-access


def test_option_a_shortcut_on_sequences():
  x = jnp.arange(2 * 6 * 3, dtype=jnp.float32).reshape(2, 6, 3)
  s = models.shortcut_option_a(x, 5, 2)
  assert s.shape == (2, 3, 5)
  np.testing.assert_array_equal(s[..., :3], x[:, ::2])
  assert not np.any(s[..., 3:])


@pytest.mark.parametrize("residual", [True, False])
def test_resnet1d_depth_8_forward_shapes_and_taps(residual):
  model = models.build("resnet1d", 10, depth=8, width=4, residual=residual)
  x = jax.random.normal(jax.random.key(0), (3, 40, 1))
  variables = model.init(jax.random.key(1), x)
  logits, taps = model.apply(variables, x, mutable=list(models.COLLECTIONS))
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32
  pre = models.probe_tensors(taps)
  assert tuple(pre) == models.sown_names(model, (40, 1)) == (
      "stem", "stage1/block0/act1", "stage1/block0/act2", "stage2/block0/act1",
      "stage2/block0/act2", "stage3/block0/act1", "stage3/block0/act2")
  assert pre["stem"].shape == (3, 40, 4)
  assert pre["stage2/block0/act2"].shape == (3, 20, 8)
  assert pre["stage3/block0/act2"].shape == (3, 10, 16)
  assert variables["params"]["stem_conv"]["kernel"].shape == (3, 1, 4)
  assert set(taps["branch"]) == {"stage1/block0", "stage2/block0", "stage3/block0"}
  assert set(taps.get("shortcut", {})) == (set(taps["branch"]) if residual else set())
  name = models.describe("resnet1d", {"depth": 8, "width": 4, "residual": residual})
  assert name == ("resnet1d-8x4" if residual else "plain1d-8x4")
  assert models.traits("resnet1d", {"depth": 8, "width": 4, "residual": residual}) == (
      4, 8, "residual" if residual else "plain")


def test_resnet1d_plain_and_residual_share_their_parameters():
  x = jax.random.normal(jax.random.key(0), (2, 40, 1))
  res, plain = (models.build("resnet1d", 10, depth=14, width=4, residual=r) for r in (True, False))
  v = res.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, v, plain.init(jax.random.key(1), x))
  assert not np.allclose(res.apply(v, x), plain.apply(v, x))
  assert models.param_count(v["params"]) == models.param_count(
      plain.init(jax.random.key(2), x)["params"])
  with pytest.raises(errors.ConfigError, match=r"model.depth=10 is not allowed; .* 6n\+2"):
    models.build("resnet1d", 10, depth=10)
  with pytest.raises(errors.ConfigError, match="model.width=0 is not allowed"):
    models.build("resnet1d", 10, width=0)


@pytest.mark.parametrize("bottleneck", ["linear", "relu6"])
def test_inverted_residual_nets_take_sequences(bottleneck):
  kw = dict(stages=((4, 2, 1), (8, 1, 2)), stem_width=8, head_width=16, round_to=1,
            bottleneck=bottleneck)
  seq, img = models.build("invres", 10, **kw), models.build("invres", 10, **kw)
  x = jax.random.normal(jax.random.key(0), (3, 40, 1))
  v = seq.init(jax.random.key(1), x)
  logits, taps = seq.apply(v, x, mutable=list(models.COLLECTIONS))
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32
  pre = models.probe_tensors(taps)
  assert pre["stem"].shape == (3, 40, 8) and pre["stage2/block0/depthwise"].shape == (3, 20, 24)
  assert ("stage1/block0/bottleneck" in pre) == (bottleneck == "relu6")
  p = v["params"]
  assert p["stem_conv"]["kernel"].shape == (3, 1, 8)
  assert p["stage1_block0"]["depthwise_conv"]["kernel"].shape == (3, 1, 48)
  assert p["stage1_block0"]["expand_conv"]["kernel"].shape == (1, 8, 48)
  # The same family on images: 3x3 and 1x1 kernels, the same parameters but the extra
  # taps of the stem's 8 kernels and the depthwise convs' 48 + 24 + 24 channels.
  w = img.init(jax.random.key(1), jnp.zeros((1, 8, 8, 1)))["params"]
  assert w["stage1_block0"]["depthwise_conv"]["kernel"].shape == (3, 3, 1, 48)
  assert w["stage1_block0"]["expand_conv"]["kernel"].shape == (1, 1, 8, 48)
  assert models.param_count(w) - models.param_count(p) == (8 + 48 + 24 + 24) * 6


@pytest.mark.parametrize("strides", [1, 2])
def test_depthwise_conv_on_sequences_is_the_grouped_conv(strides):
  x = jax.random.normal(jax.random.key(0), (2, 10, 6))
  fast = layers.depthwise(6, strides, jnp.float32, "dw", dims=1)
  grouped = layers._conv(6, 3, strides, jnp.float32, "dw", groups=6, dims=1)  # pylint: disable=protected-access
  v = fast.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, v, grouped.init(jax.random.key(1), x))
  np.testing.assert_allclose(fast.apply(v, x), grouped.apply(v, x), rtol=1e-5, atol=1e-6)
  assert fast.apply(v, x).shape == (2, 10 // strides, 6)


def _tiny(steps: int):
  config = embedded.get_config("mnist1d_resnet")
  config.model.depth, config.model.width = 8, 8
  config.train.steps = steps
  config.train.log_every = steps
  config.train.eval_every = 0
  config.train.checkpoint_every = 0
  return config


def test_a_short_run_learns_well_above_chance(tmp_path):
  result = train.train_and_evaluate(_tiny(150), str(tmp_path / "w"))
  assert result["eval/accuracy"] > 0.5  # Chance: 0.1.


def test_a_stopped_run_resumes_bit_for_bit(tmp_path):
  config = _tiny(4)
  config.model.residual = False
  config.train.checkpoint_every = 2
  train.train_and_evaluate(config, str(tmp_path / "whole"))
  stopped = train.train_and_evaluate(config, str(tmp_path / "parts"),
                                     should_stop=lambda step: step == 2)
  assert stopped["stopped"] and stopped["step"] == 2
  train.train_and_evaluate(config, str(tmp_path / "parts"))
  (c_whole, whole), (c_parts, parts) = (checkpoints.load(str(tmp_path / w))
                                        for w in ("whole", "parts"))
  assert c_parts.model.to_dict() == c_whole.model.to_dict() == config.model.to_dict()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(whole.arrays()),
               jax.device_get(parts.arrays()))


def test_resnet1d_is_probed_like_the_other_conv_families():
  from resjax import probes, sharding
  config = _tiny(1)
  config.model.width = 4
  ds = train.load_data(config)
  state = train.create_train_state(config, sharding.make_mesh(jax.devices()[:1]), ds.input_shape,
                                   ds.num_classes, mean=ds.mean, std=ds.std)
  res = probes.run(state, None, ds, max_examples=64, batch_size=32, grad_batches=1,
                   grad_batch_size=32, mesh=sharding.make_mesh(jax.devices()[:1]))
  names = models.sown_names(state.apply_fn.__self__, ds.input_shape)
  assert [r["layer"] for r in res.layers] == list(names)
  assert [r["units"] for r in res.layers] == [4, 4, 4, 8, 8, 16, 16]
  assert all(0.0 <= r["dead_frac"] <= 1.0 for r in res.layers)
  assert [r["block"] for r in res.blocks] == ["stage1/block0", "stage2/block0", "stage3/block0"]
  assert all(0.0 < r["shortcut_frac"] < 1.0 for r in res.blocks)
  assert res.summary["examples"] == 64
