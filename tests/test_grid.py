"""Grids: net k of a grid trains exactly like the single run with its settings."""
import functools
import jax
import ml_collections
import numpy as np
import pytest

from configs import embedded
from resjax import errors, grid, sharding, train
from resjax.train import mesh as train_mesh
from tests.conftest import run_steps


def _grid_steps(config, devices, steps, mesh=None):
  """Losses [steps, K] and final stacked params of `config`'s grid on `devices`
  (or on `mesh`), in the layout the training loop picks for it. The nets are
  split over `devices` however light (no CPU work threshold), so the split
  path is what runs."""
  ds = train.load_data(config)
  nets = grid.nets(config)
  if mesh is None:
    mesh = grid.grid_training_mesh(config, ds.input_shape, ds.num_classes, len(nets), devices,
                                   min_host_flops=0)
  state = grid.create_grid_state(config, mesh, ds.input_shape, ds.num_classes,
                                  mean=ds.mean, std=ds.std)
  seeds = [n.seed for n in nets]
  shared = len(set(seeds)) == 1
  p_train, _ = grid.jit_steps(state, mesh, shared_batch=shared,
                              layout=grid.layout(config, jax.devices()[0].platform))
  losses = []
  for step in range(steps):
    batches = []
    for members in grid.calls(config):
      rows = [train.host_batch(ds.train, step, seed=seeds[k],
                               global_batch=config.data.batch_size)
              for k in (members[:1] if shared else members)]
      batch = rows[0] if shared else grid.stack(rows)
      spec = None if shared else sharding.net_batch_sharding(mesh)
      batches.append(sharding.to_global(batch, mesh, spec))
    state, m = p_train(state, batches)
    losses.append(m)
  return np.asarray([grid.merge_calls(m)["loss"] for m in jax.device_get(losses)]), state


def _own_params(config, k, state):
  """Net k's params cropped out of a stacked grid state."""
  net = grid.nets(config)[k]
  ds = train.load_data(net)
  own = train.abstract_train_state(net, sharding.make_mesh(jax.devices()[:1]),
                                   ds.input_shape, ds.num_classes)
  return grid.crop(jax.device_get(state.net_arrays(config, k)["params"]), own.params)


def _check_equal(config, devices, steps=3, atol=1e-5, only=None):
  """Net k of the grid against its single run, for every k (or the k in `only`)."""
  losses, state = _grid_steps(config, devices, steps)
  nets = grid.nets(config)
  assert losses.shape == (steps, len(nets))
  for k, net in enumerate(nets):
    if only is not None and k not in only:
      continue
    single_losses, single_params = run_steps(net, jax.devices()[:1], steps)
    np.testing.assert_allclose(losses[:, k], single_losses, rtol=1e-5, atol=atol)
    got = _own_params(config, k, state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol),
                 got, single_params)


def _mlp(**grid_axes):
  config = embedded.get_config("tiny_mlp")
  config.data.num_train, config.data.num_test = 256, 64
  for key, values in grid_axes.items():
    group, _, name = key.rpartition("__")
    target = config.grid[group] if group else config.grid
    target[name] = values
  return config


@pytest.mark.parametrize("ndev", [1, 8])
def test_seed_grid_of_mlps_equals_single_runs(ndev):
  _check_equal(_mlp(seeds=(0, 1, 2)), jax.devices()[:ndev])


@pytest.mark.parametrize("ndev", [1, 8])
def test_nets_one_after_another_equal_single_runs(ndev):
  """train.grid_layout='map': lax.map over the nets (per device), per-net batches."""
  config = _mlp(seeds=(0, 1, 2, 3))
  config.train.grid_layout = "map"
  _check_equal(config, jax.devices()[:ndev])


def test_layout_rule_by_family_and_override(monkeypatch):
  mlp, resnet = _mlp(seeds=(0, 1)), embedded.get_config("tiny")
  monkeypatch.setitem(grid.spec.LAYOUT_RULE, "cpu", ("resnet",))
  assert grid.layout(mlp, "cpu") == "vmap" and grid.layout(resnet, "cpu") == "map"
  assert grid.layout(resnet, "tpu") == "vmap"  # A platform without a rule.
  resnet.train.grid_layout = "vmap"
  assert grid.layout(resnet, "cpu") == "vmap"
  mlp.train.grid_layout = "sideways"
  with pytest.raises(errors.ConfigError, match="train.grid_layout"):
    train.validate(mlp, 1)


