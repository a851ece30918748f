"""`make bench-operator` in its smallest form: bench/operator.py --quick starts its own control plane, runs every
scenario at a few pods and writes the JSON (with every figure and its raw baseline) and the chart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

BENCH = Path(__file__).resolve().parents[2] / "bench" / "operator.py"


def test_the_quick_benchmark_writes_every_figure_beside_its_baseline(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads((tmp_path / "operator.json").read_text())
    assert (tmp_path / "operator.png").stat().st_size > 0
    assert results["machine"]["cpu"]
    for scenario, metrics in (("one_job", ("created_s", "running_s", "cpu_s")),
                              ("many_jobs", ("created_s", "running_s", "cpu_s", "rss_mb"))):
        for metric in metrics:
            figure = results[scenario][metric]
            for side in ("raw", "operator"):
                assert figure[side]["min"] > 0 and figure[side]["median"] >= figure[side]["min"]
            assert figure["ratio"] > 0
    for when in ("idle", "under_load"):
        latency = results["status_latency"][when]
        assert latency["n"] > 0 and 0 < latency["p50_s"] <= latency["p99_s"]
    curve = results["scale"]
    assert len(curve) >= 2 and [p["pods"] for p in curve] == sorted(p["pods"] for p in curve)
    assert all(p["operator_cpu_ms_per_pod"] > 0 and p["raw_cpu_ms_per_pod"] > 0 for p in curve)
    assert len(results["goals"]) == 9 and all(isinstance(g["met"], bool) for g in results["goals"].values())
