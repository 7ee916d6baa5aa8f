"""The house's import graph: flows -> tasks -> stage logic, and no TensorFlow
where no model is touched.

The graph is read from the source files (``ast``, nothing imported), so the
checks are fast and see every module, imported by a test or not.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Entry points: they start flows and Prefect servers, so they import both.
ENTRY_POINTS = {
    "mnist_pipeline/cli.py": "the CLI: every command builds a config and calls a flow",
    "mnist_pipeline/launch.py": "a command's process: its temporary Prefect "
    "server and Prefect's logging",
}
#: Modules of mnist_pipeline/ that import Prefect, tasks or flows at module
#: level today (none), each with the reason.
KNOWN_EXCEPTIONS: dict[str, str] = {}
#: What moves aliases, reads the registry and logs runs: none of it needs a model.
MODEL_FREE = (
    "mnist_pipeline.tracking_store",
    "mnist_pipeline.runs",
    "mnist_pipeline.registry",
    "mnist_pipeline.packaging",
    "mnist_pipeline.promotion",
    "flows.registry",
)


def _sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def _imports(path: Path, *, module_level: bool) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``; only top-level ones if asked.

    Module level includes imports under ``if``/``try`` at the top, not those in
    function or class bodies.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    nodes = _top_level(tree.body) if module_level else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # ``from mnist_pipeline import cli`` names the module in its aliases.
            found += [
                (node.lineno, f"{node.module}.{alias.name}") for alias in node.names
            ]
    return found


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    out = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        out.append(node)
        for field in ("body", "orelse", "finalbody", "handlers"):
            children = getattr(node, field, [])
            out += _top_level(
                [c for c in children if isinstance(c, ast.stmt)]
                + [
                    s
                    for h in children
                    if isinstance(h, ast.excepthandler)
                    for s in h.body
                ]
            )
    return out


def _is(module: str, *roots: str) -> bool:
    return any(module == root or module.startswith(f"{root}.") for root in roots)


def _relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def test_stage_logic_imports_neither_prefect_nor_tasks_nor_flows():
    allowed = ENTRY_POINTS.keys() | KNOWN_EXCEPTIONS.keys()
    offending = [
        f"{_relative(path)}:{line} imports {module}"
        for path in _sources("mnist_pipeline")
        if _relative(path) not in allowed
        for line, module in _imports(path, module_level=True)
        if _is(module, "prefect", "prefect_dask", "tasks", "flows", "deployments")
    ]
    assert offending == []


def test_the_listed_exceptions_exist():
    for path in ENTRY_POINTS.keys() | KNOWN_EXCEPTIONS.keys():
        assert (REPO / path).is_file(), path


def test_tasks_never_import_flows():
    offending = [
        f"{_relative(path)}:{line} imports {module}"
        for path in _sources("tasks")
        for line, module in _imports(path, module_level=False)
        if _is(module, "flows")
    ]
    assert offending == []


def test_nothing_imports_the_cli():
    folders = ("mnist_pipeline", "tasks", "flows", "deployments", "benchmarks")
    offending = [
        f"{_relative(path)}:{line} imports {module}"
        for folder in folders
        for path in _sources(folder)
        for line, module in _imports(path, module_level=False)
        if _is(module, "mnist_pipeline.cli")
    ]
    assert offending == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import prefect\n", ["prefect"]),
        ("from mnist_pipeline import cli\n", ["mnist_pipeline", "mnist_pipeline.cli"]),
        (
            "try:\n    import flows.training\nexcept ImportError:\n    pass\n",
            ["flows.training"],
        ),
        ("def f():\n    import prefect\n", []),
    ],
)
def test_module_level_imports_are_read_from_the_source(tmp_path, source, expected):
    path = tmp_path / "module.py"
    path.write_text(source)
    assert [m for _, m in _imports(path, module_level=True)] == expected


def test_moving_aliases_and_logging_runs_loads_no_tensorflow():
    code = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in MODEL_FREE)
        + "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stderr
