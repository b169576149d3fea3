"""Nothing lost, nothing mixed: workdir locks, result sets, signals, memory, a missing peer,
and no start-up noise.

Each case runs as a user meets it where it matters (launcher subprocesses, real
signals) and checks the one-line message, the exit code and that earlier files
are byte-identical.
"""
import errno
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from resjax import checkpoints, collapse, errors, files, locking
from helpers import ROOT, tree_digest

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
TINY = ["--config=configs/collapse.py:quick", "--config.activations=relu",
        "--config.dims=1,2,3", "--config.seeds=2", "--config.manifold.points=50",
        "--config.figure.dims=2,3", "--compilation_cache_dir="]
HOLD = r"""
import sys, time
from resjax import locking
with locking.workdir_lock(sys.argv[1]):
  print("held", flush=True)
  sys.stdin.read()
"""


def _messages(stderr: str) -> list[str]:
  """stderr without absl's log lines (I1126 12:00:00.000 ...)."""
  return [l for l in stderr.splitlines() if l.strip() and not re.match(r"[IWEF]\d{4} ", l)]


def _launch(module, *args, **kw):
  return subprocess.Popen([sys.executable, "-u", "-m", module, *args], cwd=ROOT, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(proc, pattern: str, timeout: float = 120) -> list[str]:
  """Reads proc's stdout lines until one matches `pattern`."""
  lines, deadline = [], time.monotonic() + timeout
  while time.monotonic() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    lines.append(line.rstrip("\n"))
    if re.search(pattern, line):
      return lines
  raise AssertionError(f"no line matching {pattern!r}: {lines} {proc.stderr.read()[-2000:]}")


def _digest(directory) -> dict:
  """Bytes of every file a user sees in `directory` (links followed)."""
  out = {}
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if os.path.isfile(path) and not name.startswith("."):
      with open(path, "rb") as f:
        out[name] = hashlib.sha256(f.read()).hexdigest()
  return out


# ----------------------------------------------------------------------------- locks


def test_second_run_is_refused_while_the_first_holds_the_lock(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    host = socket.gethostname()
    want = (rf"^{re.escape(str(tmp_path))} is in use by pid {holder.pid} on {re.escape(host)} "
            r"since \S+; wait for it or pass another --workdir$")
    with pytest.raises(errors.ConfigError, match=want):
      with locking.workdir_lock(str(tmp_path)):
        pass
    assert locking.holder(str(tmp_path))["pid"] == holder.pid
    # The launcher: one line, exit 2, nothing written.
    proc = _launch("launch.sweep", f"--workdir={tmp_path}", *TINY)
    _, err = proc.communicate(timeout=300)
    lines = _messages(err)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and re.match("error: " + want[1:], lines[0]), lines
    assert not os.path.exists(tmp_path / "collapse.csv")
  finally:
    holder.kill()  # SIGKILL: the lock file keeps its owner, the kernel drops the flock.
    holder.wait()
  said = []
  with locking.workdir_lock(str(tmp_path), say=said.append):
    assert locking.holder(str(tmp_path))["pid"] == os.getpid()
  assert len(said) == 1 and f"stale lock of {tmp_path} left by pid {holder.pid}" in said[0]
  assert "that process is gone" in said[0]
  assert locking.holder(str(tmp_path)) is None
  with open(tmp_path / locking.LOCK_NAME) as f:
    assert f.read() == ""  # Released cleanly: the next run has nothing to take over.


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path):
  dead = subprocess.Popen(["true"])
  dead.wait()
  (tmp_path / locking.LOCK_NAME).write_text(json.dumps(
      {"pid": dead.pid, "host": socket.gethostname(), "since": "2020-01-01T00:00:00"}))
  said = []
  with locking.workdir_lock(str(tmp_path), say=said.append):
    with locking.workdir_lock(str(tmp_path)):  # Re-entrant in one process.
      pass
    assert locking.holder(str(tmp_path))["pid"] == os.getpid()
  assert said == [f"taking over the stale lock of {tmp_path} left by pid {dead.pid} on "
                  f"{socket.gethostname()} since 2020-01-01T00:00:00 (that process is gone)"]
  with locking.workdir_lock(str(tmp_path), enabled=False):  # Processes other than 0.
    assert not os.path.getsize(tmp_path / locking.LOCK_NAME)


# ----------------------------------------------------------------------------- result sets


def _write_set(directory, tag: str, names=("r.csv", "r.json", "r.png")):
  with files.result_set(str(directory)) as new:
    for name in names:
      files.write_text(os.path.join(new, name), f"{tag} {name}\n")


def _visible(directory) -> dict:
  out = {}
  for name in ("r.csv", "r.json", "r.png", "r.pdf"):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      with open(path) as f:
        out[name] = f.read()
  return out


def test_result_set_kept_whole_on_a_full_disk(tmp_path, monkeypatch):
  _write_set(tmp_path, "old")
  before = _digest(tmp_path)
  real, calls = files.write_bytes, []

  def full(path, data):
    calls.append(path)
    if len(calls) == 2:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    real(path, data)

  monkeypatch.setattr(files, "write_bytes", full)
  with pytest.raises(files.ResultsNotWritten) as e:
    _write_set(tmp_path, "new")
  assert str(e.value) == (f"could not write the results to {tmp_path} (No space left on device)"
                          "; the earlier results are kept")
  assert _digest(tmp_path) == before
  assert sorted(os.listdir(tmp_path / files.RESULTS_STORE)) == sorted(
      [os.path.basename(files.result_set_path(tmp_path)), "current"])
  monkeypatch.setattr(files, "write_bytes", real)
  _write_set(tmp_path, "new", names=("r.csv", "r.json"))
  assert _visible(tmp_path) == {"r.csv": "new r.csv\n", "r.json": "new r.json\n"}
  assert not os.path.lexists(tmp_path / "r.png")  # Not in the new set: gone with the old one.


@pytest.mark.parametrize("legacy", [False, True])
def test_a_commit_that_dies_at_any_rename_shows_one_whole_set(tmp_path, monkeypatch, legacy):
  """Plain files of an earlier release or a managed set; the new set adds r.pdf."""
  def setup(d):
    d.mkdir()
    if legacy:
      for name in ("r.csv", "r.json", "r.png"):
        (d / name).write_text(f"old {name}\n")
    else:
      _write_set(d, "old")

  old = {n: f"old {n}\n" for n in ("r.csv", "r.json", "r.png")}
  new = {n: f"new {n}\n" for n in ("r.csv", "r.json", "r.png", "r.pdf")}
  real_replace, real_rename = os.replace, os.rename
  k = 0
  while True:
    d = tmp_path / f"case{k}"
    setup(d)
    count = [0]

    def dying(real):
      def fn(*a, **kw):
        count[0] += 1
        if count[0] == k + 1:
          raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*a, **kw)
      return fn

    monkeypatch.setattr(os, "replace", dying(real_replace))
    monkeypatch.setattr(os, "rename", dying(real_rename))
    try:
      _write_set(d, "new", names=tuple(new))
      finished = True
    except files.ResultsNotWritten:
      finished = False
    monkeypatch.setattr(os, "replace", real_replace)
    monkeypatch.setattr(os, "rename", real_rename)
    assert _visible(d) == (new if finished else old), (k, _visible(d))
    if finished:
      break
    k += 1
  assert k >= 4  # Every rename of the commit (the files, the version, each link) was tried.


