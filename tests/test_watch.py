"""Probes during training (train.probe_every): rows equal probes.run, turnover, resume, schema."""
import dataclasses
import json

import jax
import ml_collections
import numpy as np
import pytest

from configs import embedded
from helpers import set_grid_axes
from resjax import checkpoints, errors, grid, metrics, probes, sharding, train
from resjax.probes import training
from resjax.train import watch

# Probe-row field -> the probes.run layer-row field holding the same number.
SAME_AS = {"units": "units", "dead": "dead", "dead_frac": "dead_frac", "dormant": "dormant",
           "dormant_frac": "dormant_frac", "active_mean": "active_mean",
           "linear_frac": "linear_frac", "entropy_rank": "entropy_rank_post",
           "srank": "srank_post", "entropy_rank_gram": "entropy_rank_gram_post",
           "cosine": "cosine_post"}


def _config(steps=4, **grid_axes):
  config = embedded.get_config("tiny_mlp")
  config.data.num_train, config.data.num_test = 256, 64
  config.model.residual, config.model.width, config.model.depth = False, 6, 4  # Some units die.
  config.train.steps, config.train.checkpoint_every, config.train.log_every = steps, 2, 2
  config.train.probe_every, config.train.probe_batch = 2, 96
  config.train.dormant_tau = 0.3
  return set_grid_axes(config, **grid_axes)


def _rows(workdir, step, net=None):
  return [r for r in metrics.read(workdir, metrics.PROBES_FILE)
          if r["step"] == step and r.get("net") == net]


def _check_rows(rows, state, config):
  """The probe rows of one net at one step equal probes.run of that net's state."""
  ds = train.load_data(config)
  probe_ds = dataclasses.replace(ds, train=watch.probe_split(
      ds.train, config.train.probe_batch, config.data.seed))
  res = probes.run(state, None, probe_ds, batch_size=len(probe_ds.train), grad_batches=0,
                   dormant_threshold=config.train.dormant_tau,
                   mesh=sharding.make_mesh(jax.devices()[:1]))
  assert [r["layer"] for r in rows] == [l["layer"] for l in res.layers]
  for row, want in zip(rows, res.layers):
    for field, other in SAME_AS.items():
      assert row[field] == pytest.approx(want[other], rel=1e-5, abs=1e-9), (row["layer"], field)
    assert row["dead_units"] == want["dead_units"]
  return rows


def _tensorboard(workdir):
  """{tag: [steps]} of the TensorBoard events in `workdir`."""
  import glob
  import struct
  from tensorboardX.proto import event_pb2
  out = {}
  for path in glob.glob(f"{workdir}/tensorboard/events*"):
    with open(path, "rb") as f:
      raw = f.read()
    i = 0
    while i < len(raw):  # TFRecords: length, its CRC, the event, its CRC.
      n = struct.unpack("<Q", raw[i:i + 8])[0]
      event = event_pb2.Event.FromString(raw[i + 12:i + 12 + n])
      i += 16 + n
      for v in event.summary.value:
        out.setdefault(v.tag, []).append(event.step)
  return out


def test_probe_batch_is_fixed_by_the_data_seed():
  ds = train.load_data(_config())
  a, b = watch.probe_split(ds.train, 50, 0), watch.probe_split(ds.train, 50, 0)
  np.testing.assert_array_equal(a.inputs, b.inputs)
  assert len(a) == 50 and not np.array_equal(watch.probe_split(ds.train, 50, 1).inputs, a.inputs)
  assert len(watch.probe_split(ds.train, 10_000, 0)) == len(ds.train)  # The whole split.


def test_single_run_rows_equal_probes_run_at_init_and_at_a_checkpoint(tmp_path):
  config = _config()
  train.train_and_evaluate(config, str(tmp_path))
  steps = sorted({r["step"] for r in metrics.read(str(tmp_path), metrics.PROBES_FILE)})
  assert steps == [0, 2, 4]
  ds = train.load_data(config)
  init = train.create_train_state(config, sharding.make_mesh(jax.devices()[:1]),
                                  ds.input_shape, ds.num_classes, mean=ds.mean, std=ds.std)
  _check_rows(_rows(str(tmp_path), 0), init, config)
  _, state = checkpoints.load(str(tmp_path), 2)
  rows = _check_rows(_rows(str(tmp_path), 2), state, config)
  assert sum(r["dead"] for r in rows) > 0 and sum(r["dormant"] for r in rows) > sum(
      r["dead"] for r in rows)  # The comparison saw dead and (live) dormant units.
  tags = _tensorboard(str(tmp_path))
  for field in training.SCALARS:
    assert tags[f"probes/layer3/{field}"] == [0, 2, 4]
  assert "probes/layer3/newly_dead" not in tags  # Turnover stays in probes.jsonl.


def test_grid_net_k_rows_equal_probes_run_of_net_k(tmp_path):
  """Nets of several widths and depths, two compiled calls: each net is probed at
  its own size, as its single run would be."""
  config = _config(model__width=(3, 6), model__depth=(2, 4))
  config.grid.nets_per_call = 2
  train.train_and_evaluate(config, str(tmp_path))
  nets = grid.nets(config)
  for k, net in enumerate(nets):
    ds = train.load_data(net)
    init = train.create_train_state(net, sharding.make_mesh(jax.devices()[:1]), ds.input_shape,
                                    ds.num_classes, mean=ds.mean, std=ds.std)
    rows = _check_rows(_rows(str(tmp_path), 0, k), init, net)
    assert [r["units"] for r in rows] == [net.model.width] * net.model.depth
    net_config, state = checkpoints.load(str(tmp_path), 2, net=k)
    _check_rows(_rows(str(tmp_path), 2, k), state, net_config)


