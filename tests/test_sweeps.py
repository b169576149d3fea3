"""Vectorized training: a padded, masked, vmapped, sharded net trains like a plain run."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resjax import errors, sweeps


def _spirals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 3
  t = rng.uniform(0, 1, n)
  angle = 2 * np.pi * (labels / 3 + 1.5 * t)
  x = (0.1 + 0.9 * t)[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
  x += 0.03 * rng.standard_normal((n, 2))
  return (x / x.std(0)).astype(np.float32), labels.astype(np.int32)


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % 3
  x = rng.standard_normal((n, 8, 8, 1)).astype(np.float32)
  x[:, :, :, 0] += (labels[:, None, None] - 1) * np.linspace(-1, 1, 8)[None, :, None]
  return x, labels.astype(np.int32)


@pytest.fixture(scope="module")
def spirals() -> sweeps.Arrays:
  (x, y), (xt, yt) = _spirals(96, 0), _spirals(40, 1)
  return sweeps.Arrays(x, y, xt, yt, 3)


@pytest.fixture(scope="module")
def images() -> sweeps.Arrays:
  (x, y), (xt, yt) = _images(48, 0), _images(24, 1)
  return sweeps.Arrays(x, y, xt, yt, 3)


def _assert_trains_like_single(arch, opt, nets, data, result, steps, batch_size, atol=2e-5):
  """Every net of the grid ends where its own unpadded, sequential run ends."""
  for i, net in enumerate(nets):
    single = sweeps.train_single(arch, opt, net, data, steps=steps, batch_size=batch_size,
                                 fast_compile=True)
    padded = jax.tree.map(lambda a: a[i], result.params)
    cropped = sweeps.crop(arch, padded, net)
    # Same parameter shapes as the unpadded net, same values.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=atol, rtol=1e-4),
                 cropped, single["params"])
    np.testing.assert_allclose(result.history["train_loss"][i, -1], single["train_loss"],
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.history["test_acc"][i, -1], single["test_acc"], atol=1e-6)
    # Entries outside the net never moved from zero.
    spec = {k: jnp.asarray(v[0]) for k, v in sweeps.specs(arch, [net]).items()}
    mask = sweeps.param_mask(arch, spec)
    jax.tree.map(lambda p, m: np.testing.assert_array_equal(np.asarray(p)[np.asarray(m) == 0], 0),
                 padded, mask)


def test_normal_draws_ignore_padding():
  normal = jax.jit(sweeps._normal, static_argnums=(1, 2))
  small = np.asarray(normal(jnp.int32(7), 3, (3, 5)))
  big = np.asarray(normal(jnp.int32(7), 3, (6, 9)))
  np.testing.assert_array_equal(big[:3, :5], small)
  other = np.asarray(normal(jnp.int32(8), 3, (6, 9)))
  assert not np.allclose(big, other)
  many = np.asarray(normal(jnp.int32(0), 1, (200, 100)))
  assert abs(many.mean()) < 0.02 and abs(many.std() - 1) < 0.02


def test_epoch_permutation_is_a_seeded_permutation():
  a = np.asarray(sweeps.epoch_permutation(jnp.int32(3), 0, 50))
  assert sorted(a.tolist()) == list(range(50))
  assert not np.array_equal(a, np.asarray(sweeps.epoch_permutation(jnp.int32(3), 1, 50)))
  np.testing.assert_array_equal(a, sweeps.epoch_permutation(jnp.int32(3), 0, 50))


def test_mlp_grid_equals_sequential_unpadded_runs(spirals):
  """Width and depth padding, layer norm and AdamW decay: each net matches its own run."""
  arch = sweeps.Arch("mlp", 3, (2,), max_width=6, max_depth=3, norm="layer")
  opt = sweeps.Optim("adam", lr=3e-3, weight_decay=0.1)
  # One shape, so the sequential runs compile once; the grid pads width and depth.
  nets = [sweeps.Net(0, 3, 2, "plain"), sweeps.Net(1, 3, 2, "residual"),
          sweeps.Net(2, 3, 2, "residual")]
  steps, bs = 12, 16
  result = sweeps.train_grid(arch, opt, nets, spirals, steps=steps, batch_size=bs, eval_every=6,
                             devices=jax.devices()[:1], log=None, fast_compile=True)
  # The nets really differ and really trained.
  assert len({round(float(v), 5) for v in result.history["train_loss"][:, -1]}) == 3
  assert np.all(result.history["batch_loss"][:, -1] < result.history["batch_loss"][:, 0] + 0.5)
  _assert_trains_like_single(arch, opt, nets, spirals, result, steps, bs)


@pytest.mark.parametrize("family,net,arch_kw,opt", [
    ("conv", sweeps.Net(0, 2, 2, "residual"), dict(max_width=4, max_depth=3, branch_scale=True),
     sweeps.Optim("sgd", lr=0.05, momentum=0.9, weight_decay=1e-3)),
    ("invres", sweeps.Net(1, 2, 1, "relu6"), dict(max_width=3, max_depth=2, expansion=2,
                                                  head_width=5, stem_pool=2),
     sweeps.Optim("adam", lr=1e-2)),
    ("bottleneck", sweeps.Net(2, 2, 1, "residual"), dict(max_width=4, head_width=6),
     sweeps.Optim("adam", lr=1e-2)),
])
def test_padded_equals_unpadded(family, net, arch_kw, opt, spirals, images):
  data = images if family in ("conv", "invres") else spirals
  arch = sweeps.Arch(family, 3, data.x_train.shape[1:], **arch_kw)
  result = sweeps.train_grid(arch, opt, [net], data, steps=6, batch_size=8, eval_every=6,
                             devices=jax.devices()[:1], log=None, fast_compile=True)
  _assert_trains_like_single(arch, opt, [net], data, result, 6, 8)


def test_sharded_over_8_devices_equals_1_and_resumes(spirals, tmp_path):
  assert jax.device_count() == 8
  arch = sweeps.Arch("mlp", 3, (2,), max_width=5, max_depth=3)
  opt = sweeps.Optim("adam", lr=1e-2)
  nets = sweeps.grid([0, 1, 2], [2, 5], [3], ["plain"])  # 6 nets: padded to 8 on 8 devices
  kw = dict(steps=8, batch_size=16, eval_every=4, log=None, probes=True, fast_compile=True)
  one = sweeps.train_grid(arch, opt, nets, spirals, devices=jax.devices()[:1], **kw)

  class Stop(Exception):
    pass

  def stop_after_first_chunk(line):
    if "step 4/8" in line:
      raise Stop()

  ckpt = str(tmp_path / "ckpt")
  with pytest.raises(Stop):
    sweeps.train_grid(arch, opt, nets, spirals, chunk_steps=4, checkpoint_dir=ckpt,
                      **{**kw, "log": stop_after_first_chunk})
  lines = []
  eight = sweeps.train_grid(arch, opt, nets, spirals, chunk_steps=4, checkpoint_dir=ckpt,
                            **{**kw, "log": lines.append})
  assert any("resumed at step 4/8" in l for l in lines)
  assert any("step 8/8" in l and "ETA" in l for l in lines)
  for key in sweeps.HISTORY_KEYS:
    np.testing.assert_allclose(eight.history[key], one.history[key], rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               eight.params, one.params)
  np.testing.assert_array_equal(eight.probes_final["ever_on"], one.probes_final["ever_on"])
  # Width-2 nets have only two units per layer: dead fractions are in {0, .5, 1}.
  dead = sweeps.dead_fraction(one.probes_final)
  assert np.all(np.isin(dead[:3], [0.0, 0.5, 1.0]))


def test_bad_grids_raise_config_errors(spirals):
  arch = sweeps.Arch("mlp", 3, (2,), max_width=4, max_depth=2)
  with pytest.raises(errors.ConfigError, match="variant"):
    sweeps.check_nets(arch, [sweeps.Net(0, 2, 2, "linear")])
  with pytest.raises(errors.ConfigError, match="width 5"):
    sweeps.check_nets(arch, [sweeps.Net(0, 5, 2, "plain")])
  with pytest.raises(errors.ConfigError, match="eval_every"):
    sweeps.train_grid(arch, sweeps.Optim(), [sweeps.Net(0, 2, 2, "plain")], spirals, steps=5,
                      batch_size=8, eval_every=2, log=None)
  with pytest.raises(errors.ConfigError, match="family"):
    sweeps.Arch("transformer", 3, (2,), 4).validate()
