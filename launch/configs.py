"""Lists the config files and their variants, one line each.

  python -m launch.configs                  # every configs/*.py
  python -m launch.configs embedded study   # only these files

Each line is `FILE:VARIANT  what it is`, ready for `--config=`. The variants
are those `get_config` accepts (a config's VARIANTS or STUDIES, else the names
its refusal of an unknown variant lists). The description is, in this order:
the value of a VARIANTS dict (name -> one line); the first sentence beside the
name in a `Variants:` list of the config's docstring (`  name  text`, as in
configs/embedded.py); else a summary of the config (model, data, steps; a
grid's axes; a sweep's activations and manifold).
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import re
from typing import Iterator

from absl import app

import configs
from launch import common
from resjax import errors


def config_files() -> list[str]:
  """The module names under configs/ that define `get_config`."""
  names = [m.name for m in pkgutil.iter_modules(configs.__path__) if not m.name.startswith("_")]
  return [n for n in sorted(names)
          if hasattr(importlib.import_module(f"configs.{n}"), "get_config")]


def variants(module) -> list[str]:
  """The variant names `module.get_config` accepts (besides none, the default)."""
  for attr in ("VARIANTS", "STUDIES"):
    if isinstance(getattr(module, attr, None), (tuple, list, dict)):
      return list(getattr(module, attr))
  try:
    module.get_config("?")
  except errors.ConfigError as e:
    text = str(e)
  else:
    return []
  listed = re.search(r"choose one of: (.*)$", text)
  if listed:
    return [v.strip() for v in listed[1].split(",")]
  return re.findall(r":(\w+)(?=[|\]])", text)  # e.g. "configs/x.py[:a|:b]".


def _axes(grid) -> list[str]:
  """The names of a grid's non-empty axes ('model.depth', 'seeds', ...)."""
  out = []
  for key, value in grid.items():
    if hasattr(value, "items"):
      out += [f"{key}.{k}" for k, v in value.items() if isinstance(v, tuple) and v]
    elif isinstance(value, tuple) and value:
      out.append(key)
  return out


def summary(config) -> str:
  """One line that says what a config runs (training, grid, study or sweep)."""
  if "grids" in config:
    return f"study {config.study}: grids {', '.join(config.grids.keys())}"
  if "model" in config:
    model = config.model
    flags = "".join(f"{k} " for k, v in model.items() if v is True)  # e.g. 'plain ', 'preact '.
    size = "".join(f" {k} {model[k]}" for k in ("depth", "width") if k in model
                   and not isinstance(model[k], tuple))
    line = (f"{flags}{model.name}{size} on {config.data.name}, {config.train.steps} steps of "
            f"{config.data.batch_size}")
    if config.get("grid") and _axes(config.grid):
      line += f"; grid over {', '.join(_axes(config.grid))}"
    return line
  if "manifold" in config:
    acts, dims = config.activations, config.dims
    acts = ", ".join(acts) if len(acts) <= 3 else f"{len(acts)} activations"
    return (f"sweep of {acts} on the {config.manifold.name}, n = {min(dims)}..{max(dims)}, "
            f"{config.seeds} seeds")
  return ""


def _sentence(text: str, limit: int = 100) -> str:
  """The first sentence of `text` (its lines joined), at most `limit` characters."""
  text = " ".join(text.split())
  found = re.search(r"\.(?=\s+[A-Z(]|$)", text)
  text = text[:found.start()] if found else text
  return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def _doc_line(module, name: str) -> str | None:
  """The first sentence beside `name` in the 'Variants:' list of the module docstring."""
  doc = (module.__doc__ or "").split("\nVariants:\n", 1)
  if len(doc) < 2:
    return None
  lines = doc[1].split("\n\n", 1)[0].splitlines()
  for i, line in enumerate(lines):
    found = re.match(rf"^(\s+){re.escape(name)}\s+(\S.*)$", line)
    if found:
      indent = len(found[1])
      more = []
      for other in lines[i + 1:]:
        if len(other) - len(other.lstrip()) <= indent:
          break
        more.append(other)
      return _sentence(" ".join([found[2], *more]))
  return None


def rows(name: str) -> Iterator[tuple[str, str]]:
  """(FILE:VARIANT, description) of each variant of configs/<name>.py; the default first."""
  module = importlib.import_module(f"configs.{name}")
  default = module.get_config().to_dict()
  path = f"configs/{name}.py"
  names = variants(module)
  if not any(module.get_config(v).to_dict() == default for v in names):
    yield path, summary(module.get_config()) + " (default)"
  for v in names:
    config = module.get_config(v)
    given = getattr(module, "VARIANTS", None)
    text = (given[v] if isinstance(given, dict) else None) or _doc_line(module, v) or summary(
        config)
    yield f"{path}:{v}", text + (" (default)" if config.to_dict() == default else "")


def listing(names: list[str]) -> str:
  """The text printed: each file's first docstring line, then its variants."""
  out = []
  for name in names:
    module = importlib.import_module(f"configs.{name}")
    out.append(f"configs/{name}.py: {_sentence((module.__doc__ or '').split(chr(10) * 2)[0])}")
    found = list(rows(name))
    width = max(len(r[0]) for r in found)
    out += [f"  {spec:<{width}}  {text}".rstrip() for spec, text in found]
  return "\n".join(out)


@common.readable_errors
def main(argv: list[str]) -> None:
  known = config_files()
  names = [errors.choice("config file", os.path.splitext(os.path.basename(a))[0], known)
           for a in argv[1:]] or known
  print(listing(names))


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
