"""The one config schema: each field's type, range, finiteness, choices and fix, declared once.

A `Rule` says what one field accepts; `problems(config, rules)` checks a
config (ConfigDict, dict or anything with keys) against a table of rules
keyed by dotted field name and returns one line per bad field, all of them,
in the words every launcher prints: `FIELD=VALUE is not allowed; FIX`.

The rules close the classes of bad values that hand-written checks let
through: bools are never integers or numbers, NumPy integers and floats are
integers and numbers, every float is finite unless its rule says otherwise
and must be a float32 normal number or 0 (training and the sweep compute in
float32), and integers (seeds included) stay within what the code can hold.

Written here rather than with a validation library: the messages must name
the field and its fix in one line, NumPy scalars must pass as Python ones, and
ml_collections stays the config format; a library would need a custom
validator for nearly every one of those rules.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from resjax import errors

# Seeds are unsigned 32-bit everywhere (a PRNG key's seed, NumPy's generators).
SEED_MAX = 2**32 - 1
# Sizes and counts: products of these are refused later with an estimate; one
# field alone stays below what a signed 32-bit index can address.
INT_MAX = 2**31 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)

MISSING = object()

Choices = Union[Sequence[Any], Callable[[], Sequence[Any]]]


def is_int(v: Any) -> bool:
  """A Python or NumPy integer, not a bool."""
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_number(v: Any) -> bool:
  """A Python or NumPy integer or float, not a bool."""
  return is_int(v) or isinstance(v, (float, np.floating))


def is_bool(v: Any) -> bool:
  return isinstance(v, (bool, np.bool_))


def show(v: Any) -> str:
  """repr with NumPy scalars shown as the Python values they hold."""
  if isinstance(v, np.generic):
    v = v.item()
  return repr(v)


@dataclasses.dataclass(frozen=True)
class Rule:
  """What one field accepts.

  kind: "int", "float" (a number), "bool", "str", "path" (str or os.PathLike),
    "choice" (one of `choices`), "list" (a tuple or list, each entry under
    `item`), "ints" / "floats" (a list of integers / numbers under this
    rule's bounds), "any".
  low / high: bounds, closed unless `low_open` / `high_open`.
  finite: floats must be finite float32 values (normal or 0) unless False.
  optional: the field may be absent. none_ok: the value may be None.
  when: the rule applies only where `when(config)` is true.
  increasing / nonempty / unique: a list's values must increase / the list
    must not be empty / no value may come twice.
  split: a list may also come as comma-separated text ('relu,tanh', as flags
    give it); each text entry is split at its commas.
  test: one more condition an otherwise allowed value must meet.
  fix: the advice after "is not allowed;" (generated from the rule when None).
  """
  kind: str
  low: Optional[float] = None
  high: Optional[float] = None
  low_open: bool = False
  high_open: bool = False
  choices: Optional[Choices] = None
  finite: bool = True
  optional: bool = False
  none_ok: bool = False
  when: Optional[Callable[[Any], bool]] = None
  fix: Optional[str] = None
  increasing: bool = False
  nonempty: bool = False
  unique: bool = False
  split: bool = False
  item: Optional["Rule"] = None
  test: Optional[Callable[[Any], bool]] = None

  def allowed(self) -> tuple:
    c = self.choices() if callable(self.choices) else self.choices
    return tuple(c or ())

  def advice(self) -> str:
    """The fix, in words."""
    if self.fix:
      return self.fix
    if self.kind == "choice":
      return "choose one of: " + ", ".join(str(c) for c in self.allowed())
    if self.kind == "bool":
      return "use True or False"
    if self.kind == "str":
      return "use a string"
    if self.kind == "list":
      one = self.item.advice() if self.item is not None else "any value"
      return (f"give {'a non-empty' if self.nonempty else 'a'} list"
              f"{' of distinct values' if self.unique else ''}, each entry: {one}")
    what = {"int": "an integer", "float": "a number", "ints": "integers",
            "floats": "numbers"}.get(self.kind, "a value")
    return f"use {what}{self._range()}"

  def _range(self) -> str:
    lo, hi = self.low, self.high
    if lo is not None and hi is not None:
      return (f" in {'(' if self.low_open else '['}{_num(lo)}, {_num(hi)}"
              f"{')' if self.high_open else ']'}")
    if lo is not None:
      return f" {'>' if self.low_open else '>='} {_num(lo)}"
    if hi is not None:
      return f" {'<' if self.high_open else '<='} {_num(hi)}"
    return ""

  def ok(self, v: Any) -> bool:
    """Whether `v` is allowed."""
    if v is None:
      return self.none_ok
    if not self._ok(v):
      return False
    return self.test is None or bool(self.test(v))

  def _ok(self, v: Any) -> bool:
    if self.kind == "any":
      return True
    if self.kind == "bool":
      return is_bool(v)
    if self.kind == "str":
      return isinstance(v, str)
    if self.kind == "path":
      return isinstance(v, (str, os.PathLike))
    if self.kind == "choice":
      return not is_bool(v) and v in self.allowed()
    if self.kind in ("ints", "floats", "list"):
      v = entries(v, self.split)
      if v is None or (self.nonempty and not v):
        return False
      one = self.item if self.kind == "list" else dataclasses.replace(
          self, kind=self.kind[:-1], nonempty=False, unique=False, increasing=False,
          test=None, fix=None)
      if one is not None and not all(one.ok(x) for x in v):
        return False
      if self.unique and len({_hashable(x) for x in v}) != len(v):
        return False
      return not self.increasing or list(v) == sorted(set(v))
    if self.kind == "int" and not is_int(v):
      return False
    if self.kind == "float" and not is_number(v):
      return False
    return self._in_range(v)

  def _in_range(self, v: Any) -> bool:
    x = float(v) if self.kind == "float" else int(v)
    if self.kind == "float" and self.finite:
      if not math.isfinite(x) or abs(x) > FLOAT32_MAX or 0 < abs(x) < FLOAT32_TINY:
        return False
    if self.kind == "int" and not -INT_MAX - 1 <= x <= (self.high if self.high is not None
                                                          else INT_MAX):
      return False
    if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
      return False
    if self.high is not None and (x > self.high or (self.high_open and x == self.high)):
      return False
    return True


def entries(value: Any, split: bool = False) -> Optional[list]:
  """A list field's entries (text entries split at commas when `split`); None
  when `value` is not a list (text is one only with `split`)."""
  if isinstance(value, str) and split:
    value = (value,)
  if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
    return None
  out = []
  for v in value:
    if isinstance(v, str) and split:
      out.extend(p.strip() for p in v.split(",") if p.strip())
    else:
      out.append(v)
  return out


def _hashable(x: Any) -> Any:
  if isinstance(x, (list, tuple)):
    return tuple(_hashable(v) for v in x)
  return x.item() if isinstance(x, np.generic) else x


def _num(x: float) -> str:
  return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


# The common rules, by what a field is.
def Int(low: Optional[int] = None, high: Optional[int] = None, **kw) -> Rule:  # pylint: disable=invalid-name
  return Rule("int", low=low, high=high, **kw)


def Float(low: Optional[float] = None, high: Optional[float] = None, **kw) -> Rule:  # pylint: disable=invalid-name
  return Rule("float", low=low, high=high, **kw)


def Bool(**kw) -> Rule:  # pylint: disable=invalid-name
  return Rule("bool", **kw)


def Choice(choices: Choices, **kw) -> Rule:  # pylint: disable=invalid-name
  return Rule("choice", choices=choices, **kw)


def List(item: Rule, **kw) -> Rule:  # pylint: disable=invalid-name
  """A tuple or list whose entries each follow `item`."""
  return Rule("list", item=item, **kw)


SEED = Int(0, SEED_MAX, fix="use an integer >= 0 and < 2**32")
POSITIVE = Int(1)
COUNT = Int(0)


def get(config: Any, dotted: str) -> Any:
  """config[a][b] for "a.b"; MISSING where a part is absent."""
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return MISSING
    node = node[part]
  return node


def leaves(config: Any, prefix: str = "") -> list[str]:
  """The dotted names of the fields of `config` that are not groups, in order."""
  out = []
  for key, value in config.items():
    if hasattr(value, "keys"):
      out += leaves(value, f"{prefix}{key}.")
    else:
      out.append(f"{prefix}{key}")
  return out


def uncovered(config: Any, rules: Mapping[str, Rule]) -> list[str]:
  """The fields of `config` that no rule of `rules` covers."""
  return [f for f in leaves(config) if f not in rules]


def problem(field: str, value: Any, rule: Rule) -> Optional[str]:
  """The one line for `field`=`value` under `rule`, or None when it is allowed."""
  if value is MISSING:
    return None if rule.optional else f"config has no field {field}; {rule.advice()}"
  if rule.ok(value):
    return None
  return f"{field}={show(value)} is not allowed; {rule.advice()}{_limit(value, rule)}"


def _limit(value: Any, rule: Rule) -> str:
  """The limit a value broke that the rule's range does not show: float32 or int32."""
  if rule.kind in ("list", "ints", "floats"):
    item = rule.item if rule.kind == "list" else dataclasses.replace(
        rule, kind=rule.kind[:-1], fix=None, test=None)
    bad = [x for x in (entries(value, rule.split) or []) if item is not None and not item.ok(x)]
    return _limit(bad[0], item) if bad else ""
  if rule.kind == "float" and rule.finite and is_number(value) and dataclasses.replace(
      rule, finite=False).ok(value):
    return (f" (a finite float32 value: 0 or |x| in [{FLOAT32_TINY:.3g}, "
            f"{FLOAT32_MAX:.3g}])")
  if rule.kind == "int" and is_int(value) and rule.high is None and value > INT_MAX:
    return f" (at most 2**31 - 1 = {INT_MAX})"
  return ""


def problems(config: Any, rules: Mapping[str, Rule], prefix: str = "") -> list[str]:
  """One line per field of `config` that breaks its rule (empty when all are fine)."""
  out = []
  for field, rule in rules.items():
    if rule.when is not None and not rule.when(config):
      continue
    line = problem(prefix + field, get(config, field), rule)
    if line:
      out.append(line)
  return out


def require_config(config: Any, what: str) -> None:
  """ConfigError unless `config` is a config (anything with keys); `what` says which
  kind to pass (the value is shown only when refused: a ConfigDict's repr is slow)."""
  if not hasattr(config, "keys"):
    raise errors.ConfigError(f"config={config!r} is not allowed; pass {what}")


def check(config: Any, rules: Mapping[str, Rule], prefix: str = "") -> None:
  """ConfigError naming every bad field (one line each)."""
  found = problems(config, rules, prefix)
  if found:
    raise errors.ConfigError("\n".join(found))


def check_value(field: str, value: Any, rule: Rule) -> None:
  """ConfigError unless `value` is allowed for `field` (API arguments)."""
  line = problem(field, value, rule)
  if line:
    raise errors.ConfigError(line)