def test_lr_and_weight_decay_grid_equals_single_runs():
  config = _mlp(opt__lr=(1e-3, 1e-2), opt__weight_decay=(0.0, 1e-3))
  assert len(grid.nets(config)) == 4
  _check_equal(config, jax.devices()[:4])


def test_width_depth_residual_grid_of_mlps_equals_nets_at_their_own_size():
  config = _mlp(model__width=(3, 8), model__depth=(2, 4), model__residual=(False, True))
  config.model.activation = "softplus"  # act(0) != 0: the update mask must hold the padding.
  assert len(grid.nets(config)) == 8
  _check_equal(config, jax.devices()[:8])


def test_resnet_depth_and_plain_grid_equals_single_runs(per_call=2):
  config = embedded.get_config("tiny")
  config.model.widths = (4, 4, 8)
  config.data.num_test = 1697  # 100 training images.
  config.grid.model.depth = (8, 14)
  config.grid.model.plain = (False, True)
  config.grid.nets_per_call = per_call  # 2: one call per depth, each padded to its own.
  assert len(grid.calls(config)) == (2 if per_call else 1)
  _check_equal(config, jax.devices()[:4], steps=2, atol=2e-5)


def test_resnet_width_grid_equals_single_runs():
  config = embedded.get_config("tiny")
  config.data.num_test = 1697
  config.grid.model.widths = ((2, 4, 4), (4, 8, 8))
  config.grid.seeds = (0, 1)
  _check_equal(config, jax.devices()[:2], steps=2, atol=2e-5)


def _invres():
  config = embedded.get_config("tiny")
  config.data.num_test = 1697
  config.data.pad = 0
  config.model = ml_collections.ConfigDict(dict(
      name="invres", expansion=2, bottleneck="linear", shortcut=True, width_multiplier=0.5,
      stages=((8, 1, 1), (8, 2, 2)), stem_width=8, head_width=16, activation="relu6"))
  return config


def test_invres_bottleneck_and_depth_grid_equals_single_runs():
  config = _invres()
  config.grid.model.bottleneck = ("linear", "relu6")
  config.grid.model.stages = (((8, 1, 1), (8, 1, 2)), ((8, 1, 1), (8, 3, 2)))
  _check_equal(config, jax.devices()[:4], steps=2, atol=2e-5)


def test_invres_width_grid_whose_padding_equals_the_stem_width_equals_single_runs():
  """Padded to 4 channels, the width-2 net's first block maps 4 to 4 like the width-4
  net's, but its own block maps 4 to 2: it has no shortcut (gate 'stage1_block0_same')."""
  config = _invres()
  config.model.width_multiplier, config.model.round_to, config.model.stem_width = 1.0, 1, 4
  config.model.stages = ((2, 2, 1),)
  config.grid.model.stages = (((2, 2, 1),), ((4, 2, 1),))
  losses, state = _grid_steps(config, jax.devices()[:2], 2)
  gates = jax.device_get(state.states[0].gates)
  assert [n.model.stages[0][0] for n in grid.nets(config)] == [2, 4]
  assert list(gates["stage1_block0_same"]) == [0, 1] and list(gates["stage1_block1_same"]) == [1, 1]
  for k, net in enumerate(grid.nets(config)):
    np.testing.assert_allclose(losses[:, k], run_steps(net, jax.devices()[:1], 2)[0],
                               rtol=1e-5, atol=2e-5)


def test_invres_bottleneck_grid_on_sequences_with_a_validation_split_equals_single_runs():
  config = embedded.get_config("mnist1d_resnet")
  config.data.batch_size = 32
  config.data.num_val = 300  # Evaluations read 300 held-out training sequences.
  config.model = ml_collections.ConfigDict(dict(
      name="invres", expansion=2, bottleneck="linear", shortcut=True, stages=((4, 2, 1),),
      stem_width=4, head_width=8, activation="relu6", round_to=1))
  config.grid.model.bottleneck = ("linear", "relu6")
  config.grid.seeds = (0, 1)
  assert len(train.load_data(grid.nets(config)[0]).train) == 3700
  # Losses of 3 steps and every kernel. The BatchNorm scales and shifts are left out: a
  # bottleneck's shift reaches only 1x1 convs followed by BatchNorm, which removes it, so
  # its true gradient is 0 and Adam turns rounding noise into steps of up to lr.
  losses, state = _grid_steps(config, jax.devices()[:4], 3)
  for k, net in enumerate(grid.nets(config)):
    single_losses, single_params = run_steps(net, jax.devices()[:1], 3)
    np.testing.assert_allclose(losses[:, k], single_losses, rtol=1e-5, atol=1e-6)
    got = _own_params(config, k, state)
    for path, value in jax.tree_util.tree_flatten_with_path(got)[0]:
      if path[-1].key == "kernel":
        want = functools.reduce(lambda tree, p: tree[p.key], path, single_params)
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=2e-5)


