"""The shape of the package: no import cycle among mmsent's modules, not even through an
import inside a function; each module imports only its own layer and those below it
(:data:`LAYERS`); and no module longer than a reader holds in mind."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import mmsent

PACKAGE = Path(mmsent.__file__).resolve().parent
MAX_LINES = 400

# The layers of the package, lowest first: a module imports from its own layer and the
# layers below, never from one above, not even inside a function. Packages joined by
# " | " share a layer yet may not import each other. ``mmsent.cli`` builds the
# LightningCLI that runs one stage, so the pipeline stands on it; the command line
# over everything is ``mmsent.main``. Every module must fall in a layer.
LAYERS = [
    "mmsent.errors",
    "mmsent.io | mmsent.metrics | mmsent.optim | mmsent.diagnostics",
    "mmsent.split_models",
    "mmsent.pretrained",
    "mmsent.models | mmsent.data",  # plain nn.Modules apart from the Lightning data module
    "mmsent.regularization",
    "mmsent.tasks",
    "mmsent.callbacks | mmsent.selection",
    "mmsent.cli",
    "mmsent.pipeline",
    "mmsent.hub",
    "mmsent.main",
    "mmsent | mmsent.__main__",
]


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module under a package folder by dotted name; a package is its ``__init__.py``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join([package, *parts])] = path
    return names


def ancestors(name: str) -> list[str]:
    """The packages that hold a module, outermost first: ``a.b.c`` -> ``a``, ``a.b``."""
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def imported(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool,
             modules: set[str]) -> set[str]:
    """The modules of the package that one import statement runs.

    ``import a.b.c`` runs ``a.b.c`` and the packages above it; ``from a.b import c``
    runs ``a.b`` and, when ``c`` is a submodule, ``a.b.c``. The packages that hold the
    importer are already running when it runs, so passing through them is no edge;
    taking a name from one of them is.
    """
    own = set(ancestors(importer)) | ({importer} if is_package else set())
    explicit, passed = set(), set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            explicit.add(alias.name)
            passed.update(ancestors(alias.name))
    else:
        base = node.module or ""
        if node.level:
            anchor = importer.split(".") if is_package else importer.split(".")[:-1]
            anchor = anchor[:len(anchor) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        passed.update(ancestors(base))
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in modules:
                explicit.add(submodule)
                passed.add(base)
            else:
                explicit.add(base)
    return ({m for m in explicit if m in modules} | {m for m in passed if m in modules and m not in own}) - {importer}


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, counting every import statement
    anywhere in the file (inside functions and ``if TYPE_CHECKING:`` blocks too)."""
    names = module_names(root, package)
    graph = {}
    for name, path in names.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name] |= imported(node, name, path.name == "__init__.py", set(names))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each module that lies on a cycle, each cycle once."""
    found, seen = [], set()
    for start in sorted(graph):
        parents, queue = {start: None}, deque([start])
        while queue:
            node = queue.popleft()
            if start in graph[node]:
                path = [node]
                while parents[path[-1]] is not None:
                    path.append(parents[path[-1]])
                cycle = path[::-1] + [start]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append(cycle)
                break
            for target in sorted(graph[node]):
                if target not in parents:
                    parents[target] = node
                    queue.append(target)
    return found


def test_no_import_cycle_among_the_modules():
    found = cycles(import_graph(PACKAGE, "mmsent"))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def layer_of(module: str, layers: list[str]) -> tuple[int, str] | None:
    """The layer (its index) and the package of it that hold a module: the longest
    package named in ``layers`` that is the module or holds it. The root package
    stands for its ``__init__`` alone, so a new top-level module falls in no layer."""
    named = [(index, name.strip()) for index, layer in enumerate(layers) for name in layer.split("|")]
    found = [(index, name) for index, name in named
             if module == name or ("." in name and module.startswith(name + "."))]
    return max(found, key=lambda entry: len(entry[1]), default=None)


def layer_violations(graph: dict[str, set[str]], layers: list[str]) -> list[str]:
    """Each import against the layers: upward, between packages of one layer, or from or
    to a module in no layer."""
    found = []
    for module in sorted(graph):
        place = layer_of(module, layers)
        if place is None:
            found.append(f"{module} is in no layer")
            continue
        for target in sorted(graph[module]):
            other = layer_of(target, layers)
            if other is None:
                continue  # reported as a module of its own
            if other[0] > place[0]:
                found.append(f"{module} ({place[1]}) imports {target}, in a higher layer ({other[1]})")
            elif other[0] == place[0] and other[1] != place[1]:
                found.append(f"{module} ({place[1]}) imports {target} ({other[1]}), "
                             f"which shares its layer and must stay apart from it")
    return found


def test_every_module_imports_only_its_layer_and_those_below():
    found = layer_violations(import_graph(PACKAGE, "mmsent"), LAYERS)
    assert not found, "imports against the layers (tests/test_architecture.py LAYERS):\n" + "\n".join(found)


def test_the_layer_check_sees_upward_sideways_and_unplaced_imports():
    layers = ["pkg.base", "pkg.low | pkg.side", "pkg.high", "pkg"]
    graph = {"pkg": {"pkg.high"}, "pkg.base": set(), "pkg.low.a": {"pkg.base", "pkg.low.b"},
             "pkg.low.b": {"pkg.high.c"}, "pkg.side": {"pkg.low.a"}, "pkg.high.c": {"pkg.low.a"},
             "pkg.stray": {"pkg.base"}}
    assert layer_violations(graph, layers) == [
        "pkg.low.b (pkg.low) imports pkg.high.c, in a higher layer (pkg.high)",
        "pkg.side (pkg.side) imports pkg.low.a (pkg.low), which shares its layer and must stay apart from it",
        "pkg.stray is in no layer",
    ]


def test_no_module_over_the_line_limit():
    sizes = {name: len(path.read_text().splitlines()) for name, path in module_names(PACKAGE, "mmsent").items()}
    over = {name: lines for name, lines in sorted(sizes.items()) if lines > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (cut them along their seams): {over}"


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_cycle_finder_sees_imports_inside_functions_relative_ones_and_packages(tmp_path):
    # a -> b (inside a function) -> sub (package) -> sub.c (from . import) -> a
    root = write_package(tmp_path, {
        "__init__.py": "",
        "a.py": "def f():\n    from pkg import b\n",
        "b.py": "import pkg.sub\n",
        "sub/__init__.py": "from . import c\n",
        "sub/c.py": "from pkg.a import f\n",
        "sub/d.py": "from pkg.sub import c\n",  # inside its own package: no edge to sub
        "e.py": "import pkg.sub.d\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub"}
    assert graph["pkg.sub"] == {"pkg.sub.c"}
    assert graph["pkg.sub.d"] == {"pkg.sub.c"}
    assert graph["pkg.e"] == {"pkg.sub", "pkg.sub.d"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.a"]]
    assert cycles(import_graph(write_package(tmp_path, {"a.py": ""}), "pkg")) == []
