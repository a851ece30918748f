"""Parameter-server training where no two tasks share a filesystem, as in pods without shared storage.

Each ps and worker runs in its own mount namespace with an empty tmpfs over the output folder, so it sees
none of the chief's files. Checkpoints must still be written and read back by the chief alone.
Needs root (unshare --mount), which the development machines and CI have.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from disttrain_trainer.launch import local_cluster, start_cluster

from .test_distributed import final_metrics

pytestmark = pytest.mark.slow


def private_tmpfs(path: Path) -> Sequence[str]:
    """A command prefix: run in a new mount namespace where `path` is an empty, private tmpfs."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.fail("this test needs root and unshare(1) (util-linux) for private mount namespaces")
    script = 'mount -t tmpfs disttrain-private "$0" && exec "$@"'
    return ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, str(path))


def run_private(root: Path, out: Path, mnist_dir: Path, steps: int, name: str) -> tuple[dict, str]:
    """chief + 2 ps + 1 worker to `steps`; every task but the chief has a private `out`. (codes, chief log)."""
    cluster = local_cluster(chief=1, ps=2, worker=1)
    args = ["--max-steps", str(steps), "--output-dir", str(out), "--data-dir", str(mnist_dir)]
    args += ["--checkpoint-every", "20", "--log-every", "10", "--startup-timeout", "120", "--chief-grace", "60"]
    private = private_tmpfs(out)
    running = start_cluster(cluster, args, root / name, wrappers={"ps": private, "worker": private})
    try:
        codes = running.wait(timeout=300)
    finally:
        running.stop()
    chief = running.task("chief")
    return codes, chief.output() + chief.stderr.read_text(errors="replace")


def test_ps_checkpoints_and_resume_without_a_shared_filesystem(tmp_path: Path, mnist_dir: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    codes, log = run_private(tmp_path, out, mnist_dir, steps=40, name="first")
    assert codes["chief-0"] == 0, log[-3000:]
    assert (out / "checkpoints" / "ckpt-40.index").is_file()
    assert list((out / "checkpoints").glob("ckpt-40.data-*")), "the chief holds every shard's data"
    assert final_metrics(log)["steps"] == 40

    codes, log = run_private(tmp_path, out, mnist_dir, steps=60, name="resumed")
    assert codes["chief-0"] == 0, log[-3000:]
    assert "resumed from" in log and "ckpt-40" in log, log[-3000:]
    metrics = final_metrics(log)
    assert metrics["steps"] == 60
    assert (out / "checkpoints" / "ckpt-60.index").is_file()