def test_invres_bottleneck_bn_shift_grid_equals_single_runs():
  """A frozen shift is a parameter the net lacks: padded with 0, never updated."""
  config = _invres()
  config.grid.model.bottleneck_bn_shift = ("learned", "frozen")
  config.grid.model.bottleneck = ("linear", "relu6")
  nets = grid.nets(config)
  assert [n.model.bottleneck_bn_shift for n in nets] == ["learned", "frozen"] * 2
  shapes = [jax.eval_shape(train.build_model(n, 10).init, jax.random.key(0),
                           jax.numpy.zeros((1, 8, 8, 1)))["params"] for n in nets[:2]]
  assert [set(s["stage1_block0"]["project_bn"]) for s in shapes] == [{"scale", "bias"},
                                                                      {"scale"}]
  _check_equal(config, jax.devices()[:4], steps=2, atol=2e-5)


def test_invres_frozen_bn_shift_run_saves_and_resumes(tmp_path):
  from resjax import checkpoints
  config = _invres()
  config.model.bottleneck_bn_shift = "frozen"
  config.train.checkpoint_every = 2
  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  train.train_and_evaluate(config, whole)
  train.train_and_evaluate(config, parts, should_stop=lambda step: step == 2)
  train.train_and_evaluate(config, parts)
  (saved, a), (_, b) = checkpoints.load(whole), checkpoints.load(parts)
  assert saved.model.bottleneck_bn_shift == "frozen" and int(b.step) == 4
  assert "bias" not in a.params["stage1_block0"]["project_bn"]
  assert "bias" in a.params["stage1_block0"]["depthwise_bn"]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.arrays()),
               jax.device_get(b.arrays()))


def test_resnet_1d_depth_width_and_residual_grid_equals_single_runs():
  config = embedded.get_config("mnist1d_resnet")
  config.data.batch_size = 32
  config.grid.model.depth = (8, 14)
  config.grid.model.width = (2, 4)
  config.grid.model.residual = (False, True)
  nets = grid.nets(config)
  assert len(nets) == 8
  # All 8 train in the grid; 4 are checked against single runs, a half fraction of
  # the 2 x 2 x 2 design: each value of each axis twice, each pair of two axes' values
  # once; the largest net and one of the smallest size (the most padding) among them.
  half = [k for k, n in enumerate(nets)
          if (n.model.depth == 14) ^ (n.model.width == 4) ^ n.model.residual]
  assert len(half) == 4 and {(nets[k].model.depth, nets[k].model.width) for k in half} == {
      (8, 2), (8, 4), (14, 2), (14, 4)}
  _check_equal(config, jax.devices()[:8], steps=2, atol=2e-5, only=half)


def test_grid_axes_and_labels():
  config = _mlp(seeds=(3, 4), model__depth=(2, 4), opt__lr=(0.1, 0.01))
  labels = grid.labels(config)
  assert [l["seed"] for l in labels[:2]] == [3, 4]  # Seeds innermost.
  assert labels[0] == {"model.depth": 2, "opt.lr": 0.1, "seed": 3}
  nets = grid.nets(config)
  assert (nets[-1].model.depth, nets[-1].opt.lr, nets[-1].seed) == (4, 0.01, 4)
  assert not grid.is_grid(nets[0])
  # A string axis from a flag (--config.grid.model.bottleneck=linear,relu6) arrives whole.
  config = _invres()
  config.grid.model.bottleneck = ("linear,relu6",)
  assert grid.axes(config) == [("model.bottleneck", ("linear", "relu6"))]


