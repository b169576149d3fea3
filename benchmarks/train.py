"""Training throughput: resjax's default path vs PyTorch CPU eager, same run.

  python -m launch.bench train [--quick] [--out=FILE.json]

For ResNet-20 / plain-20 / ResNet-56 / plain-56 at batch 128 on 32x32x3
inputs, in one process:

  resjax       `train.create_train_state` + `train.jit_steps` on
               `train.data_mesh` (what `launch.train` runs: `launch.platform`
               splits the CPU into host devices and `data_mesh` picks how
               many the model keeps busy), one device-resident uint8 batch,
               augmentation and normalization inside the step, with the
               config's `model.conv_impl`; beside it the same step with the
               other convolution ('resjax_xla' or 'resjax_onednn'); for
               ResNet-20 also both on one device ('_1dev') and, with oneDNN,
               one OpenMP thread per oneDNN call ('_1t': host devices x
               threads = cores);
  torch        `torch_resnet.ResNet` with the same step in eager mode
               (normalize, pad-4 crop + flip, forward, backward, SGD momentum
               0.9 + L2 1e-4): NCHW ('torch') and channels-last ('torch_cl')
               with one thread per core, channels-last on one thread
               ('torch_cl_1t').

Both sides are timed in alternating rounds, so load from other processes hits
both alike; a figure is the median over the timed steps (compilation and
warm-up excluded). `img/cpu-s` divides images by the process CPU seconds the
steps used (all threads), which depends less on how many cores other jobs
leave free. GFLOP/s counts 6 x the forward multiply-adds per image (a forward
and two backward convolutions per layer); the matmul rate is the float32
2048 x 2048 product (jnp.dot under jit, torch.mm), measured before and after.
--quick runs a two-stage ResNet-6 (widths 8, 16) at batch 32 and a 1024^2
matmul, for a smoke test; its figures say nothing about speed.

End to end: `train.train_and_evaluate` (the loop `launch.train` runs: host
batches from `data.train_batch`, prefetch, transfer, logging, a final
evaluation and checkpoint) on synthetic CIFAR-sized uint8 data, against the
bare step on a device-resident batch measured just before and after it.
"""
from __future__ import annotations

import contextlib
import io
import os
import statistics
import tempfile
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import configs.cifar10
from resjax import data
from resjax import sharding
from resjax import train
from resjax.kernels import onednn

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
# Per-channel statistics of CIFAR-10's training images (0..255 units).
MEAN = (125.3, 123.0, 113.9)
STD = (63.0, 62.1, 66.7)


def resnet_macs(depth: int, widths=(16, 32, 64), image: int = 32, channels: int = 3,
                num_classes: int = NUM_CLASSES) -> int:
  """Multiply-adds of one forward pass of the CIFAR ResNet (ResNet-20: 40.6M)."""
  n = (depth - 2) // (2 * len(widths))
  hw, c = image, widths[0]
  macs = hw * hw * 9 * channels * c
  for s, w in enumerate(widths):
    for b in range(n):
      hw = hw // 2 if (s > 0 and b == 0) else hw
      macs += hw * hw * 9 * (c * w + w * w)
      c = w
  return macs + c * num_classes


# ----------------------------------------------------------------------------
# Timing.


class Timer:
  """Wall and process-CPU seconds of repeated calls of `fn` (which must block)."""

  def __init__(self, name: str, fn: Callable[[], Any]):
    self.name, self.fn = name, fn
    self.wall: list[float] = []
    self.cpu: list[float] = []

  def run(self, steps: int) -> None:
    for _ in range(steps):
      wall, cpu = time.perf_counter(), time.process_time()
      self.fn()
      self.wall.append(time.perf_counter() - wall)
      self.cpu.append(time.process_time() - cpu)

  def per_sec(self, items: float) -> float:
    return items / statistics.median(self.wall)

  def per_cpu_sec(self, items: float) -> float:
    return items / statistics.median(self.cpu)