def test_sweep_keeps_its_results_on_a_full_disk(tmp_path, monkeypatch, capsys):
  from configs import collapse as cc
  config = cc.get_config("quick")
  config.activations, config.dims, config.seeds = ("relu",), (1, 2, 3), 2
  config.manifold.points, config.figure.dims = 50, (2, 3)
  collapse.run(config, str(tmp_path))
  before = _digest(tmp_path)
  assert set(before) == {"collapse.csv", "collapse.json", "collapse.png", "collapse.pdf"}
  real = files.write_bytes

  def full(path, data):
    if path.endswith(".png"):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    real(path, data)

  monkeypatch.setattr(files, "write_bytes", full)
  config.seeds = 3
  with pytest.raises(files.ResultsNotWritten, match=re.escape(
      f"could not write the results to {tmp_path} (No space left on device); "
      "the earlier results are kept")):
    collapse.run(config, str(tmp_path))
  assert _digest(tmp_path) == before


def test_launcher_failures_are_one_line(capsys, monkeypatch):
  from launch import common, runtime
  from resjax import train

  def exit_now(message, code):  # What the process would print before os._exit.
    print(message, file=sys.stderr)
    raise SystemExit(code)

  monkeypatch.setattr(runtime, "exit_now", exit_now)

  class XlaRuntimeError(RuntimeError):
    pass

  def oom(argv):
    raise XlaRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                          "1099511627776 bytes.\nBufferAssignment OOM Debugging.\n...")

  def not_written(argv):
    raise files.ResultsNotWritten("could not write the results to /x (No space left on "
                                  "device); the earlier results are kept")

  def disk(argv):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/config.json")

  def interrupted(argv):
    raise KeyboardInterrupt

  def not_saved(argv):  # A grid of launch.study on a full disk.
    raise train.NotSaved("the checkpoint at step 60 could not be written (No space left on "
                         "device); the last good checkpoint is step 50 in /x/checkpoints")

  def diverged(argv):
    raise train.Diverged("loss is nan at step 3; training stopped and ...")

  for main, code, text in ((oom, 1, "out of memory (RESOURCE_EXHAUSTED: Out of memory"),
                           (not_written, 1, "could not write the results to /x"),
                           (disk, 1, "could not write to /x/config.json (No space left"),
                           (interrupted, 130, "interrupted (SIGINT)"),
                           (not_saved, 1, "the checkpoint at step 60 could not be written"),
                           (diverged, 1, "loss is nan at step 3")):
    with pytest.raises(SystemExit) as e:
      common.readable_errors(main)(["prog"])
    err = capsys.readouterr().err
    assert e.value.code == code, main
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: " + text), err


