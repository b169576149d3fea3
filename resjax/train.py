"""Training: the state, the pure sharded steps, and `train_and_evaluate`.

One jit-compiled `train_step` runs over a 1-D 'data' mesh (`data_mesh`: every
accelerator, or as many CPU host devices as the model keeps busy): the global
batch is split over its devices, parameters and optimizer state are replicated, the
state buffers are donated. BatchNorm reduces over the whole (global) batch, so
the numbers do not depend on how many devices share it. Augmentation and
normalization run on device inside the step, with randomness drawn from
`fold_in(state.rng, state.step)`; batches are a pure function of the step
(`data.train_indices`), so a run restored from a checkpoint continues exactly.

Weight decay is coupled L2: wd * w is added to the gradient before momentum
(SGD as in Caffe and PyTorch, which He et al. 2016 used). By default it
applies to every parameter, BatchNorm scales and offsets included, since the
paper states 1e-4 without exceptions; `opt.decay_params='kernels'` restricts
it to conv/dense kernels. 'adamw' uses optax's decoupled decay instead.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from resjax import checkpoints
from resjax import data
from resjax import errors
from resjax import files
from resjax import grid
from resjax import locking
from resjax import metrics
from resjax import models
from resjax import sharding
from resjax import stats

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "piecewise", "cosine")
DECAY_PARAMS = ("all", "kernels")


class Diverged(RuntimeError):
  """The loss or the parameters became NaN or infinite; the message says where."""


# ----------------------------------------------------------------------------
# State.


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """What happens on device to a raw batch before the model sees it.

  Normalizes with the dataset's mean and std (per channel or feature; a
  per-pixel mean is kept flattened, `data.preprocess` reshapes it);
  when training with `augment`, images then get a random crop after zero
  padding by `pad` (zero = the mean colour) and an optional horizontal flip.
  """
  mean: tuple[float, ...]
  std: tuple[float, ...]
  is_image: bool = True
  augment: bool = False
  pad: int = 4
  flip: bool = True

  def __call__(self, inputs: jax.Array, rng: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    x = data.preprocess(inputs, jnp.asarray(self.mean, jnp.float32),
                        jnp.asarray(self.std, jnp.float32))
    if train and self.augment and self.is_image:
      x = data.augment(rng, x, pad=self.pad, flip=self.flip)
    return x


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


def hyperparams(opt: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The scalars of `opt` a grid may vary (grid.OPT_AXES), as float32."""
  return {k: np.float32(opt[k]) for k in grid.OPT_AXES if k in opt}


class TrainState(flax.struct.PyTreeNode):
  """Everything a step changes (arrays) and what it needs to run (static).

  `rng` stays fixed; each step draws from `fold_in(rng, step)`. The model is
  `apply_fn.__self__`; `preprocess(inputs)` turns raw inputs into model inputs.
  `hparams` (the opt scalars), `gates` (a gated model's switches) and `mask`
  (1 on a padded net's own parameters; None: all) follow from the config and
  are not checkpointed. A grid stacks every array along a leading net axis.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  hparams: Any
  gates: Any
  mask: Any
  apply_fn: Callable = flax.struct.field(pytree_node=False)
  optimizer: Optimizer = flax.struct.field(pytree_node=False)
  preprocess: Preprocess = flax.struct.field(pytree_node=False)

  @property
  def variables(self) -> dict:
    """The Flax variables for `apply_fn`: params (+ batch_stats, gates)."""
    out = {"params": self.params}
    if self.batch_stats:
      out["batch_stats"] = self.batch_stats
    if self.gates:
      out["gates"] = self.gates
    return out

  def arrays(self) -> dict:
    """The array fields as a dict (what a checkpoint holds)."""
    return {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
            "opt_state": self.opt_state, "rng": self.rng}


def build_model(config: ml_collections.ConfigDict, num_classes: int):
  """The Flax module named by `config.model` (its other keys are model fields)."""
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  return models.build(config.model.name, num_classes, **kwargs)


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


def _preprocess_for(config, input_shape, mean, std) -> Preprocess:
  n = input_shape[-1] if len(input_shape) == 3 else int(np.prod(input_shape))
  mean = (0.0,) * n if mean is None else tuple(float(v) for v in np.ravel(mean))
  std = (1.0,) * n if std is None else tuple(float(v) for v in np.ravel(std))
  return Preprocess(mean=mean, std=std, is_image=len(input_shape) == 3,
                    augment=bool(config.data.get("augment", False)),
                    pad=int(config.data.get("pad", 4)), flip=bool(config.data.get("flip", True)))


def _init_fn(config, input_shape, num_classes, mean, std) -> Callable:
  model = build_model(config, num_classes)
  optimizer = Optimizer.of(config.opt, config.train.steps)
  hparams = hyperparams(config.opt)
  prep = _preprocess_for(config, input_shape, mean, std)

  def init(rng_init: jax.Array, rng_train: jax.Array) -> TrainState:
    x = jnp.zeros((1, *input_shape), jnp.float32)
    variables = model.init({"params": rng_init}, x, train=False)
    params = variables["params"]
    hp = {k: jnp.asarray(v) for k, v in hparams.items()}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=optimizer(hp)[0].init(params), rng=rng_train, hparams=hp,
                      gates=variables.get("gates", {}), mask=None, apply_fn=model.apply,
                      optimizer=optimizer, preprocess=prep)

  return init


_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _rngs(seed: int) -> tuple[jax.Array, jax.Array]:
  rng_init, rng_train = jax.random.split(jax.random.PRNGKey(int(seed)))
  return rng_init, rng_train


def state_sharding(state: Any, mesh: jax.sharding.Mesh) -> Any:
  """Shardings for a (possibly abstract) state: every leaf replicated."""
  return jax.tree.map(lambda _: sharding.replicated(mesh), state)


def abstract_train_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                         input_shape, num_classes: int, *, mean=None, std=None) -> TrainState:
  """The state's shapes, dtypes and shardings without computing anything."""
  init = _init_fn(config, tuple(input_shape), num_classes, mean, std)
  abstract = jax.eval_shape(init, *_rngs(config.seed))
  shardings = state_sharding(abstract, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def create_train_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                       input_shape, num_classes: int, *, mean=None, std=None) -> TrainState:
  """A fresh state for `config`, born with its final shardings on `mesh`.

  `mean` / `std` are the dataset's per-channel (or per-feature) statistics used
  to normalize inputs on device (default: none).
  """
  init = _init_fn(config, tuple(input_shape), num_classes, mean, std)
  rngs = _rngs(config.seed)
  abstract = jax.eval_shape(init, *rngs)
  lowered = jax.jit(init, out_shardings=state_sharding(abstract, mesh)).lower(*rngs)
  # Init runs once: on the CPU, XLA's backend optimizations cost more compile
  # time (several seconds for a ResNet, mostly the random initializers) than
  # they could ever save.
  on_cpu = mesh.devices.flat[0].platform == "cpu"
  return lowered.compile(compiler_options=_INIT_COMPILER_OPTIONS if on_cpu else None)(*rngs)