def interleave(timers: list[Timer], rounds: int, steps: int) -> None:
  """`rounds` times: `steps` calls of each timer in turn."""
  for _ in range(rounds):
    for t in timers:
      t.run(steps)


def matmul_flops(size: int = 2048, repeats: int = 5,
                 torch_device: str = "cpu") -> dict[str, float]:
  """float32 GFLOP/s of a size x size matmul: jnp.dot (jit) and torch.mm (if importable)."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), np.float32))
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, a))
  t = Timer("jnp", lambda: jax.block_until_ready(dot(a, a)))
  t.run(repeats)
  out = {"jnp": t.per_sec(2 * size ** 3) / 1e9}
  torch = _torch()
  if torch is not None:
    b = torch.from_numpy(np.array(a)).to(torch_device)
    sync = torch.cuda.synchronize if torch_device.startswith("cuda") else (lambda: None)
    torch.mm(b, b)
    sync()
    t = Timer("torch", lambda: (torch.mm(b, b), sync()))
    t.run(repeats)
    out["torch"] = t.per_sec(2 * size ** 3) / 1e9
  return out


def _torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return torch


# ----------------------------------------------------------------------------
# The two sides.


def _config(depth: int, plain: bool, batch: int, widths,
            conv_impl: str | None = None) -> ml_collections.ConfigDict:
  """The cifar10 ResNet config at this size; `conv_impl` None keeps the config's."""
  config = configs.cifar10.get_config("resnet20")
  config.model.depth, config.model.plain, config.model.widths = depth, plain, tuple(widths)
  config.data.batch_size = batch
  if conv_impl is not None:
    config.model.conv_impl = conv_impl
  return config


def _threads(step: Callable[[], None], n: int) -> Callable[[], None]:
  """`step` with every oneDNN call on `n` OpenMP threads (0: OpenMP's default)."""
  def run():
    onednn.set_threads(n)
    try:
      step()
    finally:
      onednn.set_threads(0)
  return run


def _host_batch(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {"inputs": rng.integers(0, 256, (batch, *IMAGE_SHAPE), dtype=np.uint8),
          "labels": rng.integers(0, NUM_CLASSES, (batch,), dtype=np.int32)}


def setup(config: ml_collections.ConfigDict, devices=None) -> tuple[Any, Callable, Any, Any]:
  """(state, jitted train step, device-resident uint8 batch, mesh) for CIFAR-sized inputs.

  `devices`: the mesh (default: `train.data_mesh`, as `launch.train` uses).
  """
  mesh = (train.data_mesh(config, IMAGE_SHAPE, NUM_CLASSES) if devices is None
          else sharding.make_mesh(devices))
  state = train.create_train_state(config, mesh, IMAGE_SHAPE, NUM_CLASSES, mean=MEAN, std=STD)
  p_train, _ = train.jit_steps(state, mesh)
  batch = sharding.to_global(_host_batch(config.data.batch_size), mesh)
  return state, p_train, batch, mesh


def resjax_step(config: ml_collections.ConfigDict,
                devices=None) -> tuple[Callable[[], None], float, int]:
  """(one blocking train step on a device-resident batch, seconds to compile, devices).

  `devices`: as in `setup`.
  """
  start = time.perf_counter()
  state, p_train, batch, mesh = setup(config, devices)
  box = {"state": state}

  def step():
    box["state"], m = p_train(box["state"], batch)
    jax.block_until_ready(m["loss"])

  step()
  return step, time.perf_counter() - start, sharding.num_shards(mesh)


def torch_step(depth: int, plain: bool, batch: int, widths, channels_last: bool,
               threads: int, device: str = "cpu") -> Callable[[], None]:
  """One eager PyTorch train step of the same network on one fixed batch on `device`."""
  torch = _torch()
  from benchmarks import torch_resnet  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = torch_resnet.ResNet(depth, NUM_CLASSES, plain=plain, widths=tuple(widths))
  run = torch_resnet.train_step_fn(model, mean=MEAN, std=STD, channels_last=channels_last,
                                   device=device)
  host = _host_batch(batch)
  inputs = torch.from_numpy(host["inputs"]).to(device)
  labels = torch.from_numpy(host["labels"]).long().to(device)
  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

  def step():
    torch.set_num_threads(threads)
    run(inputs, labels)
    sync()

  step()
  step()
  return step


# ----------------------------------------------------------------------------
# End to end.


def _synthetic_dataset(num_train: int, num_test: int) -> data.Dataset:
  rng = np.random.default_rng(1)
  split = lambda n: data.Split(rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8),
                               rng.integers(0, NUM_CLASSES, (n,), dtype=np.int32))
  return data.Dataset(name="synthetic", train=split(num_train), test=split(num_test),
                      num_classes=NUM_CLASSES, mean=np.asarray(MEAN, np.float32),
                      std=np.asarray(STD, np.float32))


