"""The training benchmark: the PyTorch twin equals resjax's ResNet; --quick runs."""
import re

import jax
import numpy as np
import pytest

from resjax import models
from benchmarks import train as bench_train
from resjax.kernels import onednn

torch = pytest.importorskip("torch")
from benchmarks import torch_resnet  # noqa: E402  (needs torch)


def test_forward_multiply_adds_match_the_paper_figures():
  assert bench_train.resnet_macs(20) == pytest.approx(40.6e6, rel=2e-3)
  assert bench_train.resnet_macs(56) == pytest.approx(125.5e6, rel=2e-3)
  assert bench_train.resnet_macs(110) == pytest.approx(252.9e6, rel=2e-3)


@pytest.mark.parametrize("depth,plain", [(20, False), (20, True), (56, False)])
def test_torch_twin_has_resjax_parameter_count(depth, plain):
  flax_model = models.build("resnet", 10, depth=depth, plain=plain)
  shapes = jax.eval_shape(flax_model.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  assert torch_resnet.param_count(torch_resnet.ResNet(depth, plain=plain)) == \
      models.param_count(shapes["params"])


def _copy_weights(variables, model):
  """resjax variables -> the torch twin's state dict (HWIO -> OIHW, etc.)."""
  params, stats = variables["params"], variables["batch_stats"]
  state = {}

  def conv(prefix, p):
    state[f"{prefix}.weight"] = torch.from_numpy(np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1)).copy())

  def bn(prefix, p, s):
    state[f"{prefix}.weight"] = torch.from_numpy(np.asarray(p["scale"]))
    state[f"{prefix}.bias"] = torch.from_numpy(np.asarray(p["bias"]))
    state[f"{prefix}.running_mean"] = torch.from_numpy(np.asarray(s["mean"]))
    state[f"{prefix}.running_var"] = torch.from_numpy(np.asarray(s["var"]))
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(0)

  conv("stem", params["stem_conv"])
  bn("stem_bn", params["stem_bn"], stats["stem_bn"])
  names = sorted((k for k in params if k.startswith("stage")),
                 key=lambda k: tuple(int(t) for t in k.replace("stage", "").split("_block")))
  for i, name in enumerate(names):
    for part in ("conv1", "conv2"):
      conv(f"blocks.{i}.{part}", params[name][part])
    for part in ("bn1", "bn2"):
      bn(f"blocks.{i}.{part}", params[name][part], stats[name][part])
  state["classifier.weight"] = torch.from_numpy(np.asarray(params["classifier"]["kernel"]).T.copy())
  state["classifier.bias"] = torch.from_numpy(np.asarray(params["classifier"]["bias"]))
  model.load_state_dict(state)


@pytest.mark.parametrize("plain", [False, True])
def test_torch_twin_computes_the_same_function(plain):
  kwargs = dict(depth=8, widths=(4, 8, 16), plain=plain)
  flax_model = models.build("resnet", 5, **kwargs)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 8, 8, 3)).astype(np.float32)
  # Random weights and non-trivial BatchNorm statistics, so every term matters
  # (drawn with NumPy: compiling JAX's initializers is slow on the CPU).
  shapes = jax.eval_shape(flax_model.init, jax.random.key(1), x)
  variables = jax.tree.map(lambda v: rng.uniform(0.2, 1.0, v.shape).astype(np.float32)
                           * rng.choice([-1, 1], v.shape), shapes)
  variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])
  model = torch_resnet.ResNet(num_classes=5, **kwargs)
  _copy_weights(variables, model)
  model.eval()
  with torch.no_grad():
    got = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  want = np.asarray(flax_model.apply(variables, x, train=False))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_torch_augment_shifts_with_zero_fill_and_flips():
  x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4) + 1
  out = torch_resnet.augment(x, torch.Generator().manual_seed(0), pad=1)
  assert out.shape == x.shape
  for b in range(2):  # Each output is a shifted, maybe mirrored copy of its input.
    img, o = x[b, 0], out[b, 0]
    ok = False
    for flip in (False, True):
      src = img.flip(-1) if flip else img
      padded = torch.nn.functional.pad(src, (1, 1, 1, 1))
      for dy in range(3):
        for dx in range(3):
          ok |= bool(torch.equal(padded[dy:dy + 4, dx:dx + 4], o))
    assert ok


def test_quick_benchmark_runs_both_sides_and_the_loop(capsys):
  figures = bench_train.run(quick=True)
  row = figures["models"]["resnet6"]
  for key in ("resjax_img_s", "resjax_img_cpu_s", "torch_img_s", "ratio_vs_torch",
              "fraction_of_matmul", "resjax_gflops"):
    assert np.isfinite(row[key]) and row[key] > 0, key
  assert figures["matmul_gflops"]["jnp"] > 0 and figures["matmul_gflops"]["torch"] > 0
  e2e = figures["end_to_end"]
  assert e2e["loop_steps_per_sec"] > 0 and 0 < e2e["ratio"] < 5
  out = capsys.readouterr().out
  impl, other = figures["conv_impl"], figures["other_conv_impl"]
  assert re.search(rf"resjax {impl} \(\d+ dev\)", out) and "end to end" in out
  assert "% of jnp matmul" in out
  if onednn.available():  # Both convolutions side by side.
    assert {impl, other} == {"xla", "onednn"}
    assert np.isfinite(row[f"{other}_ratio_vs_torch"]) and row[f"resjax_{other}_img_s"] > 0
    assert re.search(rf"resjax {other} \(\d+ dev\)", out)
