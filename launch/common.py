"""What every launcher shares: one-line errors, a device log, the compilation cache.

Importing it (before JAX starts) also drops log lines no user acts on: JAX's
INFO line for each platform plugin that is absent (`Unable to initialize
backend 'tpu'` on every machine without a TPU) and matplotlib's one-time font
cache notice.
"""
from __future__ import annotations

import ast
import errno
import functools
import logging as py_logging
import os
import re
import sys
import traceback
from typing import Callable, Mapping

from absl import flags, logging

import launch

from resjax import errors


def _noise(record: py_logging.LogRecord) -> bool:
  """False for an INFO line that tells the user nothing they act on."""
  if record.levelno > py_logging.INFO:
    return True
  return not str(record.msg).startswith(_NOISE.get(record.name, "\0"))


# logger -> start of its INFO messages to drop. An absent plugin is INFO for
# JAX; asking for one (JAX_PLATFORMS=tpu) that fails is an error and still shows.
_NOISE = {"jax._src.xla_bridge": "Unable to initialize backend",
          "matplotlib.font_manager": "generated new fontManager"}
for _name in _NOISE:
  py_logging.getLogger(_name).addFilter(_noise)


def readable_errors(main: Callable) -> Callable:
  """Wraps an absl `main` so each failure a user can act on ends in one line.

  Bad input (ConfigError): exit 2. A result set or checkpoint that could not
  be written, a full or read-only disk, a diverged training run, out of memory
  (XLA's RESOURCE_EXHAUSTED, MemoryError): exit 1. Ctrl-C (KeyboardInterrupt):
  exit 130.
  """

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except errors.ConfigError as e:
      fail(str(e))
    except KeyboardInterrupt:
      fail("interrupted (SIGINT); files written so far are whole, nothing else was kept",
           code=130)
    except MemoryError:
      fail(f"out of memory; {_MEMORY_FIX}", code=1)
    except OSError as e:
      if e.errno not in DISK_ERRNOS:
        raise
      where = f" to {e.filename}" if e.filename else ""
      fail(f"could not write{where} ({e.strerror}); free some space or pass a writable "
           "--workdir; files written before are whole", code=1)
    except Exception as e:  # pylint: disable=broad-except
      from resjax import files  # pylint: disable=g-import-not-at-top
      if isinstance(e, files.ResultsNotWritten):
        fail(str(e), code=1)
      train = sys.modules.get("resjax.train")  # Its errors can only come once it is loaded.
      if train is not None and isinstance(e, (train.Diverged, train.NotSaved)):
        fail(str(e), code=1, now=isinstance(e, train.NotSaved))
      if "RESOURCE_EXHAUSTED" not in str(e)[:2000]:
        raise
      line = next((l.strip() for l in str(e).splitlines() if "RESOURCE_EXHAUSTED" in l), "")
      fail(f"out of memory ({line[:200]}); {_MEMORY_FIX}", code=1)

  return wrapped


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # A full or read-only disk.
_MEMORY_FIX = ("pass a smaller --config.chunk, fewer --config.seeds or --config.dims (sweeps), "
               "or a smaller batch or model (training)")


def default_cache_dir(environ=None) -> str:
  """$XDG_CACHE_HOME/resjax/jax, or ~/.cache/resjax/jax."""
  environ = os.environ if environ is None else environ
  root = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "resjax", "jax")


_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", default_cache_dir(),
    "JAX's persistent compilation cache: a rerun loads the compiled programs from here "
    "instead of compiling them again. Empty: no cache.")
# Flags defined through this module's helpers from here on (--config) belong to
# the launcher that calls them, so its --help lists them.
flags.disclaim_key_flags()


