"""Real pods on a real kubelet node: the images built from the Dockerfile, the operator installed by Helm
and running as a pod under its own ServiceAccount, TensorFlow over pod IPs and CoreDNS names.

`make e2e` runs these (marker e2e; `make test` leaves them out). They need root, Debian's docker.io and
containernetworking-plugins, the node binaries and the images: `python hack/e2e.py prepare` (which
`make e2e` runs first) provides all of them.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

HACK = Path(__file__).resolve().parents[2] / "hack"
sys.path.insert(0, str(HACK))

import e2e  # noqa: E402

pytestmark = pytest.mark.e2e

MIN_ACCURACY = 0.97
JOB_TIMEOUT = 900.0


SUMMARY: dict[str, dict] = {}  # what the run measured, written to <cluster root>/summary.json


@pytest.fixture(scope="module")
def cluster() -> Iterator[e2e.Cluster]:
    cluster = e2e.make_cluster().up()
    try:
        yield cluster
    finally:
        cluster.down()
        SUMMARY["cluster seconds"] = cluster.timings
        (cluster.root / "summary.json").write_text(json.dumps(SUMMARY, indent=2, sort_keys=True) + "\n")
        e2e.log(f"summary in {cluster.root / 'summary.json'}: {json.dumps(SUMMARY, sort_keys=True)}")


def results(cluster: e2e.Cluster, job: str) -> dict:
    """The job's status.results (also kept for the run's summary)."""
    found = cluster.get(f"dtj/{job}")["status"].get("results") or {}
    SUMMARY[job] = found
    return found


def pod_named(cluster: e2e.Cluster, job: str, name: str) -> dict:
    return next(p for p in cluster.pods(job) if p["metadata"]["name"] == name)


def terminated(pod: dict) -> dict:
    statuses = {s["name"]: s for s in pod["status"].get("containerStatuses", [])}
    return statuses["tensorflow"]["state"].get("terminated") or {}


def wait_for_log_line(cluster: e2e.Cluster, pod: str, prefix: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = cluster.kubectl("logs", pod, check=False).stdout
        if any(line.startswith(prefix) for line in logs.splitlines()):
            return
        time.sleep(2)
    raise AssertionError(f"no line starting with {prefix!r} in the logs of {pod} after {timeout}s")


def kill_container(cluster: e2e.Cluster, pod: str) -> str:
    """SIGKILL the trainer inside the pod's container through the node's containerd; returns the pod UID."""
    status = pod_named(cluster, "mnist-ps", pod)
    container = next(s for s in status["status"]["containerStatuses"] if s["name"] == "tensorflow")
    cluster.kill_trainer(container["containerID"].removeprefix("containerd://"))
    return status["metadata"]["uid"]


# ------------------------------------------------------------------------------------ the operator


def test_operator_runs_as_a_pod_under_its_service_account(cluster: e2e.Cluster) -> None:
    pods = cluster.get("pods", "-n", e2e.OPERATOR_NAMESPACE)["items"]
    assert len(pods) == 1
    pod = pods[0]
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["serviceAccountName"] == "disttrain"
    assert pod["spec"]["nodeName"]
    assert pod["spec"]["containers"][0]["image"].startswith("disttrain/operator:")

    def holder() -> str:
        found = cluster.kubectl("get", "lease", "disttrain-operator", "-n", e2e.OPERATOR_NAMESPACE, "-o",
                                "jsonpath={.spec.holderIdentity}", check=False)
        return found.stdout if found.stdout.startswith(pod["metadata"]["name"] + "_") else ""

    e2e.controlplane.wait_for(holder, timeout=60, what="the operator pod holding the Lease")  # it leads: it acts


# ------------------------------------------------------------------------------------ parameter servers


@pytest.fixture(scope="module")
def ps_job(cluster: e2e.Cluster, mnist_dir: Path) -> dict:
    """examples/mnist-ps.yaml; once the chief reports progress, worker-1's trainer is SIGKILLed (exit 137)."""
    cluster.apply_job(e2e.local_node_job(e2e.load_example("mnist-ps.yaml"), mnist_dir))
    cluster.wait_condition("mnist-ps", "Running", timeout=300)
    wait_for_log_line(cluster, "mnist-ps-chief-0", "progress step=", timeout=600)
    killed_uid = kill_container(cluster, "mnist-ps-worker-1")
    cluster.wait_condition("mnist-ps", "Succeeded", timeout=JOB_TIMEOUT)
    results(cluster, "mnist-ps")
    pods = cluster.settled_pods("mnist-ps")
    return {"killed_uid": killed_uid, "job": cluster.get("dtj/mnist-ps"), "pods": pods}


