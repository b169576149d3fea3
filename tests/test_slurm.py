"""launch/slurm_cpu.sh under a real scheduler: a one-node SLURM cluster started here.

The module's fixture writes a minimal slurm.conf (this machine's CPUs and
memory, no authentication daemon: auth/none), starts slurmctld and slurmd in a
fresh state directory and stops them at the end. Where SLURM is not installed
or its daemons do not start, the tests are skipped with the reason
(`.ci/run` installs it from the Debian registry).

Each job is the batch script as a user submits it, with 2 tasks of one CPU each
on the one node: the tasks join one `jax.distributed` job through JAX's SLURM
detection (`--multihost`) and must train like one process; `scancel
--signal=TERM` saves, the script requeues the job and the rerun resumes to the
same numbers; a task that never starts its Python ends the job in one line
within --coordinator_timeout.
"""
import fcntl
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from resjax import checkpoints, distributed, metrics
from helpers import ROOT, Run, arrays, subprocess_env

TOOLS = ("slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scontrol", "scancel")
SEARCH_PATH = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"  # The daemons live in sbin.
STEPS = 200  # Long enough (a second or more) for a signal to land mid-run.
ARGS = ["--config=configs/embedded.py:tiny_mlp", f"--config.train.steps={STEPS}",
        "--config.train.log_every=1", "--config.train.checkpoint_every=50",
        "--config.train.eval_every=0"]
TASKS = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1"]
REQUEUE_S = 5  # AuthInfo=cred_expire: how long a requeued job waits (SLURM's default: 120 s).
JOB_TIMEOUT_S = 120
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
# JAX's SLURM detection: the coordinator listens on this port + job id % 4096.
JAX_PORT_BASE = 65535 - 2**12 + 1


def _free_port(candidates=None) -> int:
  """A TCP port nobody listens on: any, or the first free one of `candidates`."""
  for port in candidates or [0]:
    with socket.socket() as s:
      try:
        s.bind(("localhost", port))
      except OSError:
        continue
      return s.getsockname()[1]
  raise RuntimeError("no free port")