def test_bad_grids_are_named():
  config = _mlp(model__widths=((4, 8),))
  assert any("model 'mlp' has no field widths" in p for p in grid.validate(config))
  config = _mlp(seeds=(1, 1))
  assert any(p.startswith("grid.seeds=(1, 1) is not allowed; give distinct values, none "
                          "repeated") for p in grid.validate(config))
  config = _mlp(model__width=(2, 4))
  config.model.norm = "layer"
  assert any("layer" in p for p in grid.validate(config))
  # Every net gets the checks of a single run, named by its axis values.
  config = embedded.get_config("tiny")
  config.grid.model.depth = (8, 9)  # 9 is an integer >= 2, but no ResNet depth for 3 stages.
  with pytest.raises(errors.ConfigError, match=r"^grid net model.depth=9: model.depth=9 is not"):
    train.validate(config, 1)
  # An axis value its field's rule refuses is named with the axis.
  config = _mlp(opt__lr=(0.1, -1.0))
  with pytest.raises(errors.ConfigError, match=r"^grid.opt.lr=\(0.1, -1.0\) is not allowed"):
    train.validate(config, 1)
  # Out of range is refused, never clamped; a non-finite axis value too.
  config = _mlp(seeds=(0, 1))
  config.grid.nets_per_call = -3
  assert "grid.nets_per_call=-3 is not allowed; use an integer >= 0 (0 = all nets in one call)" \
      in grid.validate(config)
  config = _mlp(opt__lr=(0.1, float("inf")))
  assert "grid.opt.lr=(0.1, inf) is not allowed; give distinct values, none repeated; each: " \
      "use a number > 0 (a finite float32 value: 0 or |x| in [1.18e-38, 3.4e+38])" \
      in grid.validate(config)
  # An axis over a field the optimizer does not read trains identical nets: refused.
  config = _mlp(opt__momentum=(0.1, 0.9))
  config.opt.name = "adam"
  assert any(p.startswith("grid.opt.momentum=(0.1, 0.9) is not allowed; leave it empty: "
                          "opt.name='adam' has no momentum") for p in grid.validate(config))
  config.opt.name = "sgd"
  assert grid.validate(config) == []


def test_nets_split_over_devices_train_without_collectives():
  """Each device trains its own nets: no all-gather of activations between them."""
  config = embedded.get_config("tiny")
  config.data.num_test = 1697
  config.grid.seeds = tuple(range(4))
  ds = train.load_data(config)
  mesh = grid.grid_training_mesh(config, ds.input_shape, ds.num_classes, 4, jax.devices(),
                                 min_host_flops=0)
  assert (mesh.shape["grid"], mesh.shape["data"]) == (4, 1)
  state = grid.create_grid_state(config, mesh, ds.input_shape, ds.num_classes)
  p_train, _ = grid.jit_steps(state.states[0], mesh, shared_batch=False)
  batch = grid.stack([train.host_batch(ds.train, 0, seed=s, global_batch=32) for s in range(4)])
  hlo = p_train.lower(state.states[0], sharding.to_global(
      batch, mesh, sharding.net_batch_sharding(mesh))).compile().as_text()
  assert "all-gather" not in hlo and "all-reduce" not in hlo


def test_host_devices_along_the_nets_follow_their_forward_work():
  """On CPU host devices a grid of dense nets is split over the most devices
  that each keep `min_host_flops` forward FLOPs per step: a light MLP grid
  stays on one device (its batch not split either), a heavy one spreads over
  all 8; convolutional nets spread as far as they divide, however light."""
  shape = lambda mesh: (mesh.shape["grid"], mesh.shape["data"])
  light = _mlp(seeds=tuple(range(8)))
  ds = train.load_data(light)
  work, per_param = grid.grid_work(light, ds.input_shape, ds.num_classes, range(8))
  assert work < grid.MIN_HOST_GRID_FLOPS and per_param < grid.MIN_CONV_FLOPS_PER_PARAM
  mesh = grid.grid_training_mesh(light, ds.input_shape, ds.num_classes, 8, jax.devices())
  assert shape(mesh) == (1, 1)
  assert "1 of 8 devices (1 along the nets x 1 along" in train_mesh.describe_mesh(mesh)
  for threshold, rows in ((work / 2, 2), (work / 4, 4), (work / 8, 8), (work / 4 + 1, 2)):
    mesh = grid.grid_training_mesh(light, ds.input_shape, ds.num_classes, 8, jax.devices(),
                                   min_host_flops=threshold)
    assert shape(mesh) == (rows, 1)
  heavy = _mlp(seeds=tuple(range(8)))
  heavy.model.width, heavy.data.batch_size = 1024, 128
  work, _ = grid.grid_work(heavy, ds.input_shape, ds.num_classes, range(8))
  assert work / 8 >= grid.MIN_HOST_GRID_FLOPS
  mesh = grid.grid_training_mesh(heavy, ds.input_shape, ds.num_classes, 8, jax.devices())
  assert shape(mesh) == (8, 1)
  assert "8 of 8 devices (8 along the nets x 1 along" in train_mesh.describe_mesh(mesh)
  conv = embedded.get_config("tiny")
  conv.grid.seeds = tuple(range(4))
  ds = train.load_data(conv)
  work, per_param = grid.grid_work(conv, ds.input_shape, ds.num_classes, range(4))
  assert work / 4 < grid.MIN_HOST_GRID_FLOPS and per_param > grid.MIN_CONV_FLOPS_PER_PARAM
  mesh = grid.grid_training_mesh(conv, ds.input_shape, ds.num_classes, 4, jax.devices())
  assert shape(mesh) == (4, 1)