def test_turnover_on_hand_made_masks():
  record = training.Turnover()
  # Probe 1: units 1 and 2 dead; probe 2: 2 and 3; probe 3: 3 only; probe 4: 1 and 3.
  assert record.update(0, "l", [1, 2]) == dict(
      newly_dead=0, revived=0, newly_dead_since_first=0, revived_since_first=0,
      dead_every_probe=2)
  assert record.update(0, "l", [2, 3]) == dict(
      newly_dead=1, revived=1, newly_dead_since_first=1, revived_since_first=1,
      dead_every_probe=1)
  assert record.update(0, "l", [3]) == dict(
      newly_dead=0, revived=1, newly_dead_since_first=1, revived_since_first=2,
      dead_every_probe=0)
  assert record.update(0, "l", [1, 3]) == dict(
      newly_dead=1, revived=0, newly_dead_since_first=1, revived_since_first=1,
      dead_every_probe=0)
  assert record.update(1, "l", [5])["dead_every_probe"] == 1  # Each (net, layer) its own.
  # Rebuilt from rows (a resumed run), the record goes on the same way.
  rows = [{"step": s, "layer": "l", "dead_units": d} for s, d in ((0, [1, 2]), (2, [2, 3]))]
  again = training.Turnover.replay(rows)
  assert again.update(0, "l", [3]) == dict(
      newly_dead=0, revived=1, newly_dead_since_first=1, revived_since_first=2,
      dead_every_probe=0)


def test_resume_writes_every_row_once_with_the_same_numbers(tmp_path):
  config = _config(steps=8, seeds=(0, 1))
  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  train.train_and_evaluate(config, whole)
  stopped = train.train_and_evaluate(config, parts, should_stop=lambda step: step == 4)
  assert stopped["stopped"] and stopped["step"] == 4
  # A run killed later left rows after the checkpoint, the last one torn.
  later = [r for r in metrics.read(whole, metrics.PROBES_FILE) if r["step"] == 6]
  with open(f"{parts}/{metrics.PROBES_FILE}", "a") as f:
    f.writelines(json.dumps({**r, "dead": 99}) + "\n" for r in later)
    f.write('{"step": 8, "net": 0, "lay')
  train.train_and_evaluate(config, parts)
  want = metrics.read(whole, metrics.PROBES_FILE)
  got = metrics.read(parts, metrics.PROBES_FILE)
  assert [(r["step"], r["net"], r["layer"]) for r in got] == [
      (r["step"], r["net"], r["layer"]) for r in want]
  assert [(s, n) for s in (0, 2, 4, 6, 8) for n in (0, 1)] == sorted(
      {(r["step"], r["net"]) for r in got})
  assert got == want


@pytest.mark.parametrize("field, value", [
    ("probe_every", -1), ("probe_every", 2.5), ("probe_every", True), ("probe_batch", 0),
    ("dormant_tau", 1.0), ("dormant_tau", -0.1), ("dormant_tau", float("nan")),
])
def test_bad_values_are_refused(field, value):
  config = _config()
  config.train = ml_collections.ConfigDict({**config.train.to_dict(), field: value})
  with pytest.raises(errors.ConfigError, match=rf"^train\.{field}=.* is not allowed; "):
    train.validate(config, 1)


def test_probes_off_by_default_write_no_file(tmp_path):
  config = embedded.get_config("tiny_mlp")
  assert config.train.probe_every == 0
  config.train.steps = 2
  train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / metrics.PROBES_FILE).exists()


def test_trajectories_reduce_each_condition_over_its_seeds(tmp_path):
  from resjax.analysis import trajectories
  from resjax.plotting.trajectories import plot_trajectories
  config = _config(seeds=(0, 1), model__residual=(False, True))
  train.train_and_evaluate(config, str(tmp_path))
  table = trajectories.rows(str(tmp_path))
  assert [r["condition"] for r in table][::len(table) // 2] == [
      "model.residual=False", "model.residual=True"]
  probes_rows = metrics.read(str(tmp_path), metrics.PROBES_FILE)
  for row in table:
    assert row["seeds"] == 2 and row["dormant_tau"] == 0.3
    nets = (0, 1) if row["condition"].endswith("False") else (2, 3)
    members = [r for r in probes_rows if r["net"] in nets and r["layer"] == row["layer"]
               and r["step"] == row["step"]]
    for field in trajectories.FIELDS:
      assert row[field] == pytest.approx(np.mean([m[field] for m in members]))
      assert row[f"{field}_lo"] <= row[field] + 1e-12 <= row[f"{field}_hi"] + 2e-12
  assert [(r["layer"], r["step"]) for r in table[:3]] == [("layer0", 0), ("layer0", 2),
                                                          ("layer0", 4)]
  fig = plot_trajectories(table)
  assert len(fig.axes) == len(trajectories.FIELDS) * 2 == 8 * 2
  assert "model.residual=True" in fig.axes[1].get_title()


def test_resnet_grid_net_k_rows_equal_probes_run_of_net_k(tmp_path):
  """Conv layers (channels as units, positions as samples), BatchNorm, blocks
  gated out by depth and shortcuts switched off by a gate."""
  config = embedded.get_config("tiny")
  config.model.widths = (4, 4, 8)
  config.data.num_test = 1697  # 100 training images.
  config.train.steps, config.train.checkpoint_every = 2, 2
  config.train.probe_every, config.train.probe_batch = 2, 64
  set_grid_axes(config, model__depth=(8, 14), model__plain=(False, True))
  train.train_and_evaluate(config, str(tmp_path))
  for k in range(len(grid.nets(config))):
    net_config, state = checkpoints.load(str(tmp_path), 2, net=k)
    rows = _check_rows(_rows(str(tmp_path), 2, k), state, net_config)
    assert len(rows) == (7 if net_config.model.depth == 8 else 13)
