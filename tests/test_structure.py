"""The package's structure: the import graph among cikg_jax modules has no cycle (imports inside
functions included), and the training library (cikg_jax/training/steps.py) is what training, data
parallelism, prediction and the benchmarks build on."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "cikg_jax"


def _module_files(package_dir: str, package: str):
  """{dotted module name: path} of every module of the package, __init__ as the package."""
  out = {}
  for d, dirs, names in os.walk(package_dir):
    dirs[:] = [x for x in dirs if not x.startswith((".", "__"))]
    rel = os.path.relpath(d, package_dir)
    prefix = package if rel == "." else package + "." + rel.replace(os.sep, ".")
    for n in names:
      if n.endswith(".py"):
        out[prefix if n == "__init__.py" else f"{prefix}.{n[:-3]}"] = os.path.join(d, n)
  return out


def _imports(path: str, module: str, is_package: bool, modules=None):
  """The module names that `import` and `from ... import` statements anywhere in the file
  (inside functions too) load: `import a.b` loads a.b; `from a import b` loads a.b if that is a
  module (of `modules`, when given), else a. Relative imports are resolved against `module`."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  here = module if is_package else module.rpartition(".")[0]
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: from . import x, from ..data import y
        base = here.split(".")
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
      else:
        source = node.module
      for a in node.names:
        full = f"{source}.{a.name}"
        names.add(full if modules is None or full in modules else source)
  return names


def import_graph(files):
  """{module: set of the package's modules it imports}."""
  graph = {}
  for module, path in files.items():
    found = _imports(path, module, path.endswith("__init__.py"), set(files))
    graph[module] = {m for m in found if m in files and m != module}
  return graph


def find_cycle(graph):
  """A list of modules forming an import cycle (first == last), or None."""
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(graph.get(m, ())):
      if state.get(n) == "open":
        return stack[stack.index(n) :] + [n]
      if n not in state:
        cycle = visit(n)
        if cycle:
          return cycle
    stack.pop()
    state[m] = "done"
    return None

  for m in sorted(graph):
    if m not in state:
      cycle = visit(m)
      if cycle:
        return cycle
  return None


@pytest.fixture(scope="module")
def graph():
  return import_graph(_module_files(os.path.join(ROOT, PACKAGE), PACKAGE))


def test_the_import_parser_sees_function_level_relative_and_cyclic_imports(tmp_path):
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("")
  (pkg / "a.py").write_text("import os\nfrom pkg import b\n")
  (pkg / "b.py").write_text("def f():\n  from .sub import c\n  return c\n")
  (pkg / "sub" / "c.py").write_text("import pkg.sub\n\ndef g():\n  from ..a import x\n")
  g = import_graph(_module_files(str(pkg), "pkg"))
  assert g["pkg.a"] == {"pkg.b"} and g["pkg.b"] == {"pkg.sub.c"}
  assert g["pkg.sub.c"] == {"pkg.sub", "pkg.a"}
  cycle = find_cycle(g)
  assert cycle and cycle[0] == cycle[-1] and {"pkg.a", "pkg.b", "pkg.sub.c"} <= set(cycle)
  (pkg / "sub" / "c.py").write_text("import pkg.sub\n")
  assert find_cycle(import_graph(_module_files(str(pkg), "pkg"))) is None


def test_cikg_jax_import_graph_has_no_cycle(graph):
  # the parse found the package's known edges, module-level and inside functions
  assert "cikg_jax.training.steps" in graph["cikg_jax.training.train"]
  assert "cikg_jax.models.cikgrec" in graph["cikg_jax.models.baselines"]
  assert "cikg_jax.training.plots" in graph["cikg_jax.training.train"]  # imported inside _train
  assert "cikg_jax.data.sampling" in graph["cikg_jax.models.baselines"]  # inside create_kgat
  assert "cikg_jax.data.dataset" in graph["cikg_jax.training.steps"]
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
  "path",
  [
    "cikg_jax/training/train.py",
    "cikg_jax/parallel/data_parallel.py",
    "cikg_jax/predict.py",
    "experiments/bench.py",
  ],
)
def test_training_prediction_and_benchmarks_build_on_steps(path):
  full = os.path.join(ROOT, path)
  module = path[:-3].replace("/", ".")
  assert "cikg_jax.training.steps" in _imports(full, module, False), f"{path} does not import steps"


def test_the_model_library_does_not_import_the_driver(graph):
  """model, baselines and steps are the library: they know neither the epoch loop, the command
  line nor prediction."""
  driver = {
    "cikg_jax.training.train",
    "cikg_jax.main",
    "cikg_jax.predict",
    "cikg_jax.parallel.data_parallel",
  }

  def reach(m, seen):
    for n in graph.get(m, ()):
      if n not in seen:
        seen.add(n)
        reach(n, seen)
    return seen

  for lib in ("cikg_jax.models.cikgrec", "cikg_jax.models.baselines", "cikg_jax.training.steps"):
    assert not reach(lib, set()) & driver, lib


def _calls(path: str, names) -> list:
  """(line, name) of every call in the file to a function or method named one of `names`."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Call):
      f = node.func
      name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
      if name in names:
        out.append((node.lineno, name))
  return out


def test_one_train_step_and_one_transe_step_for_every_mode():
  """Only steps.py differentiates a training loss and applies an optimizer update: the jit, pmap
  and shard_map modes wrap its train_step and kge_step rather than writing their own."""
  found = {}
  for module, path in _module_files(os.path.join(ROOT, PACKAGE), PACKAGE).items():
    calls = _calls(path, ("value_and_grad", "grad", "apply_updates"))
    if calls:
      found[module] = calls
  assert set(found) == {"cikg_jax.training.steps"}, found
  assert sorted(name for _, name in found["cikg_jax.training.steps"]) == [
    "apply_updates",
    "apply_updates",
    "value_and_grad",
    "value_and_grad",
  ]


def test_each_package_says_what_it_owns_and_no_module_sits_outside_them():
  top = sorted(n for n in os.listdir(os.path.join(ROOT, PACKAGE)) if n.endswith(".py"))
  assert top == [
    "__init__.py",
    "cli_help.py",
    "evaluation.py",
    "logs.py",
    "main.py",
    "predict.py",
    "runtime.py",
  ]
  packages = [d for d in os.listdir(os.path.join(ROOT, PACKAGE)) if not d.startswith(("_", "."))]
  packages = [d for d in packages if os.path.isdir(os.path.join(ROOT, PACKAGE, d))]
  assert sorted(packages) == ["data", "graphs", "models", "parallel", "training"]
  for d in packages:
    with open(os.path.join(ROOT, PACKAGE, d, "__init__.py")) as f:
      doc = ast.get_docstring(ast.parse(f.read()))
    assert doc and len(doc) > 60, f"{d}/__init__.py has no docstring saying what it owns"


# What reads the ConfigDict in the training loop's module: the entry point and the functions that
# unpack it into typed settings. Everything else (the epoch, evaluation, the results record)
# receives those settings.
UNPACKERS = {
  "train_and_evaluate",
  "_prepare",
  "_with_data_source",
  "_train",
  "loop_settings",
  "results_settings",
  "make_samplers",
}


def test_the_loop_receives_typed_settings_not_the_config():
  with open(os.path.join(ROOT, PACKAGE, "training", "train.py")) as f:
    tree = ast.parse(f.read())
  readers = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      names = {a.arg for a in node.args.args + node.args.kwonlyargs}
      if "config" in names:
        readers.add(node.name)
  assert readers == UNPACKERS