# ----------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig,code,after", [(signal.SIGINT, 130, r"^collapse sweep: "),
                                            (signal.SIGTERM, 143, r"^  chunk ")])
def test_signal_stops_a_sweep_at_once(tmp_path, sig, code, after):
  """SIGINT while compiling, SIGTERM while the compiled call runs."""
  _write_set(tmp_path, "old", names=("collapse.csv", "collapse.json", "collapse.png"))
  before = _digest(tmp_path)
  proc = _launch("launch.sweep", f"--workdir={tmp_path}", "--config.seeds=256",
                 "--compilation_cache_dir=")
  lines = _wait_for(proc, after)
  start = time.monotonic()
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=60)
  took = time.monotonic() - start
  assert proc.returncode == code, (lines, out, err[-3000:])
  assert took < 3.0, took
  assert "Traceback" not in err + out, err
  assert _messages(err)[-1] == (f"stopped by {signal.Signals(sig).name}: no new results were "
                                f"written to {tmp_path}; results written earlier are kept")
  assert _digest(tmp_path) == before
  assert locking.holder(str(tmp_path)) is None
  with open(tmp_path / locking.LOCK_NAME) as f:
    assert f.read() == ""
  print(f"{signal.Signals(sig).name} after {lines[-1].strip()[:40]!r}: exit {code} in "
        f"{took:.2f} s")


# ----------------------------------------------------------------------------- memory


