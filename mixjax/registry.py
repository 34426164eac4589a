"""A tiny name -> factory registry used for samplers, losses, models, datasets, methods.

Unknown names raise a ValueError that lists the known ones, so a typo in a config
fails immediately with the fix in the message.
"""
from __future__ import annotations

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
    if name not in self._items:
      raise ValueError(
          f"Unknown {self.kind} {name!r}. Known {self.kind}s: "
          f"{', '.join(sorted(self._items))}.")
    return self._items[name]

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._items))