def _conf(root: str) -> str:
  """slurm.conf of a one-node cluster on localhost with this machine's CPUs and memory."""
  with open("/proc/meminfo") as f:
    mem_mb = int(f.readline().split()[1]) // 1024
  user = getpass.getuser()
  ports = range(JAX_PORT_BASE + 100 + os.getpid() % 3000, 65536)  # Job ids -> free JAX ports.
  first_job = _free_port(ports) - JAX_PORT_BASE
  return f"""\
ClusterName=resjax
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/none
CredType=cred/none
AuthInfo=cred_expire={REQUEUE_S}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerParameters=bf_interval=1,sched_interval=1
FirstJobId={first_job}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={mem_mb * 9 // 10}
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
  """slurmctld and slurmd started in `root`; SLURM's commands pointed at them."""

  def __init__(self, root: str):
    self.root = root
    for sub in ("state", "spool", "jobs", "bin"):
      os.makedirs(os.path.join(root, sub))
    self.conf = os.path.join(root, "slurm.conf")
    with open(self.conf, "w") as f:
      f.write(_conf(root))
    self.env = {**os.environ, "SLURM_CONF": self.conf, "PATH": SEARCH_PATH}
    self.daemons = []
    for cmd in (["slurmctld", "-D", "-i"], ["slurmd", "-D", "-N", "localhost"]):
      with open(os.path.join(root, f"{cmd[0]}.stderr"), "w") as err:
        self.daemons.append(subprocess.Popen([*cmd, "-f", self.conf], env=self.env,
                                             stdout=err, stderr=subprocess.STDOUT))
    self.jobs: list[int] = []

  def command(self, *args: str, env=None, check=True) -> str:
    proc = subprocess.run(args, cwd=ROOT, env=env or self.env, capture_output=True, text=True,
                          timeout=60)
    if check and proc.returncode:
      raise AssertionError(f"{' '.join(args)}: exit {proc.returncode}\n{proc.stderr}")
    return proc.stdout

  def wait_idle(self, timeout_s: float = 30) -> str:
    """'' once the node is idle, else why not (daemon logs)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
      for daemon in self.daemons:
        if daemon.poll() is not None:
          return f"{daemon.args[0]} exited ({daemon.returncode}): {self._logs()}"
      out = self.command("sinfo", "-h", "-o", "%T", check=False)
      if out.strip() == "idle":
        return ""
      time.sleep(0.2)
    return f"the node is not idle after {timeout_s} s: {self._logs()}"

  def _logs(self) -> str:
    lines = []
    for name in ("slurmctld.stderr", "slurmd.stderr", "slurmctld.log", "slurmd.log"):
      path = os.path.join(self.root, name)
      if os.path.exists(path):
        with open(path) as f:
          lines += [l.strip() for l in f if "error" in l.lower()][-3:]
    return " | ".join(lines) or "no error logged"

  def submit(self, *args: str, env: dict) -> int:
    """sbatch launch/slurm_cpu.sh from the checkout's root; returns the job id."""
    out = self.command("sbatch", "--parsable", *TASKS,
                       f"--output={self.root}/jobs/%j.out", "launch/slurm_cpu.sh", *args,
                       env={**env, "SLURM_CONF": self.conf})
    self.jobs.append(int(out.strip().split(";")[0]))
    return self.jobs[-1]

  def job(self, job_id: int) -> dict:
    """`scontrol show job` as a dict (JobState, Restarts, ExitCode, RunTime, ...)."""
    out = self.command("scontrol", "-o", "show", "job", str(job_id))
    return dict(re.findall(r"(\w+)=(\S*)", out))

  def wait(self, job_id: int) -> dict:
    """The job's fields once it has ended (not requeued)."""
    end = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < end:
      info = self.job(job_id)
      if info["JobState"] in ENDED:
        return info
      time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {info['JobState']} after {JOB_TIMEOUT_S} s\n"
                         f"{self.output(job_id)}")

  def output(self, job_id: int) -> str:
    path = os.path.join(self.root, "jobs", f"{job_id}.out")
    if not os.path.exists(path):
      return ""
    with open(path) as f:
      return f.read()

  def wait_for(self, job_id: int, pattern: str) -> re.Match:
    """The first line of the job's output that matches `pattern`, once written."""
    end = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < end:
      ended = self.job(job_id)["JobState"] in ENDED
      match = re.search(pattern, self.output(job_id), re.M)
      if match or ended:
        break
      time.sleep(0.2)
    assert match, f"no line like {pattern!r} in job {job_id}\n{self.output(job_id)}"
    return match

  def close(self) -> None:
    if self.jobs:
      self.command("scancel", *map(str, self.jobs), check=False)
      end = time.monotonic() + 15
      while self.command("squeue", "-h", check=False).strip() and time.monotonic() < end:
        time.sleep(0.3)
    for daemon in reversed(self.daemons):
      daemon.send_signal(signal.SIGTERM)
      try:
        daemon.wait(timeout=15)
      except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  missing = [t for t in TOOLS if shutil.which(t, path=SEARCH_PATH) is None]
  if missing:
    pytest.skip(f"SLURM is not installed here (no {', '.join(missing)}): "
                "apt-get install slurm-wlm, as .ci/run does")
  # One test cluster on this machine at a time (pytest -n 2 may split the tests over
  # two workers): each job's coordinator port follows its job id, and two clusters'
  # job ids could meet.
  lock = os.open(os.path.join(tempfile.gettempdir(), "resjax-test-slurm.lock"),
                 os.O_RDONLY | os.O_CREAT, 0o666)
  fcntl.flock(lock, fcntl.LOCK_EX)
  slurm = Cluster(str(tmp_path_factory.mktemp("slurm")))
  try:
    why = slurm.wait_idle()
    if why:
      pytest.skip(f"the one-node SLURM cluster did not start: {why}")
    yield slurm
  finally:
    slurm.close()
    os.close(lock)


@pytest.fixture(scope="module")
def job_env(tmp_path_factory, cluster):
  """The jobs' environment: host devices left to launch.platform, and `python` on PATH
  the interpreter running the tests, or, for the task whose SLURM_PROCID is in
  RESJAX_TEST_ABSENT_TASK, a process that never starts it."""
  base = tmp_path_factory.getbasetemp()
  shim = os.path.join(cluster.root, "bin", "python")
  with open(shim, "w") as f:
    f.write('#!/bin/sh\nif [ "${RESJAX_TEST_ABSENT_TASK-}" = "${SLURM_PROCID-}" ]; then '
            f'exec sleep 600; fi\nexec {sys.executable} "$@"\n')
  os.chmod(shim, 0o755)
  env = subprocess_env(base / "jax-cache", devices=None)
  return {**env, "PATH": f"{os.path.dirname(shim)}:{env['PATH']}"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, job_env):
  """The same training in one process (8 host devices), uninterrupted: started here,
  its workdir returned by the function this yields once it has ended (meanwhile the
  cluster runs a job)."""
  workdir = str(tmp_path_factory.mktemp("slurm-ref") / "run")
  run = Run([*ARGS, f"--workdir={workdir}"], subprocess_env(job_env["JAX_COMPILATION_CACHE_DIR"]))

  codes = []

  def finished() -> str:
    codes[:] = codes or [run.finish()]
    assert codes == [0], run.output()
    return workdir

  yield finished
  finished()


