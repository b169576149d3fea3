"""Dead-unit resets (ReDo, Sokar et al. 2023) every K steps, inside the compiled program.

With `train.reset_dead_every=K` (> 0; also a grid axis) every K-th step ends
with one jitted call over the (stacked) state: each net scores its units on
the fixed probe batch (`train.probe_batch`) as ReDo does, a unit's mean
|activation| over its layer's mean, and every unit scoring at or below
`train.dormant_tau` is re-initialized: its incoming weights are drawn again
from the layer's initializer, its bias and its outgoing weights set to zero,
and the optimizer's moments of all of them (Adam's mu and nu, SGD's momentum
trace) set to zero.

The draw is counter-based: entry (i, j) of a layer's kernel comes from
fold_in(rng, stream, step, layer, j, i) of the net's own training key, scaled
by its own fan-in, so it does not depend on the grid's padding or on the
other nets, and net k of a grid resets exactly as its single run does. The
checkpoint holds all the reset needs (the parameters, the moments, the key
and the step), so a resumed run resets as an uninterrupted one.

Families: the MLP (`mlp`, norm=None): each hidden layer i's units are the
outputs of Dense 'dense{i}' and feed 'dense{i+1}' (the last, 'classifier').
With model.residual=True a unit's value also reaches the next layers through
the shortcut, so there a reset changes the net's function (in a plain MLP,
with its outgoing weights at zero, it does not). Other families are refused.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resjax import activations
from resjax import models
from resjax import schema
from resjax.probes import compiled

FAMILIES = ("mlp",)  # Model families whose units can be reset.
RESET_STREAM = 0x5245444F  # Keeps the reset draws apart from the step's own (train_step).
# The variance of flax's default Dense kernel (lecun_normal, truncated at +-2
# standard deviations): the std of a standard normal truncated there.
TRUNCATED_STD = 0.87962566103423978


def every(config: ml_collections.ConfigDict) -> int:
  """The net's reset period (0: none)."""
  return int(config.train.get("reset_dead_every", 0) or 0)


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """Why a net of `config` cannot be reset (one line each; none when it resets nothing)."""
  k = schema.get(config, "train.reset_dead_every")
  if not schema.is_int(k) or k <= 0:
    return []
  name = schema.get(config, "model.name")
  if name not in FAMILIES:
    return [f"train.reset_dead_every={k} is not allowed for model.name={name!r}; dead-unit "
            f"resets are implemented for {', '.join(FAMILIES)} (dense layers): use 0"]
  if schema.get(config, "model.norm") not in (None, schema.MISSING):
    return [f"train.reset_dead_every={k} is not allowed with model.norm="
            f"{schema.get(config, 'model.norm')!r}; resets are implemented for norm=None: "
            "use 0 or model.norm=None"]
  return []


def layers(fields: Mapping[str, Any], input_dim: int) -> list[tuple[str, str, str, int]]:
  """An MLP's resettable layers: (activation layer, incoming Dense, outgoing Dense,
  fan-in of the incoming kernel), in forward order (`fields`: its model group)."""
  width, depth, _ = models.traits(fields["name"], fields)
  return [(f"layer{i}", f"dense{i}", f"dense{i + 1}" if i < depth - 1 else "classifier",
           input_dim if i == 0 else width) for i in range(depth)]


@dataclasses.dataclass(frozen=True)
class Slot:
  """One (tap, incoming, outgoing) triple of the program's model that some nets reset."""
  tap: str
  incoming: str
  outgoing: str


def plan(configs: Sequence[ml_collections.ConfigDict], members: Sequence[int],
         padded: Mapping[str, Any] | None, input_dim: int,
         taps: Mapping[str, int]) -> tuple[list[Slot], dict, list[list[str | None]]]:
  """The slots of one compiled call (`members`: its nets, net k = configs[k];
  `padded`: its padded model's fields, None for a single run; `taps`: its
  model's activation layers and their units), the per-net arrays the program
  reads ({'units': per slot [nets, C], 'fan_in' and 'index': [nets, slots]})
  and, per net and slot, the net's own layer (None: not one of its layers)."""
  slots: list[Slot] = []
  own = []
  for k in members:
    fields = configs[k].model
    mine = {}
    for index, (name, inc, out, fan_in) in enumerate(layers(fields, input_dim)):
      tap = name if padded is None else models.tap_in_padded(fields.name, name, fields, padded)
      if Slot(tap, inc, out) not in slots:
        slots.append(Slot(tap, inc, out))
      mine[slots.index(Slot(tap, inc, out))] = (name, index, fan_in)
    own.append((mine, models.traits(fields.name, fields).width))
  n = len(members)
  aux = {"units": [np.zeros((n, taps[s.tap]), np.float32) for s in slots],
         "fan_in": np.ones((n, len(slots)), np.float32),
         "index": np.zeros((n, len(slots)), np.int32)}
  names: list[list[str | None]] = [[None] * len(slots) for _ in members]
  for i, (mine, width) in enumerate(own):
    for t, (name, index, fan_in) in mine.items():
      aux["units"][t][i, :width] = 1.0
      aux["fan_in"][i, t], aux["index"][i, t], names[i][t] = fan_in, index, name
  return slots, aux, names