def end_to_end(config: ml_collections.ConfigDict, steps: int) -> dict[str, float]:
  """Steps/s of `train.train_and_evaluate` on synthetic CIFAR-sized data.

  The rate is the loop's own `train/step_time` over its last log window
  (the compiling first step, the evaluation and the checkpoint excluded).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  config.train.steps, config.train.log_every = steps, max(1, steps // 2)
  config.train.eval_every, config.train.checkpoint_every = 0, 0
  batch = config.data.batch_size
  ds = _synthetic_dataset(num_train=8 * batch, num_test=batch)
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  try:
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
      result = train.train_and_evaluate(config, workdir, dataset=ds)
  finally:
    logging.set_verbosity(verbosity)
  return {"steps_per_sec": 1.0 / result["train/step_time"],
          "images_per_sec": result["train/images_per_sec"]}


# ----------------------------------------------------------------------------
# The benchmark.

FULL_MODELS = (("resnet20", 20, False), ("plain20", 20, True), ("resnet56", 56, False),
               ("plain56", 56, True))
QUICK_MODELS = (("resnet6", 6, False),)  # Two stages of widths QUICK_WIDTHS.
QUICK_WIDTHS = (8, 16)


def run(quick: bool = False) -> dict[str, Any]:
  """Prints the comparison table; returns its figures."""
  batch, widths = (32, QUICK_WIDTHS) if quick else (128, (16, 32, 64))
  rounds, steps = (1, 2) if quick else (4, 3)
  e2e_steps = 4 if quick else 24
  models = QUICK_MODELS if quick else FULL_MODELS
  torch = _torch()
  threads = torch.get_num_threads() if torch else 0
  # (name, channels_last, threads): PyTorch as it comes (NCHW, one thread per
  # core), channels-last, and channels-last on one thread (OpenMP's barriers
  # lose much when other jobs share the cores).
  variants = (("torch", False, threads), ("torch_cl", True, threads),
              ("torch_cl_1t", True, 1))
  device = "cpu"
  if torch is not None and jax.devices()[0].platform == "gpu" and torch.cuda.is_available():
    # On a GPU, PyTorch on the same card: NCHW and channels-last.
    device, variants = "cuda", (("torch_cuda", False, threads), ("torch_cuda_cl", True, threads))
    rounds, steps = (1, 2) if quick else (4, 20)
  variants = () if torch is None else variants[:1] if quick else variants
  torch_desc = f"torch {torch.__version__}, {threads} threads" if torch else "torch not installed"
  print(f"training benchmark: batch {batch} of 32x32x3, resjax on up to {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), {torch_desc}; {os.cpu_count()} CPUs, "
        f"load average {load_average()}", flush=True)
  if jax.devices()[0].platform == "cpu" and jax.device_count() == 1 and (os.cpu_count() or 1) > 1:
    print("note: the process has one host device, as launch.train starts a single run whose "
          "model convolves with oneDNN (launch.platform.use_one_device); the XLA-convolution "
          "column runs on it too, without the split launch.train would give that model",
          flush=True)

  impl = _config(20, False, batch, widths).model.get("conv_impl", "xla")
  on_cpu = jax.devices()[0].platform == "cpu"
  # The other convolution side by side (on the CPU, where oneDNN is built).
  other = {"onednn": "xla", "xla": "onednn"}[impl] if on_cpu and onednn.available() else None
  print(f"resjax convolutions: {impl} (the config's)"
        + (f", {other} beside it" if other else "")
        + (f"; oneDNN {onednn.version()}" if onednn.available() else
           f"; oneDNN not available: {onednn.unavailable_reason()}"), flush=True)
  mm_size = 1024 if quick else 2048
  mm_before = matmul_flops(mm_size, torch_device=device)
  figures: dict[str, Any] = {"batch": batch, "conv_impl": impl, "other_conv_impl": other,
                             "models": {}}
  for name, depth, plain in models:
    config = _config(depth, plain, batch, widths)
    step, compile_s, mesh_size = resjax_step(config)
    timers = [Timer("resjax", step)]
    first = name == models[0][0]
    if first and mesh_size > 1 and not quick:
      # The same step on one device: what the host-device split buys.
      timers.append(Timer("resjax_1dev", resjax_step(config, jax.devices()[:1])[0]))
    if first and mesh_size > 1 and not quick and impl == "onednn" and on_cpu:
      timers.append(Timer("resjax_1t", _threads(step, 1)))
    if first and mesh_size == 1 and jax.device_count() > 1 and on_cpu and not quick:
      # The same step split over every host device: what one device buys.
      timers.append(Timer("resjax_alldev", resjax_step(config, jax.devices())[0]))
    if other:
      other_config = _config(depth, plain, batch, widths, other)
      other_step, _, other_devices = resjax_step(other_config)
      timers.append(Timer(f"resjax_{other}", other_step))
      if first and mesh_size > 1 and not quick:
        timers.append(Timer(f"resjax_{other}_1dev",
                            resjax_step(other_config, jax.devices()[:1])[0]))
    for variant, cl, n in variants:
      timers.append(Timer(variant, torch_step(depth, plain, batch, widths, cl, n, device)))
    interleave(timers, rounds, steps)
    flops = 6 * resnet_macs(depth, widths)
    row = {"compile_s": compile_s, "flops_per_image": flops, "load": load_average(),
           "devices": mesh_size, "conv_impl": impl}
    if other:
      row["other_devices"] = other_devices
    for t in timers:
      row[f"{t.name}_img_s"] = t.per_sec(batch)
      row[f"{t.name}_img_cpu_s"] = t.per_cpu_sec(batch)
    figures["models"][name] = row
    print(f"  {name}: resjax {row['resjax_img_s']:.1f} img/s" + "".join(
        f", {t.name} {row[f'{t.name}_img_s']:.1f}" for t in timers[1:])
        + f" (compile {compile_s:.0f} s, load {row['load']})", flush=True)
    if name == models[0][0]:
      reference = timers[0]
      e2e_config = config
  mm_after = matmul_flops(mm_size, torch_device=device)
  mm = {k: (mm_before[k] + mm_after[k]) / 2 for k in mm_before}
  figures["matmul_gflops"] = mm
  figures["matmul_size"] = mm_size
  figures["matmul_gflops_before_after"] = {"before": mm_before, "after": mm_after}

  # End to end vs the bare step (the first model, measured again around it).
  bare = Timer("bare", reference.fn)
  bare.run(2 * steps)
  e2e = end_to_end(e2e_config, e2e_steps)
  bare.run(2 * steps)
  bare_rate = bare.per_sec(1.0)
  figures["end_to_end"] = {"model": models[0][0], "loop_steps_per_sec": e2e["steps_per_sec"],
                           "bare_steps_per_sec": bare_rate,
                           "ratio": e2e["steps_per_sec"] / bare_rate}
  _print_table(figures, [v[0] for v in variants], impl, other)
  return figures


def load_average() -> str:
  """The 1, 5 and 15 minute load averages, one decimal each."""
  return " ".join(f"{v:.1f}" for v in os.getloadavg())


def _print_table(figures: dict[str, Any], torch_names: list[str], impl: str,
                 other: str | None) -> None:
  mm = figures["matmul_gflops"]
  print()
  print(f"{'model':9s} {'implementation':26s} {'img/s':>7s} {'img/cpu-s':>9s} "
        f"{'GFLOP/s':>8s} {'% of jnp matmul':>15s}")
  mine = ["resjax", "resjax_1dev", "resjax_1t", "resjax_alldev"]
  if other:
    mine += [f"resjax_{other}", f"resjax_{other}_1dev"]
  for name, row in figures["models"].items():
    dev = row["devices"]
    labels = {"resjax": f"resjax {impl} ({dev} dev)", "resjax_1dev": f"resjax {impl} (1 dev)",
              "resjax_1t": f"resjax {impl} ({dev} dev, 1 thr)",
              "resjax_alldev": f"resjax {impl} ({jax.device_count()} dev)",
              f"resjax_{other}": f"resjax {other} ({row.get('other_devices', dev)} dev)",
              f"resjax_{other}_1dev": f"resjax {other} (1 dev)"}
    for key in mine + torch_names:
      if f"{key}_img_s" not in row:
        continue
      gflops = row[f"{key}_img_s"] * row["flops_per_image"] / 1e9
      row[f"{key}_gflops"] = gflops
      print(f"{name:9s} {labels.get(key, key):26s} {row[f'{key}_img_s']:7.1f} "
            f"{row[f'{key}_img_cpu_s']:9.1f} {gflops:8.1f} {100 * gflops / mm['jnp']:14.1f}%")
    row["fraction_of_matmul"] = row["resjax_gflops"] / mm["jnp"]
    if torch_names:
      best = max(torch_names, key=lambda n: row[n + "_img_s"])
      best_cpu = max(torch_names, key=lambda n: row[n + "_img_cpu_s"])
      row["ratio_vs_torch"] = row["resjax_img_s"] / row[best + "_img_s"]
      row["cpu_ratio_vs_torch"] = row["resjax_img_cpu_s"] / row[best_cpu + "_img_cpu_s"]
      if other:
        row[f"{other}_ratio_vs_torch"] = row[f"resjax_{other}_img_s"] / row[best + "_img_s"]
      print(f"{'':9s} resjax / fastest torch: {row['ratio_vs_torch']:.2f}x in img/s "
            f"(vs {best}), {row['cpu_ratio_vs_torch']:.2f}x in img/cpu-s (vs {best_cpu}); "
            + (f"with {other} convolutions {row[f'{other}_ratio_vs_torch']:.2f}x; " if other
               else "") + f"load {row['load']}")
  torch_mm = f", torch.mm {mm['torch']:.1f}" if "torch" in mm else ""
  print(f"float32 {figures['matmul_size']}^2 matmul GFLOP/s: jnp.dot {mm['jnp']:.1f}{torch_mm} "
        "(mean of before and after); GFLOP/s above = 6 x forward MACs x img/s")
  print("torch: NCHW, torch_cl: channels-last, _1t: one thread (else one per core), "
        "_cuda: on the GPU")
  e2e = figures["end_to_end"]
  print(f"end to end ({e2e['model']}): train_and_evaluate loop {e2e['loop_steps_per_sec']:.3f} "
        f"steps/s vs bare step {e2e['bare_steps_per_sec']:.3f} steps/s = "
        f"{100 * e2e['ratio']:.0f}% (target >= 90%); load average {load_average()}")