# ----------------------------------------------------------------------------
# Grids: every net initialized by the single run's code, padded, stacked.


def padded_config(config: ml_collections.ConfigDict,
                  members: Sequence[int] | None = None) -> ml_collections.ConfigDict:
  """The config of the one (gated) model the nets `members` (default: all) of
  `config.grid` fit in."""
  out = ml_collections.ConfigDict(config.to_dict())
  for key, value in grid.padded_fields(config, members).items():
    out.model[key] = value
  out.grid = grid.config_group()
  return out


def _needs_mask(config: ml_collections.ConfigDict) -> bool:
  return any(f.startswith("model.") for f, _ in grid.axes(config))


def _stacked_abstract(config, input_shape, num_classes, mean, std, members):
  """The padded single-net abstract state of the nets `members`."""
  init = _init_fn(padded_config(config, members), tuple(input_shape), num_classes, mean, std)
  big = jax.eval_shape(init, *_rngs(0))
  if _needs_mask(config):
    big = big.replace(mask=big.params)
  return big


@dataclasses.dataclass(frozen=True)
class GridCalls:
  """A grid's state: one stacked TrainState per compiled call (`grid.calls`).

  Behaves like a TrainState where the loop and the checkpoints need it: one
  step, the arrays to save (a single call's arrays as they are; several
  calls' under 'call0', 'call1', ...), `replace` with restored arrays.
  """
  states: tuple

  @property
  def step(self) -> jax.Array:
    return self.states[0].step

  @property
  def params(self) -> tuple:
    return tuple(s.params for s in self.states)

  def arrays(self) -> dict:
    if len(self.states) == 1:
      return self.states[0].arrays()
    return {f"call{i}": s.arrays() for i, s in enumerate(self.states)}

  def replace(self, **arrays) -> "GridCalls":
    if len(self.states) == 1:
      return GridCalls((self.states[0].replace(**arrays),))
    return GridCalls(tuple(s.replace(**arrays[f"call{i}"]) for i, s in enumerate(self.states)))

  def net_arrays(self, config: ml_collections.ConfigDict, k: int) -> dict:
    """Net k's slice of the checkpointed arrays (padded to its call's model)."""
    for i, members in enumerate(grid.calls(config)):
      if k in members:
        return jax.tree.map(lambda a, j=members.index(k): a[j], self.states[i].arrays())
    raise IndexError(k)


def abstract_grid_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                        input_shape, num_classes: int, *, mean=None, std=None) -> GridCalls:
  """A grid's stacked states as shapes with shardings (nets split over 'grid')."""
  shard = sharding.net_sharding(mesh)
  states = []
  for members in grid.calls(config):
    big = _stacked_abstract(config, input_shape, num_classes, mean, std, members)
    states.append(jax.tree.map(
        lambda a, k=len(members): jax.ShapeDtypeStruct((k, *a.shape), a.dtype, sharding=shard),
        big))
  return GridCalls(tuple(states))


def initial_states(nets: Sequence[ml_collections.ConfigDict], input_shape, num_classes: int,
                   *, mean=None, std=None) -> list[TrainState]:
  """Each net's initial state at its own size (host NumPy leaves), as
  `create_train_state` makes it, in one compiled call per model (vmapped over
  the seeds of the nets that share it) on the default device."""
  on_cpu = jax.devices()[0].platform == "cpu"
  groups: dict[str, list[int]] = {}
  for k, net in enumerate(nets):
    groups.setdefault(json.dumps(net.model.to_dict(), sort_keys=True, default=str),
                      []).append(k)
  out: list = [None] * len(nets)
  for members in groups.values():
    init = _init_fn(nets[members[0]], tuple(input_shape), num_classes, mean, std)
    rngs = [_rngs(nets[k].seed) for k in members]
    keys = (jnp.stack([r[0] for r in rngs]), jnp.stack([r[1] for r in rngs]))
    compiled = jax.jit(jax.vmap(init)).lower(*keys).compile(
        compiler_options=_INIT_COMPILER_OPTIONS if on_cpu else None)
    stacked = jax.device_get(compiled(*keys))
    for i, k in enumerate(members):
      out[k] = jax.tree.map(lambda a, i=i: np.asarray(a[i]), stacked)
  return out


def _put(tree: Any, shard: jax.sharding.NamedSharding) -> Any:
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(x.shape, shard, lambda idx, x=x: x[idx]), tree)


