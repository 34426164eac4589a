"""Where a result came from: the code revision (git), package versions, the machine.

`code_revision()` is cheap and cached (the trainer records it in every summary.json);
`provenance()` is the full record the studies keep with their results.
"""
from __future__ import annotations

import datetime
import functools
from importlib import metadata
import os
import platform
import subprocess
import sys
from typing import Any


_PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "scipy", "scikit-learn",
             "matplotlib", "mnist1d", "tensorflow-datasets")


def _git(*args: str, cwd: str | None = None) -> str | None:
  """git's stdout, run in `cwd` (default: the folder of this file, in the checkout
  mixjax runs from); None where git fails."""
  try:
    out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                         cwd=cwd or os.path.dirname(os.path.abspath(__file__)))
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def _cpu() -> dict[str, Any]:
  """The CPU's model name and its vector-instruction flags (/proc/cpuinfo; empty
  elsewhere): XLA:CPU compiles for the host's instruction set, and the last bits of some
  results (e.g. transcendental functions in the λ draws) may depend on it."""
  try:
    with open("/proc/cpuinfo") as f:
      info = dict(l.split(":", 1) for l in f.read().split("\n\n")[0].splitlines() if ":" in l)
  except OSError:
    return {}
  info = {k.strip(): v.strip() for k, v in info.items()}
  flags = sorted(f for f in info.get("flags", "").split()
                 if f.startswith(("avx", "fma", "sse4", "amx", "f16c")))
  return {"cpu_model": info.get("model name"), "cpu_flags": flags}


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def portable(text: str) -> str:
  """`text` (a command line, a path) without this machine's paths: paths inside the
  checkout relative to it, other absolute paths as "…/<last part>" (a workdir or data
  folder: the documented commands name them W and DIR)."""
  def one(word: str) -> str:
    flag, eq, value = word.partition("=") if word.startswith("-") else ("", "", word)
    if not os.path.isabs(value):
      return word
    path = os.path.normpath(value)
    if path == _REPO or path.startswith(_REPO + os.sep):
      path = os.path.relpath(path, _REPO)
    else:
      path = "…/" + os.path.basename(path)
    return flag + eq + path
  return " ".join(one(w) for w in text.split(" "))


@functools.cache
def code_revision(where: str | None = None) -> dict[str, Any]:
  """{"git_revision": HEAD of the checkout mixjax runs from (or of the one holding the
  folder `where`), "git_dirty": whether its top-level mixjax/ or experiments/ had
  uncommitted changes, untracked files included} (None when git or the checkout is
  absent). The paths are from the top of the checkout (`:/`), not from git's working
  folder."""
  status = _git("status", "--porcelain", "--", ":/mixjax", ":/experiments", cwd=where)
  return {"git_revision": _git("rev-parse", "HEAD", cwd=where),
          "git_dirty": bool(status) if status is not None else None}


def provenance() -> dict[str, Any]:
  """Package versions, git revision (and whether the tree was dirty), the machine (CPU
  model and vector flags, devices), the command."""
  import jax  # pylint: disable=g-import-not-at-top
  versions = {}
  for p in _PACKAGES:
    try:
      versions[p] = metadata.version(p)
    except metadata.PackageNotFoundError:
      versions[p] = None
  code_revision.cache_clear()
  return {
      "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      **code_revision(),
      "python": sys.version.split()[0],
      "packages": versions,
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      **_cpu(),
      "jax_backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "command": portable(" ".join([os.path.basename(sys.executable)] + sys.argv)),
  }
