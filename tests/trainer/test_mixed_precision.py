"""`--mixed-precision` on CPU (bfloat16 compute, float32 variables) trains and reports like the default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from disttrain_trainer.launch import start_task


@pytest.mark.slow
def test_single_process_mixed_precision_runs_and_learns(tmp_path: Path) -> None:
    args = ["--synthetic", "--mixed-precision", "--max-steps", "60", "--log-every", "30", "--output-dir", str(tmp_path)]
    task = start_task({}, None, 0, args, tmp_path / "logs")
    assert task.process.wait(300) == 0, task.stderr.read_text()[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["strategy"] == "single" and metrics["steps"] == 60
    assert metrics["accuracy"] > 0.3  # synthetic digits are learnable: chance is 0.1
    assert "progress step=60/60" in task.output()


@pytest.mark.slow
def test_parameter_server_mixed_precision_is_chosen_from_the_workers(tmp_path: Path) -> None:
    """The chief reads the workers' devices through the cluster (CPU here: bfloat16) and trains with them."""
    from disttrain_trainer.launch import local_cluster, start_cluster

    args = ["--synthetic", "--mixed-precision", "--max-steps", "20", "--log-every", "10", "--batch-size", "32"]
    running = start_cluster(local_cluster(chief=1, ps=1, worker=1), [*args, "--output-dir", str(tmp_path)], tmp_path)
    try:
        codes = running.wait(300)
    finally:
        running.stop()
    chief = running.task("chief")
    assert codes["chief-0"] == 0, chief.stderr.read_text()[-3000:]
    assert "mixed precision: mixed_bfloat16, from the devices of the replicas that compute" in chief.stderr.read_text()
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] >= 20
