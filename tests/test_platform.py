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
from resjax.kernels import onednn


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


# malloc itself, not NumPy: NumPy asks for huge pages on large arrays, XLA does not.
_REUSE = """
import ctypes, resource, sys
if sys.argv[1] == "keep":
  from launch import memory
  assert memory.KEPT
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def faults_of_a_fresh_block(size=300 << 20):  # Above glibc's largest mmap threshold.
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  libc.free(block)
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_fresh_block()
print(faults_of_a_fresh_block())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_are_reused_without_page_faults():
  """A 300 MiB block freed and allocated again faults its 77k pages again only by default."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
  faults = {}
  for mode in ("default", "keep"):
    done = subprocess.run([sys.executable, "-c", _REUSE, mode], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    faults[mode] = int(done.stdout.strip())
  assert faults["default"] > 70_000, faults
  assert faults["keep"] < 1_000, faults


def test_a_malloc_setting_of_the_users_wins():
  from launch import memory  # pylint: disable=g-import-not-at-top
  assert not memory.keep_freed_memory({"MALLOC_ARENA_MAX": "4"})
  assert not memory.keep_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"})


def test_launchers_keep_freed_memory_before_jax_starts():
  for launcher in ("launch/train.py", "launch/study.py", "launch/sweep.py"):
    with open(os.path.join(ROOT, launcher)) as f:
      source = f.read()
    memory_at = source.find("from launch import memory")
    if memory_at < 0:
      memory_at = source.find("from launch import platform")
    assert 0 <= memory_at < source.find("from resjax"), launcher


def test_use_one_device_replaces_only_the_count_it_set():
  env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8"}
  assert platform.use_one_device(env, configured=8)
  assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=1"
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}  # The user's choice.
  assert not platform.use_one_device(env, configured=None)
  assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"


@pytest.mark.skipif(not onednn.available(), reason="the oneDNN convolution is not built")
@pytest.mark.parametrize("conv_impl, line", [("onednn", "batch 32 over 1 device,"),
                                             ("xla", "batch 32 over 1 of 8 host devices")])
def test_a_single_onednn_run_starts_with_one_host_device(tmp_path, conv_impl, line):
  """launch.train makes one host device, not 8, for a model that convolves with oneDNN."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  env["JAX_PLATFORMS"] = "cpu"
  done = subprocess.run(
      [sys.executable, "-m", "launch.train", "--config=configs/embedded.py:tiny",
       f"--config.model.conv_impl={conv_impl}", "--config.train.steps=1",
       f"--workdir={tmp_path / conv_impl}"], cwd=ROOT, env=env, capture_output=True,
      text=True, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert line in done.stdout, done.stdout[:600]
