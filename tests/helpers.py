"""What several test files share: launcher subprocesses, the reference run, digests.

The reference is `python -m launch.train` on the embedded spirals (tiny MLP,
16 steps) run once per test session, saving a checkpoint at every step, so any
checkpoint an interrupted run leaves behind can be compared with it bit for
bit. Subprocesses share a JAX compilation cache, so only the first one compiles.
"""
import hashlib
import json
import os
import pathlib
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading

import jax
import numpy as np

from resjax import checkpoints, locking

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 16
BASE = ["--config=configs/embedded.py:tiny_mlp", f"--config.train.steps={STEPS}",
        "--config.train.log_every=1", "--config.train.checkpoint_every=4",
        "--config.train.eval_every=0"]
TIMEOUT = 300
PROGRESS = r"^step +(\d+)/\d+ "


def subprocess_env(cache_dir, devices: int | None = 8, **extra) -> dict:
  """The test environment with `devices` host devices and a shared compilation cache.

  `devices=None` leaves the count to `launch.platform` (from the CPUs the process may use).
  """
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if devices is not None:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  return {**os.environ, "XLA_FLAGS": " ".join(flags),
          "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
          "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", **extra}


class Run:
  """A launcher subprocess whose stdout lines are read as they come."""

  def __init__(self, args, env, *, code=None):
    self.err = tempfile.NamedTemporaryFile("w+", suffix=".stderr")
    head = ["-c", code] if code else ["-m", "launch.train"]
    self.proc = subprocess.Popen([sys.executable, "-u", *head, *args], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=self.err, text=True)
    self.lines: list[str] = []
    self._queue: queue.Queue = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      self._queue.put(line.rstrip("\n"))
    self._queue.put(None)

  def output(self) -> str:
    self.err.seek(0)
    errors = [l for l in self.err.read().splitlines() if not re.match(r"[IW]\d{4} ", l)]
    return "\n".join(["stdout:", *self.lines, "stderr:", *errors[-30:]])

  def wait_for(self, pattern: str, accept=lambda match: True) -> re.Match:
    """The first stdout line matching `pattern` that `accept`s (fails at exit)."""
    while True:
      try:
        line = self._queue.get(timeout=TIMEOUT)
      except queue.Empty:
        self.proc.kill()
        raise AssertionError(f"no line like {pattern!r} in {TIMEOUT} s\n{self.output()}")
      if line is None:
        self.proc.wait()
        raise AssertionError(f"exited ({self.proc.returncode}) before a line like "
                             f"{pattern!r}\n{self.output()}")
      self.lines.append(line)
      match = re.search(pattern, line)
      if match and accept(match):
        return match

  def at_step(self, target: int) -> int:
    """Waits for the first progress line of a step >= target; returns its step."""
    return int(self.wait_for(PROGRESS, lambda m: int(m[1]) >= target)[1])

  def find(self, pattern: str) -> re.Match | None:
    """The first line read so far that matches `pattern`."""
    return next((m for l in self.lines if (m := re.search(pattern, l))), None)

  def finish(self) -> int:
    while (line := self._queue.get(timeout=TIMEOUT)) is not None:
      self.lines.append(line)
    return self.proc.wait(timeout=TIMEOUT)


def reference_run(tmp_path_factory) -> str:
  """The uninterrupted run (checkpoint at every step), made once per test session."""
  base = tmp_path_factory.getbasetemp()
  workdir = base / "reference"
  if not (workdir / "done").exists():
    shutil.rmtree(workdir, ignore_errors=True)
    run = Run([*BASE, f"--workdir={workdir}", "--config.train.checkpoint_every=1"],
              subprocess_env(base / "jax-cache"))
    assert run.finish() == 0, run.output()
    (workdir / "done").write_text("")
  return str(workdir)


def arrays(workdir, step=None) -> dict:
  """The checkpointed arrays (NumPy) of `step` (default: latest)."""
  _, state = checkpoints.load(workdir, step)
  return jax.device_get(state.arrays())


def assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def tree_digest(path) -> dict:
  """relative path -> (size, mtime, sha256) of every file under `path` (the
  workdir lock, which each run takes and releases, left out)."""
  out = {}
  for root, _, names in os.walk(path):
    for name in names:
      if name == locking.LOCK_NAME:
        continue
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
      stat = os.stat(full)
      out[os.path.relpath(full, path)] = (stat.st_size, stat.st_mtime_ns, digest)
  return out


def set_grid_axes(config, **axes):
  """`config` with grid axes set from keywords: seeds=(0, 1), model__width=(4, 8),
  train__reset_dead_every=(0, 2) (group, two underscores, field)."""
  for key, values in axes.items():
    group, _, name = key.rpartition("__")
    (config.grid[group] if group else config.grid)[name] = values
  return config


# Runs launcher cases as `python -m MODULE ARGS` would, each in a process of its own:
# starting ~40 Python processes that import JAX would take minutes on a small CPU,
# so this driver imports the libraries once and forks a child per case, which runs
# the module through runpy as `__main__` with its own stdout/stderr files and exit code.
DRIVER = r"""
import json, os, runpy, sys, traceback
import jax, flax, optax, orbax.checkpoint, absl.app, ml_collections  # no backend starts
import resjax.train, resjax.checkpoints, resjax.collapse, resjax.analysis
cases, outdir = json.load(open(sys.argv[1])), sys.argv[2]
codes = []
for i, (module, args) in enumerate(cases):
  pid = os.fork()
  if pid == 0:
    for fd, name in ((1, "out"), (2, "err")):
      f = os.open(os.path.join(outdir, f"{i}.{name}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
      os.dup2(f, fd)
      os.close(f)
    sys.argv = [module, *args]
    code = 0
    try:
      runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
      if isinstance(e.code, int) or e.code is None:
        code = e.code or 0
      else:
        print(e.code, file=sys.stderr)
        code = 1
    except BaseException:
      traceback.print_exc()
      code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
"""


def launcher_cases(cases, outdir, env, timeout: int = 900) -> list[tuple[int, str, str]]:
  """(exit code, stderr, stdout) of each (module, args) case of `cases`."""
  outdir = pathlib.Path(outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  spec = outdir / "cases.json"
  spec.write_text(json.dumps([[module, list(args)] for module, args in cases]))
  proc = subprocess.run([sys.executable, "-c", DRIVER, str(spec), str(outdir)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  codes = json.loads(proc.stdout.strip().splitlines()[-1])
  return [(code, (outdir / f"{i}.err").read_text(), (outdir / f"{i}.out").read_text())
          for i, code in enumerate(codes)]


def messages(text: str) -> list[str]:
  """Lines that are not absl log lines (I1126 12:00:00.000 ...)."""
  return [l for l in text.splitlines() if l.strip() and not re.match(r"[IWE]\d{4} ", l)]