def compilation_cache(path: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache in `path` (default: the flag's value).

  Call before anything compiles. An empty path turns it off. Returns the
  directory used, or None.
  """
  path = _CACHE_DIR.value if path is None else path
  if not path:
    return None
  import jax
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(f"cannot create --compilation_cache_dir={path} ({e.strerror}); "
                             "pass a writable directory, or an empty value for no cache") from None
  errors.check(os.access(path, os.W_OK | os.X_OK),
               f"--compilation_cache_dir={path} is not writable; pass a writable directory, "
               "or an empty value for no cache")
  jax.config.update("jax_compilation_cache_dir", path)
  # Keep every program, not only those over JAX's default 1 s of compile time:
  # a study or an analysis compiles many small ones.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def log_devices() -> None:
  """Logs the process index and the devices JAX sees."""
  import jax
  logging.info("process %d/%d, %d local / %d global devices: %s",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices())


def fail(message: str, code: int = 2, *, now: bool = False) -> None:
  """Prints each line of `message` as `error: ...` and exits with `code`.

  `now`: at once (`runtime.exit_now`), for a failed checkpoint save whose
  Orbax threads may still be running: the interpreter's teardown would abort in
  C++ under them (a core dump instead of the exit code).
  """
  text = "\n".join(f"error: {line}" for line in message.strip().splitlines())
  if now:
    # Imported here: launch.runtime imports JAX, which launch.bench starts only
    # after choosing its host platform.
    from launch import runtime  # pylint: disable=g-import-not-at-top
    runtime.exit_now(text, code)
  print(text, file=sys.stderr)
  sys.exit(code)


def unknown_field(e: BaseException) -> str:
  """One line for an override of a field the config lacks.

  ml_collections wraps a KeyError whose text holds the field and a suggestion
  on two lines; unwrap it instead of printing nested reprs.
  """
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  text = str(e.args[0]) if e.args else str(e)
  reason = "; ".join(line.strip() for line in text.splitlines() if line.strip())
  return f"a --config.<field> override names a field the config lacks: {reason}"


def _syntax(e: SyntaxError) -> str:
  """One line for a config file Python cannot parse: the file, the line, what is wrong."""
  return (f"--config file {e.filename} line {e.lineno}: {e.msg} (a Python syntax error); "
          "fix the file")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing where a bad --config (file, variant, field) ends in one line.

  Use as `app.run(main, flags_parser=common.parse_flags)`. Turns the garbage
  collector back on (see launch/__init__.py) once the config is loaded.
  """
  try:
    rest = _parse(argv)
  finally:
    launch.resume_gc()
  return rest


def _parse(argv: list[str]) -> list[str]:
  try:
    rest = flags.FLAGS(argv)
  except SyntaxError as e:
    fail(_syntax(e))
  except (flags.Error, AttributeError, KeyError) as e:
    lines = str(e).strip().splitlines() or [repr(e)]
    found = [l.split("ConfigError: ", 1)[1] for l in lines if "ConfigError: " in l]
    if found:
      fail(found[-1])
    if "Error whilst parsing config file" in str(e):  # get_config raised a ValueError / TypeError.
      fail(_raised(_config_file(argv), lines))
    if isinstance(e, AttributeError) and "'get_config'" in str(e):
      fail(f"--config file {_config_file(argv)} has no get_config(); a config file defines "
           "get_config(arg=None) returning an ml_collections.ConfigDict")
    if isinstance(e, flags.Error):
      fail(lines[0])
    fail(unknown_field(e))
  except Exception as e:  # pylint: disable=broad-except  (anything else get_config raised)
    fail(_raised(_config_file(argv), traceback.format_exception(e)))
  if "config" in flags.FLAGS:
    try:
      value = flags.FLAGS["config"].value  # A missing file fails here, not while parsing.
      value.keys()
    except SyntaxError as e:
      fail(_syntax(e))
    except OSError:
      given = flags.FLAGS["config"].serialize().split("=", 1)[-1]
      fail(f"cannot load --config={given}; pass an existing config file[:variant]")
    except AttributeError:
      fail(f"--config file {_config_file(argv)}: get_config returned {value!r}, not a "
           "config; return an ml_collections.ConfigDict")
  return rest


def _config_file(argv: list[str]) -> str:
  """The config file named by the last --config=FILE[:variant] of `argv` (or the default)."""
  given = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      given = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      given = argv[i + 1]
  if given is None and "config" in flags.FLAGS:
    given = str(flags.FLAGS["config"].default_as_str or "").strip("'\"")
  return (given or "?").split(":", 1)[0]


def _raised(path: str, trace: list[str]) -> str:
  """One line for a config file whose get_config raised: the file, the line, the error."""
  text = "\n".join(trace).strip().splitlines()
  error = next((l.strip() for l in reversed(text) if re.match(r"^\w[\w.]*(Error|Exception)\b", l.strip())),
               text[-1].strip() if text else "an error")
  where = [m.group(1) for l in text if (m := re.search(
      rf'File "{re.escape(os.path.abspath(path))}", line (\d+)', l))]
  line = f" line {where[-1]}" if where else ""
  return f"--config file {path}{line}: get_config raised {error}; fix the file"


def overridden() -> dict:
  """The config fields set by `--config.<field>=VALUE` flags: dotted field -> value."""
  from ml_collections import config_flags
  return dict(config_flags.get_override_values(flags.FLAGS["config"]))


def refuse_unused(unused: Mapping[str, str]) -> None:
  """ConfigError naming each `--config.<field>` flag that sets a field in `unused`
  (field -> why the config does not read it: `train.unused`, `collapse.unused`,
  `studies.unused`), so that no flag is silently ignored."""
  lines = [f"--config.{field}={value!r} is not used: {unused[field]}; drop the flag, or "
           "change what makes it unused" for field, value in overridden().items()
           if field in unused]
  errors.check(not lines, "\n".join(lines))


class LastTupleParser(flags.ArgumentParser):
  """A tuple field's override, parsed as ml_collections does ('2,3' -> (2, 3),
  'relu' -> ('relu',)), where the last `--config.<field>` given wins, as for
  every other absl flag, and an empty value (`--config.dims=`) is the empty tuple.

  ml_collections' own parser makes a tuple field a multi-flag: each repeat adds
  its values to the earlier ones (`--config.dims=2,3 --config.dims=5` gave
  (2, 3, 5)) and an empty value was kept as the string ''.
  """

  def parse(self, argument):
    from ml_collections.config_flags import tuple_parser
    if isinstance(argument, str) and not argument.strip():
      return ()
    value = tuple_parser.TupleParser().parse(argument)
    if isinstance(argument, str) and value == (argument,):  # Not a Python literal as a whole
      # ('0.1,inf', 'relu,tanh'): each comma-separated part on its own, so that numbers
      # stay numbers beside words Python's literals lack (inf, nan).
      value = tuple(_scalar(p.strip()) for p in argument.split(",") if p.strip())
    return value

  def flag_type(self) -> str:
    return "tuple"


def _scalar(text: str):
  """A flag's text as the number or literal it spells ('inf' -> inf, '3' -> 3), else the text."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    pass
  try:
    return float(text)
  except ValueError:
    return text


def define_config(default: str, help_text: str):
  """`config_flags.DEFINE_config_file` (locked) whose bad overrides end in one line.

  With a default file, ml_collections applies `--config.<field>` overrides while
  the flag is defined, so an unknown field fails here rather than in parsing.
  A repeated `--config.<field>` takes its last value, tuple fields included
  (`LastTupleParser`).
  """
  from ml_collections import config_flags
  config_flags.register_flag_parser_for_type(tuple, LastTupleParser())
  help_text = f"{help_text.rstrip('.')}; list: python -m launch.configs"
  try:
    return config_flags.DEFINE_config_file("config", default, help_text, lock_config=True)
  except (AttributeError, KeyError) as e:
    fail(unknown_field(e))