def _draw(key: jax.Array, shape: tuple[int, int], fan_in: jax.Array) -> jax.Array:
  """A [fan-in rows, units] kernel of lecun_normal draws, entry (i, j) from
  fold_in(key, j, i): the same numbers at any padded shape."""
  rows, cols = jnp.arange(shape[0]), jnp.arange(shape[1])

  def entry(j, i):
    return jax.random.truncated_normal(jax.random.fold_in(jax.random.fold_in(key, j), i),
                                       -2.0, 2.0, (), jnp.float32)

  draws_JxI = jax.vmap(lambda j: jax.vmap(lambda i: entry(j, i))(rows))(cols)
  return draws_JxI.T * (jnp.sqrt(1.0 / fan_in) / TRUNCATED_STD)


def _touch(touched: dict, path: str, m: jax.Array, shape: tuple) -> None:
  touched[path] = touched.get(path, jnp.zeros(shape, bool)) | jnp.broadcast_to(m, shape)


def _mask_leaves(tree: Any, masks: Mapping[str, jax.Array]) -> Any:
  """`tree` with zeros where `masks` (parameter path -> bool mask) is set, on
  every leaf whose path ends with that parameter's path (optimizer moments)."""
  def one(path, leaf):
    key = jax.tree_util.keystr(path)
    for suffix, m in masks.items():
      if key.endswith(suffix) and leaf.shape == m.shape:
        return jnp.where(m, jnp.zeros_like(leaf), leaf)
    return leaf
  return jax.tree_util.tree_map_with_path(one, tree)


def reset_net(state: Any, do: jax.Array, aux: Mapping[str, Any], inputs: jax.Array, *,
              model: Any, slots: Sequence[Slot], tau: float,
              preprocess: Callable) -> tuple[Any, jax.Array]:
  """One net's reset (a single net's arrays; `do`: whether it resets now):
  (new params and opt_state as a state, units reset per slot [slots])."""
  act = activations.get(model.activation)
  _, cols = model.apply(state.variables, preprocess(inputs), train=False,
                        mutable=list(compiled.COLLECTIONS))
  taps = compiled.flatten(cols["preacts"])
  params = jax.tree.map(lambda a: a, state.params)  # A copy of the dicts to update.
  mask = state.mask
  key = jax.random.fold_in(jax.random.fold_in(state.rng, RESET_STREAM), state.step)
  touched: dict[str, jax.Array] = {}
  dormant = []
  for t, slot in enumerate(slots):
    z = taps[slot.tap].astype(jnp.float32)
    mean_abs_C = jnp.mean(jnp.abs(act.fn(z.reshape(-1, z.shape[-1]))), 0)
    u_C = aux["units"][t]
    layer_mean = jnp.sum(mean_abs_C * u_C) / jnp.maximum(jnp.sum(u_C), 1.0)
    score_C = jnp.where(layer_mean > 0, mean_abs_C / jnp.where(layer_mean > 0, layer_mean, 1.0),
                        0.0)
    dormant.append((score_C <= tau) & (u_C > 0) & do)
  for t, slot in enumerate(slots):  # Incoming weights drawn again, biases zero.
    d_C, module = dormant[t], params[slot.incoming]
    kernel = module["kernel"]
    new = _draw(jax.random.fold_in(key, aux["index"][t]), kernel.shape, aux["fan_in"][t])
    if mask is not None:  # A padded net's extra entries stay zero.
      new = new * mask[slot.incoming]["kernel"]
    module["kernel"] = jnp.where(d_C[None, :], new.astype(kernel.dtype), kernel)
    module["bias"] = jnp.where(d_C, jnp.zeros_like(module["bias"]), module["bias"])
    _touch(touched, f"['{slot.incoming}']['kernel']", d_C[None, :], kernel.shape)
    _touch(touched, f"['{slot.incoming}']['bias']", d_C, d_C.shape)
  for t, slot in enumerate(slots):  # Outgoing weights zero.
    d_C, module = dormant[t], params[slot.outgoing]
    module["kernel"] = jnp.where(d_C[:, None], jnp.zeros_like(module["kernel"]),
                                 module["kernel"])
    _touch(touched, f"['{slot.outgoing}']['kernel']", d_C[:, None], module["kernel"].shape)
  opt_state = _mask_leaves(state.opt_state, touched)
  counts = jnp.stack([jnp.sum(d) for d in dormant]).astype(jnp.int32)
  return state.replace(params=params, opt_state=opt_state), counts


def program(model: Any, slots: Sequence[Slot], tau: float, preprocess: Callable,
            stacked: bool, state_shardings: Any, nets_sharding: Any,
            compiler_options: dict | None = None) -> Callable:
  """`reset(state, do, aux, inputs)` -> (state, units reset [nets, slots]) for a
  call's state (vmapped over stacked nets), jitted with the state donated and
  kept in its shardings (and `compiler_options`)."""
  one = functools.partial(reset_net, model=model, slots=tuple(slots), tau=tau,
                          preprocess=preprocess)

  def reset(state, do, aux, inputs):
    if stacked:
      return jax.vmap(one, in_axes=(0, 0, 0, None))(state, do, aux, inputs)
    new, counts = one(state, do[0], jax.tree.map(lambda a: a[0], aux), inputs)
    return new, counts[None]

  return jax.jit(reset, donate_argnums=0, out_shardings=(state_shardings, nets_sharding),
                 compiler_options=compiler_options)
