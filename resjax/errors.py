"""The one exception type launchers turn into a readable one-line error."""


class ConfigError(ValueError):
  """Bad user input: a config value, dataset name, path or flag.

  The message is one line that names the problem and the fix.
  """


def check(condition: bool, message: str) -> None:
  """Raises `ConfigError(message)` unless `condition` holds."""
  if not condition:
    raise ConfigError(message)


def first_line(e: BaseException) -> str:
  """The first line of an exception's message ('' when it has none)."""
  return (str(e).strip().splitlines() or [""])[0]


def choice(field: str, value: str, allowed) -> str:
  """Returns `value` if it is in `allowed`, else raises a ConfigError naming both."""
  allowed = list(allowed)
  if value not in allowed:
    raise ConfigError(
        f"{field}={value!r} is not known; choose one of: {', '.join(map(str, allowed))}")
  return value
