"""The optimizer and learning-rate schedule, as functions of the config's `opt` group.

Weight decay is coupled L2: wd * w is added to the gradient before momentum
(SGD as in Caffe and PyTorch, which He et al. 2016 used). By default it
applies to every parameter, BatchNorm scales and offsets included, since the
paper states 1e-4 without exceptions; `opt.decay_params='kernels'` restricts
it to conv/dense kernels. 'adamw' uses optax's decoupled decay instead.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resjax import errors
from resjax import models
from resjax import schema

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "piecewise", "cosine")
DECAY_PARAMS = ("all", "kernels")
# Scalars of `opt` that are arrays in the state (`hyperparams`), so a grid may
# vary them (resjax/grid) and nets with other values share one program.
OPT_AXES = ("lr", "momentum", "weight_decay", "decay", "warmup_lr")

# The fields of the config's `opt` group, each with its rule; a value must be
# allowed even where the optimizer or schedule does not read it (`unused`).
RULES = {
    "name": schema.Choice(OPTIMIZERS),
    "schedule": schema.Choice(SCHEDULES),
    "lr": schema.Float(0, low_open=True),
    "momentum": schema.Float(0, 1, high_open=True),
    "nesterov": schema.Bool(optional=True),
    "weight_decay": schema.Float(0),
    "decay_params": schema.Choice(DECAY_PARAMS, optional=True),
    "boundaries": schema.Rule("ints", low=1, increasing=True,
                              fix="use increasing positive step numbers"),
    "decay": schema.Float(0, 1, low_open=True),
    "warmup_steps": schema.Int(0, fix="use an integer >= 0 (0 = no warm-up)"),
    "warmup_lr": schema.Float(0, low_open=True),
}


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """A run's optimizer and schedule as a function of its scalar hyper-parameters.

  `opt` holds the config's `opt` group (hashable); calling it with
  `hyperparams(opt)` (arrays, possibly one net's slice of a grid) gives
  (optax transformation, schedule). The transformation's state has the same
  structure whatever the values, so nets with other rates share one program.
  """
  opt: tuple
  steps: int

  @classmethod
  def of(cls, opt: Mapping[str, Any], steps: int) -> "Optimizer":
    return cls(tuple(sorted((k, models.as_tuple(v)) for k, v in dict(opt).items())),
               int(steps))

  def __call__(self, hparams: Mapping[str, Any]
               ) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
    opt = dict(self.opt)
    opt.update(hparams)
    schedule = make_schedule(opt, self.steps)
    return make_optimizer(opt, schedule), schedule


def unused(opt: Mapping[str, Any]) -> dict[str, str]:
  """Fields of `opt` that its optimizer and schedule do not read: field -> why.

  What `make_optimizer` and `make_schedule` read: momentum and nesterov only for
  'sgd'; boundaries and decay only for the 'piecewise' schedule; warmup_lr only
  with warmup_steps > 0.
  """
  out = {}
  name, schedule = opt.get("name"), opt.get("schedule")
  if name in OPTIMIZERS and name != "sgd":
    out.update(momentum=f"opt.name={name!r} has no momentum (only sgd reads it)",
               nesterov=f"opt.name={name!r} has no Nesterov momentum (only sgd reads it)")
  if schedule in SCHEDULES and schedule != "piecewise":
    out.update(boundaries=f"opt.schedule={schedule!r} has no boundaries (only piecewise "
                          "reads them)",
               decay=f"opt.schedule={schedule!r} has no decay steps (only piecewise reads it)")
  warmup = opt.get("warmup_steps", 0)
  if isinstance(warmup, (int, np.integer)) and not isinstance(warmup, bool) and warmup <= 0:
    out["warmup_lr"] = "opt.warmup_steps=0 has no warm-up (warmup_lr needs warmup_steps > 0)"
  return {k: v for k, v in out.items() if k in opt}


def hyperparams(opt: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The scalars of `opt` a grid may vary (OPT_AXES), as float32."""
  return {k: np.float32(opt[k]) for k in OPT_AXES if k in opt}


def make_schedule(opt: Mapping[str, Any], steps: int) -> Callable[[jax.Array], jax.Array]:
  """Learning rate as a function of the step.

  'constant': opt.lr. 'piecewise': opt.lr times opt.decay at each step in
  opt.boundaries (He et al.: 0.1, x0.1 at 32k and 48k). 'cosine': opt.lr
  decayed to 0 at `steps`. With opt.warmup_steps > 0 the first warmup_steps
  steps use the constant opt.warmup_lr (He et al.'s ResNet-110 warm-up at 0.01),
  and the schedule itself is not shifted.
  """
  lr = jnp.asarray(opt["lr"], jnp.float32)  # Numbers or (in a grid) arrays.
  name = opt["schedule"]
  if name == "constant":
    base = lambda count: jnp.full((), lr, jnp.float32)
  elif name == "piecewise":
    bounds = jnp.asarray(sorted(int(b) for b in opt["boundaries"]), jnp.int32)
    decay = jnp.asarray(opt["decay"], jnp.float32)
    base = lambda count: lr * decay ** jnp.sum(count >= bounds).astype(jnp.float32)
  elif name == "cosine":
    base = optax.cosine_decay_schedule(lr, decay_steps=max(int(steps), 1))
  else:
    errors.choice("opt.schedule", name, SCHEDULES)
  warmup_steps = int(opt.get("warmup_steps", 0))
  warmup_lr = jnp.asarray(opt.get("warmup_lr", 0.0), jnp.float32)
  if warmup_steps <= 0:
    return lambda count: jnp.asarray(base(count), jnp.float32)
  return lambda count: jnp.where(count < warmup_steps, warmup_lr,
                                 jnp.asarray(base(count), jnp.float32))


def make_optimizer(opt: Mapping[str, Any],
                   schedule: Callable[[jax.Array], jax.Array]) -> optax.GradientTransformation:
  """SGD (+momentum) / Adam with coupled L2, or AdamW with decoupled decay.

  The numbers in `opt` may be arrays (a grid's per-net values); the state's
  structure depends only on the names (SGD always keeps a momentum trace, and
  the L2 term is there even at weight_decay=0, adding exactly zero).
  """
  name = errors.choice("opt.name", opt["name"], OPTIMIZERS)
  wd = jnp.asarray(opt.get("weight_decay", 0.0), jnp.float32)
  decay_params = errors.choice("opt.decay_params", opt.get("decay_params", "all"),
                               DECAY_PARAMS)
  mask = None
  if decay_params == "kernels":
    mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  if name == "adamw":
    return optax.adamw(schedule, weight_decay=wd, mask=mask)
  l2 = optax.add_decayed_weights(wd, mask)
  if name == "sgd":
    momentum = jnp.asarray(opt.get("momentum", 0.0), jnp.float32)
    return optax.chain(l2, optax.sgd(schedule, momentum=momentum,
                                     nesterov=bool(opt.get("nesterov", False))))
  return optax.chain(l2, optax.adam(schedule))
