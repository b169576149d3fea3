"""What a model family declares beside its class: grid toggles and traits.

A family is a Flax module class with

  RULES     {field: resjax.schema.Rule}: every field a config may set, with
            its rule (checked when the module is built, and by the config
            checks before any work);
  TOGGLES   {field: Toggle}: the fields a grid switches per net through a gate
            (resjax/grid/), with the gate's name, its value for a field value
            and the value the padded (gated) model takes for the field;
  PADDED    (optional) {field: value}: fields a grid varies without a gate,
            where the padded model takes `value` and the unit mask does the
            rest (e.g. a parameter some nets lack is padded with zeros and
            never updated);
  describe  a static method: fields -> a short name of the net ('resnet-20');
  traits    a static method: fields -> Traits (width, depth, variant), the
            terms the studies compare nets in;
  tap_in_padded  (optional) a static method: (tap, fields, padded fields) ->
            the tap of the padded model of a grid that holds this net's tap
            `tap` (default: the same name), for the probes during training.

  unused    (optional) a static method: fields -> {field: why} for fields
            the others make unused (a grid axis over one is refused).

The static methods get every field of the family, defaults filled in.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple


class Toggle(NamedTuple):
  """A model field a grid switches per net with a gate in the 'gates' collection."""
  gate: str  # The gate's name.
  value: Callable[[Any], float]  # The field's value -> the gate's (1.0 on, 0.0 off).
  padded: Any  # What the padded model takes for the field (the gates then decide).


class Traits(NamedTuple):
  """A net in the studies' terms."""
  width: int  # Units of a layer or channels of the first stage.
  depth: int  # Layers, or blocks of the first stage (inverted residual nets).
  variant: str  # e.g. 'plain' / 'residual', a bottleneck, a first layer.


def width_depth_name(fields: Mapping[str, Any], residual: str, plain: str) -> str:
  """'<kind>-<depth>x<width>' of a family with width, depth and residual fields."""
  kind = residual if fields["residual"] else plain
  return f"{kind}-{fields['depth']}x{fields['width']}"


def width_depth_traits(fields: Mapping[str, Any]) -> Traits:
  """The traits of a family with width, depth and residual fields."""
  return Traits(int(fields["width"]), int(fields["depth"]),
                "residual" if fields["residual"] else "plain")