def _params_close(a, b, atol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=atol),
               jax.device_get(a), jax.device_get(b))


@pytest.mark.parametrize("name", ["tiny_mlp", "tiny"])
def test_grid_run_checkpoint_net_k_equals_single_run_with_seed_k(tmp_path, name):
  from resjax import checkpoints
  config = embedded.get_config(name)
  if name == "tiny":
    config.data.num_test = 1697
  else:
    config.data.num_train, config.data.num_test = 256, 64
  single = []
  for k in range(3):
    one = ml_collections.ConfigDict(config.to_dict())
    one.seed = k
    train.train_and_evaluate(one, str(tmp_path / f"seed{k}"))
    single.append(checkpoints.load(str(tmp_path / f"seed{k}"))[1])
  config.grid.seeds = (0, 1, 2)
  result = train.train_and_evaluate(config, str(tmp_path / "grid"))
  assert [r["seed"] for r in result["nets"]] == [0, 1, 2]
  for k in range(3):
    net_config, state = checkpoints.load(str(tmp_path / "grid"), net=k)
    assert net_config.seed == k and not grid.is_grid(net_config)
    assert int(state.step) == int(single[k].step)
    _params_close(state.params, single[k].params)
    _params_close(state.batch_stats, single[k].batch_stats)
  rows = [r for r in __import__("resjax").metrics.read(str(tmp_path / "grid"))
          if "eval/accuracy" in r]
  assert sorted(r["net"] for r in rows) == [0, 1, 2]  # One eval row per net.


def test_grid_resumes_bit_for_bit(tmp_path):
  from resjax import checkpoints
  config = _mlp(seeds=(0, 1), model__depth=(2, 3))
  config.train.steps, config.train.checkpoint_every = 6, 3
  whole = tmp_path / "whole"
  train.train_and_evaluate(config, str(whole))
  parts = tmp_path / "parts"
  stopped = train.train_and_evaluate(config, str(parts), should_stop=lambda step: step == 3)
  assert stopped["stopped"] and stopped["step"] == 3
  train.train_and_evaluate(config, str(parts))
  a, b = checkpoints.load(str(whole))[1], checkpoints.load(str(parts))[1]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.params),
               jax.device_get(b.params))


def test_load_net_of_a_single_run_or_out_of_range_is_one_line(tmp_path):
  from resjax import checkpoints
  config = _mlp(seeds=(0, 1))
  config.train.steps = 2
  train.train_and_evaluate(config, str(tmp_path / "g"))
  with pytest.raises(errors.ConfigError, match="use 0..1"):
    checkpoints.load(str(tmp_path / "g"), net=2)


