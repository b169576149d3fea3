"""Where a ResNet train step's time goes: XLA's ops by kind, from a profiler trace.

  python -m launch.bench profile [--quick]

Traces a few steps of the default ResNet-20 train step (batch 128, the mesh
`train.data_mesh` picks) and of the same step on one device with
`jax.profiler`, reads the trace back (`jax.profiler.ProfileData`) and sums the
time of each XLA op, classified from the compiled HLO:

  conv forward       the forward convolutions
  conv input-grad    the convolutions that carry the gradient to the input
  conv weight-grad   the convolutions that form the kernels' gradients (after
                     layout assignment their window spans the image)
                     (with `model.conv_impl='onednn'` these three are oneDNN's
                     FFI custom calls, told apart by their targets)
  transposes         fusions that contain a transpose, or only copy (feeding
                     the weight-gradient convolutions); XLA fuses the
                     elementwise ops that produce their input into them, so
                     they also recompute BatchNorm, ReLU and the shortcut add
  reductions         fusions with a reduce: BatchNorm statistics, the loss
  elementwise        the other fusions (ReLU, BatchNorm's scale, optimizer)

Op times are summed over every device's thread; with more devices than cores
they include time waiting for a core, so a kind's share of the summed time is
the figure to read, and `ms/step` divides the step's wall time by those
shares. On one device GFLOP/s is a kind's FLOPs (from the HLO shapes) per
wall second so attributed; with several devices sharing the cores that
attribution is too rough for a rate, and none is printed. The gradient all-reduce is left out of the shares: its time on a
device's thread is mostly waiting for the slowest device to arrive, and is
printed on its own (as thread-seconds per step, summed over devices).
"""
from __future__ import annotations

import collections
import glob
import re
import statistics
import tempfile
import time
from typing import Any

import jax
import numpy as np

from resjax import sharding
from benchmarks import train as bench_train

KINDS = ("conv forward", "conv input-grad", "conv weight-grad", "transposes", "reductions",
         "elementwise", "other")
ALL_REDUCE = "all-reduce"

_INSTR = re.compile(r"\s*(?:ROOT\s+)?%([\w.\-]+) = (.*?)\b([a-z][\w\-]*)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+) ")
_SHAPE = re.compile(r"^[a-z]+\d*\[([\d,]*)\]")
# Trace events that are not ops: markers, wrappers around a program's ops, and
# the waits nested inside collectives and thread-pool calls.
_NOT_OPS = re.compile(r"^(end: |ThreadpoolListener|ThunkExecutor|Wait|SlinkyThreadPool)"
                      r"|Rendezvous")
_LAYOUT_OPS = {"transpose", "copy", "bitcast", "parameter", "reshape", "reverse", "pad",
               "slice", "concatenate", "broadcast", "constant"}


def _dims(type_text: str) -> tuple[int, ...] | None:
  m = _SHAPE.match(type_text.strip())
  return tuple(int(d) for d in m.group(1).split(",") if d) if m else None


def parse_hlo(text: str) -> dict[str, dict[str, Any]]:
  """{instruction: {'opcode', 'dims', 'rest', 'computation', 'entry'}} of a compiled module."""
  out, comp, entry = {}, None, False
  for line in text.splitlines():
    head = _COMP.match(line)
    if head and line.rstrip().endswith("{"):
      comp, entry = head.group(1), line.startswith("ENTRY")
      continue
    m = _INSTR.match(line)
    if m:
      name, type_text, opcode, rest = m.groups()
      out[name] = {"opcode": opcode, "dims": _dims(type_text), "rest": rest, "computation": comp,
                   "entry": entry}
  return out


def _conv_flops(instr: dict, hlo: dict) -> float:
  """2 x output elements x window positions x input features (per group)."""
  window = re.search(r"window=\{size=([\dx]+)", instr["rest"])
  labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", instr["rest"])
  operands = re.findall(r"%([\w.\-]+)", instr["rest"].split(")", 1)[0])
  if not (window and labels and operands and instr["dims"]):
    return 0.0
  lhs = hlo.get(operands[0], {}).get("dims")
  if not lhs:
    return 0.0
  in_features = lhs[labels.group(1).index("f")]
  groups = re.search(r"feature_group_count=(\d+)", instr["rest"])
  in_features //= int(groups.group(1)) if groups else 1
  positions = int(np.prod([int(s) for s in window.group(1).split("x")]))
  dilated = re.search(r"lhs_dilate=([\dx]+)", instr["rest"])  # Strided layers' input grads:
  if dilated:  # only one in (stride^2) window positions meets a nonzero.
    positions /= int(np.prod([int(s) for s in dilated.group(1).split("x")]))
  return 2.0 * float(np.prod(instr["dims"])) * positions * in_features


