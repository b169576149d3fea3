"""--compilation_cache_dir: launchers keep compiled programs on disk; empty turns it off."""
import os
import subprocess
import sys

from launch import common

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TINY = ["--config=configs/collapse.py:quick", "--config.activations=relu", "--config.dims=1,2,3",
         "--config.seeds=2", "--config.manifold.points=50", "--config.figure.dims=2,3"]


def _sweep(tmp_path, name, *flags):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
  return subprocess.Popen([sys.executable, "-m", "launch.sweep", f"--workdir={tmp_path / name}",
                           *_TINY, *flags], cwd=_ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _files(path):
  return [f for _, _, names in os.walk(path) for f in names]


def test_default_dir_follows_xdg_cache_home(tmp_path):
  assert common.default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == str(
      tmp_path / "resjax" / "jax")
  assert common.default_cache_dir({}) == os.path.join(
      os.path.expanduser("~"), ".cache", "resjax", "jax")


def test_cache_dir_gets_programs_and_empty_turns_it_off(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  procs = {
      "moved": _sweep(tmp_path, "moved", f"--compilation_cache_dir={tmp_path / 'cache'}"),
      "off": _sweep(tmp_path, "off", "--compilation_cache_dir="),
      "bad": _sweep(tmp_path, "bad", f"--compilation_cache_dir={blocker}/sub"),
  }
  out = {name: (p.communicate(timeout=300), p.returncode) for name, p in procs.items()}
  (_, err), rc = out["moved"]
  assert rc == 0, err[-2000:]
  assert _files(tmp_path / "cache")  # the sweep's programs were written
  assert out["off"][1] == 0, out["off"][0][1][-2000:]
  assert not _files(tmp_path / "xdg" / "resjax")  # neither run touched the default dir
  (_, err), rc = out["bad"]
  lines = [l for l in err.splitlines() if l.startswith("error: ")]
  assert rc == 2 and len(lines) == 1 and "--compilation_cache_dir" in lines[0], err[-2000:]
  assert "Traceback" not in err
  # The default: under $XDG_CACHE_HOME.
  p = _sweep(tmp_path, "default")
  _, err = p.communicate(timeout=300)
  assert p.returncode == 0, err[-2000:]
  assert _files(tmp_path / "xdg" / "resjax" / "jax")


def test_a_rerun_loads_the_sweep_program_from_the_cache(tmp_path):
  """Progress is reported from the host, so the sweep's program itself is cached."""
  flags = f"--compilation_cache_dir={tmp_path / 'cache'}"
  entries = []
  for name in ("first", "rerun"):
    p = _sweep(tmp_path, name, flags)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    assert "chunk 1/1" in out  # Progress still shown.
    entries.append(sorted(_files(tmp_path / "cache")))
  assert any(f.startswith("jit__chunk_fn") for f in entries[0]), entries[0]
  assert any(f.endswith(".bin") for f in entries[0]), entries[0]  # Its traced program, exported.
  assert entries[1] == entries[0]  # Nothing compiled again: every program came from the cache.