def test_memory_estimate_follows_xla():
  from configs import collapse as cc
  for kw in (dict(dims=(1, 2, 128), seeds=8, chunk=8), dict(dims=(1, 96), seeds=8, chunk=2)):
    config = cc.get_config()
    for key, value in kw.items():
      setattr(config, key, value)
    grid = collapse.spec_from_config(config)
    compiled, _, _ = collapse.compile_sweep(grid)
    m = compiled.memory_analysis()
    xla = m.temp_size_in_bytes + m.output_size_in_bytes + m.argument_size_in_bytes
    ratio = collapse.memory_estimate(grid)["device"] / xla
    assert 0.9 < ratio < 1.5, (kw, ratio)


def test_too_large_sweeps_are_refused_before_compiling(tmp_path):
  from configs import collapse as cc
  config = cc.get_config()
  config.chunk = 8  # The sizes below are for 8 draws at a time.
  config.seeds = 100_000_000
  with pytest.raises(errors.ConfigError, match=r"needs about 4.92 TB of memory .* but this "
                     r"machine has 16 GB; pass at most about 262,144 --config.seeds"):
    collapse.check_memory(collapse.spec_from_config(config), {"host": 16e9, "device": None})
  config.seeds, config.dims = 64, tuple(range(1, 4097))
  # Vmapped draws (the accelerators' layout): a chunk's draws share the memory.
  with pytest.raises(errors.ConfigError, match=r"but this machine has 8 GB; pass "
                     r"--config.chunk=2 \(about 5.32 GB\)"):
    collapse.check_memory(collapse.spec_from_config(config), {"host": 8e9, "device": None},
                          sequential=False)
  # One draw after another (the CPU's): the same sweep fits, as one draw does.
  one_at_a_time = collapse.check_memory(collapse.spec_from_config(config),
                                        {"host": 8e9, "device": None}, sequential=True)
  assert one_at_a_time["device"] < collapse.memory_estimate(
      collapse.spec_from_config(config), 2, sequential=False)["device"]
  config.dims = (2, 64)
  assert collapse.check_memory(collapse.spec_from_config(config),
                               {"host": 16e9, "device": None})["total"] < 1e9
  proc = _launch("launch.sweep", f"--workdir={tmp_path}/w", "--config.dims=100000")
  _, err = proc.communicate(timeout=120)
  lines = _messages(err)
  assert proc.returncode == 2 and "Traceback" not in err, err
  assert len(lines) == 1 and re.match(
      r"error: the sweep needs about 254 GB of memory \(n_max=100000, 1000 points, 64 draws, "
      r"one at a time\) but this machine has .*; keep --config.dims at most n=\d+, or fewer "
      r"--config.manifold.points$", lines[0]), lines
  assert not os.path.exists(tmp_path / "w")


# ----------------------------------------------------------------------------- a missing peer


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_a_peer_that_never_starts_ends_in_one_line(tmp_path):
  base = ["--config=configs/embedded.py:tiny_mlp", f"--workdir={tmp_path}/run",
          "--num_processes=2", "--coordinator_timeout=3"]
  port0, port1 = _free_port(), _free_port()
  procs = {  # Process 0 alone; process 1 alone (no coordinator at its address).
      0: _launch("launch.train", *base, f"--coordinator_address=localhost:{port0}",
                 "--process_id=0"),
      1: _launch("launch.train", *base, f"--coordinator_address=localhost:{port1}",
                 "--process_id=1")}
  want = {0: f"error: process 1 of 2 did not join the job at localhost:{port0} within 3 s; ",
          1: f"error: process 0 (the coordinator, localhost:{port1}) did not start within 3 s"}
  for i, proc in procs.items():
    _, err = proc.communicate(timeout=120)
    lines = _messages(err)
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith(want[i]), lines
    assert "--coordinator_timeout" in lines[0]
  assert not os.path.exists(tmp_path / "run")


