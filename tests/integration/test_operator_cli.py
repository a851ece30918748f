"""`disttrain operator` as the image runs it: liveness endpoint, metrics, reconciling, prompt exit on SIGTERM."""

from __future__ import annotations

import os
import re
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
        for _ in range(3):  # the kubelet's liveness probes, every 10 s for the operator's whole life
            assert healthy(url)
    finally:
        started = time.monotonic()
        operator.send_signal(signal.SIGTERM)
        output, _ = operator.communicate(timeout=60)
    assert operator.returncode == 0, output[-3000:]
    assert time.monotonic() - started < 30
    # a probe is not news: no log line per request (8,640 a day at the chart's period), nor its CPU
    assert "GET /healthz" not in output, [line for line in output.splitlines() if "/healthz" in line][:3]


TIMESTAMPED = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] ")


def test_a_refused_pass_is_one_timestamped_line_and_a_failed_create_event(
    control_plane: Any, crd: None, namespace: str, tmp_path: Path
) -> None:
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods", "namespace": namespace},
             "spec": {"hard": {"pods": "0"}}}
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(quota))
    log = tmp_path / "operator.log"
    disttrain = Path(sys.executable).with_name("disttrain")
    with log.open("w") as out:
        operator = subprocess.Popen(
            [str(disttrain), "operator", "--namespace", namespace, "--liveness", "none", "--metrics-port", "0"],
            env={**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        job = {"apiVersion": "disttrain.io/v1alpha1", "kind": "DistTrainJob",
               "metadata": {"name": "quota", "namespace": namespace},
               "spec": {"replicaSpecs": {"worker": {"replicas": 2}}}}
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(job))

        def failed_passes() -> list[str]:
            lines = log.read_text().splitlines()
            return [line for line in lines if f"reconciling {namespace}/quota failed" in line] or None

        lines = wait_for(failed_passes, timeout=60, what="a logged failed pass")
        assert TIMESTAMPED.match(lines[0]) and "exceeded quota" in lines[0], lines[0]
        events = wait_for(
            lambda: control_plane.kubectl("get", "events", "-n", namespace, "--field-selector",
                                          "reason=FailedCreate", "-o", "name").stdout.split(),
            timeout=30, what="a FailedCreate event",
        )
        assert len(events) == 1  # once per cause, however often the pass is retried
        described = control_plane.kubectl("describe", "dtj", "quota", "-n", namespace).stdout
        assert "FailedCreate" in described and "exceeded quota" in described
    finally:
        operator.send_signal(signal.SIGTERM)
        operator.wait(timeout=60)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]  # tracebacks only with --verbose
    assert all(TIMESTAMPED.match(line) for line in text.splitlines() if line.strip()), text[-3000:]


def lease_holder(control_plane: Any, namespace: str) -> str:
    found = control_plane.kubectl("get", "lease", "disttrain-operator", "-n", namespace, "-o",
                                  "jsonpath={.spec.holderIdentity}", check=False)
    return found.stdout.strip() if found.returncode == 0 else ""


def test_two_operators_elect_one_leader_and_the_other_takes_over(
    control_plane: Any, crd: None, namespace: str, tmp_path: Path
) -> None:
    disttrain = Path(sys.executable).with_name("disttrain")
    operators: dict[str, subprocess.Popen] = {}
    for name in ("a", "b"):
        with (tmp_path / f"{name}.log").open("w") as out:
            operators[name] = subprocess.Popen(
                [str(disttrain), "operator", "-n", namespace, "--liveness", "none", "--metrics-port", "0",
                 "--leader-elect", "--leader-election-namespace", namespace],
                env={**os.environ, "KUBECONFIG": str(control_plane.kubeconfig), "POD_NAME": f"operator-{name}"},
                stdout=out, stderr=subprocess.STDOUT,
            )

    def job(name: str) -> str:
        return yaml.safe_dump({"apiVersion": "disttrain.io/v1alpha1", "kind": "DistTrainJob",
                               "metadata": {"name": name, "namespace": namespace},
                               "spec": {"replicaSpecs": {"worker": {"replicas": 2}}}})

    def pods(prefix: str) -> list[str]:
        out = control_plane.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.split()
        return sorted(p for p in out if p.startswith(f"pod/{prefix}-"))

    try:
        holder = wait_for(lambda: lease_holder(control_plane, namespace), timeout=60, what="a leader")
        leader = "a" if holder.startswith("operator-a_") else "b"
        standby = "b" if leader == "a" else "a"
        assert "waiting: Lease" in wait_for(lambda: (t := (tmp_path / f"{standby}.log").read_text()) and
                                            "waiting: Lease" in t and t, timeout=30, what="the standby waiting")
        control_plane.kubectl("apply", "-f", "-", input=job("first"))
        wait_for(lambda: pods("first") == ["pod/first-worker-0", "pod/first-worker-1"], timeout=60, what="pods")
        assert "Handler" not in (tmp_path / f"{standby}.log").read_text()  # the standby ran no Kopf handler

        operators[leader].kill()  # no chance to give the Lease up: the standby waits it out (15 s)
        operators[leader].wait(10)
        started = time.monotonic()
        wait_for(lambda: lease_holder(control_plane, namespace).startswith(f"operator-{standby}_"), timeout=60,
                 what="the standby leading")
        took_over = time.monotonic() - started
        control_plane.kubectl("apply", "-f", "-", input=job("second"))
        wait_for(lambda: pods("second") == ["pod/second-worker-0", "pod/second-worker-1"], timeout=60, what="pods")
        assert took_over < 30, took_over

        operators[standby].send_signal(signal.SIGTERM)  # a clean stop gives the Lease up
        assert operators[standby].wait(30) == 0
        wait_for(lambda: lease_holder(control_plane, namespace) == "", timeout=10, what="the Lease released")
    finally:
        for proc in operators.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
