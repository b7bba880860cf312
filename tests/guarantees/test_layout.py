"""The package's layout as a guarantee: the tree reads as the pipeline, imports flow downstream
only, no import cycle, no module past 400 lines, and the package docstring maps every module.

The layers, upstream first. A module may import from its own layer and those before it, never
from a later one; inside a layer, the modules' imports form no cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import charlm

PACKAGE = Path(charlm.__file__).parent
LAYERS = [
    # what everything may name; the registry is the models' names (standard library only), which the
    # settings offer as choices
    ("charlm.errors", "charlm.presets", "charlm.models.registry", "charlm.settings"),
    ("charlm.text",),                                         # files -> text -> tokens (standard library only)
    ("charlm.runtime",),                                      # devices, threads, seeds, atomic files, measured choices
    ("charlm.checkpoints.files", "charlm.checkpoints.metadata"),  # the safetensors format (the token cache's too)
    ("charlm.data",),                                         # tokens -> ids -> batches
    ("charlm.models",),                                       # the architectures and their contract
    ("charlm.checkpoints",),                                  # models from checkpoints
    ("charlm.generation",),                                   # sampling, the request, translation
    ("charlm.evaluation",),                                   # loss, perplexity, translation scores
    ("charlm.training",),                                     # settings -> a trained run
    ("charlm.plot",),
    ("charlm.arguments",),                                    # the API's arguments checked (standard library only)
    ("charlm.trained",),                                      # trained models for a program
    ("charlm.api", "charlm"),                                 # the Python API (charlm/__init__ reaches it lazily)
    ("charlm.serve",),
    ("charlm.export",),                                       # a trained model as ONNX and as a web page
    ("charlm.cli", "charlm.__main__"),
]
STANDARD_LIBRARY_ONLY = ("charlm.errors", "charlm.presets", "charlm.models.registry", "charlm.settings", "charlm.text",
                         "charlm.checkpoints.metadata", "charlm.generation.request", "charlm.arguments")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    """The layer of the longest prefix that names `module`."""
    best, found = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{module} is in no layer of the layout"
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The charlm modules `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("charlm"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("charlm"))
    return found


def test_imports_flow_downstream_only():
    known = set(modules())
    upward = [f"{module} imports {target}" for module, path in modules().items()
              for target in imports(path, known) if layer(target) > layer(module)]
    assert not upward


def test_no_import_cycle():
    known = set(modules())
    graph = {module: {target for target in imports(path, known) if target in known and target != module}
             for module, path in modules().items()}
    graph = {module: {target for target in targets if not module.startswith(target + ".")}  # a package's own __init__
             for module, targets in graph.items()}
    seen, on_path = set(), []

    def visit(module: str) -> None:
        if module in on_path:
            raise AssertionError("import cycle: " + " -> ".join(on_path[on_path.index(module):] + [module]))
        if module in seen:
            return
        on_path.append(module)
        for target in sorted(graph.get(module, ())):
            visit(target)
        on_path.pop()
        seen.add(module)

    for module in sorted(graph):
        visit(module)


def test_the_text_layer_needs_only_the_standard_library():
    third_party = re.compile(r"^\s*(?:import|from)\s+(torch|numpy|safetensors|click|tqdm)\b", re.M)
    for module, path in modules().items():
        if any(module == prefix or module.startswith(prefix + ".") for prefix in STANDARD_LIBRARY_ONLY):
            assert not third_party.search(path.read_text()), module


def test_no_module_is_over_400_lines():
    long = {module: count for module, path in modules().items()
            if (count := len(path.read_text().splitlines())) > 400}
    assert not long


def test_the_package_docstring_maps_every_module():
    mapped = charlm.__doc__
    missing = [module for module in modules() if module.count(".") >= 1 and not module.endswith("__init__")
               and module.split(".", 1)[1] not in mapped and module not in mapped]
    assert not missing
