"""The documentation site's promises: the API reference covers every public name of the
documented packages, and the pages whose code a reader runs (the worked theory page, the
Flax NNX loop) run as written, with their own assertions."""
from __future__ import annotations

import importlib
import os
import re
import types

import jax
import numpy as np

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


def python_blocks(page: str) -> str:
  """The page's ```python blocks, in order, as one script."""
  with open(os.path.join(DOCS, page), encoding="utf-8") as fh:
    blocks = re.findall(r"^```python\n(.*?)^```", fh.read(), re.S | re.M)
  assert blocks, f"no python blocks in docs/{page}"
  return "\n".join(blocks)


def run_page(page: str, *, replace: tuple[str, str] | None = None) -> dict:
  """Runs a page's code as one script and returns its namespace. JAX's float64 flag, which
  a page may set, is restored afterwards."""
  code = python_blocks(page)
  if replace is not None:
    assert code.count(replace[0]) == 1, f"docs/{page} lost the line {replace[0]!r}"
    code = code.replace(*replace)
  namespace = {"__name__": "docs_page"}
  x64 = jax.config.jax_enable_x64
  try:
    exec(compile(code, f"docs/{page}", "exec"), namespace)  # pylint: disable=exec-used
  finally:
    jax.config.update("jax_enable_x64", x64)
  return namespace


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


FIGURES_LINE = 'FIGURES = pathlib.Path("docs/figures")'


def test_worked_theory_page_runs_and_makes_its_figures(tmp_path):
  """docs/theory_worked.md runs as written: its assertions compare Theorem 1 with SciPy's
  quadrature of the definition (1e-10), Lemma 2 with closed forms and with Monte Carlo
  (5 standard errors), the approximation error's slopes with 3 and 2, the stochastic
  estimator with the exact one, the affine mixup fit with least squares. Every figure the
  page shows is regenerated (here in tmp_path) and is committed under docs/figures/."""
  ns = run_page("theory_worked.md",
                replace=(FIGURES_LINE, f"FIGURES = pathlib.Path({str(tmp_path)!r})"))
  assert abs(float(ns["theorem1"]) - float(ns["risk_definition"])) < 1e-10
  assert 2.8 < ns["slope_all"] < 3.2 and 1.8 < ns["slope_no_hessian"] < 2.2
  with open(os.path.join(DOCS, "theory_worked.md"), encoding="utf-8") as fh:
    shown = re.findall(r"!\[[^\]]*\]\(figures/([\w.]+)\)", fh.read())
  assert len(shown) == 4
  for name in shown:
    assert os.path.isfile(os.path.join(DOCS, "figures", name)), f"docs/figures/{name}"
    with open(tmp_path / name, "rb") as fh:
      assert fh.read(8) == b"\x89PNG\r\n\x1a\n", name


def test_nnx_page_trains_with_mixup_loss_and_approx_mixup_risk():
  """docs/nnx.md runs as written: an nnx.Module trained by an nnx.jit step with
  mixup_loss, and with approx_mixup_risk, lowers its loss, stays finite and beats chance
  (0.1) by far on held-out digits."""
  ns = run_page("nnx.md")
  assert set(ns["results"]) == {"mixup_loss", "approx_mixup_risk"}
  for name, (losses, nll, accuracy) in ns["results"].items():
    assert np.all(np.isfinite(losses)) and np.isfinite(nll), name
    assert losses[-50:].mean() < 0.5 * losses[:50].mean(), name
    assert accuracy > 0.9, name


if __name__ == "__main__":
  # Regenerates the worked page's committed figures: python tests/test_docs.py
  os.chdir(ROOT)
  run_page("theory_worked.md")
