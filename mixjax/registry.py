"""A tiny name -> factory registry used for samplers, losses, models, datasets, methods.

Unknown names raise a ValueError that lists the known ones and, for a near miss, the
closest ("Did you mean 'beta'?", difflib's ratio >= 0.6, as unknown config keys get in
`mixjax.train.config.unknown_key_hint`), so a typo in a config fails immediately with the
fix in the message.
"""
from __future__ import annotations

import difflib
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
