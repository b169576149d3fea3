"""What a new user meets first: each launcher's --help and the list of configs."""
import importlib
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT


@pytest.mark.parametrize("module,wanted", [
    ("launch.train", ("config", "workdir")), ("launch.sweep", ("config", "workdir")),
    ("launch.study", ("config", "workdir")), ("launch.analyze", ("workdir",))])
def test_help_shows_config_and_workdir_in_one_line_each(module, wanted):
  proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]  # absl's --help exits 1.
  lines = proc.stdout.splitlines()
  assert len(lines) < 60, "--help lists the launcher's own flags, not absl's and JAX's"
  for name in wanted:
    at = [i for i, l in enumerate(lines) if l.startswith(f"  --{name}: ")]
    assert len(at) == 1, (name, proc.stdout)
    after = lines[at[0] + 1]
    assert after.startswith(("  --", "    (default:")) or not after.strip(), (name, after)
  if "config" in wanted:
    assert "python -m launch.configs" in proc.stdout


def test_configs_lists_every_variant_with_a_description():
  from launch import configs as listing
  names = listing.config_files()
  assert {"cifar10", "collapse", "embedded", "study"} <= set(names)
  text = listing.listing(names)
  for name in names:
    module = importlib.import_module(f"configs.{name}")
    variants = listing.variants(module)
    assert variants, name
    for variant in variants:
      line = next(l for l in text.splitlines() if l.split()[0] == f"configs/{name}.py:{variant}")
      assert len(line.split(None, 1)) == 2, line  # A description beside the name.
  embedded = importlib.import_module("configs.embedded")
  assert set(listing.variants(embedded)) == set(embedded.VARIANTS)
  assert set(listing.variants(importlib.import_module("configs.collapse"))) == {
      "ball", "sphere", "quick"}
  assert re.search(r"^  configs/collapse\.py +sweep .*\(default\)$", text, re.M)
  assert sum(l.endswith("(default)") for l in text.splitlines()) == len(names)


def test_configs_command_and_a_bad_name():
  proc = subprocess.run([sys.executable, "-m", "launch.configs", "embedded"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.splitlines()[0].startswith("configs/embedded.py: ")
  assert "configs/embedded.py:tiny_mlp " in proc.stdout
  proc = subprocess.run([sys.executable, "-m", "launch.configs", "nope"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
      "error: config file='nope' is not known; choose one of: "), proc.stderr


@pytest.mark.parametrize("module", ["launch.train", "launch.sweep"])
def test_a_config_file_with_a_syntax_error_is_one_line_naming_file_and_line(module, tmp_path):
  bad = tmp_path / "bad_config.py"
  bad.write_text("def get_config(arg=None):\n  return {\n")
  proc = subprocess.run([sys.executable, "-m", module, f"--config={bad}",
                         f"--workdir={tmp_path}/w"], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert lines[0] == (f"error: --config file {bad} line 2: '{{' was never closed "
                      "(a Python syntax error); fix the file"), lines
  assert not (tmp_path / "w").exists()


REPEATED = r"""
import sys
from absl import app
from launch import common
config = common.define_config("configs/collapse.py", "Sweep config.")
app.run(lambda argv: print(repr(tuple(config.value.dims)), repr(config.value.seeds)),
        flags_parser=common.parse_flags)
"""


@pytest.mark.parametrize("args, dims, seeds", [
    (["--config.dims=2,3", "--config.dims=5"], (5,), 64),  # absl's rule: the last one wins.
    (["--config.dims=2,3", "--config.dims="], (), 64),  # An explicit empty value wins too.
    (["--config.dims=1,inf"], (1, float("inf")), 64),  # Numbers stay numbers beside inf.
    (["--config=configs/collapse.py:quick", "--config.dims", "1", "--config.dims", "(2, 4)",
      "--config.seeds=3", "--config.seeds=4"], (2, 4), 4),
])
def test_a_repeated_config_flag_takes_its_last_value(args, dims, seeds):
  proc = subprocess.run([sys.executable, "-c", REPEATED, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == f"{dims!r} {seeds!r}", proc.stdout


@pytest.mark.parametrize("text, expected", [
    ("def get_config(arg=None):\n  return undefined_name\n",
     "line 2: get_config raised NameError: name 'undefined_name' is not defined; fix the file"),
    ("def get_config(arg=None):\n  raise ValueError('no such size')\n",
     "line 2: get_config raised ValueError: no such size; fix the file"),
    ("X = 1\n", "has no get_config(); a config file defines get_config(arg=None)"),
])
def test_a_config_file_whose_get_config_fails_is_one_line(text, expected, tmp_path):
  bad = tmp_path / "bad_config.py"
  bad.write_text(text)
  proc = subprocess.run([sys.executable, "-m", "launch.train", f"--config={bad}:v",
                         f"--workdir={tmp_path}/w"], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, lines
  assert lines[0].startswith(f"error: --config file {bad}") and expected in lines[0], lines
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("argv,argv0,paused", [
    (["python", "-m", "launch.train", "--workdir=w"], "-m", True),
    (["python", "-X", "importtime", "-m", "launch.sweep"], "-m", True),
    (["python", "-c", "import launch.train"], "-c", False),
    (["python", "tool.py", "-m", "launch.x"], "tool.py", False),
    (["python", "-m", "pytest", "tests"], "-m", False)])
def test_the_gc_pauses_only_while_a_launcher_imports(monkeypatch, argv, argv0, paused):
  import launch
  monkeypatch.setattr(sys, "orig_argv", argv)
  monkeypatch.setattr(sys, "argv", [argv0])  # What Python sets while it finds the module.
  assert launch._started_as_launcher() == paused  # pylint: disable=protected-access


def test_parsing_the_flags_turns_the_gc_back_on():
  import gc
  from launch import common
  gc.disable()
  try:
    common.parse_flags(["launcher"])  # As app.run calls it, before main.
    assert gc.isenabled()
  finally:
    gc.unfreeze()
    gc.enable()
