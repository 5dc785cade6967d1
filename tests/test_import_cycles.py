"""No import cycle among the project's modules (cikg_jax, inference, experiments, configs).

Imports are read from the source with `ast`, those inside functions included: a lazy import still
makes two modules depend on each other, and a cycle of them breaks as soon as one import moves to
the top of its file. graphlib finds the cycle."""

import ast
import graphlib
import os
from typing import Dict, Iterable, Set

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("cikg_jax", "inference", "experiments", "configs")


def modules(root: str, packages: Iterable[str]) -> Dict[str, str]:
  """Dotted module name -> source path of every .py file under the packages."""
  out = {}
  for package in packages:
    for d, _, files in os.walk(os.path.join(root, package)):
      for f in files:
        if f.endswith(".py"):
          parts = os.path.relpath(os.path.join(d, f), root)[: -len(".py")].split(os.sep)
          if parts[-1] == "__init__":
            parts = parts[:-1]
          out[".".join(parts)] = os.path.join(d, f)
  return out


def import_graph(root: str, packages: Iterable[str]) -> Dict[str, Set[str]]:
  """Module -> the project modules its import statements name (anywhere in the file). `from p
  import x` depends on p.x where that is a module, else on p; a module's parent package, which
  Python imports implicitly, is not counted unless it is named."""
  mods = modules(root, packages)
  graph = {}
  for name, path in mods.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        deps |= {a.name for a in node.names if a.name in mods}
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per extra dot
          package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
          package = package[: len(package) - node.level + 1]
          base = ".".join(package + ([base] if base else []))
        for a in node.names:
          if f"{base}.{a.name}" in mods:
            deps.add(f"{base}.{a.name}")
          elif base in mods:
            deps.add(base)
    deps.discard(name)
    graph[name] = deps
  return graph


def find_cycle(graph: Dict[str, Set[str]]):
  try:
    graphlib.TopologicalSorter(graph).prepare()
  except graphlib.CycleError as e:
    return e.args[1]
  return None


def test_a_cycle_through_a_lazy_import_is_found(tmp_path):
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("from pkg.sub.b import f\n")
  (pkg / "sub" / "a.py").write_text("from pkg.sub import b\n")
  (pkg / "sub" / "b.py").write_text("def f():\n  from . import a\n")
  graph = import_graph(str(tmp_path), ["pkg"])
  assert graph["pkg.sub.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.sub.a"}
  assert set(find_cycle(graph)) == {"pkg.sub.a", "pkg.sub.b"}
  (pkg / "sub" / "b.py").write_text("def f():\n  pass\n")
  assert find_cycle(import_graph(str(tmp_path), ["pkg"])) is None


def test_the_project_has_no_import_cycle():
  graph = import_graph(ROOT, PACKAGES)
  assert {
    "cikg_jax.training.train",
    "inference.backends.base",
    "experiments.runner",
  } <= graph.keys()
  assert "inference.backends.base" in graph["inference.backends.openai_client"]  # edges are read
  cycle = find_cycle(graph)
  if cycle:
    pytest.fail("import cycle: " + " -> ".join(cycle))
