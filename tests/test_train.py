"""Training library: schedules, optimizers, config checks, device-count invariance."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10, embedded
from conftest import run_steps
from resjax import errors, sharding, train
from resjax.kernels import onednn


def _lr(config, step):
  return float(train.make_schedule(config.opt, config.train.steps)(jnp.asarray(step)))


def test_he_et_al_piecewise_schedule():
  config = cifar10.get_config("resnet56")
  assert [_lr(config, s) for s in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_resnet110_warms_up_at_0_01_for_400_steps():
  config = cifar10.get_config("resnet110")
  assert [_lr(config, s) for s in (0, 399, 400, 32000)] == pytest.approx(
      [0.01, 0.01, 0.1, 0.01])
  assert cifar10.get_config("resnet56").opt.warmup_steps == 0


def test_cosine_schedule_decays_to_zero():
  config = embedded.get_config("spirals_mlp")
  lrs = [_lr(config, s) for s in range(0, config.train.steps + 1, 250)]
  assert lrs[0] == pytest.approx(config.opt.lr)
  assert lrs[-1] == pytest.approx(0.0, abs=1e-9)
  assert all(a > b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("decay_params", ["all", "kernels"])
def test_weight_decay_is_coupled_l2(decay_params):
  config = cifar10.get_config("resnet20")
  config.opt.momentum, config.opt.weight_decay, config.opt.decay_params = 0.0, 0.5, decay_params
  tx = train.make_optimizer(config.opt, train.make_schedule(config.opt, 10))
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  grads = {"kernel": jnp.full((2, 2), 0.25), "bias": jnp.full((2,), 0.25)}
  updates, _ = tx.update(grads, tx.init(params), params)
  # SGD on g + wd * w at lr 0.1; 'kernels' leaves the bias undecayed.
  np.testing.assert_allclose(updates["kernel"], -0.1 * (0.25 + 0.5), rtol=1e-6)
  bias_decay = 0.5 if decay_params == "all" else 0.0
  np.testing.assert_allclose(updates["bias"], -0.1 * (0.25 + bias_decay), rtol=1e-6)


def test_invalid_names_raise_config_error():
  config = cifar10.get_config()
  config.opt.name = "rmsprop"
  with pytest.raises(errors.ConfigError, match="opt.name='rmsprop'.*sgd, adam, adamw"):
    train.make_optimizer(config.opt, lambda step: 0.1)
  config.opt.schedule = "linear"
  with pytest.raises(errors.ConfigError, match="opt.schedule='linear'"):
    train.make_schedule(config.opt, 10)


def test_validate_names_every_bad_field_on_its_own_line():
  config = cifar10.get_config()
  config.train.steps = 0
  config.data.batch_size = 100
  config.model.depth = 21
  config.opt.lr = -1.0
  config.data.name = "imagenet"
  with pytest.raises(errors.ConfigError) as info:
    train.validate(config, num_devices=8)
  lines = str(info.value).splitlines()
  assert len(lines) == 5
  for field in ("train.steps=0", "data.batch_size=100", "model.depth=21", "opt.lr=-1.0",
                "data.name='imagenet'"):
    assert sum(field in line for line in lines) == 1, (field, lines)
  assert "8 devices" in str(info.value)
  train.validate(cifar10.get_config("preact110"), num_devices=8)  # The defaults pass.


def test_eight_devices_match_one_device():
  # BatchNorm + on-device augmentation: both must see the global batch.
  config = embedded.get_config("tiny_mlp")
  config.data.name, config.data.augment, config.data.pad = "digits", True, 1
  config.model.norm = "batch"
  config.opt.name, config.opt.lr, config.opt.schedule = "sgd", 0.1, "constant"
  losses_8, params_8 = run_steps(config, jax.devices(), steps=5)
  losses_1, params_1 = run_steps(config, jax.devices()[:1], steps=5)
  assert np.all(np.isfinite(losses_8)) and losses_8[-1] < losses_8[0]
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params_8, params_1)


def test_residual_mlp_fits_spirals():
  config = embedded.get_config("spirals_resmlp")
  config.model.width, config.model.depth = 32, 4
  config.opt.lr, config.train.steps = 2e-2, 300
  ds = train.load_data(config)
  mesh = sharding.make_mesh(jax.devices()[:1])  # Tiny steps: one device is fastest.
  state = train.create_train_state(config, mesh, ds.input_shape, ds.num_classes,
                                   mean=ds.mean, std=ds.std)
  p_train, p_eval = train.jit_steps(state, mesh)
  for step in range(config.train.steps):
    local = train.host_batch(ds.train, step, seed=0, global_batch=config.data.batch_size)
    state, _ = p_train(state, sharding.to_global(local, mesh))
  result = train.evaluate(p_eval, state, ds.train, mesh, 256)
  assert result["accuracy"] > 0.95, result
  assert int(state.step) == config.train.steps


def test_global_norms_are_optaxs_tree_norms():
  import optax  # pylint: disable=import-outside-toplevel
  from resjax.train import steps  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  trees = [{"a": {"kernel": rng.normal(size=(3, 4)) * s, "bias": rng.normal(size=(4,))},
            "b": rng.normal(size=(2, 2, 5)).astype(np.float32)} for s in (1.0, 1e-3, 30.0)]
  want = [float(optax.tree.norm(t)) for t in trees]
  np.testing.assert_allclose(jax.jit(steps.global_norms)(*trees), want, rtol=1e-6)
  stacked = [jax.tree.map(lambda x: np.stack([x, 2 * x]), t) for t in trees]  # A grid's nets.
  got = jax.jit(jax.vmap(steps.global_norms))(*stacked)
  np.testing.assert_allclose(got, [want, [2 * w for w in want]], rtol=1e-6)


def test_evaluation_reads_the_split_in_batches_of_eval_batch_size(tmp_path, monkeypatch):
  from resjax.train import loop  # pylint: disable=import-outside-toplevel
  config = embedded.get_config("tiny_mlp")  # Batch 32; spirals: 1,500 test points.
  config.train.eval_every, config.train.eval_batch_size = 2, 128
  seen = []
  real = loop.evaluate
  monkeypatch.setattr(loop, "evaluate", lambda *a: seen.append(a[4]) or real(*a))
  result = train.train_and_evaluate(config, str(tmp_path), say=lambda _: None)
  assert seen == [128, 128]  # At steps 2 and 4.
  # Other batches give the same accuracy, and the loss to float32 rounding.
  ds = train.load_data(config)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = train.create_train_state(config, mesh, ds.input_shape, ds.num_classes,
                                   mean=ds.mean, std=ds.std)
  _, p_eval = train.jit_steps(state, mesh)
  each = [train.evaluate(p_eval, state, ds.test, mesh, b) for b in (32, 128, 1504)]
  assert len({r["accuracy"] for r in each}) == 1
  np.testing.assert_allclose([r["loss"] for r in each], each[0]["loss"], rtol=1e-6)
  assert 0.0 <= result["eval/accuracy"] <= 1.0
  config.train.eval_batch_size = 48
  with pytest.raises(errors.ConfigError, match=r"train.eval_batch_size=48 is not a multiple of "
                     r"data.batch_size=32; use one \(or 0: data.batch_size\)"):
    train.validate(config, 1, unit="processes")
  config.train.eval_batch_size = 0  # The training batch.
  train.validate(config, 1, unit="processes")


@pytest.mark.parametrize("module", [cifar10, embedded])
def test_every_config_variant_is_valid(module):
  for variant in module.VARIANTS:
    config = module.get_config(variant)
    train.validate(config, num_devices=8)
    assert train.build_model(config, num_classes=10).activation in ("relu", "relu6")
  with pytest.raises(errors.ConfigError, match="config variant='resnet21'"):
    module.get_config("resnet21")


def test_data_mesh_splits_a_cifar_resnet_with_xla_convs_but_not_an_mlp():
  config = cifar10.get_config("resnet20")
  flops, n_params = train.forward_flops(config, (32, 32, 3), 10)
  assert n_params == 269_722
  assert flops == pytest.approx(2 * 40.6e6, rel=0.15)  # XLA's count of one forward pass.
  # oneDNN's convolutions use every core per call: one host device.
  onednn_devices = 1 if onednn.available() else 8
  assert sharding.num_shards(train.data_mesh(config, (32, 32, 3), 10)) == onednn_devices
  config.model.conv_impl = "xla"
  assert sharding.num_shards(train.data_mesh(config, (32, 32, 3), 10)) == 8
  mlp = embedded.get_config("spirals_mlp")
  assert sharding.num_shards(train.data_mesh(mlp, (2,), 3)) == 1


def test_validate_names_what_the_batch_must_split_over():
  config = embedded.get_config("tiny")
  config.data.batch_size, config.train.eval_batch_size = 33, 0
  with pytest.raises(errors.ConfigError, match="not divisible by the 2 processes; use a multiple of 2"):
    train.validate(config, 2, unit="processes")
  train.validate(config, 1, unit="processes")  # One process takes any batch.


@pytest.mark.parametrize("module", ["resjax.checkpoints", "resjax.train", "resjax.grid",
                                    "resjax.restore"])
def test_each_package_imports_alone(module):
  """No import cycle bites, whichever of them a program imports first."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, "-c", f"import {module}; "
                         "from resjax import checkpoints; print(checkpoints.load.__name__)"],
                        cwd=root, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0 and done.stdout.strip() == "load", done.stderr


@pytest.mark.parametrize("variant", ["tiny_mlp", "digits_resnet20"])
def test_init_options_leave_the_initial_state_bit_for_bit(variant):
  """The older CPU fusion emitters in INIT_COMPILER_OPTIONS make the init compile
  sooner and compute the same initial state as the newer ones, bit for bit."""
  from configs import embedded
  from resjax.train import state as train_state
  config = embedded.get_config(variant)
  ds = train.load_data(config)
  init = train_state.init_fn(config, tuple(ds.input_shape), ds.num_classes, None, None)
  keys = train_state.rngs(config.seed)
  got = [jax.device_get(jax.jit(init).lower(*keys).compile(options)(*keys).arrays())
         for options in (train_state.INIT_COMPILER_OPTIONS,
                         {**train_state.INIT_COMPILER_OPTIONS, "xla_cpu_use_fusion_emitters": True})]
  jax.tree.map(np.testing.assert_array_equal, *got)
