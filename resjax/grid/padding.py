"""Tree surgery for grids: pad a net into the padded model, mask its units,
crop it back out (and `place` it back in), set its gates, stack nets along a
leading axis. NumPy on the host; `crop` and `place` also run in a jitted
program over the stacked nets (leading axes)."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from resjax import errors
from resjax import models


def _leaves(tree: Any) -> dict[str, Any]:
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def pad(small: Any, big: Any) -> Any:
  """`small`'s arrays zero-padded into the leaves of `big` (arrays or shapes).

  A leaf of `big` missing from `small` (a block the net does not have) is all
  zeros; every leaf of `small` must have a leaf in `big` at least as large.
  """
  have = _leaves(small)
  paths, treedef = jax.tree_util.tree_flatten_with_path(big)
  out = []
  for path, like in paths:
    key = jax.tree_util.keystr(path)
    value = have.pop(key, None)
    if value is None:
      out.append(np.zeros(like.shape, like.dtype))
      continue
    value = np.asarray(value)
    errors.check(value.ndim == len(like.shape) and all(
        a <= b for a, b in zip(value.shape, like.shape)),
                 f"grid: {key} of shape {value.shape} does not fit the padded {like.shape}")
    value = value.astype(like.dtype)
    if value.shape != tuple(like.shape):
      value = np.pad(value, [(0, b - a) for a, b in zip(value.shape, like.shape)])
    out.append(value)
  errors.check(not have, f"grid: the padded net lacks {sorted(have)[:3]}; these nets cannot "
               "share one program")
  return jax.tree_util.tree_unflatten(treedef, out)


def mask(small: Any, big: Any) -> Any:
  """1.0 on the entries of `big` that `small` has (its own units), 0.0 elsewhere."""
  have = _leaves(small)

  def one(path, like):
    m = np.zeros(like.shape, np.float32)
    value = have.get(jax.tree_util.keystr(path))
    if value is not None:
      m[tuple(slice(0, n) for n in value.shape)] = 1.0
    return m

  return jax.tree_util.tree_map_with_path(one, big)


def _own(like: Any, lead: int) -> tuple:
  """The index of a net's own entries: `lead` leading axes whole, then each
  axis cut to the net's size."""
  return (slice(None),) * lead + tuple(slice(0, n) for n in like.shape)


def crop(big: Any, small: Any, lead: int = 0) -> Any:
  """The entries of padded `big` that the net shaped like `small` has (after
  `lead` leading axes, e.g. stacked nets, kept whole)."""
  have = _leaves(big)

  def one(path, like):
    value = have[jax.tree_util.keystr(path)]
    if not isinstance(value, jax.Array):
      value = np.asarray(value)
    return value[_own(like, lead)].astype(like.dtype)

  return jax.tree_util.tree_map_with_path(one, small)


def place(big: Any, small: Any, rows: Any) -> Any:
  """`big` (jax arrays of stacked padded nets) with the nets at `rows` (an index
  array along the leading axis) set to `small` ([len(rows), own size...]);
  their padding and the other nets stay as they were. The inverse of `crop`."""
  have = _leaves(small)

  def one(path, value):
    new = have.get(jax.tree_util.keystr(path))
    if new is None:  # A leaf the nets do not have (a gated-out block).
      return value
    return value.at[(rows,) + tuple(slice(0, n) for n in new.shape[1:])].set(
        new.astype(value.dtype))

  return jax.tree_util.tree_map_with_path(one, big)


def gates(model_name: str, net_fields: dict[str, Any], own_params: Any,
          padded_gates: Any) -> Any:
  """Net k's values for the padded model's 'gates' collection.

  A block gate '<block>_on' is on where the net has that block (parameters
  under its name); a toggle gate follows the net's own field (its family's TOGGLES);
  a gate its family's `gate_value` decides takes that value (e.g. whether a block's
  own widths allow its shortcut).
  """
  toggles = {t.gate: t.value(net_fields[field])
             for field, t in models.toggles(model_name).items() if field in net_fields}
  own = set(own_params) if hasattr(own_params, "keys") else set()
  family = models.gate_value(model_name)

  def one(path, like):
    name = str(getattr(path[-1], "key", path[-1]))
    decided = None if family is None else family(name, own_params)
    if name in toggles:
      value = toggles[name]
    elif decided is not None:
      value = decided
    else:
      errors.check(name.endswith("_on"), f"grid: unknown gate {name!r}")
      value = float(name[:-len("_on")] in own)
    return np.full(like.shape, value, np.float32)

  return jax.tree_util.tree_map_with_path(one, padded_gates)


def stack(trees: Sequence[Any]) -> Any:
  """Trees of equal structure stacked along a new leading axis (NumPy)."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


