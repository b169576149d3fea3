"""Where a layer's outputs sit in an activation's linear region, for any named module.

The probes (`probes.run`) see only the tensors a model feeds to an activation
(its 'preacts'); a linear layer has none. `linear_shares` reads the output of
any submodule by name instead (Flax's captured intermediates), so a linear
first layer or a linear bottleneck is measured by the same code as a ReLU or
ReLU6 one: the share of inputs on which every unit (every channel at every
position) of the module lies in the open interval where `activation` is on
duty (`activations.Activation.active`: z > 0 for ReLU, 0 < z < 6 for ReLU6),
i.e. where that activation applied to the module's output would act as the
identity. For a tapped activation input it equals the probes' `linear_frac_input`
(tested). BatchNorm runs in eval mode (running averages), as in the probes: at
initialization those are mean 0 and variance 1, so a BatchNorm output is its
input times scale 1 plus shift 0.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resjax import activations, data
from resjax.probes.compiled import flatten, variables_of


def module_outputs(model, variables: Mapping[str, Any], x: jax.Array,
                   names: Sequence[str]) -> dict[str, jax.Array]:
  """Outputs of the submodules whose own name is in `names`, by their path ('a/b'), in eval mode."""
  wanted = tuple(names)
  _, cols = model.apply(variables, x, train=False, mutable=["intermediates"],
                        capture_intermediates=lambda m, method: method == "__call__"
                        and m.name in wanted)
  return {path.rsplit("/__call__", 1)[0]: value[0] if isinstance(value, tuple) else value
          for path, value in flatten(cols.get("intermediates", {})).items()
          if path.endswith("__call__")}


@functools.partial(jax.jit, static_argnames=("model", "names", "activation"))
def _batch(variables, x, *, model, names, activation):
  """Per input of one batch: every unit in the region, per module, and per module
  the number of its positions with every channel in the region."""
  act = activations.get(activation)
  out = {}
  for path, z in module_outputs(model, variables, x, names).items():
    z_BxPxC = z.astype(jnp.float32).reshape(z.shape[0], -1, z.shape[-1])
    all_BxP = jnp.all(act.active(z_BxPxC), -1)
    out[path] = (jnp.all(all_BxP, -1), jnp.sum(all_BxP, -1), z_BxPxC.shape[1])
  return out


def linear_shares(state: Any, inputs: np.ndarray, names: Sequence[str], activation: str, *,
                  preprocess: Callable[[jax.Array], jax.Array] | None = None,
                  mean=None, std=None, batch_size: int = 2048,
                  model=None) -> dict[str, dict[str, float]]:
  """Per module path (and 'all', every named module at once): the share of `inputs` on which
  every unit lies in `activation`'s on-duty region ('input'), and the share of (input,
  position) pairs on which every channel does ('position'; equal to 'input' for dense layers).

  `state` is one net's TrainState or variables; inputs are normalized by
  `state.preprocess`, else `preprocess`, else the dataset's `mean` and `std`.
  """
  model = model or getattr(getattr(state, "apply_fn", None), "__self__", None)
  if preprocess is None:
    preprocess = getattr(state, "preprocess", None)
  if preprocess is None:
    preprocess = functools.partial(data.preprocess, mean=mean, std=std)
  variables = variables_of(state)
  every, pos, count = {}, {}, {}
  for start in range(0, len(inputs), batch_size):
    x = preprocess(jnp.asarray(inputs[start:start + batch_size]))
    got = _batch(variables, x, model=model, names=tuple(names), activation=activation)
    for path, (all_b, pos_b, positions) in got.items():
      every.setdefault(path, []).append(np.asarray(all_b))
      pos[path] = pos.get(path, 0.0) + float(np.sum(pos_b))
      count[path] = count.get(path, 0.0) + float(len(all_b) * positions)
  out = {p: {"input": float(np.mean(np.concatenate(v))), "position": pos[p] / count[p]}
         for p, v in sorted(every.items())}
  if out:
    both = np.all([np.concatenate(v) for v in every.values()], 0)
    out["all"] = {"input": float(np.mean(both)),
                  "position": float(np.mean([o["position"] for o in out.values()]))}
  return out

