"""Dead-unit resets (train.reset_dead_every, ReDo): what a reset changes, grids, resume, schema."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import embedded
from helpers import set_grid_axes
from resjax import checkpoints, errors, grid, metrics, sharding, train
from resjax.train import reset, watch


def _config(steps=4, **grid_axes):
  config = embedded.get_config("tiny_mlp")
  config.data.num_train, config.data.num_test = 256, 64
  config.model.residual, config.model.width, config.model.depth = False, 6, 3
  config.train.steps, config.train.checkpoint_every, config.train.log_every = steps, 2, 2
  config.train.probe_batch, config.train.dormant_tau = 96, 0.3
  config.train.reset_dead_every = 2
  return set_grid_axes(config, **grid_axes)


def _leaf(tree, suffix):
  found = [l for p, l in jax.tree_util.tree_flatten_with_path(tree)[0]
           if jax.tree_util.keystr(p).endswith(suffix)]
  assert found, suffix
  return found


def test_a_dead_unit_is_redrawn_its_outgoing_weights_and_moments_zeroed():
  config = _config()
  config.train.dormant_tau = 0.0  # Only units silent on every probe input.
  ds = train.load_data(config)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = train.create_train_state(config, mesh, ds.input_shape, ds.num_classes,
                                   mean=ds.mean, std=ds.std)
  params = jax.tree.map(np.array, jax.device_get(state.params))
  params["dense0"]["bias"][2] = -100.0  # Unit 2 of layer0 never turns on.
  ones = jax.tree.map(lambda a: jnp.ones_like(a) if a.ndim else a, state.opt_state)
  state = state.replace(params=jax.device_put(params), opt_state=ones, step=jnp.asarray(2))
  before = jax.device_get(state)
  w = watch.Watch(config, ds, train.single.Single(config), state, mesh)
  after, counts = w.resets[0](state, 2, w.probe_inputs)
  after = jax.device_get(after)
  # Which units the probe batch leaves silent, found independently.
  model = state.apply_fn.__self__
  _, cols = model.apply({"params": before.params}, state.preprocess(w.split.inputs),
                        mutable=["preacts"])
  silent = {name: np.flatnonzero((np.asarray(z[0]) <= 0).all(0))
            for name, z in cols["preacts"].items()}
  assert 2 in silent["layer0"]
  assert np.asarray(counts)[0].tolist() == [len(silent[f"layer{i}"]) for i in range(3)]
  # Module -> (dead units whose incoming kernel columns and biases it holds,
  # dead units of the layer before, whose outgoing rows it holds).
  modules = {"dense0": (silent["layer0"], []), "dense1": (silent["layer1"], silent["layer0"]),
             "dense2": (silent["layer2"], silent["layer1"]), "classifier": ([], silent["layer2"])}
  for name, (cols, rows) in modules.items():
    k0, k1 = before.params[name]["kernel"], after.params[name]["kernel"]
    keep_r = np.setdiff1d(np.arange(k0.shape[0]), rows)
    keep_c = np.setdiff1d(np.arange(k0.shape[1]), cols)
    assert np.all(k1[rows] == 0)  # Outgoing weights of a dead unit: zero.
    assert not np.any(np.isclose(k0[np.ix_(keep_r, cols)], k1[np.ix_(keep_r, cols)]))
    np.testing.assert_array_equal(k1[np.ix_(keep_r, keep_c)], k0[np.ix_(keep_r, keep_c)])
    b0, b1 = before.params[name]["bias"], after.params[name]["bias"]
    assert np.all(b1[cols] == 0)
    np.testing.assert_array_equal(b1[keep_c], b0[keep_c])
    for moment in _leaf(after.opt_state, f"['{name}']['kernel']"):  # mu and nu
      zero = np.zeros(k0.shape, bool)
      zero[rows], zero[:, cols] = True, True
      np.testing.assert_array_equal(moment, np.where(zero, 0.0, 1.0))
    for moment in _leaf(after.opt_state, f"['{name}']['bias']"):
      assert np.all(moment[cols] == 0) and np.all(moment[keep_c] == 1)
  # The new incoming weights are lecun_normal draws, truncated at 2 std (fan-in 2).
  bound = 2 * np.sqrt(1 / 2) / reset.TRUNCATED_STD
  assert np.all(np.abs(after.params["dense0"]["kernel"][:, silent["layer0"]]) <= bound + 1e-6)


def test_grid_net_k_resets_as_its_single_run(tmp_path):
  """Widths, depths and the reset itself as axes: every net ends where its single
  run ends, units reset in both."""
  config = _config(steps=6, train__reset_dead_every=(0, 2), model__width=(4, 6),
                   model__depth=(2, 3))
  result = train.train_and_evaluate(config, str(tmp_path / "grid"))
  assert {r["train.reset_dead_every"] for r in result["nets"]} == {0, 2}
  rows = metrics.read(str(tmp_path / "grid"), metrics.PROBES_FILE)
  assert rows and all(r["step"] in (2, 4, 6) for r in rows)
  assert sum(r["reset"] for r in rows) > 0
  assert all(grid.nets(config)[r["net"]].train.reset_dead_every == 2 for r in rows)
  for k, net in enumerate(grid.nets(config)):
    train.train_and_evaluate(net, str(tmp_path / f"net{k}"))
    _, single = checkpoints.load(str(tmp_path / f"net{k}"))
    _, mine = checkpoints.load(str(tmp_path / "grid"), net=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                 jax.device_get(mine.params), jax.device_get(single.params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 jax.device_get(mine.opt_state), jax.device_get(single.opt_state))
    want = [(r["step"], r["layer"], r["reset"]) for r in metrics.read(
        str(tmp_path / f"net{k}"), metrics.PROBES_FILE)]
    assert [(r["step"], r["layer"], r["reset"]) for r in rows if r["net"] == k] == want


def test_a_reset_run_resumes_bit_for_bit(tmp_path):
  config = _config(steps=8, seeds=(0, 1), train__reset_dead_every=(0, 2))
  config.train.probe_every = 2
  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  train.train_and_evaluate(config, whole)
  train.train_and_evaluate(config, parts, should_stop=lambda step: step == 3)
  train.train_and_evaluate(config, parts)
  a, b = checkpoints.load(whole)[1], checkpoints.load(parts)[1]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.arrays()),
               jax.device_get(b.arrays()))
  rows = metrics.read(whole, metrics.PROBES_FILE)
  assert rows == metrics.read(parts, metrics.PROBES_FILE)
  assert sum(r.get("reset", 0) for r in rows) > 0
  # Resuming with another reset period is refused: it changes what is trained.
  other = ml_collections.ConfigDict(config.to_dict())
  other.grid.train.reset_dead_every = (0, 4)
  with pytest.raises(errors.ConfigError, match="holds a run of a different config"):
    train.train_and_evaluate(other, parts)


@pytest.mark.parametrize("change, message", [
    (dict(reset_dead_every=-1), r"^train\.reset_dead_every=-1 is not allowed; use an integer"),
    (dict(model="resnet"), r"train\.reset_dead_every=2 is not allowed for model\.name='resnet'"),
    (dict(norm="batch"), r"^train\.reset_dead_every=2 is not allowed with model\.norm='batch'"),
    (dict(axis=(0, -5)), r"^grid\.train\.reset_dead_every=\(0, -5\) is not allowed"),
])
def test_bad_resets_are_refused_in_one_line(change, message):
  config = _config()
  if "reset_dead_every" in change:
    config.train = ml_collections.ConfigDict({**config.train.to_dict(), **change})
  if change.get("model") == "resnet":
    config = embedded.get_config("tiny")
    config.train.reset_dead_every = 2
  if "norm" in change:
    config.model.norm = change["norm"]
  if "axis" in change:
    config.grid.train.reset_dead_every = change["axis"]
  with pytest.raises(errors.ConfigError, match=message) as e:
    train.validate(config, 1)
  assert len(str(e.value).splitlines()) == 1


def test_runs_of_earlier_releases_resume_and_a_changed_reset_does_not(tmp_path):
  """A config.json without the grid's train axes and the new train fields (an
  earlier release's run) matches today's defaults; another reset period does not."""
  config = embedded.get_config("tiny_mlp")
  old = config.to_dict()
  del old["grid"]["train"]
  for field in ("probe_every", "probe_batch", "dormant_tau", "reset_dead_every"):
    del old["train"][field]
  checkpoints.save_config(str(tmp_path), ml_collections.ConfigDict(old))
  assert checkpoints.check_same_config(str(tmp_path), None, config) is None
  config.train.probe_every = 5  # Probes may change between a run and its resumption.
  assert checkpoints.check_same_config(str(tmp_path), None, config) is None
  config.train.reset_dead_every = 5
  with pytest.raises(errors.ConfigError, match=r"train\.reset_dead_every: 0 -> 5"):
    checkpoints.check_same_config(str(tmp_path), None, config)
