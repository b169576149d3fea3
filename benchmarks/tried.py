"""Speed-ups tried on the ResNet-20 train step (batch 128), measured side by side.

  python -m launch.bench tried [--quick]

In one process, alternating rounds, on 1 device and on the default mesh:

  base      the step `launch.train` runs;
  barrier   `lax.optimization_barrier` on every convolution's input;
  cond      every convolution's input routed through an identity `lax.cond`,
            which makes XLA keep it in memory instead of recomputing it
            inside the transposes that feed the weight gradients.

Then XLA CPU flags, each in its own process (flags are read at start-up) on
one device, between two runs of the unchanged step; and the time of a bare
transpose of a stage-1 activation (the layout change a weight gradient needs)
for comparison with the fused transposes of `python -m launch.bench profile`.
--quick: ResNet-6 at batch 32, 1 device, the first flag, one unchanged run before it.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from resjax.models import layers as models  # _conv is wrapped there
from benchmarks import train as bench_train

FLAGS = ("--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_custom_call=true",
         "--xla_cpu_use_xnnpack=true", "--xla_cpu_experimental_ynn_fusion_type=",
         "--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution,"
         "eltwise,reduce", "--xla_cpu_experimental_enable_tiling_propagation=true",
         "--xla_cpu_use_fusion_emitters=false",
         "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion")
_CHILD = "RESJAX_TRIED_CHILD"


def _identity_cond(x: jax.Array) -> jax.Array:
  flat = x.reshape(-1)
  return lax.cond(flat[0] == flat[0], lambda v: v, lambda v: v * 1.0, x)


@contextlib.contextmanager
def _conv_inputs(wrap) -> Iterator[None]:
  """While active, models built (and traced) pass every conv input through `wrap`."""
  original = models._conv  # pylint: disable=protected-access

  def patched(*args, **kwargs):
    conv = original(*args, **kwargs)
    return lambda x: conv(wrap(x))

  models._conv = patched  # pylint: disable=protected-access
  try:
    yield
  finally:
    models._conv = original  # pylint: disable=protected-access


def _config(quick: bool):
  if quick:
    return bench_train._config(6, False, 32, bench_train.QUICK_WIDTHS)  # pylint: disable=protected-access
  return bench_train._config(20, False, 128, (16, 32, 64))  # pylint: disable=protected-access


def _child_ms(quick: bool) -> float:
  """Median ms per step of the unchanged step on one device (run in a subprocess)."""
  step, _, _ = bench_train.resjax_step(_config(quick), jax.devices()[:1])
  timer = bench_train.Timer("step", step)
  timer.run(2 if quick else 6)
  return 1e3 * statistics.median(timer.wall)


def _flag_ms(flag: str, quick: bool) -> float:
  env = dict(os.environ, **{_CHILD: "1"})
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benchmarks/ is not installed.
  out = subprocess.run([sys.executable, "-m", "benchmarks.tried"] + (["quick"] if quick else []),
                       env=env, cwd=root, check=True, capture_output=True, text=True).stdout
  return float(out.split()[-1])


def _bare_transpose_ms(batch: int, width: int) -> float:
  x = jnp.asarray(np.random.default_rng(0).random((batch, 32, 32, width), np.float32))
  fn = jax.jit(lambda v: jnp.transpose(v, (3, 1, 2, 0)) + 0)
  jax.block_until_ready(fn(x))
  timer = bench_train.Timer("transpose", lambda: jax.block_until_ready(fn(x)))
  timer.run(20)
  return 1e3 * statistics.median(timer.wall)


def run(quick: bool = False) -> dict[str, Any]:
  """Prints each variant's ms per step and its speed-up over the base step."""
  config = _config(quick)
  wraps = {"base": None, "barrier": lax.optimization_barrier, "cond": _identity_cond}
  figures: dict[str, Any] = {"variants": {}, "flags": {}}
  meshes = (("1 device", jax.devices()[:1]), ("default mesh", None))
  for label, devices in meshes[:1] if quick else meshes:
    timers = []
    for name, wrap in wraps.items():
      with _conv_inputs(wrap) if wrap else contextlib.nullcontext():
        step, _, n = bench_train.resjax_step(config, devices)
      timers.append(bench_train.Timer(name, step))
    bench_train.interleave(timers, 1 if quick else 4, 2 if quick else 3)
    ms = {t.name: 1e3 * statistics.median(t.wall) for t in timers}
    figures["variants"][label] = {"devices": n, "ms": ms}
    print(f"{label} ({n} dev): " + ", ".join(
        f"{k} {v:.0f} ms ({ms['base'] / v:.2f}x)" for k, v in ms.items()), flush=True)
  flags = FLAGS[:1] if quick else FLAGS
  before = _flag_ms("", quick)
  results = {flag: _flag_ms(flag, quick) for flag in flags}
  base = before if quick else (before + _flag_ms("", quick)) / 2
  figures["flags"] = {"base_ms": base, "ms": results}
  print(f"XLA flags, 1 device, one process each: base {base:.0f} ms "
        f"({'before' if quick else 'mean of before and after'})")
  for flag, v in results.items():
    print(f"  {flag}: {v:.0f} ms ({base / v:.2f}x)", flush=True)
  batch, width = config.data.batch_size, config.model.widths[0]
  figures["bare_transpose_ms"] = _bare_transpose_ms(batch, width)
  print(f"bare transpose of a stage-1 activation [{batch},32,32,{width}] -> "
        f"[{width},32,32,{batch}]: {figures['bare_transpose_ms']:.1f} ms")
  return figures


if __name__ == "__main__" and os.environ.get(_CHILD):
  print(f"{_child_ms(quick='quick' in sys.argv[1:]):.3f}")
