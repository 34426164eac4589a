"""A tiny name -> factory registry used for samplers, losses, models, datasets, methods.

Unknown names raise a ValueError that lists the known ones and, for a near miss, the
closest ("Did you mean 'beta'?", difflib's ratio >= 0.6, as unknown config keys get in
`mixjax.train.config.unknown_key_hint`), so a typo in a config fails immediately with the
fix in the message.

`load_entry_point("MODULE:ATTR")` is the other way to name an object: the `module:attr`
convention of Python entry points, MODULE an importable module or a path to a `.py` file
(for a user's own sampler factory, `mixjax.samplers.make_sampler`).
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import sys
from typing import Any, Callable, Dict, Iterator


class Registry:
  """Maps names to objects (usually factories). `get` raises a helpful ValueError."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: Dict[str, Any] = {}

  def register(self, name: str, obj: Any = None) -> Callable[[Any], Any] | Any:
    """Register `obj` under `name`; usable as a decorator when `obj` is None."""
    def _add(o):
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is registered twice.")
      self._items[name] = o
      return o
    return _add if obj is None else _add(obj)

  def get(self, name: str) -> Any:
    """The object registered under `name`.

    Raises:
      ValueError (one line): "Unknown <kind> 'betta'. Known <kind>s: a, b, ... Did you
        mean 'beta'?"; the last sentence only when a known name is close to `name`.
    """
    if name not in self._items:
      raise ValueError(
          f"Unknown {self.kind} {name!r}. Known {self.kind}s: "
          f"{', '.join(sorted(self._items))}.{self.suggest(name)}")
    return self._items[name]

  def suggest(self, name: Any) -> str:
    """The hint appended to the unknown-name error: " Did you mean 'x'?" (up to 3 close
    known names, closest first), or "" when none is close (difflib ratio < 0.6) or `name`
    is not a string."""
    if not isinstance(name, str):
      return ""
    close = difflib.get_close_matches(name, sorted(self._items), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._items))


def is_entry_point(name: Any) -> bool:
  """True for a "MODULE:ATTR" name (`load_entry_point`), False for a registered name."""
  return isinstance(name, str) and ":" in name


def _first_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return (lines[-1] if lines else type(e).__name__).rstrip(".")


def _import_file(path: str, spec: str):
  """The module of the `.py` file `path`, executed once per process: its module name is
  derived from the absolute path, so every lookup returns the same module (the same
  functions, so the objects built from them compare equal)."""
  full = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(full):
    where = "" if os.path.isabs(path) else f", relative to the current directory {os.getcwd()}"
    raise ValueError(f"{spec!r}: no such file {full}{where}. Give a path to a .py file or an "
                     "importable module before the ':'.")
  stem = "".join(c if c.isalnum() else "_" for c in os.path.basename(full)[:-3])
  name = f"_mixjax_user_{stem}_{hashlib.sha1(full.encode()).hexdigest()[:10]}"
  if name in sys.modules:
    return sys.modules[name]
  module_spec = importlib.util.spec_from_file_location(name, full)
  module = importlib.util.module_from_spec(module_spec)
  sys.modules[name] = module  # before running it, as `import` does (dataclasses need it)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (the user's file raised)
    del sys.modules[name]
    raise ValueError(f"{spec!r}: importing {full} raised {type(e).__name__}: "
                     f"{_first_line(e)}. Fix the file.") from e
  return module


def _import_module(module_name: str, spec: str):
  try:
    return importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and module_name.startswith(e.name):
      raise ValueError(
          f"{spec!r}: no module named {module_name!r} (nor a file: a file path ends in "
          f".py). Give a path to a .py file, e.g. ./{module_name.replace('.', '/')}.py, or "
          "a module on sys.path.") from None
    raise ValueError(f"{spec!r}: importing {module_name} raised ModuleNotFoundError: "
                     f"{_first_line(e)}. Install it or fix the import.") from e
  except Exception as e:  # pylint: disable=broad-except  (the module raised on import)
    raise ValueError(f"{spec!r}: importing {module_name} raised {type(e).__name__}: "
                     f"{_first_line(e)}. Fix the module.") from e


def load_entry_point(spec: str) -> Any:
  """The object named by "MODULE:ATTR", the `module:attr` convention of entry points.

  MODULE is a path to a `.py` file (it ends in `.py` or holds a path separator; relative
  to the current directory, or absolute), executed once per process, or an importable
  module name (`importlib.import_module`, so on `sys.path`). ATTR is an attribute of it.
  The last ':' splits, so a Windows path with a drive letter works.

  Raises:
    ValueError (one line, naming the fix): no ':', no such file or module, the module
      raised while importing, no such attribute (the module's public callables are
      listed, with the closest name).
  """
  module_name, _, attr = str(spec).rpartition(":")
  if not module_name or not attr:
    raise ValueError(f"{spec!r}: expected MODULE:ATTR, e.g. mylaws.py:trunc_normal.")
  if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
    module = _import_file(module_name, spec)
  else:
    module = _import_module(module_name, spec)
  if not hasattr(module, attr):
    names = sorted(n for n, v in vars(module).items()
                   if callable(v) and not n.startswith("_")
                   and getattr(v, "__module__", None) == module.__name__)
    close = difflib.get_close_matches(attr, names, n=1, cutoff=0.6)
    raise ValueError(
        f"{spec!r}: {module_name} has no attribute {attr!r}. "
        + (f"Its functions: {', '.join(names)}." if names else "It defines no functions.")
        + (f" Did you mean {close[0]!r}?" if close else ""))
  return getattr(module, attr)
