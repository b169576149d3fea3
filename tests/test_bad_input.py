"""Wrong flags and config values end in `error: ...` lines and a non-zero exit, never a
traceback, and leave an existing run's files exactly as they were.

Each case is a separate process running `python -m MODULE ARGS`, forked from one
driver process that imports the libraries once (`helpers.launcher_cases`). One
case also runs through a plain `python -m launch.train` to check the real entry
point.
"""
import os
import shutil
import subprocess
import sys

import pytest

from helpers import (BASE, ROOT, launcher_cases, messages, reference_run, subprocess_env,
                     tree_digest)

@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  """A finished run, copies whose latest checkpoint is corrupted two ways, a plain
  file, an empty directory, a directory another process holds."""
  reference = reference_run(tmp_path_factory)
  root = tmp_path_factory.mktemp("bad_input")
  run, broken, garbled = root / "run", root / "broken", root / "garbled"
  for copy in (run, broken, garbled):
    shutil.copytree(reference, copy)
  for base, _, names in os.walk(broken / "checkpoints" / "16" / "state"):
    for name in names:
      open(os.path.join(base, name), "wb").close()  # Truncated to 0 bytes.
  for base, _, names in os.walk(garbled / "checkpoints" / "16" / "state"):
    for name in names:  # The array data cut in half, the metadata intact.
      if os.path.basename(base) == "d":
        path = os.path.join(base, name)
        os.truncate(path, os.path.getsize(path) // 2)
  (root / "a_file").write_text("not a directory\n")
  (root / "empty").mkdir()
  (root / "busy").mkdir()
  (root / "sweep").mkdir()  # What a sweep leaves (its kind shows in collapse.json).
  (root / "sweep" / "collapse.json").write_text("{}\n")
  return {"run": str(run), "broken": str(broken), "garbled": str(garbled),
          "file": str(root / "a_file"), "empty": str(root / "empty"),
          "busy": str(root / "busy"), "new": str(root / "new"), "sweep": str(root / "sweep"),
          "root": root}


# Holds the workdir lock of argv[1] until stdin closes.
HOLD = r"""
import sys
from resjax import locking
with locking.workdir_lock(sys.argv[1]):
  print("held", flush=True)
  sys.stdin.read()
"""


def _train_cases(d):
  run = f"--workdir={d['run']}"
  cases = [  # (name, args, expected text in the error line)
      ("negative width", ["--config.model.width=-3"], "model.width"),
      ("negative batch", ["--config.data.batch_size=-32"], "data.batch_size=-32"),
      ("unknown model", ["--config.model.name=transformer"], "model.name='transformer'"),
      ("unknown dataset", ["--config.data.name=imagenet"], "data.name='imagenet'"),
      ("batch over dataset", ["--config.data.batch_size=2048", "--config.train.eval_batch_size=0"],
       "exceeds the 1500"),
      ("zero steps", ["--config.train.steps=0"], "train.steps=0"),
      ("negative checkpoint period", ["--config.train.checkpoint_every=-1"],
       "train.checkpoint_every=-1"),
      ("NaN learning rate", ["--config.opt.lr=nan"], "opt.lr=nan"),
      ("unknown optimizer", ["--config.opt.name=rmsprop"], "opt.name='rmsprop'"),
      ("value of the wrong type", ["--config.train.steps=ten"], "train.steps=ten"),
      ("override without value", ["--config.train.steps"], "Missing value"),
      ("unknown config field", ["--config.train.stepz=3"], "stepz"),
      ("unknown flag", ["--stepz=3"], "stepz"),
      ("positional argument", ["oops"], "unexpected arguments: oops"),
      ("different config in the workdir", ["--config.model.width=4"],
       "different config (model.width: 8 -> 4"),
      ("--fresh with a bad value", ["--fresh", "--config.model.width=-3"], "model.width"),
      ("incomplete multi-host flags", ["--num_processes=2"],
       "--coordinator_address, --process_id missing"),
      ("process id out of range", ["--coordinator_address=localhost:1", "--num_processes=2",
                                   "--process_id=2"], "--process_id=2"),
      ("address without port", ["--coordinator_address=localhost", "--num_processes=2",
                                "--process_id=0"], "HOST:PORT"),
  ]
  out = [(n, ["launch.train", *BASE, run, *a], m) for n, a, m in cases]
  out += [
      ("missing config file", ["launch.train", "--config=configs/nope.py", run],
       "cannot load --config=configs/nope.py"),
      ("unknown config variant", ["launch.train", "--config=configs/embedded.py:tiny_mpl",
                                  run], "tiny_mpl"),
      ("missing --workdir", ["launch.train", *BASE], "--workdir is required"),
      ("a file as workdir", ["launch.train", *BASE, f"--workdir={d['file']}"], "is a file"),
      ("workdir inside a file", ["launch.train", *BASE, f"--workdir={d['file']}/sub"],
       "cannot create workdir"),
      ("corrupted checkpoint", ["launch.train", *BASE, f"--workdir={d['broken']}"],
       "checkpoint 16 in"),
      ("checkpoint data cut in half", ["launch.train", *BASE, f"--workdir={d['garbled']}"],
       "checkpoint 16 in"),
      ("more steps on a cosine schedule", ["launch.train", *BASE, run,
                                           "--config.train.steps=99"],
       "would change its cosine learning-rate schedule"),
      ("negative seed", ["launch.train", *BASE, f"--workdir={d['new']}", "--config.seed=-1"],
       "seed=-1"),
      ("a workdir in use", ["launch.train", *BASE, f"--workdir={d['busy']}"],
       f"{d['busy']} is in use by pid"),
      ("a field the optimizer does not read", ["launch.train", *BASE, run,
                                               "--config.opt.momentum=0.5"],
       "--config.opt.momentum=0.5 is not used: opt.name='adam' has no momentum"),
      ("a grid axis over a field the optimizer does not read",
       ["launch.train", *BASE, run, "--config.grid.opt.momentum=0.1,0.9"],
       "grid.opt.momentum=(0.1, 0.9) is not allowed; leave it empty: opt.name='adam'"),
      ("a repeated list flag: the last one wins", ["launch.train", *BASE, run,
                                                   "--config.grid.seeds=5",
                                                   "--config.grid.seeds=-1"],
       "grid.seeds=(-1,) is not allowed"),
      ("a model beyond the memory", ["launch.train", *BASE, run,
                                     "--config.model.width=1000000000"],
       "the training state needs about"),
      ("a grid beyond any memory", ["launch.train", *BASE, run,
                                    "--config.grid.model.width=" + ",".join(map(str, range(1, 401))),
                                    "--config.grid.model.depth=" + ",".join(map(str, range(1, 301)))],
       "config.grid asks for 120,000 nets"),
      ("training into a sweep's workdir", ["launch.train", *BASE, f"--workdir={d['sweep']}"],
       f"{d['sweep']} holds a collapse sweep (collapse.json); launch.train would write"),
  ]
  return out


def _other_cases(d):
  sweep = ["--config.seeds=2", "--config.dims=2,3"]
  return [
      ("sweep: missing --workdir", ["launch.sweep", *sweep], "--workdir is required"),
      ("sweep: a file as workdir", ["launch.sweep", *sweep, f"--workdir={d['file']}"],
       "is a file"),
      ("sweep: negative seeds", ["launch.sweep", "--config.seeds=-4",
                                 f"--workdir={d['new']}"], "seeds"),
      ("sweep: value of the wrong type", ["launch.sweep", "--config.seeds=many",
                                          f"--workdir={d['new']}"], "seeds"),
      ("analyze: missing --workdir", ["launch.analyze"], "--workdir is required"),
      ("analyze: no checkpoints", ["launch.analyze", f"--workdir={d['empty']}"],
       "no checkpoints in"),
      ("analyze: a file as workdir", ["launch.analyze", f"--workdir={d['file']}"],
       f"workdir {d['file']} "),
      ("analyze: step without checkpoint", ["launch.analyze", f"--workdir={d['run']}",
                                            "--step=99"], "step=99 has no checkpoint"),
      ("analyze: corrupted checkpoint", ["launch.analyze", f"--workdir={d['broken']}"],
       "load an earlier checkpoint: step=15 (launch.analyze: --step=15)"),
      ("analyze: a flag value of the wrong type", ["launch.analyze", f"--workdir={d['run']}",
                                                   "--step=abc"], "flag --step=abc"),
      ("analyze: a misspelled flag", ["launch.analyze", f"--workdirr={d['run']}"],
       "Unknown command line flag 'workdirr'"),
      ("analyze: checkpoint data cut in half", ["launch.analyze", f"--workdir={d['garbled']}"],
       "load an earlier checkpoint: step=15 (launch.analyze: --step=15)"),
      ("sweep: a misspelled flag", ["launch.sweep", "--seeds=3", f"--workdir={d['new']}"],
       "Unknown command line flag 'seeds'"),
      ("sweep: a workdir in use", ["launch.sweep", *sweep, f"--workdir={d['busy']}"],
       f"{d['busy']} is in use by pid"),
      ("study: a misspelled variant", ["launch.study", "--config=configs/study.py:collapse,tinyy",
                                       f"--workdir={d['new']}"],
       "study.py:collapse,tinyy is not allowed"),
      ("study: a misspelled flag", ["launch.study", f"--workdirr={d['new']}"],
       "Unknown command line flag 'workdirr'"),
      ("study: missing --workdir", ["launch.study"], "--workdir is required"),
      ("study: a workdir in use", ["launch.study", "--config=configs/study.py:collapse,tiny",
                                   f"--workdir={d['busy']}"], f"{d['busy']} is in use by pid"),
      ("bench: a flag value of the wrong type", ["launch.bench", "--quick=maybe", "collapse"],
       "flag --quick=maybe"),
      ("bench: a misspelled flag", ["launch.bench", "--quik", "collapse"],
       "Unknown command line flag 'quik'"),
      ("bench: an unknown benchmark", ["launch.bench", "nosuch"], "benchmark='nosuch'"),
      ("analyze: a gradient batch beyond the split", ["launch.analyze", f"--workdir={d['run']}",
                                                       "--grad_batch_size=5000"],
       "grad_batch_size=5000 exceeds the 1500 examples of the train split of spirals"),
      ("analyze: --out into a sweep's workdir", ["launch.analyze", f"--workdir={d['run']}",
                                                 f"--out={d['sweep']}"],
       "holds a collapse sweep (collapse.json); launch.analyze would write an analysis"),
      ("sweep: into a training workdir", ["launch.sweep", *sweep, f"--workdir={d['run']}"],
       f"{d['run']} holds a training run (.resjax-kind); launch.sweep would write"),
      ("sweep: a field the manifold does not have", [
          "launch.sweep", "--config=configs/collapse.py:ball", "--config.manifold.turns=2",
          f"--workdir={d['new']}"], "--config.manifold.turns=2.0 is not used"),
      ("study: a field the study does not read", [
          "launch.study", "--config=configs/study.py:collapse,tiny", "--config.target_loss=0.5",
          f"--workdir={d['new']}"], "--config.target_loss=0.5 is not used"),
      ("study: into a training workdir", [
          "launch.study", "--config=configs/study.py:collapse,tiny", f"--workdir={d['run']}"],
       f"{d['run']} holds a training run (.resjax-kind); launch.study would write"),
  ]


def _run_cases(cases, root, env):
  return launcher_cases([(c[1][0], c[1][1:]) for c in cases], root / "out", env)


def test_bad_input_is_one_error_line_and_touches_nothing(dirs, tmp_path_factory):
  before = {k: tree_digest(dirs[k]) for k in ("run", "broken", "garbled", "sweep")}
  cases = _train_cases(dirs) + _other_cases(dirs)
  env = subprocess_env(tmp_path_factory.getbasetemp() / "jax-cache")
  failures = []
  holder = subprocess.Popen([sys.executable, "-c", HOLD, dirs["busy"]], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    results = _run_cases(cases, dirs["root"], env)
  finally:
    holder.communicate("")  # Releases the lock.
  assert os.listdir(dirs["busy"]) == [".resjax.lock"]  # Nothing written by the refused runs.
  for (name, args, expected), (code, err, out) in zip(cases, results):
    lines = messages(err)
    ok = (code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
          and expected in lines[0] and "Traceback" not in err + out)
    if name.endswith("a workdir in use"):
      ok = ok and f"pid {holder.pid} on " in lines[0]
    if not ok:
      failures.append(f"{name}: exit {code}, stderr {lines[-5:]}")
  assert not failures, "\n".join(failures)
  print(f"{len(cases)} bad inputs: each one error line, exit 2")
  for key, digest in before.items():  # Same files, bytes and modification times.
    assert tree_digest(dirs[key]) == digest, key
  assert not os.path.exists(dirs["new"])
  assert not [p for p in os.listdir(dirs["root"]) if ".old-" in p]  # Nothing moved aside.


def test_real_entry_point(dirs, tmp_path_factory):
  env = subprocess_env(tmp_path_factory.getbasetemp() / "jax-cache")
  proc = subprocess.run([sys.executable, "-m", "launch.train", *BASE, f"--workdir={dirs['run']}",
                         "--config.data.name=imagenet", "--config.train.steps=-1"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  lines = messages(proc.stderr)
  assert proc.returncode == 2 and len(lines) == 2, proc.stderr
  assert all(l.startswith("error: ") for l in lines) and "Traceback" not in proc.stderr
  assert "data.name='imagenet'" in proc.stderr and "train.steps=-1" in proc.stderr


# The library installs no hooks or log filters (a program chooses): a program that
# wants Orbax's noise off stderr calls launch.runtime.quiet_orbax(), as launchers do.
LOAD = r"""
import sys, time
from launch import runtime
from resjax import checkpoints, errors
runtime.quiet_orbax()
for workdir in sys.argv[1:]:
  try:
    checkpoints.load(workdir)
  except errors.ConfigError as e:
    print(e, flush=True)
time.sleep(1.0)  # Reads still in flight land now: nothing of theirs may reach stderr.
"""


def test_python_load_of_a_corrupted_checkpoint_is_one_error(dirs, tmp_path_factory):
  env = subprocess_env(tmp_path_factory.getbasetemp() / "jax-cache")
  proc = subprocess.run([sys.executable, "-c", LOAD, dirs["broken"], dirs["garbled"]],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]  # No warnings either.
  lines = proc.stdout.splitlines()
  assert len(lines) == 2, lines
  for line, key in zip(lines, ("broken", "garbled")):
    assert line.startswith(f"checkpoint 16 in {dirs[key]}/checkpoints cannot be read ("), line
    # The fix of a load: an earlier step (launch.analyze has no --fresh).
    assert line.endswith("; load an earlier checkpoint: step=15 (launch.analyze: --step=15)"), line


# A coroutine whose code lives in an Orbax file, as asyncio names it in its report.
ORBAX_READ = "async def read():\n  raise ValueError('OUT_OF_RANGE: byte range not valid')\n"


@pytest.mark.parametrize("path,kept", [("/site-packages/orbax/checkpoint/_src/read.py", 0),
                                       ("/work/mine/read.py", 1)])
def test_unread_orbax_task_exceptions_stay_off_stderr(path, kept):
  """asyncio reports a failed task nobody awaited when the garbage collector meets it;
  the launchers' filter drops those of Orbax's reads, and only those."""
  import asyncio
  import gc
  import logging
  from launch import runtime

  namespace = {}
  exec(compile(ORBAX_READ, path, "exec"), namespace)  # pylint: disable=exec-used
  records = []
  sink = logging.Handler()
  sink.emit = records.append
  sink.addFilter(runtime._orbax_log)  # pylint: disable=protected-access
  log = logging.getLogger("asyncio")
  log.addHandler(sink)
  loop = asyncio.new_event_loop()
  try:
    task = loop.create_task(namespace["read"]())
    loop.run_until_complete(asyncio.sleep(0.01))
    assert task.done()
    del task
    gc.collect()
  finally:
    loop.close()
    log.removeHandler(sink)
  records = [r for r in records if "coro=<read()" in r.getMessage()]  # This test's task only.
  assert len(records) == kept, [r.getMessage() for r in records]
  if kept:
    assert "exception was never retrieved" in records[0].getMessage()
