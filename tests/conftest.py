"""Test setup: eight forced host devices, so the sharding code really runs; the slow marks.

`python -m pytest -q -m "not slow"` is the quick subset: it leaves out the
tests listed in SLOW (launcher subprocesses that train or sweep, studies,
multi-process runs, benchmarks, training for more than a few steps).
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# The launchers the tests start keep their compilation cache (under
# $XDG_CACHE_HOME by default) in a fresh directory, never in the user's.
_CACHE_HOME = tempfile.mkdtemp(prefix="resjax-tests-cache-")
atexit.register(shutil.rmtree, _CACHE_HOME, True)
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME

from launch import common  # noqa: E402

# The tests' own programs go to the compilation cache the launchers use (in
# that directory, shared by both workers): many tests build a program that
# another test has built (the single runs a grid is checked against, one
# train step in several files), and loading it is faster than compiling it
# again.
common.compilation_cache(common.default_cache_dir())

import contextlib  # noqa: E402
from unittest import mock  # noqa: E402

import pytest  # noqa: E402

# Test files, or file::test (a prefix of the test's name, parameters included),
# marked `slow`. Kept here, in one place, so every file keeps only its tests.
SLOW = (
    # Launcher subprocesses that train, resume or analyse; several processes.
    "test_resume.py", "test_multihost.py", "test_bad_input.py", "test_train_launch.py",
    "test_analyze.py", "test_sweep_launch.py::test_sweep_writes_csv_json_png",
    "test_checkpoints.py::test_eight_devices_to_one_process_with_one_device_and_back",
    "test_compilation_cache.py::test_cache_dir_gets_programs_and_empty_turns_it_off",
    "test_launchers.py::test_help_shows", "test_launchers.py::test_configs_command",
    # A one-node SLURM cluster running the batch script.
    "test_slurm.py::test_two_tasks_", "test_slurm.py::test_scancel_",
    "test_slurm.py::test_a_task_that_never_starts",
    # Studies end to end, the tutorial notebook.
    "test_study.py::test_study_runs_end_to_end", "test_study.py::test_study_resumes_after",
    "test_tutorial.py::test_notebook_runs_quick",
    # Benchmarks.
    "test_bench_grid.py", "test_bench_profile.py", "test_bench_split_tried.py",
    "test_bench_train.py", "test_collapse.py::test_quick_benchmark_times_all_three",
    "test_onednn_conv.py::test_profile_counts_the_ffi_convolutions_like_xlas",
    # Training more than a few steps: grids of conv nets against their single runs
    # (one MLP seed grid stays in the quick subset), analysis figures of trained runs.
    "test_platform.py::test_default_split_trains_a_resnet_like_one_device",
    "test_grid.py::test_resnet_", "test_grid.py::test_invres_bottleneck",
    "test_grid.py::test_width_depth_residual", "test_grid.py::test_lr_and_weight_decay",
    "test_grid.py::test_grid_resumes_bit_for_bit",
    "test_watch.py::test_grid_net_k_rows", "test_watch.py::test_resume_writes_every_row",
    "test_watch.py::test_resnet_grid_net_k_rows",
    "test_reset.py::test_grid_net_k_resets", "test_reset.py::test_a_reset_run_resumes",
    "test_grid.py::test_grid_run_checkpoint_net_k_equals_single_run_with_seed_k[tiny]",
    "test_firstlayer.py::test_first_by_width_grid", "test_firstlayer.py::test_first_grid_with_seeds",
    "test_mnist1d.py::test_a_short_run_learns", "test_mnist1d.py::test_a_stopped_run_resumes",
    "test_grid.py::test_invres_frozen_bn_shift_run", "test_firstlayer.py::test_first_bias_init_grid",
    "test_figures.py::test_analysis_figures_name_the_runs", "test_figures.py::test_write_redraws",
    # Reliability cases that start launchers or signal subprocesses.
    "test_reliability.py::test_second_run_is_refused", "test_reliability.py::test_signal_stops",
    "test_reliability.py::test_too_large_sweeps", "test_reliability.py::test_a_peer_that_never",
    "test_reliability.py::test_ctrl_c_while_waiting", "test_reliability.py::test_grace_lets",
    "test_reliability.py::test_a_sweep_on_a_full_disk",
    "test_reliability.py::test_training_on_a_full_disk",
    "test_reliability.py::test_a_full_disk_under_the_metrics",
)


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """Marks the tests in SLOW with `pytest.mark.slow`."""
  for item in items:
    name = f"{os.path.basename(str(item.path))}::{item.name}"
    if any(name == s or name.startswith(s if "::" in s else s + "::") for s in SLOW):
      item.add_marker(pytest.mark.slow)


@contextlib.contextmanager
def mock_tfds(num_examples: int):
  """`tfds.testing.mock_data`, with batched reads done item by item.

  tfds 4.9.10's mocked data source defines `__getitems__` without `self`;
  single-item reads work, so batched reads are routed through them.
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core.data_sources import base
  with tfds.testing.mock_data(num_examples=num_examples,
                              policy=tfds.testing.MockPolicy.USE_CODE), \
      mock.patch.object(base.BaseDataSource, "__getitems__",
                        lambda self, keys: [self[k] for k in keys]):
    yield


def run_steps(config, devices, steps: int):
  """Losses of `steps` training steps of `config` and the final params, on a mesh
  over `devices` (every parameter checked to live on that mesh)."""
  import jax
  import numpy as np
  from resjax import sharding, train
  ds = train.load_data(config)
  mesh = sharding.make_mesh(devices)
  state = train.create_train_state(config, mesh, ds.input_shape, ds.num_classes,
                                   mean=ds.mean, std=ds.std)
  p_train, _ = train.jit_steps(state, mesh)
  losses = []
  for step in range(steps):
    local = train.host_batch(ds.train, step, seed=config.seed,
                             global_batch=config.data.batch_size)
    state, m = p_train(state, sharding.to_global(local, mesh))
    losses.append(m["loss"])
  assert all(p.sharding.mesh.size == len(devices) for p in jax.tree.leaves(state.params))
  return np.asarray(jax.device_get(losses)), jax.device_get(state.params)