def test_ps_job_succeeds_with_accuracy_in_status_and_kubectl_get(cluster: e2e.Cluster, ps_job: dict) -> None:
    found = ps_job["job"]["status"]["results"]
    assert found["accuracy"] >= MIN_ACCURACY, found
    assert found["strategy"] == "parameter-server"
    table = cluster.kubectl("get", "dtj", "mnist-ps").stdout
    assert re.search(r"\b(9[7-9]|100)(\.\d+)?%", table) or f"{found['accuracy']}" in table, table


def test_ps_parameter_servers_complete_by_themselves(ps_job: dict) -> None:
    servers = [p for p in ps_job["pods"] if p["metadata"]["labels"]["disttrain.io/replica-type"] == "ps"]
    assert len(servers) == 2, "cleanPodPolicy Running deletes only pods still running: none was"
    for pod in servers:
        assert pod["status"]["phase"] == "Succeeded", pod["status"]
        assert terminated(pod)["reason"] == "Completed"


def test_ps_chief_logs_progress_and_resolves_peers_through_coredns(cluster: e2e.Cluster, ps_job: dict) -> None:
    logs = cluster.kubectl("logs", "mnist-ps-chief-0").stdout
    steps = ps_job["job"]["status"]["results"]["steps"]
    done = re.findall(r"^progress step=(\d+)/(\d+)\b", logs, re.MULTILINE)
    assert done and done[-1][0] == done[-1][1], logs[-2000:]  # the progress bar ends full: every step ran
    # results.steps is the optimizer's count: a closure the killed worker had in flight runs again (at least once),
    # at most its two closures of 5 steps (--steps-per-dispatch)
    assert int(done[-1][0]) <= steps <= int(done[-1][0]) + 2 * 5, (done[-1], steps)
    chief = pod_named(cluster, "mnist-ps", "mnist-ps-chief-0")["spec"]["containers"]
    env = next(c for c in chief if c["name"] == "tensorflow")["env"]
    config = json.loads(next(e["value"] for e in env if e["name"] == "TF_CONFIG"))
    host = config["cluster"]["ps"][0].split(":")[0]
    assert host == "mnist-ps-ps-0.default.svc"  # the task's own Service
    queries = cluster.dns_queries()  # None where the cluster DNS logs no queries (kind)
    assert queries is None or "mnist-ps-ps-0.default.svc.cluster.local" in queries


def test_ps_worker_killed_with_sigkill_is_recreated_and_counted(ps_job: dict) -> None:
    worker = next(p for p in ps_job["pods"] if p["metadata"]["name"] == "mnist-ps-worker-1")
    assert worker["metadata"]["uid"] != ps_job["killed_uid"], "the killed pod was recreated"
    # The replacement has a new pod IP; the chief must reach it at the task's address: it ends by itself on
    # the chief's shutdown token instead of being stopped by clean-up (it was, while TF_CONFIG named pod IPs).
    assert worker["status"]["phase"] == "Succeeded", worker["status"]
    assert terminated(worker)["reason"] == "Completed"
    assert ps_job["job"]["status"]["restarts"] >= 1
    assert ps_job["job"]["status"]["replicaStatuses"]["worker"]["restarts"] >= 1


# ------------------------------------------------------------------------------------ the other strategies


