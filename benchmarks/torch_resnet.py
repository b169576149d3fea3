"""The CIFAR ResNet of `resjax.models.ResNet` in PyTorch, for speed comparisons.

Same network as resjax's (He et al. 2016, option A): a 3x3 stem conv with
BatchNorm and ReLU, 3 stages of n basic blocks with {16, 32, 64} filters (the
first block of stages 2 and 3 at stride 2, padding 1 on every side), option-A
shortcuts (subsample by 2, zero-pad the new channels), global average pooling
and a linear classifier; `plain=True` removes the shortcuts and nothing else.
Convs have no bias and He-normal fan_out init; BatchNorm uses eps 1e-5 and
PyTorch momentum 0.1 (= Flax momentum 0.9). Parameter counts equal resjax's
(ResNet-20: 269,722).

`train_step_fn` builds the step that `resjax.train.train_step` performs:
uint8 NHWC batch -> per-channel normalization -> random pad-4 crop and
horizontal flip -> forward, softmax cross-entropy, backward -> SGD with
momentum 0.9 and coupled L2 weight decay 1e-4, all in eager mode.

Import needs `torch` (the `bench` extra: `pip install -e '.[bench]'`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F


def _conv3x3(c_in: int, c_out: int, stride: int) -> nn.Conv2d:
  return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
  """conv-BN-ReLU-conv-BN, + option-A shortcut unless plain, then ReLU."""

  def __init__(self, c_in: int, c_out: int, stride: int, residual: bool):
    super().__init__()
    self.conv1 = _conv3x3(c_in, c_out, stride)
    self.bn1 = nn.BatchNorm2d(c_out)
    self.conv2 = _conv3x3(c_out, c_out, 1)
    self.bn2 = nn.BatchNorm2d(c_out)
    self.stride, self.extra, self.residual = stride, c_out - c_in, residual

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    if not self.residual:
      return F.relu(b)
    s = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
    if self.extra > 0:  # NCHW: pad the channel axis at its end.
      s = F.pad(s, (0, 0, 0, 0, 0, self.extra))
    return F.relu(s + b)


class ResNet(nn.Module):
  """CIFAR ResNet / plain net of depth 6n+2 (see the module docstring)."""

  def __init__(self, depth: int = 20, num_classes: int = 10, plain: bool = False,
               widths: tuple[int, ...] = (16, 32, 64)):
    super().__init__()
    if (depth - 2) % (2 * len(widths)) or depth <= 2:
      raise ValueError(f"depth={depth} is not {2 * len(widths)}n+2")
    n = (depth - 2) // (2 * len(widths))
    self.stem = _conv3x3(3, widths[0], 1)
    self.stem_bn = nn.BatchNorm2d(widths[0])
    blocks, c_in = [], widths[0]
    for s, c_out in enumerate(widths):
      for b in range(n):
        blocks.append(BasicBlock(c_in, c_out, 2 if (s > 0 and b == 0) else 1, not plain))
        c_in = c_out
    self.blocks = nn.Sequential(*blocks)
    self.classifier = nn.Linear(widths[-1], num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.blocks(F.relu(self.stem_bn(self.stem(x))))
    return self.classifier(h.mean(dim=(2, 3)))


def param_count(model: nn.Module) -> int:
  """Trainable scalars (BatchNorm running statistics excluded)."""
  return sum(p.numel() for p in model.parameters())


def augment(x_BxCxHxW: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
  """Random crop of each image zero-padded by `pad`, then a random h-flip."""
  b, _, h, w = x_BxCxHxW.shape
  on = {"device": x_BxCxHxW.device}  # `generator` lives on the same device.
  dy = torch.randint(-pad, pad + 1, (b, 1), generator=generator, **on)
  dx = torch.randint(-pad, pad + 1, (b, 1), generator=generator, **on)
  flip = torch.rand((b, 1), generator=generator, **on) < 0.5
  rows = torch.arange(h, **on)[None, :] + dy + pad                 # [B, H] in padded coords
  j = torch.arange(w, **on)[None, :]
  cols = torch.where(flip, w - 1 - j, j) + dx + pad                  # [B, W]
  padded = F.pad(x_BxCxHxW, (pad, pad, pad, pad))
  batch = torch.arange(b, **on)[:, None, None]
  out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
  return out.permute(0, 3, 1, 2)


def train_step_fn(model: nn.Module, *, mean: tuple[float, ...], std: tuple[float, ...],
                  lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-4,
                  channels_last: bool = False, seed: int = 0, device: str = "cpu") -> Callable:
  """`step(inputs_uint8_BxHxWxC, labels_B) -> loss` doing one eager SGD step.

  The model moves to `device`; the step's inputs must be there already.
  """
  model.train()
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  model.to(device=device, memory_format=memory_format)
  opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                        weight_decay=weight_decay)
  mean_t = torch.tensor(mean, dtype=torch.float32, device=device)[None, :, None, None]
  std_t = torch.tensor(std, dtype=torch.float32, device=device)[None, :, None, None]
  generator = torch.Generator(device=device).manual_seed(seed)

  def step(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    x = (inputs.permute(0, 3, 1, 2).float() - mean_t) / std_t
    x = augment(x, generator).contiguous(memory_format=memory_format)
    loss = F.cross_entropy(model(x), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()

  return step
