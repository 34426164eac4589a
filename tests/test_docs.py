"""The documentation site's promises: the API reference covers every public name of the
documented packages, and the pages whose code a reader runs (the worked theory page, the
Flax NNX loop) run as written, with their own assertions."""
from __future__ import annotations

import importlib
import os
import re
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
API_PAGES = os.path.join(DOCS, "api")
# The packages whose public names the API reference must cover.
DOCUMENTED = ("mixjax", "mixjax.samplers", "mixjax.theory", "mixjax.eval")
_SCALARS = (bool, int, float, str, bytes, type(None))


def public_names(module: types.ModuleType) -> list[str]:
  """`__all__`, or else every name without a leading underscore that is not a module."""
  names = getattr(module, "__all__", None)
  if names is None:
    names = [n for n in vars(module) if not n.startswith("_")]
  return [n for n in names if not isinstance(getattr(module, n), types.ModuleType)]


def _resolve(path: str):
  module, _, name = path.rpartition(".")
  return getattr(importlib.import_module(module), name)


def _reference_entries() -> list[str]:
  entries = []
  for name in sorted(os.listdir(API_PAGES)):
    with open(os.path.join(API_PAGES, name), encoding="utf-8") as fh:
      entries += re.findall(r"^::: ([\w.]+)\s*$", fh.read(), re.M)
  return entries


def test_api_reference_covers_every_public_name():
  """Each public name of `DOCUMENTED` has a `::: package.name` entry, or (for an object
  re-exported by `mixjax`) an entry of the same object under its own package. Every entry
  names an object that exists, and none is listed twice."""
  entries = _reference_entries()
  assert len(entries) == len(set(entries)), "an API entry is listed twice"
  documented = {path: _resolve(path) for path in entries}  # raises on a stale entry
  # Scalars may be shared objects (small ints), so they count only under their own path.
  objects = [obj for obj in documented.values() if not isinstance(obj, _SCALARS)]
  missing = []
  for package in DOCUMENTED:
    module = importlib.import_module(package)
    for name in public_names(module):
      obj = getattr(module, name)
      if f"{package}.{name}" in documented:
        continue
      if not isinstance(obj, _SCALARS) and any(obj is o for o in objects):
        continue
      missing.append(f"{package}.{name}")
  assert not missing, f"not in docs/api/*.md: {missing}"


def test_public_names_negative_control():
  """The coverage check sees a name that no page documents."""
  module = types.ModuleType("fake")
  module.documented, module.undocumented, module._private = len, max, min
  assert public_names(module) == ["documented", "undocumented"]
  module.__all__ = ["undocumented"]
  assert public_names(module) == ["undocumented"]
