"""The package's shape: one-way layers and no import cycle, imports inside functions only for optional
dependencies, small modules and functions, and an environment.yml that installs what pyproject.toml does.

Everything but the import test reads the source with ``ast``, so a violation is reported with its
file and line without running the module.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dlde"

# Lowest first; a module may import only from its own layer and those before it.
LAYERS = ("dlde.errors", "dlde.files", "dlde.kernels", "dlde.lazy", "dlde.tables", "dlde.model", "dlde.data",
          "dlde.evaluation", "dlde.train", "dlde.analysis", "dlde.inference", "dlde.protocols", "dlde.plots",
          "dlde.reports", "dlde.pipeline")
TOP = "dlde"  # the package root re-exports public names from every layer: exempt as an importer, highest as a target
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
# Third-party packages a function may import: optional, or slow to import (kept out of `import dlde`).
OPTIONAL = frozenset({
    "matplotlib", "umap", "papermill", "yaml", "scipy", "sklearn", "faiss", "tqdm",
    "IPython", "ipympl", "ipywidgets", "jupyter_client", "nbformat", "tornado",
})
# Imports inside functions that are needed although the rules above forbid them: (module, imported) -> why.
FUNCTION_IMPORTS_ALLOWED = {
    ("dlde.train.distributed", "torch.distributed.nn.functional"):
        "raises ImportError on torch builds without distributed support; only the multi-process path needs it",
}


@dataclass(frozen=True)
class Import:
    """One imported module, as one statement names it."""

    line: int
    target: str  # absolute name of the imported module
    text: str  # the statement as written
    in_function: bool


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@cache
def source(name: str) -> tuple[str, ast.Module]:
    text = modules()[name].read_text()
    return text, ast.parse(text, filename=str(modules()[name]))


def _location(name: str, line: int | None = None) -> str:
    path = modules()[name].relative_to(ROOT)
    return f"{path}:{line}" if line is not None else str(path)


def _known(target: str) -> str:
    """``target`` if it is a module of the package, else its longest prefix that is one."""
    while target not in modules() and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def _targets(name: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Absolute names of the modules one import statement loads (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = name if modules()[name].name == "__init__.py" else name.rsplit(".", 1)[0]
        package = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{package}.{base}" if base else package
    # `from package import submodule` loads the submodule; `from module import name` the module.
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base for alias in node.names]


def _collect(name: str, node: ast.AST, in_function: bool, found: list[Import]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            text = ast.unparse(child)
            targets = dict.fromkeys(_targets(name, child))  # `from .a import x, y` loads dlde.a once
            found += [Import(child.lineno, target, text, in_function) for target in targets]
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        _collect(name, child, inner, found)


@cache
def imports(name: str) -> tuple[Import, ...]:
    """Every import of a module, at any depth (inside functions, classes, ``if TYPE_CHECKING:``)."""
    found: list[Import] = []
    _collect(name, source(name)[1], False, found)
    return tuple(found)


def _internal(name: str) -> list[Import]:
    return [item for item in imports(name) if item.target == TOP or item.target.startswith(TOP + ".")]


def layer_of(name: str) -> int | None:
    """Index into LAYERS; len(LAYERS) for the re-exporting root; None for a module in no layer."""
    if name == TOP:
        return len(LAYERS)
    return next((index for index, layer in enumerate(LAYERS) if name == layer or name.startswith(layer + ".")), None)


def _layer_name(index: int) -> str:
    return LAYERS[index] if index < len(LAYERS) else f"{TOP} (the root, which re-exports every layer)"


def test_every_module_belongs_to_a_layer():
    assert [name for name in modules() if layer_of(name) is None] == [], f"add them to LAYERS: {LAYERS}"


def test_no_module_imports_a_higher_layer():
    offenders = []
    for name in modules():
        if name == TOP or layer_of(name) is None:
            continue
        for item in _internal(name):
            own, theirs = layer_of(name), layer_of(_known(item.target))
            if theirs is not None and theirs > own:
                offenders.append(f"{_location(name, item.line)} {name} ({_layer_name(own)}, layer {own}) imports "
                                 f"{item.target} ({_layer_name(theirs)}, layer {theirs}): `{item.text}`")
    assert offenders == [], "imports run up the layers:\n" + "\n".join(offenders)


def _edges() -> dict[str, dict[str, str]]:
    """Import graph of the package: importer -> {imported module: why}.

    Importing ``dlde.a.b`` runs ``dlde/a/__init__.py`` first, so the edge to a module of another
    package comes with an edge to that package (never to the root, which every module shares).
    """
    graph: dict[str, dict[str, str]] = {name: {} for name in modules()}
    for name in modules():
        own_packages = {name.rsplit(".", depth)[0] for depth in range(name.count(".") + 1)}
        for item in _internal(name):
            target = _known(item.target)
            why = f"{_location(name, item.line)} `{item.text}`"
            if target != name:
                graph[name].setdefault(target, why)
            parent = target
            while parent.count(".") > 1:  # the packages between the root and the target
                parent = parent.rsplit(".", 1)[0]
                if parent not in own_packages:
                    graph[name].setdefault(parent, f"{why} (runs {parent}'s __init__)")
    return graph


def _strongly_connected(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            components.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_no_import_cycle():
    graph = _edges()
    report = []
    for component in _strongly_connected(graph):
        if len(component) > 1:
            members = set(component)
            report.append(f"cycle between {', '.join(component)}:")
            report += [f"  {name} -> {target}: {why}" for name in component
                       for target, why in graph[name].items() if target in members]
    assert report == [], "\n".join(report)


@pytest.mark.parametrize("name", list(modules()))
def test_every_module_imports(name):
    if not name.endswith(".__main__"):
        importlib.import_module(name)
        return
    # Importing a __main__ module runs its command line: load what it imports instead.
    for node in ast.walk(source(name)[1]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            for target, alias in zip(_targets(name, node), node.names):
                module = importlib.import_module(target)
                assert target.endswith("." + alias.name) or hasattr(module, alias.name), \
                    f"{_location(name, node.lineno)}: {target} has no {alias.name}"


def test_functions_import_only_optional_dependencies():
    offenders = []
    for name in modules():
        for item in imports(name):
            top = item.target.split(".")[0]
            if not item.in_function or (name, item.target) in FUNCTION_IMPORTS_ALLOWED:
                continue
            if top == TOP:
                offenders.append(f"{_location(name, item.line)} imports the package's {item.target} inside a "
                                 f"function: `{item.text}`")
            elif top not in OPTIONAL:
                offenders.append(f"{_location(name, item.line)} imports {item.target} (not an optional or slow "
                                 f"dependency) inside a function: `{item.text}`")
    assert offenders == [], "move these imports to the top of the module:\n" + "\n".join(offenders)


def test_function_import_allow_list_is_current():
    used = {(name, item.target) for name in modules() for item in imports(name) if item.in_function}
    assert set(FUNCTION_IMPORTS_ALLOWED) <= used, "stale FUNCTION_IMPORTS_ALLOWED entries"


def test_modules_are_small():
    lengths = {name: len(source(name)[0].splitlines()) for name in modules()}
    offenders = [f"{_location(name)}: {lines} lines" for name, lines in lengths.items() if lines > MAX_MODULE_LINES]
    assert offenders == [], f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(offenders)


def _functions(node: ast.AST, prefix: str = ""):
    """(qualified name, def node) for every function and method, nested ones included."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + child.name, child
            yield from _functions(child, f"{prefix}{child.name}.<locals>.")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, f"{prefix}{child.name}.")
        else:
            yield from _functions(child, prefix)


