"""Checkpoints: async save under donation, restore on another device count, errors."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import embedded
from resjax import checkpoints, errors, metrics, sharding, train
from helpers import ROOT, subprocess_env, tree_digest


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


def test_more_steps_on_a_cosine_schedule_is_refused(tmp_path):
  """The cosine schedule decays to 0 at train.steps: more steps would change it mid-run."""
  config = embedded.get_config("tiny_mlp")  # Adam, cosine.
  train.train_and_evaluate(config, str(tmp_path / "w"))
  longer = embedded.get_config("tiny_mlp")
  longer.train.steps = 8
  with pytest.raises(errors.ConfigError, match=r"train.steps=4; resuming it with "
                     r"train.steps=8 would change its cosine"):
    train.train_and_evaluate(longer, str(tmp_path / "w"))
  assert checkpoints.complete_steps(str(tmp_path / "w"))[-1] == 4  # Nothing changed.


def test_a_negative_seed_is_refused_before_any_file_is_written(tmp_path):
  config = embedded.get_config("tiny_mlp")
  config.seed = -1
  with pytest.raises(errors.ConfigError, match="seed=-1 is not allowed"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


# Runs with ONE host device: loads an 8-device checkpoint, dumps what it got,
# and saves a changed state as a new run for the 8-device side to load.
ONE_DEVICE = r"""
import sys
import jax, numpy as np
from resjax import checkpoints
src, dst, out = sys.argv[1:]
assert jax.device_count() == 1, jax.devices()
flat = lambda tree: {jax.tree_util.keystr(k): np.asarray(v)
                     for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
config, state = checkpoints.load(src)
assert {len(x.sharding.device_set) for x in jax.tree.leaves(state.arrays())} == {1}
np.savez(out + "/loaded.npz", **flat(jax.device_get(state.arrays())))
state = state.replace(step=state.step + 1, params=jax.tree.map(lambda p: p * 2, state.params))
reader = checkpoints.manager(src, read_only=True)
meta = checkpoints.read_meta(reader, reader.latest_step())
writer = checkpoints.manager(dst)
checkpoints.save(writer, state, meta)
writer.wait_until_finished()
np.savez(out + "/saved.npz", **flat(jax.device_get(state.arrays())))
"""


def _flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_eight_devices_to_one_process_with_one_device_and_back(saved, tmp_path,
                                                                tmp_path_factory):
  workdir, config, expected = saved
  env = subprocess_env(tmp_path_factory.getbasetemp() / "jax-cache", devices=1)
  dst = tmp_path / "from_one_device"
  proc = subprocess.run([sys.executable, "-c", ONE_DEVICE, workdir, str(dst), str(tmp_path)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  loaded = np.load(tmp_path / "loaded.npz")
  assert set(loaded.files) == set(_flat(expected))
  for key, value in _flat(expected).items():  # 8 devices -> 1: bit for bit.
    np.testing.assert_array_equal(loaded[key], value, err_msg=key)
  loaded_config, state = checkpoints.load(str(dst))  # 1 device -> 8: bit for bit.
  assert loaded_config.to_dict() == json.loads(json.dumps(config.to_dict()))
  assert int(state.step) == 3
  assert {len(x.sharding.device_set) for x in jax.tree.leaves(state.arrays())} == {8}
  saved_there = np.load(tmp_path / "saved.npz")
  for key, value in _flat(jax.device_get(state.arrays())).items():
    np.testing.assert_array_equal(value, saved_there[key], err_msg=key)


def _corrupt_state_files(step_dir):
  for base, _, names in os.walk(os.path.join(step_dir, "state")):
    for name in names:
      open(os.path.join(base, name), "wb").close()


def _garble_meta(step_dir):
  for base, _, names in os.walk(os.path.join(step_dir, "meta")):
    for name in names:
      with open(os.path.join(base, name), "w") as f:
        f.write("{not json")


@pytest.mark.parametrize("damage", [
    _corrupt_state_files, _garble_meta,
    lambda step_dir: shutil.rmtree(os.path.join(step_dir, "state")),
    lambda step_dir: shutil.rmtree(os.path.join(step_dir, "meta")),
], ids=["truncated arrays", "garbled metadata", "no arrays", "no metadata"])
def test_corrupted_checkpoint_is_one_readable_error(saved, tmp_path, damage):
  workdir = str(tmp_path / "run")
  shutil.copytree(saved[0], workdir)
  damage(os.path.join(checkpoints.directory(workdir), "2"))
  with pytest.raises(errors.ConfigError, match=r"checkpoint 2 in .* cannot be read") as info:
    checkpoints.load(workdir)
  assert "\n" not in str(info.value)


def test_check_same_config_without_checkpoint_reads_config_json(tmp_path):
  workdir = str(tmp_path)
  assert checkpoints.check_same_config(workdir, None, _config()) is None
  checkpoints.save_config(workdir, _config())
  assert checkpoints.check_same_config(workdir, None, _config()) is None
  other = _config()
  other.seed = 3
  with pytest.raises(errors.ConfigError, match=r"different config \(seed: 0 -> 3; compared "
                     r"with its config.json\)"):
    checkpoints.check_same_config(workdir, None, other)
  with open(os.path.join(workdir, checkpoints.CONFIG_FILE), "w") as f:
    f.write("{torn")
  with pytest.raises(errors.ConfigError, match="config.json cannot be read"):
    checkpoints.check_same_config(workdir, None, _config())


def test_move_aside_renames_and_deletes_nothing(saved, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(saved[0], workdir)
  (workdir / "notes.txt").write_text("mine")
  before = tree_digest(workdir)
  moved = checkpoints.move_aside(str(workdir))
  assert moved.startswith(f"{workdir}.old-") and not workdir.exists()
  assert tree_digest(moved) == before
  workdir.mkdir()
  (workdir / "notes.txt").write_text("not a run")
  assert checkpoints.move_aside(str(workdir)) is None  # No run here: nothing moves.
  assert checkpoints.move_aside(str(tmp_path / "missing")) is None
  checkpoints.save_config(str(workdir), _config())
  second = checkpoints.move_aside(str(workdir))
  assert second != moved and os.path.isdir(moved) and os.path.isdir(second)


def test_metrics_rewind_drops_rows_after_the_checkpoint(tmp_path):
  workdir = str(tmp_path)
  with metrics.Writer(workdir) as writer:
    for step in range(1, 7):
      writer.write(step, {"train/loss": 1.0 / step})
  with open(os.path.join(workdir, metrics.METRICS_FILE), "a") as f:
    f.write('{"step": 7, "train/lo')  # Torn by a kill.
  events = os.listdir(os.path.join(workdir, metrics.TENSORBOARD_DIR))
  with metrics.Writer(workdir, resume_step=4) as writer:
    assert writer.dropped == 3  # Rows 5, 6 and the torn one.
    writer.write(5, {"train/loss": 0.5})
  assert [r["step"] for r in metrics.read(workdir)] == [1, 2, 3, 4, 5]
  new_events = os.listdir(os.path.join(workdir, metrics.TENSORBOARD_DIR))
  assert len(new_events) == 1 and new_events != events  # Rebuilt from the rows kept.
  with metrics.Writer(workdir, resume_step=5) as writer:  # Nothing to drop: appends.
    assert writer.dropped == 0
  assert len(os.listdir(os.path.join(workdir, metrics.TENSORBOARD_DIR))) == 2


def test_a_full_disk_while_saving_ends_in_one_message_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch):
  config = embedded.get_config("tiny_mlp")
  config.opt.schedule = "constant"
  config.train.steps, config.train.checkpoint_every = 6, 2
  real_save, calls = checkpoints.save, []

  def save(mngr, state, meta):
    calls.append(1)
    if len(calls) == 2:  # What Orbax raises when the disk fills up.
      raise ValueError('RESOURCE_EXHAUSTED: Error writing "params" in OCDBT database: '
                       "Failed to write 23663 bytes: No space left on device")
    return real_save(mngr, state, meta)

  monkeypatch.setattr(checkpoints.io, "save", save)  # What the training loop calls.
  with pytest.raises(train.NotSaved, match=r"step 4 could not be written \(No space left on "
                     r"device\); the last good checkpoint is step 2"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert checkpoints.complete_steps(str(tmp_path / "w")) == [2]
  with open(tmp_path / "w" / "metrics.jsonl") as f:
    assert all(json.loads(line) for line in f)
  # What a save cut by a full disk leaves: its temporary folder. The next run removes
  # it once it holds the workdir's lock, and resumes from step 2.
  monkeypatch.undo()
  cut = tmp_path / "w" / "checkpoints" / "4.orbax-checkpoint-tmp-1733412345"
  (cut / "state").mkdir(parents=True)
  (cut / "state" / "half").write_bytes(b"\0" * 100)
  lines = []
  result = train.train_and_evaluate(config, str(tmp_path / "w"), say=lines.append)
  assert not cut.exists() and result["step"] == 6
  assert lines[0] == (f"removed 1 unfinished checkpoint save(s) from {tmp_path}/w/checkpoints: "
                      f"{cut.name}")
  assert checkpoints.complete_steps(str(tmp_path / "w")) == [2, 4, 6]


def test_metrics_never_keep_half_a_line(tmp_path, monkeypatch):
  writer = metrics.Writer(str(tmp_path))
  writer.write(1, {"train/loss": 1.0})

  class Full:  # A file on a disk that fills up after 5 bytes.
    def __init__(self, path, mode):
      self.f = open(path, mode)  # pylint: disable=consider-using-with
    def __enter__(self):
      return self
    def __exit__(self, *exc):
      self.f.close()
    def tell(self):
      return self.f.tell()
    def truncate(self, size):
      return self.f.truncate(size)
    def flush(self):
      self.f.flush()
    def write(self, data):
      self.f.write(data[:5])
      self.f.flush()
      raise OSError(28, "No space left on device")

  monkeypatch.setattr(metrics, "open", Full, raising=False)
  with pytest.raises(OSError):
    writer.write(2, {"train/loss": 0.5})
  monkeypatch.undo()
  writer.close()
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [1]


def test_load_names_a_wrong_type(saved):
  workdir, _, _ = saved
  with pytest.raises(errors.ConfigError,
                     match=r"^step='2' is not allowed; pass an integer step number >= 0 or None$"):
    checkpoints.load(workdir, step="2")
  with pytest.raises(errors.ConfigError, match=r"^net=1.5 is not allowed; pass an integer net"):
    checkpoints.load(workdir, net=1.5)
  with pytest.raises(errors.ConfigError, match=r"^net=True is not allowed"):
    checkpoints.load(workdir, net=True)
  with pytest.raises(errors.ConfigError, match=r"^workdir=None is not allowed; pass the workdir"):
    checkpoints.load(None)
  # NumPy integers (what iterating nets.csv gives) are integers.
  config, _ = checkpoints.load(workdir, step=np.int64(checkpoints.saved_steps(workdir)[-1]),
                               net=np.int64(0))
  assert config is not None


def test_a_corrected_rerun_after_a_run_that_saved_nothing_moves_it_aside(tmp_path):
  config = embedded.get_config("tiny_mlp")
  config.train.steps = 2
  bad = embedded.get_config("tiny_mlp")
  bad.train.steps, bad.opt.lr = 2, 1e30  # Finite, so allowed: it diverges at step 1.
  workdir = str(tmp_path / "w")
  with pytest.raises(train.Diverged, match="no checkpoint was written"):
    train.train_and_evaluate(bad, workdir)
  lines = []
  assert train.train_and_evaluate(config, workdir, say=lines.append)["step"] == 2
  assert lines[0] == (f"the earlier run in {workdir} saved no checkpoint and had another "
                      "config (opt.lr: 1e+30 -> 0.003); moving it aside")
  moved = [p for p in os.listdir(tmp_path) if p.startswith("w.old-")]
  assert len(moved) == 1  # Kept, not deleted: its config.json says what was tried.
  assert checkpoints.read_config(str(tmp_path / moved[0])).opt.lr == 1e30
  # A run with a checkpoint is still refused with another config.
  with pytest.raises(errors.ConfigError, match=r"different config \(opt.lr: 0.003 -> 1e\+30"):
    train.train_and_evaluate(bad, workdir)
