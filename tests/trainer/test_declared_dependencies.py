"""The trainer runs with nothing but what its package declares.

The test venv holds more than the trainer's own dependencies (test tools, the operator), so a package the
trainer imports without declaring it passes every other test and still fails in the image, which installs
the declared dependencies only. Here the trainer runs on a Python path made of exactly the distributions
its requirements (with the `cpu` extra, as the image installs them) pull in, file by file.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow

TRAINER_SRC = Path(__file__).resolve().parents[2] / "trainer" / "src"


def requirement_closure(name: str, extras: frozenset[str]) -> set[str]:
    """Canonical names of the installed distributions that `name[extras]` needs, itself included."""
    visited: set[tuple[str, frozenset[str]]] = set()
    pending: list[tuple[str, frozenset[str]]] = [(name, extras)]
    while pending:
        current, wanted = pending.pop()
        if (canonicalize_name(current), wanted) in visited:
            continue
        visited.add((canonicalize_name(current), wanted))
        for line in metadata.requires(current) or []:
            requirement = Requirement(line)
            marker_ok = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in (wanted or {""})
            )
            if marker_ok:
                pending.append((requirement.name, frozenset(requirement.extras)))
    return {key for key, _ in visited}


def link_distributions(names: set[str], target: Path) -> None:
    """Symlink every installed file of these distributions into `target`, keeping their layout."""
    for dist in metadata.distributions():
        if canonicalize_name(dist.metadata["Name"]) not in names:
            continue
        for file in dist.files or []:
            if file.parts[0] == ".." or file.suffix == ".pth":  # scripts outside site-packages, editable hooks
                continue
            source = Path(dist.locate_file(file))
            link = target / file
            if source.exists() and not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source)


def test_declared_closure_is_computed_from_metadata() -> None:
    closure = requirement_closure("disttrain-trainer", frozenset({"cpu"}))
    assert {"disttrain-trainer", "numpy", "tensorflow-cpu"} <= closure
    assert "pytest" not in closure and "kopf" not in closure


def test_trainer_trains_and_writes_summaries_with_only_its_declared_dependencies(tmp_path: Path) -> None:
    closure = requirement_closure("disttrain-trainer", frozenset({"cpu"}))
    site = tmp_path / "site"
    link_distributions(closure - {"disttrain-trainer"}, site)
    # -S: no site-packages and no .pth files; -E: no PYTHONPATH. Only `site` and the trainer's source remain.
    bootstrap = (
        f"import sys; sys.path[:0] = [{str(site)!r}, {str(TRAINER_SRC)!r}]; "
        "from disttrain_trainer.cli import main; sys.argv[0] = 'disttrain-trainer'; main()"
    )
    args = ["--synthetic", "--max-steps", "2", "--log-every", "1", "--output-dir", str(tmp_path / "out")]
    result = subprocess.run(
        [sys.executable, "-S", "-E", "-c", bootstrap, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(line.startswith("final ") for line in result.stdout.splitlines()), result.stdout[-2000:]
    assert list((tmp_path / "out" / "logs" / "train").glob("events.out.tfevents.*"))