def test_ctrl_c_while_waiting_for_peers(tmp_path):
  code = ("import sys; from launch import runtime; print('waiting', flush=True); "
          "runtime.initialize(sys.argv[1], 2, 0, auto=False, timeout_s=60)")
  port = _free_port()
  proc = subprocess.Popen([sys.executable, "-u", "-c", code, f"localhost:{port}"], cwd=ROOT,
                          env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for(proc, "^waiting")
  time.sleep(1.5)  # Inside jax.distributed.initialize by now.
  start = time.monotonic()
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 130 and time.monotonic() - start < 3.0, err[-3000:]
  assert "Traceback" not in err
  assert _messages(err)[-1] == (f"stopped by SIGINT while waiting for the other processes of "
                                f"the job at localhost:{port}; nothing was started")


GRACE = r"""
import sys, time
from launch import runtime
with runtime.exit_on_signals(lambda sig: f"hard exit on {sig}", grace_s=1.0,
                             saving_s=10.0) as stop:
  print("ready", flush=True)
  if sys.argv[1] == "ignores":
    time.sleep(60)  # Stands for a long XLA call that never asks.
  while not stop(0):
    time.sleep(0.01)
  if sys.argv[1] == "saves":
    print("saving", flush=True)
    time.sleep(2.0)  # A save longer than the grace.
  print("stopped by itself", flush=True)
sys.exit(128 + stop.signum)
"""


@pytest.mark.parametrize("mode", ["cooperates", "ignores", "saves", "saves, signalled again"])
def test_grace_lets_a_loop_stop_by_itself_else_exits(mode):
  proc = subprocess.Popen([sys.executable, "-u", "-c", GRACE, mode.split(",")[0]], cwd=ROOT,
                          env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for(proc, "^ready")
  start = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  if mode == "saves, signalled again":
    _wait_for(proc, "^saving")
    proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=30)
  took = time.monotonic() - start
  assert "Traceback" not in err, err
  if mode == "cooperates":
    assert proc.returncode == 143 and took < 1.0
    assert "stopped by itself" in out and "hard exit" not in err
  elif mode == "ignores":
    assert proc.returncode == 143 and 0.9 < took < 2.5
    assert _messages(err)[-1] == "hard exit on SIGTERM"
  elif mode == "saves":  # Told, so it may finish saving past the grace.
    assert proc.returncode == 143 and 1.9 < took < 5.0
    assert "stopped by itself" in out and "hard exit" not in err
  else:  # A second signal does not wait for the save.
    assert proc.returncode == 130 and took < 1.5
    assert "stopped by itself" not in out and _messages(err)[-1] == "hard exit on SIGINT"


def test_result_files_honour_the_umask(tmp_path):
  from resjax import files as _files
  _files.write_text(str(tmp_path / "a.csv"), "x\n")
  with open(tmp_path / "b.csv", "w") as f:  # What open() gives under this umask.
    f.write("x\n")
  mode = lambda name: os.stat(tmp_path / name).st_mode & 0o777  # noqa: E731
  assert mode("a.csv") == mode("b.csv") == 0o666 & ~_files._UMASK  # pylint: disable=protected-access


# ----------------------------------------------------------------------------- a study


def _study(workdir, env):
  grid = "--config.grids.firstlayer.train"
  return subprocess.Popen(
      [sys.executable, "-u", "-m", "launch.study", "--config=configs/study.py:collapse,tiny",
       f"{grid}.steps=100000", f"{grid}.checkpoint_every=100000", f"{grid}.eval_every=0",
       f"{grid}.log_every=20", f"--workdir={workdir}", "--compilation_cache_dir="],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop(proc, sig):
  start = time.monotonic()
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=60)
  return time.monotonic() - start, out, err


def test_signal_stops_a_study_which_then_resumes(tmp_path):
  """SIGINT while a grid trains: saved at that step, exit 130. The rerun resumes there;
  SIGTERM while it compiles: the checkpoint kept, exit 143. No JAX plugin noise."""
  env = {k: v for k, v in ENV.items() if k != "JAX_PLATFORMS"}  # As a user runs it.
  kept = (rf"^stopped by (SIGINT|SIGTERM): kept in {re.escape(str(tmp_path))}: grid "
          r"'firstlayer' at step (\d+)/100000; run the same command to resume$")
  proc = _study(tmp_path, env)
  _wait_for(proc, r"^step +\d+/100000 ")
  took, out, err = _stop(proc, signal.SIGINT)
  assert proc.returncode == 130 and took < 3.0, (took, err[-3000:])
  assert "Traceback" not in err + out and "Unable to initialize backend" not in err, err
  found = re.match(kept, _messages(err)[-1])
  assert found and found[1] == "SIGINT", _messages(err)
  step = int(found[2])
  gdir = tmp_path / "firstlayer"
  assert os.listdir(gdir / "checkpoints") == [str(step)]  # Saved at the step it stopped.
  assert locking.holder(str(tmp_path)) is None and locking.holder(str(gdir)) is None
  top = _digest(tmp_path)
  before = {**top, **tree_digest(gdir / "checkpoints" / str(step))}

  proc = _study(tmp_path, env)
  _wait_for(proc, rf"^resumed from \S+ at step {step}$")
  took, out, err = _stop(proc, signal.SIGTERM)  # Compiling the first step, or just after.
  assert proc.returncode == 143 and took < 3.0, (took, err[-3000:])
  assert "Traceback" not in err + out, err
  found = re.match(kept, _messages(err)[-1])
  assert found and found[1] == "SIGTERM" and int(found[2]) >= step, _messages(err)
  if int(found[2]) == step:  # Stopped before its first step: nothing new to save.
    after = {**_digest(tmp_path), **tree_digest(gdir / "checkpoints" / str(step))}
    assert after == before  # config.json and the checkpoint it resumed from.
  else:  # It trained on: the newer checkpoint replaced the older one, whole.
    assert os.listdir(gdir / "checkpoints") == [found[2]]
    assert _digest(tmp_path) == top
  assert locking.holder(str(tmp_path)) is None
  print(f"SIGINT saved step {step}; rerun resumed there, SIGTERM exit 143 in {took:.2f} s")


# ----------------------------------------------------------------------------- start-up noise


DROP = r"""
import os, sys, time
from launch import runtime, stdout_filter
print("before", flush=True)
stdout_filter.quiet_gloo()
os.write(1, b"[Gloo] Rank 0 is connected to 1 peer ranks.\nkept 1\n[Glo")
os.write(1, b"o] Rank 0 again\n[G")
# Two threads' copies of gloo's line, their pieces mixed:
os.write(1, b"x] kept 2\n[Gloo] Rank 1 is connected to [Gloo] Rank 1 peer ranks. Expected ")
os.write(1, b"number of connected peer ranks is : 1\n\n1 is connected to ")
os.write(1, b"1 peer ranks. Expected number of connected peer ranks is : 1\n")
os.write(1, b"partial")
print(" line", flush=True)
os.write(1, b"a line in two writes")  # As print() without a buffer writes one.
time.sleep(0.2)
os.write(1, b"\n")
sys.stdout.write("unflushed")
if sys.argv[1] == "exit_now":
  runtime.exit_now("bye", 3)
"""


@pytest.mark.parametrize("how,code", [("exit_now", 3), ("return", 0)])
def test_gloo_lines_dropped_and_the_rest_kept_on_every_exit(how, code):
  """The filter behind a multi-process launch.train (tests/test_multihost.py checks a
  real two-process run has no gloo line)."""
  proc = subprocess.run([sys.executable, "-c", DROP, how], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == code, proc.stderr
  assert proc.stdout == ("before\nkept 1\n[Gx] kept 2\npartial line\na line in two writes\n"
                         "unflushed")


# ----------------------------------------------------------------------------- a real full disk


@pytest.fixture
def small_disk(tmp_path):
  """A 600 KB tmpfs (needs root and mount rights; skipped elsewhere: the tests above
  stand in with writers that raise ENOSPC)."""
  where = tmp_path / "disk"
  where.mkdir()
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(where)],
                        capture_output=True, text=True, check=False) if os.geteuid() == 0 else None
  if proc is None or proc.returncode:
    pytest.skip("cannot mount a tmpfs here")
  try:
    yield where
  finally:
    subprocess.run(["umount", str(where)], check=False)


