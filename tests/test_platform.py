"""The default host-device split: how it is chosen, and that it trains like one device."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import embedded
from conftest import run_steps
from helpers import ROOT
from launch import platform


@pytest.mark.parametrize("cpus,count", [(None, 4), (1, 4), (2, 8), (3, 8), (64, 8)])
def test_four_devices_per_core_at_most_eight(cpus, count):
  assert platform.host_device_count(cpus) == count


def test_configure_adds_the_count_and_keeps_other_flags():
  env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
  assert platform.configure(env, cpus=2) == 8
  assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8"
  env = {}
  assert platform.configure(env, cpus=1) == 4
  assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"


@pytest.mark.parametrize("env", [
    {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"},
    {"JAX_NUM_CPU_DEVICES": "2"},
])
def test_a_count_the_user_chose_wins(env):
  before = dict(env)
  assert platform.configure(env, cpus=2) is None
  assert env == before


def test_a_process_bound_to_one_core_gets_four_devices():
  code = ("import os; os.sched_setaffinity(0, {0}); from launch import platform; "
          "print(platform.configure({}))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True,
                       text=True).stdout
  assert int(out) == platform.host_device_count(1)


def test_launchers_get_the_split_before_jax_starts():
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  env["JAX_PLATFORMS"] = "cpu"
  code = "import launch.platform, jax; print(jax.device_count())"
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True).stdout
  assert int(out.split()[-1]) == platform.host_device_count(platform.usable_cpus())


def test_default_split_trains_a_resnet_like_one_device():
  # The fast default (the batch over 8 host devices, BatchNorm over the global
  # batch, augmentation on device) against the straightforward 1-device step.
  config = embedded.get_config("tiny")  # A ResNet on digits, batch 32, augmented.
  config.model.depth, config.model.widths = 6, (4, 8)  # Two stages compile faster.
  config.opt.boundaries = (100,)
  losses_8, params_8 = run_steps(config, jax.devices()[:8], steps=6)
  losses_1, params_1 = run_steps(config, jax.devices()[:1], steps=6)
  assert np.all(np.isfinite(losses_8)) and losses_8[-1] < losses_8[0]
  np.testing.assert_allclose(losses_8, losses_1, rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
               params_8, params_1)
