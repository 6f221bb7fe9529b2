"""The engine's imports point down its layers and form no cycle.

Every import counts: at the top of a module, inside a function, and under `if TYPE_CHECKING:`, since each one
is a dependency a reader must follow. The layers are the ones docs/architecture.md draws.
"""

from __future__ import annotations

import ast
import importlib
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import grimp
import pytest

LAYERS: tuple[tuple[str, ...], ...] = (
    # foundation: settings, errors, storage access, logging, metrics collectors, small value helpers
    ("engine.errors", "engine.ids", "engine.columns", "engine.lazy", "engine.redact", "engine.arrow",
     "engine.config", "engine.storage", "engine.logs", "engine.metrics", "engine.runtime", "engine.keyhash",
     "engine.typechecks", "engine.synthesis"),
    # declarations: what a pipeline says and where its tables live, importing nothing of the engine but errors and config
    ("engine.names", "engine.layout", "engine.kinds", "engine.schema", "engine.freshness", "engine.source_code",
     "engine.quality.checks", "engine.quality.results", "engine.ingest.sources", "engine.ingest.postgres.source",
     "engine.maintenance.policy",
     "engine.pipeline"),
    # column protection and validation, applied while rows are written
    ("engine.governance.actor", "engine.governance.encryption_legacy", "engine.governance.encryption",
     "engine.governance.secrets", "engine.governance.pii",
     "engine.quality.validate", "engine.context", "engine.partitioning", "engine.aggregates"),
    # table formats and their storage operations
    ("engine.tables",),
    # what one run does with tables: ingestion, checks, records, change detection, governance, leases
    ("engine.ingest", "engine.quality", "engine.governance", "engine.changes", "engine.runlog", "engine.staleness",
     "engine.declarations", "engine.entrypoints", "engine.guard", "engine.recovery", "engine.alerts",
     "engine.lease", "engine.status", "engine.lineage.events", "engine.maintenance", "engine.features"),
    # the runner
    ("engine.run", "engine.runner"),
    # products built on runs and tables
    ("engine.governance.erase", "engine.governance.online", "engine.catalog", "engine.preflight", "engine.capacity", "engine.report",
     "engine.lineage", "engine.training"),
    # the command line
    ("engine.cli", "engine.docgen"),
)
"""Bottom to top: a module may import from its own layer (without a cycle) and from the layers below."""

DECLARATIONS = 1
"""The index of the declaration layer, which may import only errors and config from below."""


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("engine", cache_dir=None)


def layer_of(module: str) -> int:
    """The layer of `module`: the one naming it or its nearest enclosing package (the longest prefix)."""
    matches = [(len(prefix), index) for index, layer in enumerate(LAYERS) for prefix in layer
               if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise AssertionError(f"`{module}` is in no layer: add it to LAYERS and to docs/architecture.md")
    return max(matches)[1]


def engine_modules(graph: grimp.ImportGraph) -> list[str]:
    """Every module but the package roots, whose `__init__` only re-exports names lazily."""
    return sorted(m for m in graph.modules if m != "engine" and not _is_bare_package(graph, m))


def _is_bare_package(graph: grimp.ImportGraph, module: str) -> bool:
    return bool(graph.find_children(module)) and not graph.find_modules_directly_imported_by(module)


def test_every_module_has_a_layer(graph: grimp.ImportGraph) -> None:
    for module in engine_modules(graph):
        layer_of(module)


def test_no_import_runs_up_the_layers(graph: grimp.ImportGraph) -> None:
    upward = []
    for importer in engine_modules(graph):
        for imported in graph.find_modules_directly_imported_by(importer):
            if imported != "engine" and layer_of(imported) > layer_of(importer):
                upward.append(f"{importer} -> {imported}")
    assert not upward, "imports that run up the layers:\n" + "\n".join(sorted(upward))


def test_declarations_import_only_errors_and_config_from_below(graph: grimp.ImportGraph) -> None:
    allowed = {"engine.errors", "engine.config"}
    outside = []
    for importer in engine_modules(graph):
        if layer_of(importer) != DECLARATIONS:
            continue
        for imported in graph.find_modules_directly_imported_by(importer):
            if layer_of(imported) < DECLARATIONS and imported not in allowed:
                outside.append(f"{importer} -> {imported}")
    assert not outside, "declarations importing below errors and config:\n" + "\n".join(sorted(outside))


def test_there_is_no_import_cycle(graph: grimp.ImportGraph) -> None:
    sorter = TopologicalSorter({m: graph.find_modules_directly_imported_by(m) - {"engine"} for m in graph.modules})
    try:
        sorter.prepare()
    except CycleError as cycle:
        pytest.fail("import cycle: " + " -> ".join(reversed(cycle.args[1])))


def test_the_checks_catch_a_cycle_and_an_upward_import() -> None:
    """The checks above fail when the graph is broken on purpose (so they are not vacuous)."""
    graph = grimp.build_graph("engine", cache_dir=None)
    graph.add_import(importer="engine.errors", imported="engine.cli.main")
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_there_is_no_import_cycle(graph)
    with pytest.raises(AssertionError, match="engine.errors -> engine.cli.main"):
        test_no_import_runs_up_the_layers(graph)


def test_no_module_is_over_500_lines() -> None:
    root = Path(__file__).resolve().parents[1]
    sizes = {str(p.relative_to(root)): len(p.read_text().splitlines())
             for folder in ("engine", "cluster", "features", "pipelines", "benchmarks")
             for p in (root / folder).rglob("*.py") if ".venv" not in p.parts}
    assert sizes and not {path: lines for path, lines in sizes.items() if lines > 500}


@pytest.mark.parametrize("package", ["engine", "engine.features", "engine.training"])
def test_lazy_exports_are_what_type_checkers_see(package: str) -> None:
    """Every name a package loads on first use is imported under `TYPE_CHECKING` from the same module (so type
    checkers see its real type, not `Any`), and loading it gives that module's object."""
    module = importlib.import_module(package)
    tree = ast.parse(Path(module.__file__ or "").read_text())
    checked = {alias.name: node.module for block in ast.walk(tree)
               if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
               for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    lazy = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and node.keys and all(isinstance(k, ast.Constant) for k in node.keys):
            lazy |= {k.value: v.value for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[union-attr]
    assert lazy and checked == lazy
    for name, defining in lazy.items():
        assert getattr(module, name) is getattr(importlib.import_module(defining), name)
