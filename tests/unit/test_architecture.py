"""The dependency rules of docs/contract.md and issue #14, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator" / "src" / "disttrain_operator"
TRAINER = ROOT / "trainer" / "src" / "disttrain_trainer"


def imports(path: Path) -> set[str]:
    """Modules a file imports, package-relative ones as bare names (`.names` -> `names`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            found.add(module if node.level == 0 else module.split(".")[0])
            if node.level and not module:  # `from . import metrics`
                found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize(
    ("module", "must_not_import"),
    [
        ("builders", {"lifecycle", "observe", "kube", "handlers"}),  # building pods is not reading them back
        ("kube", {"builders", "lifecycle", "handlers"}),  # API calls know names, not how objects are built
        ("lifecycle", {"kube", "handlers", "builders", "observe", "kopf", "kubernetes"}),  # the one pure decider
        ("names", {"builders", "observe", "lifecycle", "kube", "handlers"}),
        ("observe", {"builders", "kube", "handlers"}),
        ("policy", {"api", "crd", "builders"}),  # the rules, written once, used by api and crd
        ("restarts", {"builders", "lifecycle", "local", "kube", "handlers"}),  # the table they all read
        ("invocation", {"builders", "local", "kube", "handlers"}),  # one invocation for pods and processes
        ("local_processes", {"local", "local_console", "kube", "handlers"}),  # supervision is not rendering
        ("local_console", {"local", "local_processes", "lifecycle", "kube", "handlers"}),
    ],
)
def test_each_concern_imports_only_what_it_needs(module: str, must_not_import: set[str]) -> None:
    assert not imports(OPERATOR / f"{module}.py") & must_not_import


def test_operator_and_trainer_never_import_each_other() -> None:
    for path in OPERATOR.glob("*.py"):
        assert not {m for m in imports(path) if m.startswith("disttrain_trainer")}, path
    for path in TRAINER.glob("*.py"):
        assert not {m for m in imports(path) if m.startswith("disttrain_operator")}, path
