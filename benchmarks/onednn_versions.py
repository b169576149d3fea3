"""resjax's oneDNN convolution code against several oneDNN installations.

  RESJAX_ONEDNN_PREFIXES=/env/onednn32:/env/onednn313 python -m launch.bench onednn_versions

Each prefix is an installation holding include/oneapi/dnnl/dnnl.hpp and
lib/libdnnl.so.3 (for example a virtual environment with onednn-cpu-gomp and
onednn-devel-cpu-gomp, or with onednn, onednn-devel and their runtime wheels;
docs/performance.md says how to make them). benchmarks/onednn_versions.cc,
which includes resjax/kernels/onednn_conv.cc whole, is compiled once per
prefix; the programs then time the convolutions of one ResNet-20 train step
(batch 128, CIFAR shapes, NHWC, float32) in alternating rounds, on 2 threads
(the CPUs of a 2-core machine) and on 1 (pinned to one CPU, which takes the
threading runtime's wake-ups out of the comparison); an OpenMP build runs on
2 threads also with OMP_WAIT_POLICY=passive. Printed: per pass the median
over rounds of the step's total milliseconds, the time ratio of each variant
to the first, and whether the outputs agree.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from typing import Any

import jaxlib

from resjax import errors

ENV = "RESJAX_ONEDNN_PREFIXES"
PASSES = ("fwd", "bwd_data", "bwd_weights")
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_versions.cc")
_FILES = ("include/oneapi/dnnl/dnnl.hpp", "lib/libdnnl.so.3")


def prefixes() -> list[str]:
  """The installations named by RESJAX_ONEDNN_PREFIXES, each checked for its files."""
  named = [p for p in os.environ.get(ENV, "").split(os.pathsep) if p]
  errors.check(bool(named), f"{ENV} names no oneDNN installation; set it to prefixes holding "
               f"{' and '.join(_FILES)}, separated by '{os.pathsep}' (docs/performance.md "
               "says how to make a oneDNN 3.13 one)")
  for prefix in named:
    for f in _FILES:
      errors.check(os.path.exists(os.path.join(prefix, f)),
                   f"{ENV}: {prefix} has no {f}; name an installation of oneDNN with its headers")
  for tool, what in (("g++", "a C++17 compiler"), ("taskset", "util-linux")):
    errors.check(shutil.which(tool) is not None, f"no {tool} on PATH; install {what}")
  return named


def compile_program(prefix: str, out_dir: str, index: int) -> str:
  """benchmarks/onednn_versions.cc built against `prefix`'s headers and libdnnl."""
  ffi = os.path.join(os.path.dirname(jaxlib.__file__), "include")
  binary = os.path.join(out_dir, f"onednn_versions_{index}")
  lib = os.path.join(prefix, "lib")
  cmd = ["g++", "-std=c++17", "-O2", "-w", f"-I{prefix}/include", f"-I{ffi}", _SOURCE,
         os.path.join(lib, "libdnnl.so.3"), "-lgomp", f"-Wl,-rpath,{lib}", "-o", binary]
  done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  errors.check(done.returncode == 0, f"compiling against {prefix} failed: "
               f"{done.stderr.strip().splitlines()[-1:] or done.returncode}")
  return binary


def _env(prefix: str, threads: int) -> dict[str, str]:
  """The program's environment: its oneDNN's libraries first, `threads` threads.

  A SYCL build of oneDNN (the `onednn` wheel) finds its CPU device through the
  OpenCL runtime in the same prefix.
  """
  lib = os.path.join(prefix, "lib")
  env = dict(os.environ, OMP_NUM_THREADS=str(threads),
             LD_LIBRARY_PATH=os.pathsep.join(p for p in (lib, os.environ.get("LD_LIBRARY_PATH"))
                                             if p))
  ocl = os.path.join(lib, "libintelocl.so")
  if os.path.exists(ocl):
    env.setdefault("OCL_ICD_FILENAMES", ocl)
  return env


def parse(text: str) -> dict[str, Any]:
  """The program's output: version, {(conv, pass): (count, ms, checksum)}, stream_ms."""
  out: dict[str, Any] = {"convs": {}}
  for line in text.splitlines():
    fields = line.split()
    if fields[:1] == ["version"]:
      out["version"] = fields[1]
    elif fields[:1] == ["stream_ms"]:
      out["stream_ms"] = float(fields[1])
    elif len(fields) == 5 and fields[1] in PASSES:
      out["convs"][(fields[0], fields[1])] = (int(fields[2]), float(fields[3]), float(fields[4]))
  errors.check("version" in out and out["convs"], f"unreadable program output: {text[:200]!r}")
  return out


def step_ms(run: dict[str, Any]) -> dict[str, float]:
  """Milliseconds per pass for one step: every conv's median times its count."""
  totals = dict.fromkeys(PASSES, 0.0)
  for (_, kind), (count, ms, _) in run["convs"].items():
    totals[kind] += count * ms
  return totals


def agree(a: dict[str, Any], b: dict[str, Any], rtol: float = 1e-4) -> bool:
  """Whether two runs computed the same outputs (sums of |output| within rtol)."""
  return a["convs"].keys() == b["convs"].keys() and all(
      abs(a["convs"][k][2] - b["convs"][k][2]) <= rtol * abs(a["convs"][k][2])
      for k in a["convs"])


