"""The MLP grid of `benchmarks.grid` in PyTorch: one net after another, or vmapped.

Same nets as resjax's `mlp` family without shortcuts or norm: a Dense layer
into `width` units, depth - 1 more Dense layers each after a ReLU, a ReLU and
a linear classifier; softmax cross-entropy; Adam (b1 0.9, b2 0.999, eps 1e-8)
at a constant rate, with PyTorch's fused CPU kernel (`fused=True`: one call per
step for all of a net's tensors, against one loop over them by default). PyTorch's default initialization, not resjax's: the
benchmark times the same work, it does not compare the trained numbers.

  sequential  each net trained alone for all its steps, eager mode.
  vmap        `torch.func.functional_call` vmapped over the seeds of each
              (width, depth), the nets' parameters stacked, one Adam over the
              stacks (Adam is elementwise, so each net gets its own update).

`python -m benchmarks.torch_mlp JOB.npz` trains a grid one net after another as a
whole process (what `python -m launch.bench grid` times against `launch.train`),
on one intra-op thread (`THREADS`). Both settings are PyTorch's fastest measured
for these nets (docs/performance.md, "The PyTorch competitor's settings").
Import needs `torch` (the `bench` extra: `pip install -e '.[bench]'`).
"""
from __future__ import annotations

import sys
import time
from typing import Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


# Intra-op threads of the whole-process competitor: these nets are too small
# for a second thread to pay (docs/performance.md).
THREADS = 1


def adam(params, lr: float) -> torch.optim.Optimizer:
  """Adam as resjax's grid runs it, in PyTorch's fused CPU kernel."""
  return torch.optim.Adam(params, lr=lr, fused=True)


def mlp(in_dim: int, width: int, depth: int, num_classes: int) -> nn.Module:
  """Dense -> (ReLU -> Dense) x (depth - 1) -> ReLU -> classifier."""
  layers: list[nn.Module] = [nn.Linear(in_dim, width)]
  for _ in range(depth - 1):
    layers += [nn.ReLU(), nn.Linear(width, width)]
  layers += [nn.ReLU(), nn.Linear(width, num_classes)]
  return nn.Sequential(*layers)


def batches(x: np.ndarray, y: np.ndarray, batch: int, steps: int, seed: int = 0):
  """`steps` random batches (the same for every net), as tensors."""
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(y), size=(steps, batch))
  xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
  return [(xt[i], yt[i]) for i in torch.from_numpy(idx)]


def train_sequential(nets: Sequence[tuple[int, int, int]], data, lr: float, in_dim: int,
                     num_classes: int) -> list[float]:
  """Trains each (seed, width, depth) alone; returns the final losses."""
  losses = []
  for seed, width, depth in nets:
    torch.manual_seed(seed)
    model = mlp(in_dim, width, depth, num_classes)
    opt = adam(model.parameters(), lr)
    for xb, yb in data:
      opt.zero_grad(set_to_none=True)
      loss = F.cross_entropy(model(xb), yb)
      loss.backward()
      opt.step()
    losses.append(float(loss.detach()))
  return losses


def train_vmapped(nets: Sequence[tuple[int, int, int]], data, lr: float, in_dim: int,
                  num_classes: int) -> list[float]:
  """Trains the nets of each (width, depth) together under `torch.func.vmap`."""
  groups: dict[tuple[int, int], list[int]] = {}
  for seed, width, depth in nets:
    groups.setdefault((width, depth), []).append(seed)
  losses = []
  for (width, depth), seeds in groups.items():
    models = []
    for seed in seeds:
      torch.manual_seed(seed)
      models.append(mlp(in_dim, width, depth, num_classes))
    params, buffers = torch.func.stack_module_state(models)
    base = mlp(in_dim, width, depth, num_classes).to("meta")
    leaves = [p.detach().requires_grad_() for p in params.values()]
    names = list(params)

    def forward(p, b, xb, base=base, names=names):
      return torch.func.functional_call(base, (dict(zip(names, p)), b), (xb,))

    batched = torch.func.vmap(forward, in_dims=(0, 0, None))
    opt = adam(leaves, lr)
    for xb, yb in data:
      opt.zero_grad(set_to_none=True)
      logits = batched(leaves, buffers, xb)  # [nets, batch, classes]
      per_net = torch.stack([F.cross_entropy(l, yb) for l in logits])
      per_net.sum().backward()  # Each net's loss depends on its own slice only.
      opt.step()
    losses += per_net.detach().tolist()
  return losses


def main(argv: Sequence[str]) -> None:
  """`python -m benchmarks.torch_mlp JOB.npz`: JOB's nets one after another.

  JOB holds x, y (the training split), nets [(seed, width, depth)], steps,
  batch and lr, written by `benchmarks.grid`.
  """
  start = time.perf_counter()
  torch.set_num_threads(THREADS)
  with np.load(argv[1]) as f:
    job = {k: f[k] for k in f.files}
  x, y, nets = job["x"], job["y"], [tuple(map(int, n)) for n in job["nets"]]
  train_sequential(nets, batches(x, y, int(job["batch"]), int(job["steps"])), float(job["lr"]),
                   x.shape[1], int(y.max()) + 1)
  print(f"pytorch sequential: {len(nets)} nets x {int(job['steps'])} steps in "
        f"{time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
  main(sys.argv)
