"""Checkpoints: async save under donation, restore on another device count, errors."""
import json
import os

import jax
import numpy as np
import pytest

from configs import embedded
from resjax import checkpoints, errors, sharding, train


def _config():
  config = embedded.get_config("tiny_mlp")
  config.model.norm = "batch"  # So batch_stats are saved and restored too.
  config.opt.name, config.opt.schedule = "sgd", "constant"  # Momentum in opt_state.
  return config


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A workdir with a checkpoint at step 2 written from 8 devices, and that state."""
  workdir = str(tmp_path_factory.mktemp("ckpt"))
  config = _config()
  ds = train.load_data(config)
  mesh = sharding.make_mesh()
  state = train.create_train_state(config, mesh, ds.input_shape, ds.num_classes,
                                   mean=ds.mean, std=ds.std)
  p_train, _ = train.jit_steps(state, mesh)

  def step(state, i):
    local = train.host_batch(ds.train, i, seed=config.seed, global_batch=config.data.batch_size)
    return p_train(state, sharding.to_global(local, mesh))[0]

  state = step(step(state, 0), 1)
  expected = jax.device_get(state.arrays())
  mngr = checkpoints.manager(workdir)
  checkpoints.save_config(workdir, config)
  checkpoints.save(mngr, state, train.checkpoint_meta(config, ds))
  # The save runs in the background while the next steps donate (reuse) the
  # state's buffers: what lands on disk must still be the step-2 state.
  for i in range(2, 5):
    state = step(state, i)
  mngr.wait_until_finished()
  mngr.close()
  assert int(state.step) == 5
  return workdir, config, expected


def _assert_equal_trees(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_load_on_one_device_restores_exactly(saved):
  workdir, config, expected = saved
  loaded_config, state = checkpoints.load(workdir, devices=jax.devices()[:1])
  assert loaded_config.to_dict() == json.loads(json.dumps(config.to_dict()))
  _assert_equal_trees(jax.device_get(state.arrays()), expected)
  assert int(state.step) == 2 and state.batch_stats
  for leaf in jax.tree.leaves(state.arrays()):
    assert leaf.sharding.device_set == {jax.devices()[0]}
  # The restored state is usable as is: evaluate it on its own preprocessing.
  x = np.zeros((3, 2), np.float32)
  logits = state.apply_fn(state.variables, state.preprocess(x), train=False)
  assert logits.shape == (3, 3) and np.all(np.isfinite(logits))


def test_load_on_eight_devices_and_by_step(saved):
  workdir, _, expected = saved
  _, state = checkpoints.load(workdir, step=2)
  assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == 8
  _assert_equal_trees(jax.device_get(state.arrays()), expected)


def test_load_errors_are_one_readable_line(saved, tmp_path):
  workdir, _, _ = saved
  cases = [(str(tmp_path / "missing"), None, "no checkpoints in"),
           (str(tmp_path), None, "no checkpoints in"),
           (workdir, 7, "step=7 has no checkpoint.*available: 2")]
  os.makedirs(tmp_path / "empty" / checkpoints.CHECKPOINT_DIR)
  cases.append((str(tmp_path / "empty"), None, "holds no complete checkpoint"))
  for path, step, message in cases:
    with pytest.raises(errors.ConfigError, match=message) as info:
      checkpoints.load(path, step=step)
    assert "\n" not in str(info.value)


def test_resuming_needs_the_same_config(saved):
  workdir, config, _ = saved
  mngr = checkpoints.manager(workdir, read_only=True)
  try:
    longer = _config()
    longer.train.steps = 100  # The train group may change: more steps is a resume.
    checkpoints.check_same_config(workdir, mngr, longer)
    wider = _config()
    wider.model.width = 16
    with pytest.raises(errors.ConfigError, match=r"different config \(model.width: 8 -> 16;"):
      checkpoints.check_same_config(workdir, mngr, wider)
  finally:
    mngr.close()
  assert checkpoints.read_config(workdir).to_dict() == json.loads(
      json.dumps(config.to_dict()))