def create_grid_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                      input_shape, num_classes: int, *, mean=None, std=None) -> GridCalls:
  """The stacked states of every net of `config.grid` (net k = `grid.nets(config)[k]`),
  one per compiled call.

  Net k starts from exactly the state its single run starts from, padded into
  its call's model; its gates, hyper-parameters and unit mask ride along.
  """
  nets = grid.nets(config)
  own = initial_states(nets, input_shape, num_classes, mean=mean, std=std)
  return GridCalls(tuple(
      _stack_call(config, [nets[k] for k in members], [own[k] for k in members],
                  _stacked_abstract(config, input_shape, num_classes, mean, std, members), mesh)
      for members in grid.calls(config)))


def _stack_call(config, nets, own, big, mesh) -> TrainState:
  """The nets of one call padded into `big` and stacked, sharded over 'grid'."""
  fields = {name: [] for name in ("step", "params", "batch_stats", "opt_state", "rng",
                                  "hparams", "gates", "mask")}
  for net, state in zip(nets, own):
    for name, value in grid.pad(state.arrays(), big.arrays()).items():
      fields[name].append(value)
    fields["hparams"].append(hyperparams(net.opt))
    fields["gates"].append(grid.gates(net.model.name, net.model, state.params, big.gates))
    if big.mask is not None:
      fields["mask"].append(grid.mask(state.params, big.params))
  shard = sharding.net_sharding(mesh)
  arrays = {name: _put(grid.stack(values), shard) for name, values in fields.items() if values}
  arrays.setdefault("mask", None)
  return big.replace(**arrays)


def grid_training_mesh(config: ml_collections.ConfigDict, input_shape, num_classes: int,
                 num_nets: int, devices=None) -> jax.sharding.Mesh:
  """The mesh of a grid ('grid', 'data').

  When the nets can be split over the devices (the largest divisor of every
  call's net count that the devices allow is > 1), each device trains whole
  nets: mesh (that divisor, 1). Otherwise all nets share every device and
  their batch is split as a single run's would be (`data_mesh`: every
  accelerator, or as many CPU host devices as the model keeps busy): mesh
  (1, devices).
  """
  devices = jax.devices() if devices is None else list(devices)
  rows = grid.grid_size(num_nets, len(devices))
  for members in grid.calls(config):
    rows = grid.grid_size(math.gcd(rows, len(members)), len(devices))
  if rows > 1:  # Each device trains whole nets (see jit_steps).
    return sharding.grid_mesh(devices[:rows], rows)
  per_net = devices
  if devices[0].platform == "cpu":
    net0 = padded_config(config, grid.calls(config)[0])
    flops, n_params = forward_flops(net0, input_shape, num_classes)
    per_net = sharding.data_devices(int(config.data.batch_size), flops, n_params, per_net)
  batch = int(config.data.batch_size)
  width = len(per_net)
  while batch % width:
    width -= 1
  return sharding.grid_mesh(devices[:width], 1)


# ----------------------------------------------------------------------------
# Steps (pure; jitted with explicit shardings by `jit_steps`).


def forward_flops(config: ml_collections.ConfigDict, input_shape,
                  num_classes: int) -> tuple[float, int]:
  """(FLOPs of one example's forward pass, by XLA's cost analysis; parameters)."""
  model = build_model(config, num_classes)
  if getattr(model, "conv_impl", "xla") != "xla":  # Custom calls count no FLOPs.
    model = model.clone(conv_impl="xla")
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init({"params": jax.random.PRNGKey(0)}, x, train=False), x)
  cost = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0)), models.param_count(variables["params"])


def data_mesh(config: ml_collections.ConfigDict, input_shape, num_classes: int,
              devices=None) -> jax.sharding.Mesh:
  """The training mesh for `config`: see `sharding.data_devices`."""
  devices = jax.devices() if devices is None else list(devices)
  if devices[0].platform != "cpu":  # Every accelerator; no need to count FLOPs.
    return sharding.make_mesh(devices)
  flops, n_params = forward_flops(config, input_shape, num_classes)
  return sharding.make_mesh(sharding.data_devices(int(config.data.batch_size), flops,
                                                  n_params, devices))


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict]:
  """One optimizer step on a global batch {'inputs', 'labels'}; returns (state, metrics)."""
  rng = jax.random.fold_in(state.rng, state.step)
  x = state.preprocess(batch["inputs"], rng, train=True)
  labels = batch["labels"]

  def loss_fn(params):
    variables = dict(state.variables, params=params)
    logits, new_vars = state.apply_fn(variables, x, train=True, mutable=["batch_stats"])
    return _cross_entropy(logits, labels).mean(), (logits, new_vars.get("batch_stats", {}))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  tx, schedule = state.optimizer(state.hparams)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  if state.mask is not None:  # A padded grid net: its extra units stay exactly zero.
    updates = jax.tree.map(jnp.multiply, updates, state.mask)
  params = optax.apply_updates(state.params, updates)
  out = {
      "loss": loss,
      "accuracy": jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32)),
      "lr": schedule(state.step),
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(params),
      "update_norm": optax.tree.norm(updates),
  }
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, out


