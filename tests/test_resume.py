"""Runs that are killed, preempted or crash mid-save lose nothing and resume exactly.

Every run here is a real `python -m launch.train` subprocess on the embedded
spirals (tiny MLP, 16 steps), interrupted at random steps. The reference is the
same command run without interruption, saving a checkpoint at every step
(`train` fields may differ between a run and its resumption), so any checkpoint
an interrupted run leaves behind can be compared with the reference bit for bit.
Subprocesses share a JAX compilation cache, so only the first one compiles.
"""
import os
import random
import re
import shutil
import signal

from resjax import checkpoints, metrics
from helpers import (BASE, STEPS, Run, arrays, assert_bitwise_equal, reference_run,
                     subprocess_env, tree_digest)

# Stops the commit (the final rename) of one checkpoint forever, so the test can
# kill the process while that save is in flight; then runs launch.train. Saves go
# through our seam, `resjax.checkpoints.io.SAVE_PATH_CLASS`, with Orbax's public class.
HANG_IN_COMMIT = r"""
import asyncio, runpy, sys
import orbax.checkpoint as ocp
from resjax.checkpoints import io
step = sys.argv.pop(1)
class HangInCommit(ocp.path.atomicity.AtomicRenameTemporaryPath):
  async def finalize(self, *args, **kwargs):
    if self.get_final().name == step:
      print(f"hanging in the commit of checkpoint {step}", flush=True)
      await asyncio.sleep(3600)
    return await super().finalize(*args, **kwargs)
io.SAVE_PATH_CLASS = HangInCommit
runpy.run_module("launch.train", run_name="__main__", alter_sys=True)
"""


def assert_same_as_reference(workdir, reference, steps=None):
  """Every checkpoint in `workdir` (or `steps`) equals the reference's, bit for bit."""
  for step in steps or checkpoints.complete_steps(workdir):
    assert_bitwise_equal(arrays(workdir, step), arrays(reference, step))


def assert_consistent_metrics(workdir, reference, last):
  """metrics.jsonl: steps 1..last once each, in order, values as in the reference."""
  rows = metrics.read(workdir)
  want = {r["step"]: r for r in metrics.read(reference) if "train/loss" in r}
  train = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train] == list(range(1, last + 1)), [r["step"] for r in rows]
  for row in train:
    for key in ("train/loss", "train/accuracy", "train/grad_norm", "train/param_norm"):
      assert row[key] == want[row["step"]][key], (row["step"], key)


def _resumed_step(run: Run) -> int:
  match = run.wait_for(r"resumed from .* at step (\d+)$|steps (\d+) -> ")
  return int(match[1] or match[2])