def test_functions_are_small():
    offenders = []
    for name in modules():
        for qualified, node in _functions(source(name)[1]):
            length = node.end_lineno - node.lineno + 1  # from `def` (decorators not counted) to the last line
            if length > MAX_FUNCTION_LINES:
                offenders.append(f"{_location(name, node.lineno)} {name}.{qualified}: {length} lines")
    assert offenders == [], f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(text: str) -> tuple[str, str]:
    """('normalised-name', 'version spec without spaces') of a pip or conda requirement."""
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*?)\s*", text)
    assert match, f"cannot read the requirement {text!r}"
    return _normalise(match[1]), re.sub(r"\s+", "", match[2])


def test_environment_installs_what_pyproject_declares():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # The extras `make` installs (Makefile: pip install -e ".[test,retrieval]").
    extras = re.search(r"pip install[^\n]*-e \"?\.\[([^\]]+)\]", (ROOT / "Makefile").read_text())
    assert extras, "the Makefile's `pip install -e .[extras]` line is gone"
    declared = {}  # name -> (spec, where)
    for group, requirements in [("dependencies", project["dependencies"])] + [
            (f"optional-dependencies.{extra}", project["optional-dependencies"][extra])
            for extra in extras[1].split(",")]:
        for text in requirements:
            name, spec = _requirement(text)
            declared[name] = (spec, group)

    environment = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip = next((entry["pip"] for entry in environment if isinstance(entry, dict)), [])
    listed = dict(_requirement(text) for text in [e for e in environment if isinstance(e, str)] + pip
                  if not text.startswith("-"))  # `-e .` installs the package itself

    missing = [f"{name}{spec} (pyproject {group})" for name, (spec, group) in declared.items() if name not in listed]
    differ = [f"{name}: pyproject {spec!r}, environment.yml {listed[name]!r}"
              for name, (spec, _) in declared.items() if name in listed and listed[name] != spec]
    extra = [name for name in listed if name not in declared and name not in {"python", "pip"}]
    assert missing == [], f"environment.yml lacks: {', '.join(missing)}"
    assert differ == [], "versions differ:\n" + "\n".join(differ)
    assert extra == [], f"environment.yml installs what pyproject.toml does not declare: {', '.join(extra)}"