# The oneDNN convolution's FFI targets (resjax/kernels) and their kinds.
_FFI_KINDS = {"resjax_onednn_conv_fwd": "conv forward",
              "resjax_onednn_conv_bwd_data": "conv input-grad",
              "resjax_onednn_conv_bwd_weights": "conv weight-grad"}


def _ffi_conv(instr: dict, hlo: dict) -> tuple[str, float] | None:
  """(kind, FLOPs) of a oneDNN convolution custom call, else None.

  Every one of the three does 2 x (output-image elements) x KH x KW x C
  FLOPs; fwd: operands (x, w) -> y; bwd_data: (dy, w) -> dx; bwd_weights:
  (x, dy) -> dw.
  """
  target = re.search(r'custom_call_target="([\w.\-]+)"', instr["rest"])
  if instr["opcode"] != "custom-call" or not target or target.group(1) not in _FFI_KINDS:
    return None
  kind = _FFI_KINDS[target.group(1)]
  operands = [hlo.get(o, {}).get("dims") for o in
              re.findall(r"%([\w.\-]+)", instr["rest"].split("), ", 1)[0])]
  if len(operands) != 2 or not all(operands) or not instr["dims"]:
    return kind, 0.0
  if kind == "conv forward":
    y, w = instr["dims"], operands[1]
  elif kind == "conv input-grad":
    y, w = operands
  else:
    y, w = operands[1], instr["dims"]
  return kind, 2.0 * float(np.prod(y)) * w[0] * w[1] * w[2]


def _conv_kind(instr: dict) -> str:
  # Assumes kernels of at most 3x3 on larger images (true of the CIFAR ResNets
  # profiled here) and JAX's op_name metadata, where a backward op's name
  # holds "transpose(".
  window = re.search(r"window=\{size=([\dx]+)", instr["rest"])
  size = max(int(s) for s in window.group(1).split("x")) if window else 1
  if size > 3:  # ResNets' kernels are at most 3x3: a wider window is the image.
    return "conv weight-grad"
  return "conv input-grad" if "transpose(" in instr["rest"] else "conv forward"


def classify(hlo: dict[str, dict[str, Any]]) -> dict[str, tuple[str, float]]:
  """{instruction: (kind, FLOPs)} for the ops a trace names (FLOPs: entry ops only)."""
  by_comp = collections.defaultdict(list)
  for name, instr in hlo.items():
    by_comp[instr["computation"]].append(name)
  out = {}
  for name, instr in hlo.items():
    op = instr["opcode"]
    inner = [name]
    called = re.search(r"calls=%([\w.\-]+)", instr["rest"])
    if op == "fusion" and called:
      inner = by_comp.get(called.group(1), [])
    ops = {hlo[i]["opcode"] for i in inner}
    convs = [i for i in inner if hlo[i]["opcode"] == "convolution"]
    ffi = _ffi_conv(instr, hlo)
    if ffi:
      out[name] = (ffi[0], ffi[1] if instr["entry"] else 0.0)
    elif convs:
      flops = sum(_conv_flops(hlo[c], hlo) for c in convs) if instr["entry"] else 0.0
      out[name] = (_conv_kind(hlo[convs[0]]), flops)
    elif op.startswith("all-reduce") or "all-reduce" in ops:
      out[name] = (ALL_REDUCE, 0.0)
    elif "reduce" in ops or "reduce-window" in ops:
      out[name] = ("reductions", 0.0)
    elif "transpose" in ops or (ops <= _LAYOUT_OPS and ops & {"copy", "reverse", "pad", "slice",
                                                               "concatenate"}):
      out[name] = ("transposes", 0.0)
    elif op == "fusion" or ops & {"add", "multiply", "maximum", "select", "subtract", "divide"}:
      out[name] = ("elementwise", 0.0)
    else:
      out[name] = ("other", 0.0)
  return out


def op_times(trace_dir: str) -> dict[str, tuple[int, float]]:
  """{op name: (events, total seconds)} over every thread of every traced plane."""
  paths = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
  totals: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
  for path in paths:
    for plane in jax.profiler.ProfileData.from_file(path).planes:
      for line in plane.lines:
        if line.name == "python" or line.name.startswith("tf_XLAPjRt"):
          continue  # Python and PjRt's dispatch threads: host work around the program.
        for ev in line.events:
          if _NOT_OPS.search(ev.name):
            continue
          totals[ev.name][0] += 1
          totals[ev.name][1] += ev.duration_ns * 1e-9
  return {k: (int(n), s) for k, (n, s) in totals.items()}


