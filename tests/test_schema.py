"""The one config schema: the classes of bad values it refuses, in one line each."""
import math

import ml_collections
import numpy as np
import pytest

from resjax import errors, schema


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 1e39, 1e-39, True, "1", None])
def test_a_positive_number_refuses_non_finite_float32_overflow_bools_and_strings(value):
  assert not schema.Float(0, low_open=True).ok(value)


@pytest.mark.parametrize("value", [1e-3, 3, np.float32(0.5), np.int64(2), 3e38])
def test_a_positive_number_takes_python_and_numpy_numbers(value):
  assert schema.Float(0, low_open=True).ok(value)


def test_integers_take_numpy_integers_and_refuse_bools_floats_and_overflow():
  rule = schema.Int(1)
  assert rule.ok(3) and rule.ok(np.int64(3)) and rule.ok(np.uint8(1))
  for bad in (True, np.bool_(True), 3.0, "3", 0, 2**31, None):
    assert not rule.ok(bad), bad


def test_seeds_are_unsigned_32_bit():
  assert schema.SEED.ok(0) and schema.SEED.ok(2**32 - 1) and schema.SEED.ok(np.uint32(7))
  assert not schema.SEED.ok(2**32) and not schema.SEED.ok(-1) and not schema.SEED.ok(False)
  assert schema.SEED.advice() == "use an integer >= 0 and < 2**32"


def test_lists_choices_and_optional_fields():
  assert schema.Rule("ints", low=1, increasing=True).ok((2, 5))
  assert not schema.Rule("ints", low=1, increasing=True).ok((5, 2))
  assert not schema.Rule("ints", low=1).ok("2,5")
  assert schema.Choice(("a", "b")).advice() == "choose one of: a, b"
  assert not schema.Choice((0, 1)).ok(False)  # False == 0, but a bool is no choice.


def test_problems_name_every_bad_field_in_one_line_each():
  config = ml_collections.ConfigDict({"opt": {"lr": math.inf, "name": "sgd", "momentum": 1.0},
                                      "seed": np.int64(3)})
  rules = {"seed": schema.SEED, "opt.lr": schema.Float(0, low_open=True),
           "opt.momentum": schema.Float(0, 1, high_open=True,
                                        when=lambda c: c.opt.name == "sgd"),
           "opt.decay": schema.Float(0, 1, optional=True), "train.steps": schema.POSITIVE}
  assert schema.problems(config, rules) == [
      "opt.lr=inf is not allowed; use a number > 0 (a finite float32 value: 0 or |x| in "
      "[1.18e-38, 3.4e+38])",
      "opt.momentum=1.0 is not allowed; use a number in [0, 1)",
      "config has no field train.steps; use an integer >= 1"]
  with pytest.raises(errors.ConfigError) as e:
    schema.check_value("net", np.int64(-1), schema.COUNT)
  assert str(e.value) == "net=-1 is not allowed; use an integer >= 0"
