"""The package's shape: the layer contract holds and no module imports itself through others.

The layers (pyproject.toml, ``[tool.importlinter]``) say which package may import which; a cycle
between modules is checked here too, because a cycle inside one layer (or through an import
inside a function) is just as hard to change later.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "headstart"


def lint_imports_command() -> str:
    beside_python = Path(sys.executable).with_name("lint-imports")
    found = str(beside_python) if beside_python.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is missing: pip install -e '.[test]' (import-linter)")
    return found


def test_import_linter_contracts_are_kept():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [lint_imports_command(), "--no-cache", "--no-logo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout, proc.stdout


def import_cycles(graph) -> list[tuple[str, ...]]:
    """One chain per direct import a -> b that leads back to a (b -> ... -> a), shortest first."""
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.append((importer, *back))
    return sorted(cycles, key=len)


def test_no_module_imports_itself_through_others():
    """Imports inside functions count: grimp reads every import statement of every module."""
    sys.path.insert(0, str(ROOT / "src"))
    try:
        graph = grimp.build_graph(PACKAGE, include_external_packages=False, cache_dir=None)
    finally:
        sys.path.remove(str(ROOT / "src"))
    assert len(graph.modules) > 20, "the graph does not hold the package's modules"
    cycles = import_cycles(graph)
    shown = "\n".join(" -> ".join(chain) for chain in cycles[:20])
    assert not cycles, f"{len(cycles)} import(s) close a cycle:\n{shown}"


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The check itself: a two-module cycle made through a function-level import is found."""
    package = tmp_path / "cyclic_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic_pkg import b\n")
    (package / "b.py").write_text("def f():\n    from cyclic_pkg import a\n    return a\n")
    (package / "c.py").write_text("from cyclic_pkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("cyclic_pkg", include_external_packages=False, cache_dir=None)
    cycles = import_cycles(graph)
    assert ("cyclic_pkg.a", "cyclic_pkg.b", "cyclic_pkg.a") in cycles
    assert not any(chain[0] == "cyclic_pkg.c" for chain in cycles)


def test_no_function_is_longer_than_about_60_lines():
    """Functions short enough to read at once : the project's rule, kept by this test."""
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "headstart"
    spans = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                spans.append((lines, f"{path.relative_to(src)}:{node.lineno} {node.name}"))
    too_long = sorted(s for s in spans if s[0] > 60)
    assert not too_long, too_long
    assert len(spans) > 300  # the walk found the package's functions


def test_estimator_helpers_neither_take_the_classifier_nor_call_its_private_methods():
    """Only ``classifier.py`` touches the classifier: the stages, the auto search and the
    multi-label fit take typed values and return a ``FittedModel`` (no ``clf: Any``, no
    ``clf._extract``), and no fit path calls ``set_params``."""
    import ast

    found = []
    for path in sorted((ROOT / "src" / PACKAGE / "estimator").glob("*.py")):
        if path.name == "classifier.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.arg) and node.arg == "clf":
                found.append(f"{path.name}:{node.lineno} takes clf")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "clf" and node.attr.startswith("_"):
                    found.append(f"{path.name}:{node.lineno} calls clf.{node.attr}")
                if node.attr in ("set_params", "clone"):
                    found.append(f"{path.name}:{node.lineno} calls {node.attr}")
            if isinstance(node, ast.Name) and node.id in ("ImageClassifier", "clone"):
                found.append(f"{path.name}:{node.lineno} names {node.id}")
    assert found == []


# What the command line may not load before a command needs it: the network stack, the figure
# library, the inference runtimes and the web server cost start-up time on every run of every
# command (a warm feature-extraction re-run needs none of them at import).
HEAVY_AT_RUN_TIME = (
    "torch",
    "torchvision",
    "timm",
    "matplotlib",
    "openvino",
    "onnxruntime",
    "fastapi",
    "uvicorn",
)


def test_importing_the_command_line_loads_no_heavy_library():
    code = (
        "import sys, headstart.cli\n"
        f"print(sorted(name for name in {HEAVY_AT_RUN_TIME!r} if name in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
