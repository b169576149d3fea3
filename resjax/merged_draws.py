"""A function's random draws hashed together: one threefry call per wave of draws.

XLA's CPU backend lowers every threefry hash to a loop of its own, and a net's
initialization draws once per parameter, folds a key in per layer and splits
keys: the 32-MLP grid's init program made 97 hash calls (26 loops once XLA had
merged the repeated ones), and most of its compile time went to them. `merged_draws(fn)` evaluates `fn`'s program with
every random primitive on threefry keys written out as its hashes, and hashes
all the draws whose keys are known at the same point in one call (the init
programs have two or three such waves). Threefry is elementwise in its key and
counter, so the numbers are the same bit for bit (tested); only the program's
shape changes.

jax offers no public transform for this; the rewrite is an interpreter over
the jaxpr (as `jax.core.eval_jaxpr` is), with random primitives expanded by
the public threefry implementation (`jax.extend.random.threefry_prng_impl`).
Any program it does not cover (keys of another implementation, keys passed to
primitives other than random ones and reshaping ones, effects) is traced as it
is.
"""
from __future__ import annotations

import collections
import functools
import itertools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
from jax.extend import core as jcore
from jax.extend import random as jrandom

_THREEFRY = jrandom.threefry_prng_impl
_CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call")
_ALIASES = ("random_wrap", "random_unwrap", "random_clone")


class _Unsupported(Exception):
  """The program has something the rewrite does not cover."""