def test_kills_and_preemption_resume_exactly(tmp_path_factory, tmp_path):
  """SIGKILL, SIGTERM and SIGKILL again at random steps, then run to the end."""
  reference = reference_run(tmp_path_factory)
  env = subprocess_env(tmp_path_factory.getbasetemp() / "jax-cache")
  workdir = str(tmp_path / "run")
  targets = sorted(random.sample(range(2, 12), 3))
  events = []
  for target, signum in zip(targets, (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL)):
    expected_start = max(checkpoints.complete_steps(workdir), default=0)
    run = Run([*BASE, f"--workdir={workdir}"], env)
    assert _resumed_step(run) == expected_start, run.output()
    step = run.at_step(target)
    run.proc.send_signal(signum)
    code = run.finish()
    events.append((signal.Signals(signum).name, target, step, code))
    if signum == signal.SIGKILL:
      assert code == -signal.SIGKILL, (events, run.output())
    else:  # Saved at the step it stopped at, said where, exited 0.
      assert code == 0, (events, run.output())
      match = re.fullmatch(r"stopped by a signal at step (\d+): checkpoint saved in (\S+); "
                           r"run the same command to resume", run.lines[-1])
      assert match, run.output()
      stopped = int(match[1])
      assert match[2] == os.path.join(checkpoints.directory(workdir), str(stopped))
      assert max(checkpoints.complete_steps(workdir)) == stopped
      assert_consistent_metrics(workdir, reference, stopped)
    assert_same_as_reference(workdir, reference)
  run = Run([*BASE, f"--workdir={workdir}"], env)
  assert _resumed_step(run) == max(checkpoints.complete_steps(workdir))
  assert run.finish() == 0, (events, run.output())
  print("signal, target step, step seen, exit code:", events)
  assert_bitwise_equal(arrays(workdir), arrays(reference))
  assert_same_as_reference(workdir, reference)
  assert_consistent_metrics(workdir, reference, STEPS)
  final_eval = [r for r in metrics.read(workdir) if "eval/loss" in r]
  assert final_eval == [r for r in metrics.read(reference) if "eval/loss" in r]


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path_factory, tmp_path):
  """Killed while checkpoint 8 is being committed; then SIGINT after resuming."""
  reference = reference_run(tmp_path_factory)
  env = subprocess_env(tmp_path_factory.getbasetemp() / "jax-cache")
  workdir = str(tmp_path / "run")
  args = [*BASE, f"--workdir={workdir}"]
  run = Run(["8", *args], env, code=HANG_IN_COMMIT)
  run.wait_for("hanging in the commit of checkpoint 8")
  run.proc.kill()
  assert run.finish() == -signal.SIGKILL
  # Every file of checkpoint 8 was written, only the final rename is missing.
  partial = [d for d in os.listdir(checkpoints.directory(workdir)) if d.startswith("8.")]
  assert len(partial) == 1 and "tmp" in partial[0], partial
  assert os.listdir(os.path.join(checkpoints.directory(workdir), partial[0], "state"))
  assert checkpoints.complete_steps(workdir) == [4]
  assert_same_as_reference(workdir, reference, [4])

  run = Run(args, env)
  assert _resumed_step(run) == 4, run.output()
  run.at_step(random.randint(6, 11))
  run.proc.send_signal(signal.SIGINT)
  assert run.finish() == 0, run.output()
  stopped = int(re.match(r"stopped by a signal at step (\d+):", run.lines[-1])[1])
  assert not [d for d in os.listdir(checkpoints.directory(workdir)) if "tmp" in d]
  assert max(checkpoints.complete_steps(workdir)) == stopped
  assert_same_as_reference(workdir, reference)
  assert_consistent_metrics(workdir, reference, stopped)
  print(f"killed in the commit of 8, resumed from 4, SIGINT saved step {stopped}")


def test_fresh_moves_a_run_of_another_config_aside(tmp_path_factory, tmp_path):
  reference = reference_run(tmp_path_factory)
  env = subprocess_env(tmp_path_factory.getbasetemp() / "jax-cache")
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  before = tree_digest(workdir)
  run = Run([*BASE, f"--workdir={workdir}", "--config.seed=1", "--fresh"], env)
  moved = run.wait_for(rf"^moved the earlier run in {re.escape(str(workdir))} to (\S+)$")[1]
  assert _resumed_step(run) == 0
  assert run.finish() == 0, run.output()
  assert tree_digest(moved) == before  # The old run, untouched, under its new name.
  assert os.path.dirname(moved) == str(tmp_path) and moved.startswith(f"{workdir}.old-")
  config, state = checkpoints.load(str(workdir))
  assert config.seed == 1 and int(state.step) == STEPS
  assert [r["step"] for r in metrics.read(str(workdir)) if "train/loss" in r] == list(
      range(1, STEPS + 1))


def test_probes_and_resets_after_a_kill_are_those_of_an_uninterrupted_run(tmp_path_factory,
                                                                           tmp_path):
  """probes.jsonl (turnover included) and the reset nets: every row once, bit for bit."""
  env = subprocess_env(tmp_path_factory.getbasetemp() / "jax-cache")
  args = [*BASE, "--config.train.probe_every=2", "--config.train.dormant_tau=0.5",
          "--config.grid.train.reset_dead_every=0,3"]
  whole, parts = tmp_path / "whole", tmp_path / "parts"
  assert Run([*args, f"--workdir={whole}"], env).finish() == 0
  run = Run([*args, f"--workdir={parts}"], env)
  step = run.at_step(random.randint(9, 11))
  run.proc.send_signal(signal.SIGKILL)
  assert run.finish() == -signal.SIGKILL
  rows = metrics.read(str(parts), metrics.PROBES_FILE)
  assert max(r["step"] for r in rows) > max(checkpoints.complete_steps(str(parts)))
  run = Run([*args, f"--workdir={parts}"], env)
  assert run.finish() == 0, run.output()
  want = metrics.read(str(whole), metrics.PROBES_FILE)
  assert metrics.read(str(parts), metrics.PROBES_FILE) == want
  assert sum(r.get("reset", 0) for r in want) > 0 and {r["net"] for r in want} == {0, 1}
  assert_bitwise_equal(arrays(str(parts)), arrays(str(whole)))
  print(f"killed at step {step}; {len(want)} probe rows")
