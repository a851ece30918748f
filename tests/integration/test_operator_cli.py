"""`disttrain operator` as the image runs it: liveness endpoint, metrics, reconciling, prompt exit on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import wait_for

pytestmark = pytest.mark.cluster


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def scrape(port: int) -> dict[str, float]:
    """The operator's /metrics as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def running_job_counted(port: int) -> dict[str, float] | None:
    samples = scrape(port)
    return samples if samples.get('disttrain_jobs{state="Running"}') == 1 else None


def test_operator_command_serves_liveness_reconciles_and_stops_on_sigterm(
    control_plane: Any, crd: None, namespace: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}/healthz"
    metrics_port = free_port()
    disttrain = Path(sys.executable).with_name("disttrain")
    operator = subprocess.Popen(
        [str(disttrain), "operator", "--namespace", namespace, "--liveness", url, "--metrics-port", str(metrics_port)],
        env={**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: healthy(url), timeout=60, what="the operator's liveness endpoint")
        job = {
            "apiVersion": "disttrain.io/v1alpha1",
            "kind": "DistTrainJob",
            "metadata": {"name": "cli", "namespace": namespace},
            "spec": {"replicaSpecs": {"worker": {"replicas": 2}}},
        }
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(job))

        def pods() -> list[str]:
            out = control_plane.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout
            return sorted(out.split())

        wait_for(lambda: pods() == ["pod/cli-worker-0", "pod/cli-worker-1"], timeout=60, what="the job's pods")
        control_plane.kubectl("wait", "--for=condition=Running", "dtj/cli", "-n", namespace, "--timeout=60s")
        samples = wait_for(lambda: running_job_counted(metrics_port), timeout=30, what="metrics of the running job")
        assert samples["disttrain_pods_created_total"] == 2
        assert samples['disttrain_job_events_total{reason="Created"}'] == 1
        assert samples['disttrain_reconciles_total{outcome="ok"}'] >= 2
        assert samples.get('disttrain_reconciles_total{outcome="error"}', 0) == 0
        assert samples["disttrain_reconcile_duration_seconds_count"] >= 2
        assert samples["process_resident_memory_bytes"] > 0
    finally:
        started = time.monotonic()
        operator.send_signal(signal.SIGTERM)
        output, _ = operator.communicate(timeout=60)
    assert operator.returncode == 0, output[-3000:]
    assert time.monotonic() - started < 30