def _is_key(aval: Any) -> bool:
  dtype = getattr(aval, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _vmapped(f: Callable, n: int) -> Callable:
  for _ in range(n):
    f = jax.vmap(f)
  return f


@functools.lru_cache(maxsize=None)
def _expansion(name: str, params: tuple, shapes: tuple) -> jcore.ClosedJaxpr:
  """The threefry hashes of one random primitive, over key data (uint32 [..., 2])."""
  p = dict(params)
  args = [jax.ShapeDtypeStruct(s, d) for s, d in shapes]
  if name == "random_seed":
    fn = _vmapped(_THREEFRY.seed, len(shapes[0][0]))
  elif name == "random_split":
    fn = _vmapped(lambda k: _THREEFRY.split(k, p["shape"]), len(shapes[0][0]) - 1)
  elif name == "random_bits":
    fn = _vmapped(lambda k: _THREEFRY.random_bits(k, p["bit_width"], p["shape"]),
                  len(shapes[0][0]) - 1)
  elif name == "random_fold_in":
    (key_shape, _), (msg_shape, _) = shapes
    out = np.broadcast_shapes(key_shape[:-1], msg_shape)

    def fn(keys, msgs):
      keys = jnp.broadcast_to(keys, (*out, key_shape[-1]))
      return _vmapped(_THREEFRY.fold_in, len(out))(keys, jnp.broadcast_to(msgs, out))
  else:
    raise _Unsupported(name)
  return jax.make_jaxpr(fn)(*args)


def _sub_jaxpr(eqn: Any) -> tuple[jcore.Jaxpr, Any] | None:
  sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
  if isinstance(sub, jcore.ClosedJaxpr):
    return sub.jaxpr, sub.consts
  if isinstance(sub, jcore.Jaxpr):
    return sub, ()
  return None


def _inlined(eqn: Any) -> bool:
  """A call whose body can be spliced in (no placement of its own)."""
  if eqn.primitive.name not in _CALLS or _sub_jaxpr(eqn) is None:
    return False
  return all(type(s).__name__ == "UnspecifiedValue"
             for name in ("in_shardings", "out_shardings") for s in eqn.params.get(name, ()))


def _on_key_data(eqn: Any) -> dict:
  """The parameters of a structural primitive on keys, for their data (uint32 [..., 2])."""
  p = dict(eqn.params)
  rank = len(eqn.outvars[0].aval.shape)
  name = eqn.primitive.name
  if name == "slice":
    strides = p["strides"] or (1,) * len(p["start_indices"])
    return {**p, "start_indices": (*p["start_indices"], 0),
            "limit_indices": (*p["limit_indices"], 2), "strides": (*strides, 1)}
  if name == "reshape" and p.get("dimensions") is None and p.get("sharding") is None:
    return {**p, "new_sizes": (*p["new_sizes"], 2)}
  if name == "broadcast_in_dim" and p.get("sharding") is None:
    return {**p, "shape": (*p["shape"], 2),
            "broadcast_dimensions": (*p["broadcast_dimensions"], rank)}
  if name == "transpose":
    return {**p, "permutation": (*p["permutation"], rank)}
  if name in ("squeeze", "concatenate", "copy", "copy_p"):
    return p
  raise _Unsupported(f"keys passed to {name}")


class _Literal:
  """A literal operand in the flat program."""

  def __init__(self, value: Any):
    self.value = value


def _flat(jaxpr: jcore.Jaxpr, consts: Any) -> tuple[list, list, list, dict]:
  """(equations, inputs, outputs, constants) of one flat program: calls spliced in,
  random primitives replaced by their hashes, keys by their data. Values are ints."""
  eqns: list = []
  env: dict = {}
  count = itertools.count()

  def splice(jaxpr, consts, inputs):
    names: dict = {}

    def name(v):
      return _Literal(v.val) if isinstance(v, jcore.Literal) else names[v]

    for v, c in zip(jaxpr.constvars, consts):
      names[v] = next(count)
      env[names[v]] = c
    names.update(zip(jaxpr.invars, inputs))
    for eqn in jaxpr.eqns:
      ins = [name(v) for v in eqn.invars]
      prim = eqn.primitive.name
      if prim in _ALIASES:
        outs = ins
      elif prim.startswith("random_"):
        if not all(str(v.aval.dtype) == "key<fry>" for v in (*eqn.invars, *eqn.outvars)
                   if _is_key(v.aval)):
          raise _Unsupported("keys of another implementation")
        shapes = tuple(((*v.aval.shape, 2), np.dtype("uint32")) if _is_key(v.aval)
                       else (tuple(v.aval.shape), np.dtype(v.aval.dtype)) for v in eqn.invars)
        params = tuple(sorted((k, v) for k, v in eqn.params.items() if k != "impl"))
        try:
          sub = _expansion(prim, params, shapes)
        except TypeError as e:  # A parameter that cannot be a cache key.
          raise _Unsupported(prim) from e
        outs = splice(sub.jaxpr, sub.consts, ins)
      elif _inlined(eqn):
        outs = splice(*_sub_jaxpr(eqn), ins)
      else:
        params = eqn.params
        if any(_is_key(v.aval) for v in (*eqn.invars, *eqn.outvars)):
          params = _on_key_data(eqn)
        outs = [next(count) for _ in eqn.outvars]
        eqns.append((eqn, ins, outs, params))
      names.update(zip(eqn.outvars, outs))
    return [name(v) for v in jaxpr.outvars]

  inputs = [next(count) for _ in jaxpr.invars]
  outputs = splice(jaxpr, consts, inputs)
  return eqns, inputs, outputs, env


# At most this many numbers per call: the operands are copied at full size, so a
# wave over a model of billions of parameters is hashed in calls of this size.
MAX_CALL = 1 << 24


def _as_vector(x: Any, shape: tuple) -> jax.Array:
  """`x` broadcast to `shape` and flattened, in as few operations as it needs."""
  x = jnp.asarray(x)
  if x.shape != shape:
    x = lax.broadcast_in_dim(x, shape, tuple(range(len(shape) - x.ndim, len(shape))))
  return x if x.ndim == 1 else lax.reshape(x, (math.prod(shape),))


def _hash_together(rows: list[tuple[list, tuple]]) -> list[tuple[jax.Array, jax.Array]]:
  """threefry2x32 of several (operands, shape) rows in one call."""
  columns = zip(*[[_as_vector(x, shape) for x in operands] for operands, shape in rows])
  ys = jrandom.threefry2x32_p.bind(*(lax.concatenate(list(c), 0) for c in columns))
  shapes = [shape for _, shape in rows]
  parts = [lax.split(y, [math.prod(shape) for shape in shapes]) for y in ys]
  return [tuple(p if len(shape) == 1 else lax.reshape(p, shape) for p in pair)
          for pair, shape in zip(zip(*parts), shapes)]


def _groups(items: list, sizes: list[int]) -> list[list]:
  """`items` in runs of at most MAX_CALL numbers (a larger item alone)."""
  groups: list[list] = [[]]
  size = 0
  for item, n in zip(items, sizes):
    if groups[-1] and size + n > MAX_CALL:
      groups.append([])
      size = 0
    groups[-1].append(item)
    size += n
  return groups


def _signature(eqn: Any, params: dict, operands: list) -> Any:
  """What an equation computes (primitive, parameters, operands by identity or bits),
  or None where a parameter cannot be hashed."""
  key = (eqn.primitive, eqn.ctx, tuple(sorted(params.items())),
         tuple((type(x), np.asarray(x).tobytes()) if isinstance(x, (int, float, bool, np.generic))
               else id(x) for x in operands))
  try:
    hash(key)
  except TypeError:
    return None
  return key


def _evaluate(jaxpr: jcore.Jaxpr, consts: Any, args: list) -> tuple[list, int]:
  """(outputs, threefry calls) of the program with each wave of hashes in one call.

  An equation that computes what an earlier one computed (the same primitive
  and parameters on the same values: models of a grid sharing their seeds
  derive the same keys) is not computed again; every value stays referenced
  in `env`, so operand identities are never reused.
  """
  eqns, inputs, outputs, env = _flat(jaxpr, consts)
  env.update(zip(inputs, args))

  def read(n):
    return n.value if isinstance(n, _Literal) else env[n]

  waiting = [0] * len(eqns)
  users = collections.defaultdict(list)
  for i, (_, ins, _, _) in enumerate(eqns):
    for n in {n for n in ins if not isinstance(n, _Literal) and n not in env}:
      waiting[i] += 1
      users[n].append(i)
  ready = collections.deque(i for i, w in enumerate(waiting) if w == 0)
  hashes: list[int] = []
  calls = 0
  done: dict = {}  # signature -> output values

  def known(names):
    for n in names:
      for j in users.pop(n, ()):
        waiting[j] -= 1
        if waiting[j] == 0:
          ready.append(j)

  while ready or hashes:
    if not ready:  # Every hash whose operands are known: one call.
      fresh, again, seen = [], [], set()
      for i in hashes:
        operands = [read(n) for n in eqns[i][1]]
        sig = _signature(eqns[i][0], eqns[i][3], operands)
        if sig is not None and (sig in done or sig in seen):
          again.append((i, sig))
        else:
          fresh.append((i, sig, (operands, tuple(eqns[i][0].outvars[0].aval.shape))))
        seen.add(sig)
      for group in _groups(fresh, [math.prod(row[1]) for _, _, row in fresh]):
        calls += 1
        for (i, sig, _), pair in zip(group, _hash_together([row for _, _, row in group])):
          env.update(zip(eqns[i][2], pair))
          if sig is not None:
            done[sig] = list(pair)
      for i, sig in again:
        env.update(zip(eqns[i][2], done[sig]))
      for i in hashes:
        known(eqns[i][2])
      hashes = []
      continue
    i = ready.popleft()
    eqn, ins, outs, params = eqns[i]
    if eqn.primitive is jrandom.threefry2x32_p:
      hashes.append(i)
      continue
    operands = [read(n) for n in ins]
    sig = _signature(eqn, params, operands)
    if sig is not None and sig in done:
      res = done[sig]
    else:
      with eqn.ctx.manager:
        res = eqn.primitive.bind(*operands, **eqn.primitive.get_bind_params(params))
      res = res if eqn.primitive.multiple_results else [res]
      if sig is not None:
        done[sig] = res
    env.update(zip(outs, res))
    known(outs)
  return [read(n) for n in outputs], calls


def merged_draws(fn: Callable, platform: str = "cpu") -> Callable:
  """`fn` (traced under jit) with its threefry draws hashed in one call per wave: the
  same outputs bit for bit, a program with a few hash loops instead of one per draw.

  Only where the program runs on `platform` 'cpu': GPUs hash with a kernel of
  their own rather than a loop, so elsewhere `fn` is returned as it is. The
  result is for evaluating, not differentiating: custom derivative rules
  inside `fn` are inlined away (an init has none that matter).
  """
  if platform != "cpu":
    return fn

  @functools.wraps(fn)
  def wrapped(*args):
    flat, tree = jax.tree.flatten(args)
    closed, shapes = jax.make_jaxpr(lambda *a: fn(*jax.tree.unflatten(tree, a)),
                                    return_shape=True)(*flat)
    if closed.jaxpr.effects:
      return fn(*args)
    try:
      out, _ = _evaluate(closed.jaxpr, closed.consts, flat)
    except _Unsupported:
      return fn(*args)
    return jax.tree.unflatten(jax.tree.structure(shapes), out)

  return wrapped


def threefry_calls(fn: Callable, *args) -> tuple[int, int]:
  """(threefry calls in `fn`'s program, in `merged_draws(fn)`'s), for tests and benchmarks."""
  flat, tree = jax.tree.flatten(args)
  closed = jax.make_jaxpr(lambda *a: fn(*jax.tree.unflatten(tree, a)))(*flat)
  eqns, _, _, _ = _flat(closed.jaxpr, closed.consts)
  before = sum(e.primitive is jrandom.threefry2x32_p for e, *_ in eqns)
  found = []
  jax.make_jaxpr(lambda *a: found.append(_evaluate(closed.jaxpr, closed.consts, list(a))[1]))(*flat)
  return before, found[0]
