"""Two processes on localhost (JAX's distributed runtime, gloo CPU collectives) train
like one process with the same global batch, and stop together on SIGTERM."""
import os
import re
import signal
import socket

import jax
import numpy as np

from resjax import checkpoints, metrics
from helpers import BASE, STEPS, Run, arrays, reference_run, subprocess_env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start_pair(workdir, env):
  port = _free_port()
  return [Run([*BASE, f"--workdir={workdir}", f"--coordinator_address=localhost:{port}",
               "--num_processes=2", f"--process_id={i}"], env) for i in range(2)]


def test_two_processes_match_one_and_stop_together(tmp_path_factory, tmp_path):
  reference = reference_run(tmp_path_factory)
  # 4 devices per process: 8 in all, as in the single-process reference.
  env = subprocess_env(tmp_path_factory.getbasetemp() / "jax-cache", devices=4)
  workdir = str(tmp_path / "run")

  # A preemption notice reaches process 1 only, as training starts (JAX's service
  # polls for it about once a second, many steps here); both save the same step
  # and exit 0.
  lead, other = _start_pair(workdir, env)
  lead.wait_for(r"steps 0 -> ")
  other.proc.send_signal(signal.SIGTERM)
  codes = [lead.finish(), other.finish()]
  assert codes == [0, 0], (lead.output(), other.output())
  stopped = int(re.fullmatch(r"stopped by a signal at step (\d+): .*", lead.lines[-1])[1])
  assert stopped < STEPS and max(checkpoints.complete_steps(workdir)) == stopped
  # Only process 0 reports and writes metrics.
  assert not [l for l in other.lines if re.match(r"step|stopped|done", l)], other.output()
  print(f"SIGTERM to process 1 only: both processes saved step {stopped}, exit 0")

  lead, other = _start_pair(workdir, env)
  codes = [lead.finish(), other.finish()]
  assert codes == [0, 0], (lead.output(), other.output())
  assert lead.find(rf"^resumed from .* at step {stopped}$"), lead.output()
  assert not [l for l in lead.lines + other.lines if "[Gloo]" in l]  # Gloo's chatter dropped.

  rows = metrics.read(workdir)
  train = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train] == list(range(1, STEPS + 1))  # No row twice.
  want = [r for r in metrics.read(reference) if "train/loss" in r]
  np.testing.assert_allclose([r["train/loss"] for r in train],
                             [r["train/loss"] for r in want], rtol=1e-6)
  assert len(os.listdir(os.path.join(workdir, metrics.TENSORBOARD_DIR))) >= 1
  # The checkpoints written by both processes restore here, on 8 devices of one.
  for step in (stopped, STEPS):
    got, ref = arrays(workdir, step), arrays(reference, step)
    assert int(got["step"]) == step
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, ref)