def eval_step(state: TrainState, batch: Mapping[str, jax.Array]) -> dict:
  """Sums over a batch {'inputs', 'labels'[, 'mask']}: loss_sum, correct, count."""
  x = state.preprocess(batch["inputs"], train=False)
  logits = state.apply_fn(state.variables, x, train=False)
  labels = batch["labels"]
  mask = batch.get("mask")
  mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {"loss_sum": jnp.sum(_cross_entropy(logits, labels) * mask),
          "correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}


def jit_steps(state: TrainState, mesh: jax.sharding.Mesh,
              shared_batch: bool = True) -> tuple[Callable, Callable]:
  """(train_step, eval_step) jitted for `mesh`: batch sharded, state replicated,
  the state donated to train_step.

  On a grid mesh (`sharding.grid_mesh`) both are `jax.vmap` of the same steps
  over the stacked nets, split over 'grid'; the training batch is one for all
  nets (`shared_batch`, split over 'data') or one per net ([net, batch, ...]).
  Metrics and evaluation sums then carry a leading net axis.
  """
  if isinstance(state, GridCalls):
    return _jit_calls(state, mesh, shared_batch)
  batch_s, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  if not sharding.is_grid(mesh):
    state_s = state_sharding(state, mesh)
    p_train = jax.jit(train_step, in_shardings=(state_s, batch_s),
                      out_shardings=(state_s, repl), donate_argnums=0)
    p_eval = jax.jit(eval_step, in_shardings=(state_s, batch_s), out_shardings=repl)
    return p_train, p_eval
  nets = sharding.net_sharding(mesh)
  state_s = jax.tree.map(lambda _: nets, state)
  train_batch_s = batch_s if shared_batch else sharding.net_batch_sharding(mesh)
  grid_step = jax.vmap(train_step, in_axes=(0, None if shared_batch else 0))
  grid_eval = jax.vmap(eval_step, in_axes=(0, None))
  if mesh.shape[sharding.GRID_AXIS] > 1:
    # Nets split over devices: each device runs the vmapped steps of its own
    # nets (shard_map). Left to the SPMD partitioner, vmapped convolutions
    # (whose nets XLA folds into the channels) were all-gathered across the
    # devices, and grouped ones gave wrong numbers.
    errors.check(mesh.shape[sharding.DATA_AXIS] == 1, "a grid split over devices keeps "
                 "each net's batch on one device")
    net_spec, whole = jax.sharding.PartitionSpec(sharding.GRID_AXIS), jax.sharding.PartitionSpec()
    grid_step = jax.shard_map(grid_step, mesh=mesh,
                              in_specs=(net_spec, whole if shared_batch else net_spec),
                              out_specs=(net_spec, net_spec))
    grid_eval = jax.shard_map(grid_eval, mesh=mesh, in_specs=(net_spec, whole),
                              out_specs=net_spec)
  p_train = jax.jit(grid_step, in_shardings=(state_s, train_batch_s),
                    out_shardings=(state_s, nets), donate_argnums=0)
  p_eval = jax.jit(grid_eval, in_shardings=(state_s, batch_s), out_shardings=nets)
  return p_train, p_eval


def _jit_calls(calls: GridCalls, mesh: jax.sharding.Mesh,
               shared_batch: bool) -> tuple[Callable, Callable]:
  """`jit_steps` for a grid of several calls: one program per call, run in turn.

  The training step takes one batch per call; metrics and evaluation sums come
  as a tuple with one dict per call, which `merge_calls` joins once fetched
  (joining them on the devices would make every device wait for every call).
  """
  fns = [jit_steps(s, mesh, shared_batch) for s in calls.states]

  def p_train(state: GridCalls, batches: Sequence[Any]) -> tuple[GridCalls, tuple]:
    outs = [f(s, b) for (f, _), s, b in zip(fns, state.states, batches)]
    return GridCalls(tuple(o[0] for o in outs)), tuple(o[1] for o in outs)

  def p_eval(state: GridCalls, batch: Any) -> tuple:
    return tuple(f(s, batch) for (_, f), s in zip(fns, state.states))

  return p_train, p_eval


def merge_calls(fetched: Any) -> dict:
  """Fetched metrics of a grid's calls (a tuple of dicts) as one dict, nets in order."""
  if not isinstance(fetched, tuple):
    return fetched
  return {k: np.concatenate([np.asarray(part[k]).reshape(-1) for part in fetched])
          for k in fetched[0]}


# ----------------------------------------------------------------------------
# Host side: batches, evaluation.


def host_batch(split: data.Split, step: int, *, seed: int, global_batch: int) -> dict:
  """This process's rows of the training batch for `step` (NumPy)."""
  return data.train_batch(split, step, seed=seed, global_batch=global_batch,
                          process_index=jax.process_index(),
                          process_count=jax.process_count())


def evaluate(p_eval: Callable, state: TrainState, split: data.Split,
             mesh: jax.sharding.Mesh, global_batch: int) -> dict[str, float]:
  """Loss, accuracy and error on every example of `split` (padded, masked)."""
  rows = data.local_rows(global_batch, jax.process_index(), jax.process_count())
  sums = []
  for batch in data.eval_batches(split, global_batch):
    local = {k: np.asarray(v)[rows] for k, v in batch.items()}
    sums.append(p_eval(state, sharding.to_global(local, mesh)))
  sums = [merge_calls(s) for s in jax.device_get(sums)]
  total = lambda key: np.sum([np.asarray(s[key], np.float64) for s in sums], axis=0)  # noqa: E731
  count = total("count")
  loss, accuracy = total("loss_sum") / count, total("correct") / count
  out = {"loss": loss, "accuracy": accuracy, "error": 1.0 - accuracy}
  # One net: floats; a grid: an array per metric, one entry per net.
  return {k: float(v) if np.ndim(v) == 0 else np.asarray(v) for k, v in out.items()}


# ----------------------------------------------------------------------------
# Config checks.


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def validate(config: ml_collections.ConfigDict, num_devices: int, unit: str = "devices") -> None:
  """Raises ConfigError with one line per bad field (all of them, not just the first).

  The batch must split evenly over `num_devices` (named `unit` in the message).
  """
  problems: list[str] = []

  def need(field, ok, fix):
    value = _get(config, field)
    if value is _MISSING:
      problems.append(f"config has no field {field}; {fix}")
      return None
    if not ok(value):
      problems.append(f"{field}={value!r} is not allowed; {fix}")
      return None
    return value

  def one_of(field, allowed):
    return need(field, lambda v: v in allowed, f"choose one of: {', '.join(allowed)}")

  pos_int, nonneg_int = lambda v: _is_int(v) and v > 0, lambda v: _is_int(v) and v >= 0
  need("seed", lambda v: _is_int(v) and v >= 0, "use an integer >= 0")
  model_name = one_of("model.name", tuple(models.MODELS))
  one_of("data.name", tuple(data.NAMES))
  batch = need("data.batch_size", pos_int, "use a positive integer (the global batch)")
  if batch is not None and batch % num_devices:
    problems.append(f"data.batch_size={batch} is not divisible by the {num_devices} {unit}; "
                    f"use a multiple of {num_devices}")
  for field in ("data.augment", "data.flip"):
    if _get(config, field) is not _MISSING:
      need(field, lambda v: isinstance(v, bool), "use True or False")
  if _get(config, "data.pad") is not _MISSING:
    need("data.pad", nonneg_int, "use an integer >= 0")
  opt_name = one_of("opt.name", OPTIMIZERS)
  schedule = one_of("opt.schedule", SCHEDULES)
  need("opt.lr", lambda v: _is_number(v) and v > 0, "use a number > 0")
  if opt_name == "sgd":
    need("opt.momentum", lambda v: _is_number(v) and 0 <= v < 1, "use a number in [0, 1)")
  need("opt.weight_decay", lambda v: _is_number(v) and v >= 0, "use a number >= 0")
  if _get(config, "opt.decay_params") is not _MISSING:
    one_of("opt.decay_params", DECAY_PARAMS)
  if schedule == "piecewise":
    need("opt.boundaries",
         lambda v: isinstance(v, (tuple, list)) and all(_is_int(b) and b > 0 for b in v)
         and list(v) == sorted(set(v)), "use increasing positive step numbers")
    need("opt.decay", lambda v: _is_number(v) and 0 < v <= 1, "use a number in (0, 1]")
  warmup = need("opt.warmup_steps", nonneg_int, "use an integer >= 0 (0 = no warm-up)")
  if warmup:
    need("opt.warmup_lr", lambda v: _is_number(v) and v > 0, "use a number > 0")
  need("train.steps", pos_int, "use a positive number of steps")
  need("train.log_every", pos_int, "use a positive number of steps")
  need("train.eval_every", nonneg_int, "use an integer >= 0 (0 = only at the end)")
  need("train.checkpoint_every", nonneg_int, "use an integer >= 0 (0 = only at the end)")
  if _get(config, "train.eval_train") is not _MISSING:
    need("train.eval_train", lambda v: isinstance(v, bool), "use True or False")
  if _get(config, "train.keep_checkpoints") is not _MISSING:
    need("train.keep_checkpoints", nonneg_int, "use an integer >= 0 (0 = keep all)")
  if model_name is not None:
    try:
      build_model(config, num_classes=10)
    except errors.ConfigError as e:
      problems.append(str(e))
  if _get(config, "grid") is not _MISSING:
    problems += grid.validate(config)
    if not problems and grid.is_grid(config):
      for net, label in zip(grid.nets(config), grid.labels(config)):
        try:  # Every net is a single run of its own: the same checks.
          validate(net, num_devices, unit)
        except errors.ConfigError as e:
          problems += [f"grid net {_label(label)}: {line}" for line in str(e).splitlines()]
          break
      if not problems:
        try:
          build_model(padded_config(config), num_classes=10)
        except errors.ConfigError as e:
          problems.append(f"the nets of config.grid do not fit one padded model: {e}")
  if problems:
    raise errors.ConfigError("\n".join(problems))


# ----------------------------------------------------------------------------
# The training loop.


# Fields of `config.data` the trainer reads; any other field is a dataset
# option passed to `data.load` (e.g. spirals' num_arms).
DATA_FIELDS = ("name", "data_dir", "seed", "batch_size", "augment", "pad", "flip")


def load_data(config: ml_collections.ConfigDict) -> data.Dataset:
  """The dataset named by `config.data` (its extra fields are dataset options)."""
  options = {k: v for k, v in config.data.items() if k not in DATA_FIELDS}
  return data.load(config.data.name, data_dir=config.data.get("data_dir"),
                   seed=int(config.data.get("seed", 0)), **options)


def checkpoint_meta(config: ml_collections.ConfigDict, ds: data.Dataset) -> dict:
  """What a checkpoint stores beside the arrays to be rebuilt without the data."""
  return {"config": config.to_dict(), "dataset": _dataset_facts(ds)}


def _dataset_facts(ds: data.Dataset) -> dict:
  return {"name": ds.name, "input_shape": list(ds.input_shape),
          "num_classes": int(ds.num_classes),
          "mean": np.ravel(np.asarray(ds.mean, np.float64)).tolist(),
          "std": np.ravel(np.asarray(ds.std, np.float64)).tolist()}


def _describe_mesh(mesh: jax.sharding.Mesh) -> str:
  n, total = sharding.num_shards(mesh), jax.device_count()
  if sharding.is_grid(mesh):
    rows = mesh.shape[sharding.GRID_AXIS]
    return (f"{rows * n} of {total} devices ({rows} along the nets x {n} along each "
            "net's batch: resjax/train.py grid_training_mesh)")
  if n == total or mesh.devices.flat[0].platform != "cpu":
    return f"{n} device{'s' if n > 1 else ''}"
  return f"{n} of {total} host devices (chosen for this model and batch: resjax/sharding.py)"


def _every(step: int, period: int, last: int) -> bool:
  return step == last or (period > 0 and step % period == 0)


def _barrier(name: str) -> None:
  """Waits for every process (a no-op with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, fresh: bool = False,
                       should_stop: Callable[[int], bool] | None = None) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Writes workdir/config.json, workdir/metrics.jsonl, TensorBoard events in
  workdir/tensorboard and Orbax checkpoints in workdir/checkpoints; prints
  progress lines (process 0). Returns the final metrics ('train/...' over the
  last log window, 'eval/...' on the full test split), 'step', and
  'checkpoint' (the directory of the last checkpoint written).

  A workdir holding a run of another config (outside the `train` group) is
  refused with a ConfigError, unless `fresh`, which first renames such a
  workdir to `<workdir>.old-<time>` (nothing is deleted) and starts at step 0.
  `should_stop(step)` is asked after every step (the same answer on every
  process); when it says True the state is saved at that step and the run
  returns with 'stopped' set (see `distributed.stop_on_signals`). A non-finite
  loss or parameter raises `Diverged`; nothing is saved after the last finite
  step. Every process calls this function; only process 0 writes metrics.
  """
  # The batch must split evenly over the processes (CPU: data_mesh then picks
  # a count of host devices that divides it) or over all accelerators.
  if jax.devices()[0].platform == "cpu":
    validate(config, jax.process_count(), unit="processes")
  else:
    validate(config, jax.device_count())
  ds = load_data(config)
  nets = _Nets(config)
  if nets.grid:
    errors.check(jax.process_count() == 1, "a grid (config.grid) trains in one process; "
                 "run it without --multihost, or split its axes over separate runs")
    mesh = grid_training_mesh(config, ds.input_shape, ds.num_classes, nets.count)
  else:
    mesh = data_mesh(config, ds.input_shape, ds.num_classes)
  batch_size, total = int(config.data.batch_size), int(config.train.steps)
  errors.check(batch_size <= len(ds.train.labels),
               f"data.batch_size={batch_size} exceeds the {len(ds.train.labels)} training "
               f"examples of {ds.name}; use a smaller batch")
  lead = jax.process_index() == 0
  say = (lambda *a: print(*a, flush=True)) if lead else (lambda *a: None)
  workdir = files.workdir_path(workdir)
  if fresh:
    with locking.workdir_lock(workdir, enabled=lead, say=say):  # Never move a run in use.
      moved = checkpoints.move_aside(workdir) if lead else None  # (Its lock file goes too.)
    _barrier("resjax-fresh")
    if moved:
      say(f"moved the earlier run in {workdir} to {moved}")
  # The workdir is this run's until it returns: a second run is refused in one
  # line naming this one (process 0 holds the lock for every process).
  if lead:
    files.ensure_workdir(workdir)  # One line for a workdir that cannot be made.
  with locking.workdir_lock(workdir, enabled=lead, say=say):
    return _train_in(workdir, config, ds, nets, mesh, lead, say, should_stop)


def _train_in(workdir: str, config: ml_collections.ConfigDict, ds: data.Dataset, nets: "_Nets",
              mesh: jax.sharding.Mesh, lead: bool, say: Callable,
              should_stop: Callable[[int], bool] | None) -> dict:
  """The body of `train_and_evaluate`, with the workdir locked."""
  batch_size, total = int(config.data.batch_size), int(config.train.steps)
  # Refuse a run of another config before changing any file. Orbax's calls are
  # collective: every process must see the workdir as it was before any wrote.
  checkpoints.check_same_config(workdir, None, config)
  _barrier("resjax-config-checked")
  workdir = files.ensure_workdir(workdir)
  meta = checkpoint_meta(config, ds)

  mngr = checkpoints.manager(workdir, keep=int(config.train.get("keep_checkpoints", 0)))
  create = create_grid_state if nets.grid else create_train_state
  state = create(config, mesh, ds.input_shape, ds.num_classes, mean=ds.mean, std=ds.std)
  last_saved = mngr.latest_step()
  if last_saved is not None:
    try:
      state = checkpoints.restore(mngr, state, last_saved)
    except errors.ConfigError:
      mngr.close()
      raise
    say(f"resumed from {checkpoints.directory(workdir)} at step {step_of(state)}")
  if lead:
    checkpoints.save_config(workdir, config)
  p_train, p_eval = jit_steps(state, mesh, shared_batch=nets.shared_batch)
  start = step_of(state)
  n_params = models.param_count(state.params) // nets.count
  what = (f"a grid of {nets.count} nets ({nets.describe()}), each padded to "
          f"{n_params:,} parameters," if nets.grid else f"({n_params:,} parameters)")
  say(f"{config.model.name} {what} on {ds.name} "
      f"({len(ds.train.labels)} train / {len(ds.test.labels)} test), batch {batch_size} "
      f"over {_describe_mesh(mesh)}, steps {start} -> {total}")

  window: list[dict] = []     # fetched metrics since the last progress line
  pending: list[dict] = []    # on-device metrics not fetched yet (no sync per step)
  timed_steps, timed_seconds, mark = 0, 0.0, None
  result: dict[str, Any] = {"step": max(start, total), "stopped": False}
  # A background thread gathers and transfers the next batches while the
  # device runs the current step.
  batches = data.prefetch((nets.batch(ds.train, s, mesh) for s in range(start, total)), size=2)
  with metrics.Writer(workdir, enabled=lead, resume_step=start) as writer:
    if writer.dropped:
      say(f"dropped {writer.dropped} rows after step {start} from {writer.path} "
          "(they are computed again)")
    try:
      for done, batch in enumerate(batches, start + 1):
        if mark is None:  # The first step compiles: wait for it, leave it untimed.
          tic = time.perf_counter()
          state, m = p_train(state, batch)
          jax.block_until_ready(m)
          say(f"step {done} (with compilation) took {time.perf_counter() - tic:.1f}s")
          mark = time.perf_counter()
        else:
          state, m = p_train(state, batch)
          timed_steps += 1
        pending.append(m)
        stop = should_stop is not None and bool(should_stop(done)) and done < total
        log = stop or _every(done, config.train.log_every, total)
        do_eval = not stop and _every(done, config.train.eval_every, total)
        save = stop or _every(done, config.train.checkpoint_every, total)
        if not (log or do_eval or save):
          continue
        # Waits for the device: the only sync.
        window.extend(merge_calls(m) for m in jax.device_get(pending))
        pending = []
        timed_seconds += time.perf_counter() - mark
        if nets.grid:
          nets.check_finite(window, done, say)
        else:
          _check_finite(window, done, last_saved, workdir, writer)
        if log:
          mean = metrics.mean_of(window, per_net=nets.grid)
          mean["lr"] = window[-1]["lr"]  # The current rate, not the mean.
          step_time = timed_seconds / timed_steps if timed_steps else float("nan")
          images_per_sec = nets.count * batch_size / step_time
          row = {f"train/{k}": v for k, v in mean.items()}
          if timed_steps:  # The first window can hold only the compiling step: no rate.
            row.update({"train/step_time": step_time, "train/images_per_sec": images_per_sec})
          nets.write(writer, done, row)
          say(metrics.progress_line(done, total, mean, images_per_sec,
                                    (total - done) * step_time))
          result.update(row)
          window, timed_steps, timed_seconds = [], 0, 0.0
        if do_eval:
          ev = evaluate(p_eval, state, ds.test, mesh, batch_size)
          row = {f"eval/{k}": v for k, v in ev.items()}
          if config.train.get("eval_train", False):  # The whole training split too.
            row.update({f"eval_train/{k}": v for k, v in
                        evaluate(p_eval, state, ds.train, mesh, batch_size).items()})
          nets.write(writer, done, row)
          say(f"eval at step {done}: " + metrics.eval_line(ev))
          result.update(row)
        if save and done != last_saved:
          try:
            checkpoints.save(mngr, state, meta)
          except Exception as e:  # pylint: disable=broad-except
            raise _not_saved(e, done, workdir, mngr) from None
          last_saved = done
        writer.flush()
        if stop:
          result.update(step=done, stopped=True)
          break
        mark = time.perf_counter()  # Evaluation and saving are not training time.
      if start >= total:
        ev = evaluate(p_eval, state, ds.test, mesh, batch_size)
        result.update({f"eval/{k}": v for k, v in ev.items()})
        say(f"nothing to train: checkpoint at step {start} >= train.steps={total}; "
            "eval " + metrics.eval_line(ev))
    finally:
      batches.close()
      try:
        mngr.wait_until_finished()  # An asynchronous save fails here.
      except Exception as e:  # pylint: disable=broad-except
        # Not closed: closing a manager whose save failed prints a traceback per
        # pending write ("Event loop is closed"); the process is ending anyway.
        raise _not_saved(e, last_saved, workdir) from None
      mngr.close()
  if last_saved is not None:
    result["checkpoint"] = os.path.join(checkpoints.directory(workdir), str(last_saved))
  if nets.grid:
    result = nets.summarize(result, workdir if lead else None, say)
  return result


def step_of(state: TrainState) -> int:
  """The step of a state (of every net of a stacked grid state)."""
  return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


class _Nets:
  """What `train_and_evaluate` trains: one net, or the nets of `config.grid`."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.grid = grid.is_grid(config)
    self.configs = grid.nets(config)
    self.labels = grid.labels(config)
    self.count = len(self.configs)
    self.seeds = [int(c.seed) for c in self.configs]
    self.shared_batch = len(set(self.seeds)) == 1
    self.batch_size = int(config.data.batch_size)
    self.axes = grid.axes(config)
    self.calls = grid.calls(config)
    self.diverged: dict[int, int] = {}
    pub = config.get("published")
    self.published = dict(zip(pub.conditions, pub.values)) if pub else None

  def describe(self) -> str:
    calls = f"; {len(self.calls)} compiled calls" if len(self.calls) > 1 else ""
    return " x ".join(f"{len(v)} {f}" for f, v in self.axes) + calls

  def batch(self, split: data.Split, step: int, mesh: jax.sharding.Mesh) -> Any:
    """The global training batch of `step`; a grid: one per call, shared by its
    nets or stacked from each net's seed."""
    if self.shared_batch:
      one = sharding.to_global(host_batch(split, step, seed=self.seeds[0],
                                          global_batch=self.batch_size), mesh)
      return [one] * len(self.calls) if self.grid else one
    out = []
    for members in self.calls:
      rows = [host_batch(split, step, seed=self.seeds[k], global_batch=self.batch_size)
              for k in members]
      out.append(sharding.to_global(grid.stack(rows), mesh, sharding.net_batch_sharding(mesh)))
    return out

  def write(self, writer: metrics.Writer, step: int, row: Mapping[str, Any]) -> None:
    """One metrics row (a grid: one per net, each with its 'net' index)."""
    if not self.grid:
      writer.write(step, row)
      return
    for k in range(self.count):
      writer.write(step, {name: (v[k] if np.ndim(v) else v) for name, v in row.items()},
                   net=k)

  def check_finite(self, window: list[dict], done: int, say: Callable) -> None:
    """A grid goes on when some of its nets diverge; each is named once."""
    loss = np.stack([np.asarray(m["loss"]) for m in window])  # [steps, nets]
    for k in np.flatnonzero(~np.isfinite(loss).all(axis=0)):
      if int(k) not in self.diverged:
        step = done - len(window) + int(np.argmax(~np.isfinite(loss[:, k]))) + 1
        self.diverged[int(k)] = step
        say(f"net {k} ({_label(self.labels[k])}) diverged at step {step}: its loss is "
            f"{loss[:, k][~np.isfinite(loss[:, k])][0]}; the other nets go on")

  def summarize(self, result: dict, workdir: str | None, say: Callable) -> dict:
    """Per-net rows ('nets'), per-condition rows ('conditions') and means over
    nets in `result`; nets.csv and conditions.csv in `workdir`; a table on stdout."""
    rows = []
    for k, label in enumerate(self.labels):
      row = {"net": k, **label}
      row.update({key: float(np.asarray(v)[k]) for key, v in result.items()
                  if key.startswith(("train/", "eval/", "eval_train/")) and np.ndim(v) == 1})
      row["diverged_at"] = self.diverged.get(k)
      rows.append(row)
    out = {k: (float(np.mean(v)) if np.ndim(v) == 1 else v) for k, v in result.items()}
    out["nets"] = rows
    out["conditions"] = conditions = condition_rows(rows, self.published)
    if workdir is not None:
      files.write_csv(os.path.join(workdir, "nets.csv"), rows)
      files.write_csv(os.path.join(workdir, "conditions.csv"), conditions)
      say(condition_table(conditions))
      say(f"per-net results: {os.path.join(workdir, 'nets.csv')}; per condition: "
          f"{os.path.join(workdir, 'conditions.csv')}")
    return out


# Metrics summarized per condition: (key, range the interval is clipped to).
CONDITION_METRICS = (("eval/error", (0.0, 1.0)), ("eval/loss", (0.0, np.inf)),
                     ("train/loss", (0.0, np.inf)))


def condition_rows(net_rows: Sequence[Mapping[str, Any]],
                   published: Mapping[str, float] | None = None) -> list[dict]:
  """One row per condition (the axes but the seed): seeds, and for each of
  CONDITION_METRICS the mean and 95% t-interval over the seeds (diverged nets
  count as NaN and are left out of the interval); `published` values beside."""
  groups: dict[str, list] = {}
  for row in net_rows:
    label = {k: v for k, v in row.items() if k == "seed" or "." in k}
    groups.setdefault(grid.condition_name(label), []).append(row)
  out = []
  for key, members in groups.items():
    row = {"condition": key, "seeds": len(members)}
    for metric, bounds in CONDITION_METRICS:
      values = np.asarray([m.get(metric, np.nan) for m in members], np.float64)
      if np.isnan(values).all():
        continue
      mean, lo, hi = stats.mean_ci(values, bounds=bounds)
      row.update({metric: mean, f"{metric}_lo": lo, f"{metric}_hi": hi})
    if published and key in published:
      row["published"] = published[key]
    out.append(row)
  return out


def condition_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The per-condition test error as text: mean [95% interval] and the published value."""
  lines = ["condition | seeds | test error % [95% interval] | published %"]
  for r in rows:
    err = (f"{100 * r['eval/error']:.2f} [{100 * r['eval/error_lo']:.2f}, "
           f"{100 * r['eval/error_hi']:.2f}]" if "eval/error" in r else "-")
    pub = f"{100 * r['published']:.2f}" if "published" in r else "-"
    lines.append(f"{r['condition']} | {r['seeds']} | {err} | {pub}")
  return "\n".join(lines)


def _label(label: Mapping[str, Any]) -> str:
  return ", ".join(f"{k}={v}" for k, v in label.items())


class NotSaved(RuntimeError):
  """A checkpoint could not be written (a full or read-only disk); says what was kept."""


_DISK_FULL = ("No space left on device", "Disk quota exceeded", "Read-only file system")


def _not_saved(e: BaseException, step: int | None, workdir: str,
               mngr: Any = None) -> BaseException:
  """NotSaved for a checkpoint that failed on a full or read-only disk, else `e`."""
  text = str(e)
  reason = next((r for r in _DISK_FULL if r in text), None)
  if reason is None and isinstance(e, OSError) and e.errno in (28, 30, 122):
    reason = e.strerror
  if reason is None:
    return e
  if mngr is not None:
    try:  # Let an earlier save still in flight finish, so it counts as kept.
      mngr.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      pass
  done = checkpoints.complete_steps(workdir)
  kept = (f"the last good checkpoint is step {done[-1]} in {checkpoints.directory(workdir)}"
          if done else "no checkpoint was completed")
  then = "resume from it" if done else "start again"
  return NotSaved(f"the checkpoint at step {step} could not be written ({reason}); {kept}; "
                  f"free some space and run the same command to {then}")


def _check_finite(window: list[dict], done: int, last_saved: int | None, workdir: str,
                  writer: metrics.Writer) -> None:
  """Raises Diverged at the first step of `window` with a non-finite metric."""
  found = []  # (first bad index, rank, key, name): the loss goes first on a tie.
  for rank, (key, what) in enumerate((("loss", "loss"), ("grad_norm", "gradient norm"),
                                      ("param_norm", "parameter norm"))):
    bad = metrics.first_nonfinite(window, key)
    if bad is not None:
      found.append((bad, rank, key, what))
  if not found:
    return
  bad, _, key, what = min(found)
  step = done - len(window) + bad + 1
  value = float(np.asarray(window[bad][key]))
  writer.write(step, {f"train/{k}": float(np.asarray(window[bad][k])) for *_, k, _ in found})
  kept = (f"the last good checkpoint is step {last_saved} in "
          f"{checkpoints.directory(workdir)}" if last_saved is not None
          else "no checkpoint was written")
  raise Diverged(f"{what} is {value} at step {step}; training stopped and {kept} "
                 "(lower opt.lr or check the data)")