def _losses(workdir) -> list[float]:
  rows = [r for r in metrics.read(workdir) if "train/loss" in r]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # Every step once.
  return [r["train/loss"] for r in rows]


def _assert_same_training(workdir, reference) -> None:
  np.testing.assert_allclose(_losses(workdir), _losses(reference), rtol=1e-6)
  got, want = arrays(workdir, STEPS), arrays(reference, STEPS)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)


def test_two_tasks_join_one_job_and_train_like_one_process(cluster, job_env, one_process,
                                                           tmp_path):
  workdir = str(tmp_path / "run")
  job = cluster.submit(*ARGS, f"--workdir={workdir}", env=job_env)
  info = cluster.wait(job)
  out = cluster.output(job)
  assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), out
  # Both tasks in one job; each bound to its one CPU, so 4 host devices each.
  for i in range(2):
    assert re.search(rf"process {i}/2, 4 local / 8 global devices", out), out
  assert re.search(rf"^done at step {STEPS}: ", out, re.M), out
  assert "connected to" not in out  # Gloo's chatter dropped.
  _assert_same_training(workdir, one_process())


def test_scancel_term_saves_and_the_requeued_job_resumes_exactly(cluster, job_env, one_process,
                                                                  tmp_path):
  workdir = str(tmp_path / "run")
  job = cluster.submit(*ARGS, f"--workdir={workdir}", env=job_env)
  cluster.wait_for(job, r"^step +1\d/")
  cluster.command("scancel", "--signal=TERM", str(job))
  info = cluster.wait(job)
  out = cluster.output(job)
  assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), out
  stopped = int(cluster.wait_for(job, r"^stopped by a signal at step (\d+): ")[1])
  assert 10 <= stopped < STEPS and stopped in checkpoints.complete_steps(workdir), out
  assert f"requeueing job {job} to resume" in out and "connected to" not in out
  assert re.search(rf"^resumed from .* at step {stopped}$", out, re.M), out
  assert re.search(rf"^done at step {STEPS}: ", out, re.M), out
  _assert_same_training(workdir, one_process())
  print(f"scancel --signal=TERM: both tasks saved step {stopped}; the requeued job resumed "
        f"there and ended like an uninterrupted run")


def test_a_task_that_never_starts_ends_the_job_in_one_line(cluster, job_env, tmp_path):
  timeout = 5
  job = cluster.submit(*ARGS, f"--workdir={tmp_path}/run", f"--coordinator_timeout={timeout}",
                       env={**job_env, "RESJAX_TEST_ABSENT_TASK": "1"})
  info = cluster.wait(job)
  out = cluster.output(job)
  assert info["JobState"] == "FAILED", (info, out)
  assert "Traceback" not in out
  errors = [l for l in out.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, out
  port = JAX_PORT_BASE + job % 2**12
  assert errors[0].startswith(f"error: process 1 of 2 did not join the job at localhost:{port} "
                              f"within {timeout} s; check that every task of the job started"), out
  h, m, s = map(int, info["RunTime"].split(":"))
  # Start-up, the wait, srun ending the other task; JAX's own timeout would be 30 s later.
  assert h * 3600 + m * 60 + s < timeout + 25, info
  assert not os.path.exists(tmp_path / "run")


def test_multihost_reads_the_layout_from_slurms_variables(monkeypatch):
  """What --multihost finds in a task of a 2-node job (JAX's detection, read before
  the wait so that a late peer can be named)."""
  for name, value in {"SLURM_JOB_ID": "4100", "SLURM_STEP_NODELIST": "node[007-008]",
                      "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}.items():
    monkeypatch.setenv(name, value)
  monkeypatch.delenv("JAX_COORDINATOR_PORT", raising=False)
  assert distributed.detected(None, None, None, 5) == (f"node007:{JAX_PORT_BASE + 4}", 2, 1, [0])
  assert distributed.detected("host:1234", None, 0, 5)[:3] == ("host:1234", 2, 0)


def test_a_late_multihost_job_names_the_missing_task_and_the_fix_for_a_scheduler():
  line = distributed.late_message("node007:61444", 2, 0, 5, auto=True)
  assert line.startswith("process 1 of 2 did not join the job at node007:61444 within 5 s; "
                         "check that every task of the job started"), line
  assert "--coordinator_address" not in line and "--coordinator_timeout" in line