@pytest.mark.parametrize(
    ("example", "job", "strategy"),
    [
        ("mnist-mwms.yaml", "mnist-mwms", "multi-worker-mirrored"),
        ("mnist-single.yaml", "mnist-single", "single"),
    ],
)
def test_example_succeeds_on_real_pods(
    cluster: e2e.Cluster, mnist_dir: Path, example: str, job: str, strategy: str
) -> None:
    cluster.apply_job(e2e.local_node_job(e2e.load_example(example), mnist_dir))
    cluster.wait_condition(job, "Succeeded", timeout=JOB_TIMEOUT)
    found = results(cluster, job)
    assert found["strategy"] == strategy
    assert found["accuracy"] >= MIN_ACCURACY, found


# ------------------------------------------------------------------------------------ storage and TensorBoard


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def test_shared_storage_example_and_tensorboard_through_port_forward(cluster: e2e.Cluster, mnist_dir: Path) -> None:
    folder = cluster.node_folder(cluster.root / "volumes" / "mnist-outputs")
    volume = e2e.local_volume("mnist-outputs-e2e", cluster.node_name, folder)
    cluster.apply_job([volume, *e2e.local_node_job(e2e.load_example("mnist-shared-storage.yaml"), mnist_dir)])
    cluster.wait_condition("mnist-shared-storage", "Succeeded", timeout=JOB_TIMEOUT)
    found = results(cluster, "mnist-shared-storage")
    assert found["accuracy"] >= MIN_ACCURACY
    assert found.get("resumedFromStep") is None, found  # a fresh run, not a former run's checkpoint resumed
    cluster.kubectl("rollout", "status", "deployment/mnist-tensorboard", "--timeout=300s", timeout=330)
    port = free_port()
    forward = subprocess.Popen(
        ["kubectl", "port-forward", "service/mnist-tensorboard", f"{port}:6006"],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, status, runs = time.monotonic() + 120, 0, b""
        while time.monotonic() < deadline:
            try:
                status, _ = http_get(f"http://127.0.0.1:{port}/")
                _, runs = http_get(f"http://127.0.0.1:{port}/data/plugin/scalars/tags")
                if b"heldout_accuracy" in runs:
                    break
            except OSError:
                pass
            time.sleep(2)
        assert status == 200
        tags = json.loads(runs)
        assert {"loss", "accuracy", "heldout_accuracy"} <= set(tags["train"]), tags
        assert "heldout_accuracy" in tags.get("eval", {}), tags  # the evaluator pod read the chief's checkpoints
    finally:
        forward.terminate()
        forward.wait(10)


# ------------------------------------------------------------------------------------ secrets stay secret


def test_a_secret_printed_by_a_failing_trainer_never_reaches_the_jobs_status(cluster: e2e.Cluster) -> None:
    secret_value = "e2e-s3cr3t-4f9c1d"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "e2e-token"},
              "stringData": {"token": secret_value}}
    job = {
        "apiVersion": "disttrain.io/v1alpha1", "kind": "DistTrainJob", "metadata": {"name": "leaky"},
        "spec": {
            "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "e2e-token", "key": "token"}}}],
            # the kubelet expands $(TOKEN): the trainer's error names the missing folder, secret and all
            "args": ["--data-dir=/missing/$(TOKEN)"],
            "replicaSpecs": {"worker": {"replicas": 1, "restartPolicy": "Never",
                                        "resources": {"requests": {"cpu": e2e.E2E_CPU_REQUEST}}}},
        },
    }
    cluster.apply_job([secret, job])
    cluster.wait_condition("leaky", "Failed", timeout=300)
    status = json.dumps(cluster.get("dtj/leaky")["status"])
    events = cluster.kubectl("get", "events", "--field-selector", "involvedObject.name=leaky").stdout
    assert "***" in status, status  # the trainer's own failure line, masked, reached the condition
    assert secret_value not in status and secret_value not in events
    pod = pod_named(cluster, "leaky", "leaky-worker-0")
    assert secret_value not in terminated(pod).get("message", "")