def test_a_sweep_on_a_full_disk_keeps_the_earlier_set(small_disk):
  workdir = small_disk / "w"
  workdir.mkdir()
  _write_set(workdir, "old", names=("collapse.csv", "collapse.json", "collapse.png"))
  before = _digest(workdir)
  fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
  try:
    while True:
      os.write(fd, b"\0" * 4096)
  except OSError as e:
    assert e.errno == errno.ENOSPC
  finally:
    os.close(fd)
  size = os.path.getsize(small_disk / "filler")
  os.truncate(small_disk / "filler", size - size % 4096 - 4096)  # One page: the lock's.
  proc = _launch("launch.sweep", f"--workdir={workdir}", *TINY)
  out, err = proc.communicate(timeout=300)
  lines = _messages(err)
  assert proc.returncode == 1 and "Traceback" not in err + out, err[-3000:]
  assert lines == [f"error: could not write the results to {workdir} (No space left on "
                   "device); the earlier results are kept"], lines
  assert _digest(workdir) == before


def test_training_on_a_full_disk_keeps_the_last_good_checkpoint(small_disk):
  """Orbax's save fails on the full tmpfs: one line (a run could abort in C++ while
  exiting under Orbax's threads). launch.study takes the same route (the unit test
  of the launchers' failures above; tried by hand on this tmpfs)."""
  workdir = small_disk / "run"
  proc = _launch("launch.train", "--config=configs/embedded.py:tiny_mlp", f"--workdir={workdir}",
                 "--config.train.steps=400", "--config.train.log_every=10",
                 "--config.train.checkpoint_every=5", "--config.train.eval_every=0",
                 "--compilation_cache_dir=")
  out, err = proc.communicate(timeout=300)
  lines = _messages(err)
  assert proc.returncode == 1 and "Traceback" not in err + out, err[-3000:]
  assert len(lines) == 1 and "(No space left on device)" in lines[0], lines
  good = checkpoints.saved_steps(str(workdir))[-1]
  assert f"the last good checkpoint is step {good} in {workdir}/checkpoints" in lines[0], lines
  with open(workdir / "metrics.jsonl", "rb") as f:
    data = f.read()
  assert data.endswith(b"\n") and all(json.loads(l) for l in data.splitlines())
  config, state = checkpoints.load(str(workdir), good)  # Whole: it restores.
  assert int(state.step) == good and config.train.steps == 400


