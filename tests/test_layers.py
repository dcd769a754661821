"""The layer rule of ``src/vmunet``, checked from the source (ast, no import of the package):

    cli -> workflows -> inference, runtime -> data, io, evaluation, losses, config -> models -> ops

A module may import its own layer and the layers below it, never one above; ``models`` and ``ops`` are free of
data, training and metrics (nanoGPT's rule); ``io`` (file formats) imports no dataset, metric or loss, and
``evaluation`` no dataset or file format; the import graph has no cycle; no module imports another module's
private (underscore) name. Imports inside functions count as well: a lazy import is still a dependency.
The planted-import tests show that the check fails on the mistakes it is there to catch.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom first. A module belongs to the layer of the longest prefix that names it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("vmunet.ops",),
    ("vmunet.models", "vmunet"),  # the package root: the model API (its lazy Predictor is the one exception below)
    ("vmunet.data", "vmunet.io", "vmunet.evaluation", "vmunet.losses", "vmunet.config"),
    ("vmunet.inference", "vmunet.runtime", "vmunet.overlay", "vmunet.prediction_outputs"),
    ("vmunet.train", "vmunet.evaluate", "vmunet.evaluate_polyp", "vmunet.predict", "vmunet.cv", "vmunet.serve",
     "vmunet.export", "vmunet.demo", "vmunet.model_info", "vmunet.integrations"),
    ("vmunet.cli", "vmunet.__main__"),
)
LAYER_NAMES = ("ops", "models", "data/io/evaluation/losses/config", "inference/runtime", "workflows", "cli")
# The root re-exports Predictor lazily (README: `vmunet.Predictor`), so `import vmunet` for the model alone
# does not read the data layer: a deliberate upward name, not a dependency of the model.
ALLOWED_UPWARD = {("vmunet", "vmunet.inference")}
# Within the library layer: file formats know nothing of datasets, scores or training, and scores nothing of
# datasets (a metric takes arrays), so each can be read, tested and reused alone.
FORBIDDEN = {
    "vmunet.io": ("vmunet.data", "vmunet.evaluation", "vmunet.losses"),
    "vmunet.evaluation": ("vmunet.data", "vmunet.io", "vmunet.losses"),
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best = (-1, -1)  # (prefix length, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            # The root "vmunet" names the package module only, not everything under it.
            inside = module == prefix or (prefix != "vmunet" and module.startswith(prefix + "."))
            if inside and len(prefix) > best[0]:
                best = (len(prefix), index)
    if best[1] < 0:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in tests/test_layers.py")
    return best[1]


def imports_of(path: Path, module: str, modules: set[str]) -> list[tuple[int, str, list[str]]]:
    """(line, imported vmunet module, imported names) for every import in ``path``, in functions too."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names if alias.name.split(".")[0] == "vmunet"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "vmunet":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in modules:  # `from vmunet import data`: the submodule is the dependency
                    found.append((node.lineno, submodule, []))
                else:
                    found.append((node.lineno, target, [alias.name]))
    return found


def layer_violations(root: Path) -> list[str]:
    """Every breach of the layer rule in the package under ``root`` (the folder that holds ``vmunet/``)."""
    files = {module_name(path, root): path for path in sorted((root / "vmunet").rglob("*.py"))}
    modules = set(files)
    problems = []
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for source, path in files.items():
        where = path.relative_to(root)
        for line, target, names in imports_of(path, source, modules):
            graph[source].add(target)
            if layer_of(target) > layer_of(source) and (source, target) not in ALLOWED_UPWARD:
                problems.append(f"{where}:{line}: {source} ({LAYER_NAMES[layer_of(source)]}) imports {target} "
                                f"({LAYER_NAMES[layer_of(target)]}), a layer above it")
            for package, banned in FORBIDDEN.items():
                if source.startswith(package + ".") and any(target == b or target.startswith(b + ".") for b in banned):
                    problems.append(f"{where}:{line}: {source} imports {target}; {package} imports none of "
                                    f"{', '.join(banned)}")
            private = [name for name in names if name.startswith("_") and not name.startswith("__")]
            if private and target != source:
                problems.append(f"{where}:{line}: {source} imports {target}'s private {', '.join(private)}")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in import_cycles(graph)]
    return problems


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:  # Tarjan; the package is small enough for recursion
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                cycles.append(sorted(component) + [min(component)])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_package_keeps_its_layers():
    assert layer_violations(SRC) == []


@pytest.fixture()
def tree_copy(tmp_path):
    shutil.copytree(SRC / "vmunet", tmp_path / "vmunet", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def plant(tree: Path, relative: str, code: str) -> None:
    path = tree / "vmunet" / relative
    path.write_text(path.read_text(encoding="utf-8") + "\n\ndef planted():\n    " + code + "\n", encoding="utf-8")


def test_a_planted_upward_import_fails_the_check(tree_copy):
    plant(tree_copy, "models/blocks.py", "from vmunet.train import train")
    problems = layer_violations(tree_copy)
    upward = [problem for problem in problems if not problem.startswith("import cycle")]
    assert len(upward) == 1
    assert upward[0].startswith("vmunet/models/blocks.py:") and \
        "vmunet.models.blocks (models) imports vmunet.train (workflows), a layer above it" in upward[0]
    assert any(problem.startswith("import cycle") for problem in problems)  # train imports the models


def test_a_planted_relative_import_of_data_in_models_fails_the_check(tree_copy):
    plant(tree_copy, "models/vmunet.py", "from ..data import transforms")
    problems = layer_violations(tree_copy)
    assert len(problems) == 1 and "vmunet.models.vmunet (models) imports vmunet.data.transforms" in problems[0]


def test_a_planted_import_of_a_private_name_fails_the_check(tree_copy):
    plant(tree_copy, "serve.py", "from vmunet.predict import _remove_if_empty")
    problems = layer_violations(tree_copy)
    assert problems == [f"vmunet/serve.py:{problems[0].split(':')[1]}: vmunet.serve imports vmunet.predict's "
                        "private _remove_if_empty"]


def test_a_planted_cycle_within_a_layer_fails_the_check(tree_copy):
    plant(tree_copy, "losses.py", "from vmunet.data import transforms")
    plant(tree_copy, "data/transforms.py", "from vmunet import losses")
    assert [problem for problem in layer_violations(tree_copy) if problem.startswith("import cycle")] == \
        ["import cycle: vmunet.data.transforms -> vmunet.losses -> vmunet.data.transforms"]


def test_a_planted_import_of_a_dataset_in_a_file_format_fails_the_check(tree_copy):
    plant(tree_copy, "io/nifti.py", "from vmunet.data.nifti import read_label_names")
    problems = [problem for problem in layer_violations(tree_copy) if not problem.startswith("import cycle")]
    assert len(problems) == 1 and "vmunet.io.nifti imports vmunet.data.nifti; vmunet.io imports none of" in \
        problems[0]


def test_a_module_outside_every_layer_is_named():
    with pytest.raises(AssertionError, match="vmunet.newthing belongs to no layer"):
        layer_of("vmunet.newthing")