def profile_step(config, devices=None, steps: int = 4) -> dict[str, Any]:
  """Traces `steps` train steps; returns wall s/step and seconds, FLOPs per kind per step."""
  state, p_train, batch, mesh = bench_train.setup(config, devices)
  compiled = p_train.lower(state, batch).compile()
  kinds = classify(parse_hlo(compiled.as_text()))
  for _ in range(2):
    state, m = compiled(state, batch)
    jax.block_until_ready(m["loss"])
  walls = []
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(steps):
        start = time.perf_counter()
        state, m = compiled(state, batch)
        jax.block_until_ready(m["loss"])
        walls.append(time.perf_counter() - start)
    times = op_times(trace_dir)
  seconds = dict.fromkeys(KINDS + (ALL_REDUCE,), 0.0)
  flops = dict.fromkeys(KINDS + (ALL_REDUCE,), 0.0)
  unmatched = 0.0
  for name, (_, total) in times.items():
    if name in kinds:
      seconds[kinds[name][0]] += total / steps
    else:
      unmatched += total / steps
  for kind, f in kinds.values():
    flops[kind] += f * sharding.num_shards(mesh)  # The HLO's shapes are one device's slice.
  slowest = sorted((k for k in times if k in kinds), key=lambda k: -times[k][1])[:3]
  return {"devices": sharding.num_shards(mesh), "wall_s": statistics.median(walls),
          "op_s": seconds, "flops": flops, "unmatched_s": unmatched,
          "slowest": [(k, kinds[k][0], times[k][1] / steps) for k in slowest]}


def _rows(result: dict[str, Any]) -> dict[str, dict[str, float]]:
  total = sum(result["op_s"][k] for k in KINDS) or 1.0
  rows = {}
  for kind in KINDS:
    share = result["op_s"][kind] / total
    wall = share * result["wall_s"]
    rate = result["devices"] == 1 and wall > 0 and result["flops"][kind]
    gflops = result["flops"][kind] / wall / 1e9 if rate else None
    rows[kind] = {"share": share, "wall_ms": 1e3 * wall, "gflops": gflops}
  return rows


def run(quick: bool = False) -> dict[str, Any]:
  """Prints where the step's time goes on the default mesh and on one device."""
  batch, widths = (32, bench_train.QUICK_WIDTHS) if quick else (128, (16, 32, 64))
  depth = 6 if quick else 20
  config = bench_train._config(depth, False, batch, widths)  # pylint: disable=protected-access
  results = {"default": profile_step(config)}
  if results["default"]["devices"] > 1:
    results["1 device"] = profile_step(config, jax.devices()[:1])
  mm = bench_train.matmul_flops(1024 if quick else 2048)["jnp"]
  print(f"ResNet-{depth}, batch {batch}: where a train step's time goes (XLA ops by kind; "
        f"float32 matmul {mm:.0f} GFLOP/s)")
  header = "".join(f" | {name} ({r['devices']} dev): share  ms/step  GFLOP/s"
                   for name, r in results.items())
  print(f"{'kind':17s}{header}")
  figures: dict[str, Any] = {"model": f"resnet{depth}", "batch": batch, "matmul_gflops": mm}
  table = {name: _rows(r) for name, r in results.items()}
  for kind in KINDS:
    cells = []
    for name in results:
      row = table[name][kind]
      g = f"{row['gflops']:8.1f}" if row["gflops"] else " " * 8
      cells.append(f" | {' ' * (len(name) + 9)}{100 * row['share']:5.1f}% {row['wall_ms']:8.1f} {g}")
    print(f"{kind:17s}{''.join(cells)}")
  for name, r in results.items():
    matched = sum(r["op_s"].values())
    if matched < 0.5 * (matched + r["unmatched_s"]):
      print(f"note: only {100 * matched / (matched + r['unmatched_s']):.0f}% of {name}'s traced "
            "op time matched the program's ops; the shares above cover that part")
    reduce = (f"; all-reduce {1e3 * r['op_s'][ALL_REDUCE]:.0f} thread-ms/step (mostly waiting)"
              if r["devices"] > 1 else "")
    print(f"{name}: {1e3 * r['wall_s']:.0f} ms/step wall = "
          f"{config.data.batch_size / r['wall_s']:.1f} img/s on {r['devices']} device(s){reduce}")
    print("  slowest ops (thread-ms/step): " + ", ".join(
        f"{op} ({kind}) {1e3 * s:.1f}" for op, kind, s in r["slowest"]))
    figures[name] = {"devices": r["devices"], "wall_ms": 1e3 * r["wall_s"], "kinds": table[name],
                     "all_reduce_thread_ms": 1e3 * r["op_s"][ALL_REDUCE]}
  return figures