# metrics.jsonl's disk fills up at the 3rd row (step 12), after checkpoints 4 and 8.
METRICS_FULL = r"""
import errno, os, runpy, sys
from resjax import metrics
real, rows = metrics.Writer.write, []
def write(self, step, scalars, net=None):
  rows.append(step)
  if len(rows) == 3:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  return real(self, step, scalars, net)
metrics.Writer.write = write
sys.argv = ["launch.train", *sys.argv[1:]]
runpy.run_module("launch.train", run_name="__main__")
"""


def test_a_full_disk_under_the_metrics_ends_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-c", METRICS_FULL, "--config=configs/embedded.py:tiny_mlp",
       f"--workdir={tmp_path}", "--config.train.steps=16", "--config.train.log_every=4",
       "--config.train.checkpoint_every=4", "--config.train.eval_every=0",
       "--compilation_cache_dir="], cwd=ROOT, env=ENV, capture_output=True, text=True,
      timeout=300)
  lines = _messages(proc.stderr)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert lines == [f"error: could not write in {tmp_path} (No space left on device); the last "
                   f"good checkpoint is step 8 in {tmp_path}/checkpoints; free some space and "
                   "run the same command to resume"], lines
  assert checkpoints.saved_steps(str(tmp_path)) == [4, 8]
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [4, 8]  # Whole rows only.