def test_load_nets_restores_once_and_gives_what_load_gives_each_net(tmp_path):
  from resjax import checkpoints
  config = _mlp(seeds=(0, 1), model__width=(3, 8))
  config.train.steps = 2
  workdir = str(tmp_path / "g")
  train.train_and_evaluate(config, workdir)
  for order in (None, [3, 0, 2]):
    got = list(checkpoints.load_nets(workdir, order))
    assert len(got) == (4 if order is None else 3)
    for k, (net_config, state) in zip(order or range(4), got):
      want_config, want = checkpoints.load(workdir, net=k)
      assert net_config == want_config and net_config.seed == k % 2
      assert jax.tree.structure(state.arrays()) == jax.tree.structure(want.arrays())
      assert state.apply_fn.__self__ == want.apply_fn.__self__  # The net's own model.
      jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.arrays()),
                   jax.device_get(want.arrays()))
      assert {k: float(v) for k, v in state.hparams.items()} == {
          k: float(v) for k, v in want.hparams.items()}
  with pytest.raises(errors.ConfigError, match="use 0..3"):
    checkpoints.load_nets(workdir, [0, 4])  # Refused before any net is cut out.
  single = _mlp()
  single.train.steps = 1
  train.train_and_evaluate(single, str(tmp_path / "s"))
  with pytest.raises(errors.ConfigError, match="holds a single run, not a grid"):
    checkpoints.load_nets(str(tmp_path / "s"))


def test_analyze_a_grid_probes_every_net_and_summarizes_conditions(tmp_path):
  from resjax import analysis
  config = _mlp(seeds=(0, 1), model__residual=(False, True))
  config.train.steps = 2
  train.train_and_evaluate(config, str(tmp_path / "g"))
  out = analysis.analyze(str(tmp_path / "g"), max_examples=64, grad_batches=1,
                         say=lambda *_: None)
  assert [r["run"] for r in out["runs"]] == ["g/net0", "g/net1", "g/net2", "g/net3"]
  conditions = {r["condition"]: r for r in out["conditions"]}
  assert set(conditions) == {"model.residual=False", "model.residual=True"}
  for row in conditions.values():
    assert row["seeds"] == 2
    assert row["dead_pct_lo"] <= row["dead_pct"] <= row["dead_pct_hi"]
    assert row["accuracy_lo"] <= row["accuracy"] <= row["accuracy_hi"]
  assert "shortcut_frac" not in conditions["model.residual=False"] or \
      conditions["model.residual=False"]["shortcut_frac"] == 0.0
  assert out["dir"] == str(tmp_path / "g" / "analysis" / "step_2")
  assert (tmp_path / "g" / "analysis" / "step_2" / "conditions.csv").exists()


def test_a_second_run_into_a_busy_workdir_is_refused(tmp_path):
  config = _mlp()
  config.train.steps = 2
  import multiprocessing  # Another process holds the workdir's lock.
  ctx = multiprocessing.get_context("spawn")
  ready, release = ctx.Event(), ctx.Event()
  holder = ctx.Process(target=_hold_lock, args=(str(tmp_path / "w"), ready, release))
  holder.start()
  try:
    assert ready.wait(60)
    with pytest.raises(errors.ConfigError, match="is in use by pid"):
      train.train_and_evaluate(config, str(tmp_path / "w"))
  finally:
    release.set()
    holder.join(60)
  assert not (tmp_path / "w" / "config.json").exists()  # Nothing written by the refused run.


def _hold_lock(path, ready, release):
  from resjax import locking
  with locking.workdir_lock(path):
    ready.set()
    release.wait(60)


def test_condition_rows_groups_by_label_or_by_given_columns():
  rows = [{"net": 0, "model.depth": 2, "seed": 0, "eval/error": 0.1, "x": 1.0},
          {"net": 1, "model.depth": 2, "seed": 1, "eval/error": 0.3, "x": 4.0},
          {"net": 2, "model.depth": 3, "seed": 0, "eval/error": 0.2, "x": 2.0}]
  out = grid.condition_rows(rows, {"model.depth=2": 0.05})
  assert [(r["condition"], r["seeds"]) for r in out] == [("model.depth=2", 2), ("model.depth=3", 1)]
  assert out[0]["eval/error"] == pytest.approx(0.2) and out[0]["published"] == 0.05
  assert "train/loss" not in out[0]  # No net has it.
  geo = lambda v, members: (float(np.exp(np.mean(np.log(v)))), 0.0, float(len(members)))  # noqa: E731
  out = grid.condition_rows(rows, metrics=[("x", geo)],
                            group=lambda r: {"grid": "g", "depth": r["model.depth"]})
  assert out[0] == {"grid": "g", "depth": 2, "seeds": 2, "x": pytest.approx(2.0), "x_lo": 0.0,
                    "x_hi": 2.0}
  assert "condition | seeds" in grid.condition_table(grid.condition_rows(rows))
