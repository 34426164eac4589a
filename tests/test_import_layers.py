"""The import layers of docs/ARCHITECTURE.md, checked on the source (AST, no import run).

Every `import`/`from … import` of a mixjax module, at module level or inside a function,
goes from a package to one in a lower layer (or within its own package); the module graph
has no cycles. A new upward import (say `mixjax.data` reaching into `mixjax.train`, or
`train` into `studies`) fails here with the file and line.
"""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mixjax")

# docs/ARCHITECTURE.md, "Layers": a package may import only from strictly lower layers.
LAYER = {"mixjax._xla_cpu": 0, "mixjax.registry": 0, "mixjax.errors": 0,
         "mixjax.sharding": 0, "mixjax.provenance": 0, "mixjax.samplers": 1,
         "mixjax.mixing": 2, "mixjax.losses": 2.5, "mixjax.theory": 3,
         "mixjax.models": 4, "mixjax.data": 4, "mixjax.eval": 4, "mixjax.train": 5,
         "mixjax.studies": 6, "mixjax.main": 7, "mixjax": 8}


def _modules() -> dict[str, str]:
  mods = {}
  for dirpath, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path[:-3], os.path.dirname(ROOT)).replace(os.sep, ".")
        mods[rel.removesuffix(".__init__")] = path
  return mods


def _imports(name: str, path: str, mods) -> list[tuple[str, int]]:
  """(imported mixjax module, line) for every import in the file."""
  out = []
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                 for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in mods:        # the longest prefix that is a module
        t = t.rpartition(".")[0]
      if t.startswith("mixjax") and t != name:
        out.append((t, node.lineno))
  return out


def _package(module: str) -> str:
  return ".".join(module.split(".")[:2])


MODS = _modules()
GRAPH = {m: _imports(m, p, MODS) for m, p in MODS.items()}


def test_every_package_has_a_layer():
  assert len(MODS) > 50
  assert {_package(m) for m in MODS} <= set(LAYER), set(map(_package, MODS)) - set(LAYER)


@pytest.mark.parametrize("module", sorted(MODS))
def test_imports_go_downwards(module):
  own = _package(module)
  bad = [f"{MODS[module]}:{line} imports {target}" for target, line in GRAPH[module]
         if _package(target) != own and LAYER[_package(target)] >= LAYER[own]]
  assert not bad, "\n".join(bad)


def test_no_import_cycles():
  """Depth-first search for a back edge in the module graph (imports inside functions
  included)."""
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for target, _ in GRAPH[m]:
      if state.get(target) == "open":
        raise AssertionError(" -> ".join(stack[stack.index(target):] + [target]))
      if target not in state:
        visit(target)
    stack.pop()
    state[m] = "done"

  for m in sorted(MODS):
    if m not in state:
      visit(m)


def test_the_checker_sees_an_upward_import(tmp_path):
  """Negative control: a function-level upward import is found (data -> train)."""
  path = tmp_path / "probe.py"
  path.write_text("def f():\n  from mixjax.train import config\n  return config\n")
  found = _imports("mixjax.data.probe", str(path), MODS)
  assert found == [("mixjax.train.config", 2)]
  assert LAYER[_package(found[0][0])] > LAYER["mixjax.data"]


# The test modules: shared code is a fixture (conftest.py) or a helper module
# (tests/helpers.py); a test module imports neither conftest nor another test module.
TESTS = os.path.join(os.path.dirname(ROOT), "tests")


def _test_imports(source: str) -> list[tuple[str, int]]:
  """(module, line) of every import of conftest or of a test_* module in `source`."""
  out = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and not node.level:
      names = [node.module or ""]
    else:
      continue
    out += [(n, node.lineno) for n in names
            if n.split(".")[0] == "conftest" or n.split(".")[0].startswith("test_")]
  return out


def test_test_modules_import_neither_conftest_nor_each_other():
  bad = []
  for name in sorted(os.listdir(TESTS)):
    if name.startswith("test_") and name.endswith(".py"):
      with open(os.path.join(TESTS, name), encoding="utf-8") as f:
        bad += [f"tests/{name}:{line} imports {m}" for m, line in _test_imports(f.read())]
  assert not bad, "\n".join(bad)


def test_the_test_import_checker_sees_conftest_and_test_modules():
  """Negative control."""
  assert _test_imports("import os\nfrom conftest import x\nimport test_main\n"
                       "from helpers import y\n") == [("conftest", 2), ("test_main", 3)]
