"""The layout's rules, checked on the source (issue #22).

* No import circles between the modules of ``node`` and ``workers``: every import counts, those
  inside functions too (a local import hides a circle from Python, not from a reader).
* No circles between their folders either: the folders draw the data path (``workers/load`` →
  ``l3`` → ``tissues`` → ``measure`` → ``pictures`` → ``encode``; ``node/receive`` → ``store`` →
  ``schedule`` → ``send``), so a folder never needs one that comes after it. A module directly
  in ``node/`` or ``workers/`` (config, logs, job contract, result document) counts on its own.
* The analysis (everything in ``workers`` but the Celery shell, :data:`CELERY_SHELL`) imports
  neither Celery, kombu, pynetdicom nor sockets, and of the node only :data:`NODE_ALLOWED`
  (redaction and the log set-up): it runs without the network, in a test, a notebook or
  ``bodycomp batch``. Checked twice: on the source, and by importing it in a fresh interpreter
  (there without ``socket``: the standard library's ``email.utils``, which ``importlib.metadata``
  loads, imports it for any program).
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("node", "workers")
#: The Celery task and its app: the thin shell around the analysis.
CELERY_SHELL = {"workers.app", "workers.tasks", "workers.warmup"}
FORBIDDEN = ("celery", "kombu", "pynetdicom", "socket", "socketserver")
LOADED_FORBIDDEN = ("celery", "kombu", "pynetdicom", "socketserver")
NODE_ALLOWED = {"node.privacy", "node.logs"}


@functools.cache
def _modules() -> dict[str, Path]:
    """Every module of ``node`` and ``workers`` by dotted name (walked once: the tree does not
    change during a run, and the folder check asks for it per import)."""
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (absolute imports; the project uses
    no relative ones, which this test would then have to resolve)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module is not None
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {t for t in _imports(path) if t in modules and t != name} for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles_in_node_and_workers() -> None:
    graph = _graph()
    assert len(graph) > 100, "the modules were not found"
    assert _cycles(graph) == []


def _folder(module: str) -> str:
    """``node.receive.scp`` → ``node.receive``; a module directly in a top-level package (or the
    package itself) stands for itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (len(parts) == 2 and module in _folders()) else module


def _folders() -> set[str]:
    return {name for name, path in _modules().items() if path.name == "__init__.py" and name.count(".") == 1}


def test_no_import_circles_between_folders() -> None:
    folders: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        edges = folders.setdefault(_folder(module), set())
        edges.update(_folder(t) for t in targets if _folder(t) != _folder(module))
    assert {"workers.load", "workers.measure", "node.receive", "node.send"} <= set(folders)
    assert _cycles(folders) == []


def test_the_circle_check_finds_a_circle() -> None:
    """The check itself: a circle of three, through a package, is reported."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def _analysis() -> list[str]:
    return sorted(name for name in _modules() if name.startswith("workers") and name not in CELERY_SHELL)


def test_the_analysis_imports_no_celery_network_or_node_in_its_source() -> None:
    wrong = {}
    for name in _analysis():
        imported = _imports(_modules()[name])
        bad = {
            t
            for t in imported
            if t.split(".")[0] in FORBIDDEN or (t.split(".")[0] == "node" and t not in NODE_ALLOWED)
        }
        # ``from node.privacy import csv_cell`` names node.privacy.csv_cell too: the module counts
        bad = {t for t in bad if not any(t.startswith(f"{allowed}.") for allowed in NODE_ALLOWED)}
        if bad:
            wrong[name] = sorted(bad)
    assert wrong == {}


def test_importing_the_analysis_loads_no_celery_or_pynetdicom() -> None:
    """In a fresh interpreter: every analysis module imported, then what came with them."""
    modules = _analysis()
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {LOADED_FORBIDDEN!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


#: Modules with SQL of their own, and why.
SQL_ELSEWHERE = {
    "node.store.index": "the index",
    "workers.app": "the embedded broker's database (kombu's message table), not the index",
}
SQL = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+TABLE)\b", re.S
)


def test_sql_is_written_only_in_the_index() -> None:
    """The index's SQL lives in ``node/store/index.py`` (issue #22): a string literal with SQL anywhere
    else in ``node`` or ``workers`` is a query the index's methods and tests do not know of."""
    found = []
    for name, path in _modules().items():
        if name in SQL_ELSEWHERE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                found.append(f"{name}:{node.lineno}")
    assert found == []


#: What a receiving process must not load: the broker client and the analysis' heavy libraries
#: (Pillow is not among them: pydicom imports it for its own pixel handling).
RECEIVER_FORBIDDEN = ("celery", "kombu", "scipy", "skimage", "highdicom")


def test_a_receiving_process_loads_no_broker_or_analysis_libraries() -> None:
    """Each extra receiving process (``node.receivers`` > 1) is spawned fresh and imports the SCP:
    before issue #22 it loaded the command line, Celery and the whole analysis stack with it,
    ~1 s and tens of MB per process for nothing. In a fresh interpreter, as its spawn does."""
    code = (
        "import sys\n"
        "import node.receive.processes, node.receive.scp\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(RECEIVER_FORBIDDEN)!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