@dataclasses.dataclass(frozen=True)
class Variant:
  """One program to time: an installation's build, with extra environment."""
  prefix: str
  binary: str
  threading: str  # oneDNN's CPU threading runtime: OMP, TBB, ...
  extra_env: tuple[tuple[str, str], ...] = ()

  def label(self, version: str) -> str:
    return " ".join([version, self.threading.lower()] + [v for _, v in self.extra_env])


def threading(prefix: str) -> str:
  """The CPU threading runtime an installation's dnnl_config.h names."""
  with open(os.path.join(prefix, "include/oneapi/dnnl/dnnl_config.h"), encoding="utf-8") as f:
    found = re.search(r"#define DNNL_CPU_THREADING_RUNTIME DNNL_RUNTIME_(\w+)", f.read())
  return found.group(1) if found else "unknown"


def variants(named: list[str], binaries: list[str]) -> list[Variant]:
  """Each installation as built; an OpenMP build also with OMP_WAIT_POLICY=passive.

  GNU OpenMP's threads spin at a barrier before they sleep; on an oversubscribed
  machine the spinning thread holds the CPU its partner needs.
  """
  out = []
  for prefix, binary in zip(named, binaries):
    runtime = threading(prefix)
    out.append(Variant(prefix, binary, runtime))
    if runtime == "OMP":
      out.append(Variant(prefix, binary, runtime, (("OMP_WAIT_POLICY", "passive"),)))
  return out


def _run_once(v: Variant, threads: int, batch: int, calls: int) -> dict[str, Any]:
  cmd = [v.binary, str(batch), str(calls)]
  if threads == 1:  # Pinned, so a TBB build, which sizes its pool by the CPUs it may use, has 1.
    cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0)))] + cmd
  done = subprocess.run(cmd, env=dict(_env(v.prefix, threads), **dict(v.extra_env)),
                        capture_output=True, text=True, check=False)
  errors.check(done.returncode == 0, f"{v.binary} ({v.prefix}) failed: "
               f"{(done.stderr.strip().splitlines() or [str(done.returncode)])[-1]}")
  return parse(done.stdout)


Runs = dict[int, list[tuple[str, list[dict[str, Any]]]]]


def measure(todo: list[Variant], thread_counts: tuple[int, ...], rounds: int, batch: int,
            calls: int) -> Runs:
  """runs[threads] = [(label, one parsed run per round)], the variants alternating.

  On 1 thread there is no barrier to wait at: variants with extra environment
  are left out there.
  """
  runs: dict[int, list[list[dict[str, Any]]]] = {t: [[] for _ in todo] for t in thread_counts}
  for r in range(rounds):
    order = list(range(len(todo)))[::(1 if r % 2 == 0 else -1)]
    for threads in thread_counts:
      for i in order:
        if threads > 1 or not todo[i].extra_env:
          runs[threads][i].append(_run_once(todo[i], threads, batch, calls))
  return {t: [(todo[i].label(rs[0]["version"]), rs) for i, rs in enumerate(per) if rs]
          for t, per in runs.items()}


def summarize(runs: Runs) -> dict[str, Any]:
  """Per thread count and variant: median step ms per pass, ratio to the first variant."""
  out: dict[str, Any] = {}
  for threads, per_variant in runs.items():
    rows = []
    for label, variant_runs in per_variant:
      totals = [step_ms(r) for r in variant_runs]
      ms = {k: statistics.median(t[k] for t in totals) for k in PASSES}
      ms["all"] = statistics.median(sum(t.values()) for t in totals)
      rows.append({"variant": label, "ms": ms,
                   "stream_ms": statistics.median(r["stream_ms"] for r in variant_runs),
                   "agrees": agree(per_variant[0][1][0], variant_runs[0])})
    for row in rows:
      row["ratio"] = {k: row["ms"][k] / rows[0]["ms"][k] for k in row["ms"]}
    out[str(threads)] = rows
  return out


def _print(table: dict[str, Any]) -> None:
  cols = PASSES + ("all",)
  print(f"{'threads':>7}  {'oneDNN':>20}  " + "  ".join(f"{c + ' ms':>14}" for c in cols)
        + f"  {'time / first':>28}  outputs")
  for threads, rows in table.items():
    for row in rows:
      ms = "  ".join(f"{row['ms'][c]:14.1f}" for c in cols)
      ratio = " ".join(f"{row['ratio'][c]:.2f}" for c in cols)
      same = "agree" if row["agrees"] else "DIFFER"
      print(f"{threads:>7}  {row['variant']:>20}  {ms}  {ratio:>28}  {same}")


def run(quick: bool = False) -> dict[str, Any]:
  named = prefixes()
  batch, calls, rounds = (8, 1, 1) if quick else (128, 5, 5)
  threads = tuple(sorted({min(2, len(os.sched_getaffinity(0))), 1}, reverse=True))
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    binaries = [compile_program(p, tmp, i) for i, p in enumerate(named)]
    runs = measure(variants(named, binaries), threads, rounds, batch, calls)
  table = summarize(runs)
  load_after = os.getloadavg()
  print(f"ResNet-20 step convolutions, batch {batch}, median of {rounds} rounds x {calls} calls; "
        f"load {load_before[0]:.1f} -> {load_after[0]:.1f}")
  _print(table)
  return {"batch": batch, "rounds": rounds, "calls": calls, "prefixes": named,
          "load": [load_before[0], load_after[0]], "threads": table}
