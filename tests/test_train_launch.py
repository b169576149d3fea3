"""End to end: `python -m launch.train` writes metrics and checkpoints and resumes."""
import contextlib
import os
import re
import sys

import jax
import numpy as np
import pytest
from absl import flags

import launch.train as launch_train
from conftest import mock_tfds
from launch import common
from resjax import checkpoints, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED = os.path.join(ROOT, "configs", "embedded.py")


def launch(monkeypatch, *args):
  """Runs `python -m launch.train ARGS` in this process (exit code, or None)."""
  argv = ["launch/train.py", *args]
  for name in list(flags.FLAGS):  # Overrides are defined anew for each --config.
    if name.startswith("config."):
      delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides here.
  try:
    launch_train.main(common.parse_flags(argv))
  except SystemExit as e:
    return e.code
  return None


def _check_run(workdir, steps, capsys):
  out = capsys.readouterr().out
  rows = metrics.read(workdir)
  train_steps = [r["step"] for r in rows if "train/loss" in r]
  assert train_steps[-1] == steps and all(np.isfinite(r["train/loss"]) for r in rows
                                          if "train/loss" in r)
  final_eval = [r for r in rows if "eval/accuracy" in r][-1]
  assert final_eval["step"] == steps and 0 <= final_eval["eval/accuracy"] <= 1
  for key in ("train/lr", "train/grad_norm", "train/param_norm", "train/update_norm",
              "train/images_per_sec", "train/step_time"):
    assert key in rows[0], key
  assert os.listdir(os.path.join(workdir, metrics.TENSORBOARD_DIR))
  assert os.path.isfile(os.path.join(workdir, checkpoints.CONFIG_FILE))
  assert os.path.isdir(os.path.join(checkpoints.directory(workdir), str(steps)))
  assert "img/s" in out and "ETA" in out and f"done at step {steps}" in out
  return out, rows


@pytest.mark.parametrize("dataset", ["cifar10", "spirals"])
def test_trains_writes_and_resumes(dataset, tmp_path, monkeypatch, capsys):
  workdir = str(tmp_path / dataset)
  args = [f"--config={EMBEDDED}:tiny_mlp", f"--workdir={workdir}",
          f"--config.data.name={dataset}", "--config.train.checkpoint_every=2",
          "--config.opt.schedule=constant"]  # More steps on a cosine schedule is refused.
  context = mock_tfds(48) if dataset == "cifar10" else contextlib.nullcontext()
  with context:
    assert launch(monkeypatch, *args, "--config.train.steps=2") is None
    out, _ = _check_run(workdir, 2, capsys)
    # An MLP of 8 units: splitting its batch over host devices would not pay.
    assert "batch 32 over 1 of 8 host devices" in out
    assert launch(monkeypatch, *args, "--config.train.steps=4") is None
    out, rows = _check_run(workdir, 4, capsys)
  assert "at step 2" in out.splitlines()[0]  # Resumed, did not start over.
  assert [r["step"] for r in rows if "train/loss" in r] == [2, 4]
  config, state = checkpoints.load(workdir)
  assert int(state.step) == 4 and config.data.name == dataset
  assert state.preprocess.is_image == (dataset == "cifar10")


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                capsys):
  # Three warm-up steps at a sane rate, then lr 1e38: the parameters overflow at step 4.
  workdir = str(tmp_path / "nan")
  code = launch(monkeypatch, f"--config={EMBEDDED}:tiny_mlp", f"--workdir={workdir}",
                "--config.train.steps=6", "--config.train.log_every=1",
                "--config.train.checkpoint_every=2", "--config.opt.warmup_steps=3",
                "--config.opt.warmup_lr=0.003", "--config.opt.lr=1e38")
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1
  assert len(err) == 1 and re.match(
      r"error: (loss|gradient norm|parameter norm) is (nan|inf|-inf) at step 4; ", err[0]), err
  assert "last good checkpoint is step 2" in err[0]
  assert checkpoints.complete_steps(workdir) == [2]  # Nothing saved after it.
  _, state = checkpoints.load(workdir)
  assert int(state.step) == 2
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.arrays()))
  last = metrics.read(workdir)[-1]
  assert last["step"] == 4 and not all(np.isfinite(v) for v in last.values())


def test_bad_fields_one_line_each_exit_2(tmp_path, monkeypatch, capsys):
  workdir = tmp_path / "never"
  code = launch(monkeypatch, f"--config={EMBEDDED}:tiny_mlp", f"--workdir={workdir}",
                "--config.train.steps=0", "--config.model.width=-3",
                "--config.data.name=imagenet")
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 3, err
  assert err[0].startswith("error: ")
  assert not workdir.exists()
