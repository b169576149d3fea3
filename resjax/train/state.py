"""The training state: what a step changes, and how a fresh one is born sharded.

Augmentation and normalization run on device inside the step (`Preprocess`),
with randomness drawn from `fold_in(state.rng, state.step)`. Parameters and
optimizer state are replicated over the mesh; a fresh state is born with its
final shardings (`jax.eval_shape`, then a jitted init).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resjax import data
from resjax import merged_draws
from resjax import models
from resjax import program_cache
from resjax import sharding
from resjax.train.optimizer import Optimizer, hyperparams

# Init runs once: on the CPU, XLA's backend optimizations cost more compile
# time (several seconds for a ResNet, mostly the random initializers) than
# they could ever save. Its older CPU fusion emitters compile faster still (the
# 32-MLP grid of `launch.bench startup` started 0.35 s sooner on an empty cache)
# and give the same initial state, bit for bit (tests/test_train.py). (Training
# steps keep the newer ones: the older change a trained net's last digits.)
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


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


def _preprocess_for(config, input_shape, mean, std) -> Preprocess:
  n = input_shape[-1] if len(input_shape) == 3 else int(np.prod(input_shape))
  mean = (0.0,) * n if mean is None else tuple(float(v) for v in np.ravel(mean))
  std = (1.0,) * n if std is None else tuple(float(v) for v in np.ravel(std))
  return Preprocess(mean=mean, std=std, is_image=len(input_shape) == 3,
                    augment=bool(config.data.get("augment", False)),
                    pad=int(config.data.get("pad", 4)), flip=bool(config.data.get("flip", True)))


def _parts(config: ml_collections.ConfigDict, input_shape, num_classes: int, mean, std):
  """The model, optimizer, hyperparameters and input preprocessing of `config`."""
  return (build_model(config, num_classes), Optimizer.of(config.opt, config.train.steps),
          hyperparams(config.opt), _preprocess_for(config, input_shape, mean, std))


def from_arrays(config: ml_collections.ConfigDict, input_shape, num_classes: int, mean, std,
                arrays: dict) -> TrainState:
  """The state `init_fn(config, ...)` makes, from its array fields (`arrays()` with
  'hparams' and 'gates'): what a state kept as arrays becomes again."""
  model, optimizer, _, prep = _parts(config, tuple(input_shape), num_classes, mean, std)
  return TrainState(**arrays, mask=None, apply_fn=model.apply, optimizer=optimizer,
                    preprocess=prep)


def init_fn(config: ml_collections.ConfigDict, input_shape, num_classes: int, mean,
            std) -> Callable[[jax.Array, jax.Array], TrainState]:
  """`init(rng_init, rng_train)`: the fresh state of `config` (pure; jit or vmap it)."""
  model, optimizer, hparams, prep = _parts(config, input_shape, num_classes, mean, std)

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


def rngs(seed: int | jax.Array) -> tuple[jax.Array, jax.Array]:
  """(init key, training key) of a seed (an int, or a traced uint32 scalar: the same keys)."""
  seed = int(seed) if isinstance(seed, (int, np.integer)) else seed
  rng_init, rng_train = jax.random.split(jax.random.PRNGKey(seed))
  return rng_init, rng_train


def init_shapes(init: Callable[[jax.Array, jax.Array], TrainState]) -> TrainState:
  """The abstract state `init` makes (its keys are traced too: nothing runs)."""
  return jax.eval_shape(lambda: init(*rngs(0)))


def state_size(config: ml_collections.ConfigDict, input_shape, num_classes: int
               ) -> tuple[int, int]:
  """(parameters, bytes of the whole state) of one net of `config`, from its shapes
  alone (nothing is allocated; any size, however large, is counted)."""
  abstract = init_shapes(init_fn(config, tuple(input_shape), num_classes, None, None))
  nbytes = sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(abstract))
  return models.param_count(abstract.params), int(nbytes)


def state_sharding(state: Any, mesh: jax.sharding.Mesh) -> Any:
  """Shardings for a (possibly abstract) state: every leaf replicated."""
  return jax.tree.map(lambda _: sharding.replicated(mesh), state)


def abstract_train_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                         input_shape, num_classes: int, *, mean=None, std=None) -> TrainState:
  """The state's shapes, dtypes and shardings without computing anything."""
  init = init_fn(config, tuple(input_shape), num_classes, mean, std)
  abstract = init_shapes(init)
  shardings = state_sharding(abstract, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def create_train_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                       input_shape, num_classes: int, *, mean=None, std=None) -> TrainState:
  """A fresh state for `config`, born with its final shardings on `mesh`.

  `mean` / `std` are the dataset's per-channel (or per-feature) statistics used
  to normalize inputs on device (default: none).
  """
  init = init_fn(config, tuple(input_shape), num_classes, mean, std)
  keys = rngs(config.seed)
  abstract = jax.eval_shape(init, *keys)
  platform = mesh.devices.flat[0].platform
  lowered = jax.jit(merged_draws.merged_draws(init, platform),
                    out_shardings=state_sharding(abstract, mesh)).lower(*keys)
  options = program_cache.cpu_options(INIT_COMPILER_OPTIONS, platform)
  return lowered.compile(compiler_options=options)(*keys)


def step_of(state: Any) -> int:
  """The step of a state (of every net of a stacked grid state)."""
  return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])
