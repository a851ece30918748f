"""`make bench` in its smallest form: `python -m bench.trainer --quick` runs every experiment at a few steps and
writes the JSON with each experiment's figures and one PNG per experiment (into a temporary folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
IDLE_LIMIT_S = 90  # on an otherwise idle machine; stretched by the load other work puts on the cores
EXPERIMENTS = ("accuracy", "speedup", "optimizers", "inference")


def test_the_quick_benchmark_writes_every_experiment(tmp_path: Path) -> None:
    limit = IDLE_LIMIT_S * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "bench.trainer", "--quick", "--synthetic", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert time.monotonic() - started < limit
    results = json.loads((tmp_path / "trainer.json").read_text())
    for name in EXPERIMENTS:
        assert (tmp_path / f"trainer_{name}.png").stat().st_size > 0
    assert results["machine"]["cpu"] and results["machine"]["cpus_available"] >= 1
    for setup in results["accuracy"]["setups"].values():
        assert setup["mean_curve"] and setup["final_accuracy"]["n"] >= 1
        assert setup["examples_per_second"]["mean"] > 0
    speedup = results["speedup"]["rows"]
    assert speedup[0]["speedup_examples_per_second"] == 1.0 and speedup[0]["examples_per_second_per_core"] > 0
    optimizers = {row["optimizer"] for row in results["optimizers"]["rows"]}
    assert optimizers == {"adagrad", "sgd"} and "staleness" in results["optimizers"]
    for row in results["inference"]["rows"]:
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["examples_per_second"] > 0
    for experiment in ("accuracy", "speedup", "optimizers", "inference"):  # TensorBoard logs with HParams per run
        runs = [p for p in (tmp_path / "logs" / experiment).iterdir() if p.is_dir()]
        assert runs and all(list(r.glob("*.hparams")) and list((r / "train").glob("events.*")) for r in runs)
