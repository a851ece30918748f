"""The real thing: examples/mnist-ps.yaml (chief + 2 ps + 2 workers) run by `disttrain run` with TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

STEP_BUDGET = 150


@pytest.mark.slow
def test_parameter_server_example_learns_on_real_mnist(tmp_path: Path, repo_root: Path, mnist_dir: Path) -> None:
    manifest = yaml.safe_load((repo_root / "examples" / "mnist-ps.yaml").read_text())
    manifest["spec"]["args"] += [f"--max-steps={STEP_BUDGET}", "--log-every=50"]
    job = tmp_path / "mnist-ps.yaml"
    job.write_text(yaml.safe_dump(manifest))
    output_dir = tmp_path / "run"
    termination_log = tmp_path / "termination-log"  # as the kubelet would provide it in a pod
    termination_log.touch()
    disttrain = Path(sys.executable).with_name("disttrain")
    result = subprocess.run(
        [str(disttrain), "run", str(job), "--output-dir", str(output_dir)],
        env={**os.environ, "MNIST_DIR": str(mnist_dir), "DISTTRAIN_TERMINATION_LOG": str(termination_log)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["strategy"] == "parameter-server"
    assert metrics["steps"] >= STEP_BUDGET
    assert metrics["accuracy"] > 0.8, metrics  # chance is 0.1; the full default budget reaches >= 0.97
    assert json.loads(termination_log.read_text()) == metrics  # the chief's, which the operator reads
    assert f"accuracy:    {metrics['accuracy']:.2%} (held out)" in result.stdout
    assert "job mnist-ps: Succeeded" in result.stdout
    assert f"step {STEP_BUDGET}/{STEP_BUDGET}" in result.stdout
    assert f"tensorboard --logdir {output_dir / 'logs'}" in result.stdout
    # the servers ended by themselves once the chief was done: nothing had to be stopped
    assert "still running after the job finished" not in result.stdout, result.stdout[-4000:] + result.stderr[-2000:]