def _private_imports(folder: Path) -> list[str]:
    """``file:line `statement``` for every import in ``folder/*.py`` of a dlde name or module with a
    leading underscore in any part of its dotted name (``dlde.train.cli._parser``, ``dlde._x``)."""
    offenders = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            if any(name.split(".")[0] == TOP and any(part.startswith("_") for part in name.split("."))
                   for name in names):
                offenders.append(f"{path.name}:{node.lineno} `{ast.unparse(node)}`")
    return offenders


def test_benchmarks_import_only_public_names(tmp_path):
    """benchmarks/ use dlde as a user does: public names from public modules, never a private helper."""
    assert _private_imports(ROOT / "benchmarks") == [], "benchmarks import private names"
    (tmp_path / "sample.py").write_text("import dlde._hidden\nfrom dlde.train.cli import _parser, main\n"
                                        "from dlde.model import detector\nfrom ._local import x\n")
    assert _private_imports(tmp_path) == ["sample.py:1 `import dlde._hidden`",
                                          "sample.py:2 `from dlde.train.cli import _parser, main`"]


def _dlde_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, module, name)`` of every dlde import of a file: ``import dlde.x`` gives ``(line, "dlde.x", None)``,
    ``from dlde.x import a`` gives ``(line, "dlde.x", "a")``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names if alias.name.split(".")[0] == TOP]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == TOP:
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


def _beyond_public_api(folder: Path) -> list[str]:
    """``file:line`` of every dlde name ``folder/*.py`` imports that its module lacks, or that is not in
    its module's ``__all__`` where it has one (a public submodule of a package is fine)."""
    offenders = []
    for path in sorted(folder.glob("*.py")):
        for line, module_name, name in _dlde_imports(path):
            module = importlib.import_module(module_name)
            if name is None:
                continue
            if hasattr(module, "__path__") and importlib.util.find_spec(f"{module_name}.{name}") is not None:
                continue  # a submodule of a package (`from dlde.plots import metric_plots`)
            public = getattr(module, "__all__", None)
            if not hasattr(module, name):
                offenders.append(f"{path.name}:{line} {module_name} has no {name}")
            elif public is not None and name not in public:
                offenders.append(f"{path.name}:{line} {module_name}.{name} is not in its __all__")
    return offenders


def test_benchmarks_use_the_public_api(tmp_path):
    """benchmarks/ sit above every layer of the package and use it as a user does: every dlde name they
    import exists, and where its module lists its public names (``__all__``) it is one of them."""
    assert _beyond_public_api(ROOT / "benchmarks") == [], "benchmarks import beyond the public API"
    (tmp_path / "sample.py").write_text("from dlde.train import TrainConfig, loop\n"
                                        "from dlde.plots import metric_plots\n"
                                        "from dlde.train import reimprint_cli, gone\n"
                                        "from dlde.train.loop import train\n"
                                        "from dlde.analysis.retrieval import BACKENDS, torch\n")
    assert _beyond_public_api(tmp_path) == ["sample.py:3 dlde.train has no gone",
                                            "sample.py:5 dlde.analysis.retrieval.torch is not in its __all__"]
