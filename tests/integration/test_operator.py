"""The operator against the real control plane: kube-apiserver, controllers, scheduler, kwok nodes.

The operator runs in this process (Kopf in a thread via KopfRunner, watching all namespaces); each
test works in its own namespace and drives pods to Succeeded/Failed with kwok annotations.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import (
    ANNOTATION_COMPLETE,
    ANNOTATION_FAIL_EXIT_CODE,
    ANNOTATION_TERMINATION_MESSAGE,
    CPU_NODES,
    GPU_NODES,
    wait_for,
)
from kopf.testing import KopfRunner
from kubernetes import client

from disttrain_operator.api import GROUP, PLURAL, VERSION
from disttrain_operator.kube import Kube, StaleReadError
from disttrain_operator.names import LABEL_INDEX, LABEL_JOB

pytestmark = pytest.mark.cluster

MERGE_PATCH = "application/merge-patch+json"
TIMEOUT = 40.0
IMAGE = "registry.invalid/disttrain/trainer:test"
Obj = dict[str, Any]


class Operator:
    """The operator in a background thread of this process; stoppable and restartable."""

    ARGS = ["run", "--all-namespaces", "--standalone", "-m", "disttrain_operator.handlers"]

    def __init__(self) -> None:
        self.runner: KopfRunner | None = None

    def start(self) -> None:
        self.runner = KopfRunner(self.ARGS, timeout=60)
        self.runner.__enter__()

    def stop(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.__exit__(None, None, None)
            assert runner.exit_code == 0, runner.output


class Cluster:
    """Small typed helpers over the API for one test namespace."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.api_client = api_client
        self.ns = namespace
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def create_job(self, name: str, replica_specs: Obj, **spec: Any) -> Obj:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DistTrainJob",
            "metadata": {"name": name},
            "spec": {"image": IMAGE, "replicaSpecs": replica_specs, **spec},
        }
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def shared_claim(self, name: str) -> str:
        """A PersistentVolumeClaim bound to a PersistentVolume of its own (kwok pods mount nothing for real)."""
        volume = f"{self.ns}-{name}"[:63]
        self.core.create_persistent_volume({
            "metadata": {"name": volume, "labels": {"disttrain.io/test": "true"}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                     "persistentVolumeReclaimPolicy": "Delete", "hostPath": {"path": f"/tmp/{volume}"},
                     "claimRef": {"namespace": self.ns, "name": name}},
        })
        self.core.create_namespaced_persistent_volume_claim(self.ns, {
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}},
                     "volumeName": volume, "storageClassName": ""},
        })
        return name

    def job(self, name: str) -> Obj | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def patch_job_spec(self, name: str, spec: Obj) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec}, _content_type=MERGE_PATCH
        )

    def condition(self, name: str, kind: str) -> Obj | None:
        job = self.job(name) or {}
        return next((c for c in (job.get("status") or {}).get("conditions", []) if c["type"] == kind), None)

    def wait_condition(self, name: str, kind: str, reason: str | None = None, timeout: float = TIMEOUT) -> Obj:
        def holds() -> Obj | None:
            found = self.condition(name, kind)
            ok = found and found["status"] == "True" and (reason is None or found["reason"] == reason)
            return found if ok else None

        return wait_for(holds, timeout=timeout, what=f"{kind}/{reason} on {self.ns}/{name}")

    def pods(self, job: str) -> dict[str, Obj]:
        listed = self.core.list_namespaced_pod(self.ns, label_selector=f"{LABEL_JOB}={job}")
        items = self.api_client.sanitize_for_serialization(listed)["items"]
        return {pod["metadata"]["name"]: pod for pod in items}

    def live_pods(self, job: str) -> dict[str, Obj]:
        return {n: p for n, p in self.pods(job).items() if not p["metadata"].get("deletionTimestamp")}

    def wait_pods(self, job: str, names: set[str], phase: str | None = None, timeout: float = TIMEOUT) -> dict:
        def ready() -> tuple[dict[str, Obj]] | None:
            pods = self.live_pods(job)
            if set(pods) != names or (phase and any(p["status"].get("phase") != phase for p in pods.values())):
                return None
            return (pods,)  # truthy even when no pods are expected

        return wait_for(ready, timeout=timeout, what=f"pods {sorted(names)} ({phase or 'any phase'}) of {job}")[0]

    def drive(self, pod: str, annotation: str, value: str, message: str | None = None) -> None:
        """Tells kwok to complete (or fail) a pod, optionally leaving a termination message."""
        annotations = {annotation: value} | ({ANNOTATION_TERMINATION_MESSAGE: message} if message else {})
        self.core.patch_namespaced_pod(
            pod, self.ns, {"metadata": {"annotations": annotations}}, _content_type=MERGE_PATCH
        )

    def events(self, name: str) -> list[tuple[str, str, str]]:
        listed = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}")
        return [(e.type, e.reason, e.message or "") for e in listed.items]

    def wait_event(self, name: str, reason: str, contains: str = "") -> tuple[str, str, str]:
        def found() -> tuple[str, str, str] | None:
            return next((e for e in self.events(name) if e[1] == reason and contains in e[2]), None)

        return wait_for(found, timeout=TIMEOUT, what=f"event {reason} on {name}")


def names(job: str, **counts: int) -> set[str]:
    return {f"{job}-{role}-{index}" for role, count in counts.items() for index in range(count)}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def operator(crd: None) -> Iterator[Operator]:
    running = Operator()
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def cluster(operator: Operator, k8s_client: client.ApiClient, namespace: str) -> Cluster:
    return Cluster(k8s_client, namespace)


# ---------------------------------------------------------------- tests


def test_job_runs_to_success(cluster: Cluster, control_plane: Any) -> None:
    import tensorflow as tf

    job = "ps"
    claim = cluster.shared_claim("outputs")  # the evaluator reads the chief's checkpoints there
    cluster.create_job(
        job,
        {"chief": {"replicas": 1}, "ps": {"replicas": 1}, "worker": {"replicas": 2}, "evaluator": {"replicas": 1}},
        storage={"claimName": claim},
    )
    expected = names(job, chief=1, ps=1, worker=2, evaluator=1)
    pods = cluster.wait_pods(job, expected, phase="Running")

    service = cluster.core.read_namespaced_service(job, cluster.ns)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses is True
    assert [(p.name, p.port) for p in service.spec.ports] == [("tf-port", 2222)]

    def address(role: str, index: int) -> str:
        return f"{job}-{role}-{index}.{cluster.ns}.svc:2222"

    for task in ("chief-0", "ps-0", "worker-0", "worker-1"):  # each training task's own stable address
        task_service = cluster.core.read_namespaced_service(f"{job}-{task}", cluster.ns)
        assert task_service.spec.cluster_ip not in (None, "None")
        assert task_service.spec.selector[LABEL_INDEX] == task.rsplit("-", 1)[1]

    cluster_spec = {
        "chief": [address("chief", 0)],
        "ps": [address("ps", 0)],
        "worker": [address("worker", 0), address("worker", 1)],
    }
    for name, pod in pods.items():
        (trainer,) = pod["spec"]["containers"]
        config = next(e["value"] for e in trainer["env"] if e["name"] == "TF_CONFIG")
        assert config not in json.dumps(pod["metadata"].get("annotations") or {})  # once per pod: the env only
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TF_CONFIG", config)
            resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
            assert resolver.cluster_spec().as_dict() == cluster_spec
            assert f"{job}-{resolver.task_type}-{resolver.task_id}" == name
        assert pod["spec"]["hostname"] == name and pod["spec"]["subdomain"] == job

    cluster.wait_condition(job, "Running", "AllReplicasRunning")
    stored = cluster.job(job)
    assert stored["status"]["replicaStatuses"]["worker"]["summary"] == "2/2"
    assert stored["status"]["state"] == "Running"
    # No finalizer: a job stays deletable while the operator is down (its children go by owner references).
    assert not stored["metadata"].get("finalizers")

    metrics = {"accuracy": 0.9861, "loss": 0.05, "steps": 1000, "train_seconds": 54.0, "batch_size": 128}
    cluster.drive(f"{job}-chief-0", ANNOTATION_COMPLETE, "true", message=json.dumps(metrics))
    control_plane.kubectl("wait", "--for=condition=Succeeded", f"dtj/{job}", "-n", cluster.ns, "--timeout=40s")
    assert cluster.condition(job, "Succeeded")["reason"] == "JobSucceeded"
    # the chief's final metrics (its termination message) are the job's results, shown by kubectl get
    results = cluster.job(job)["status"]["results"]
    assert results == {"accuracy": 0.9861, "loss": 0.05, "steps": 1000, "trainSeconds": 54.0}
    table = control_plane.kubectl("get", "dtj", job, "-n", cluster.ns).stdout.split("\n")
    assert table[1].split()[table[0].split().index("ACCURACY")] == "0.9861"
    # cleanPodPolicy Running (the default): the parameter server and the others stop; the chief stays for logs.
    remaining = cluster.wait_pods(job, {f"{job}-chief-0"})
    assert remaining[f"{job}-chief-0"]["status"]["phase"] == "Succeeded"
    assert cluster.job(job)["status"]["completionTime"]
    cluster.wait_event(job, "Created")
    cluster.wait_event(job, "JobSucceeded", "the chief completed")


def test_gpu_workers_scheduled_on_gpu_nodes(cluster: Cluster) -> None:
    job = "gpu"
    cluster.create_job(job, {"chief": {"replicas": 1}, "worker": {"replicas": 2, "gpus": 2}})
    pods = cluster.wait_pods(job, names(job, chief=1, worker=2), phase="Running")
    for name, pod in pods.items():
        if "-worker-" in name:
            assert pod["spec"]["nodeName"] in GPU_NODES
            assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
        else:
            assert pod["spec"]["nodeName"] in CPU_NODES


def test_permanent_exit_code_fails_job_and_ttl_deletes_it(cluster: Cluster) -> None:
    job = "perm"
    cluster.create_job(job, {"worker": {"replicas": 2}}, runPolicy={"ttlSecondsAfterFinished": 3})
    cluster.wait_pods(job, names(job, worker=2), phase="Running")
    cluster.drive(f"{job}-worker-1", ANNOTATION_FAIL_EXIT_CODE, "1", message="Traceback...\nerror: no MNIST data\n")
    failed = cluster.wait_condition(job, "Failed", "PodFailed")
    assert failed["message"] == "worker-1 exited with code 1: error: no MNIST data"  # the log tail says why
    assert cluster.job(job)["status"]["state"] == "Failed"
    assert cluster.wait_event(job, "PodFailed")[0] == "Warning"
    wait_for(lambda: cluster.job(job) is None, timeout=TIMEOUT, what="job deleted by ttlSecondsAfterFinished")


def test_retryable_failures_recreate_pods_until_backoff_limit(cluster: Cluster) -> None:
    job = "retry"
    pod = f"{job}-worker-0"
    cluster.create_job(job, {"worker": {"replicas": 1}}, runPolicy={"backoffLimit": 1})
    first = cluster.wait_pods(job, {pod}, phase="Running")[pod]["metadata"]["uid"]
    cluster.core.delete_namespaced_service(job, cluster.ns)  # lost while running: back with the new pod
    cluster.drive(pod, ANNOTATION_FAIL_EXIT_CODE, "137")

    def recreated() -> str | None:
        found = cluster.live_pods(job).get(pod)
        return (
            found if found and found["metadata"]["uid"] != first and found["status"].get("phase") == "Running" else None
        )

    second = wait_for(recreated, timeout=TIMEOUT, what="the failed pod recreated")
    status = cluster.job(job)["status"]
    assert status["restarts"] == 1 and not cluster.condition(job, "Failed")
    service = cluster.core.read_namespaced_service(job, cluster.ns)
    assert service.spec.cluster_ip == "None" and service.metadata.owner_references[0].name == job
    # a condition is only recorded once it has held: its presence shows the job went through Restarting
    assert any(c["type"] == "Restarting" for c in status["conditions"])
    cluster.wait_event(job, "PodFailed", "exited with code 137")

    cluster.drive(pod, ANNOTATION_FAIL_EXIT_CODE, "137")
    failed = cluster.wait_condition(job, "Failed", "BackoffLimitExceeded")
    assert "backoffLimit 1" in failed["message"]
    assert cluster.job(job)["status"]["restarts"] == 2
    assert second["metadata"]["uid"] != first


def test_active_deadline_fails_job_by_timer(cluster: Cluster) -> None:
    job = "deadline"
    deadline = 3
    cluster.create_job(job, {"worker": {"replicas": 1}}, runPolicy={"activeDeadlineSeconds": deadline})
    cluster.wait_pods(job, names(job, worker=1), phase="Running")
    cluster.wait_condition(job, "Failed", "DeadlineExceeded")
    status = cluster.job(job)["status"]
    started, completed = (
        datetime.fromisoformat(status[k].replace("Z", "+00:00")) for k in ("startTime", "completionTime")
    )
    # Enforced by the timer, a moment after the deadline, not at some later pod event.
    assert deadline <= (completed - started).total_seconds() <= deadline + 4
    cluster.wait_pods(job, set())  # the running pod is cleaned up (cleanPodPolicy Running)
    assert cluster.wait_event(job, "DeadlineExceeded")[0] == "Warning"


def test_suspend_deletes_pods_and_resume_recreates_them(cluster: Cluster) -> None:
    job = "susp"
    cluster.create_job(job, {"worker": {"replicas": 2}})
    cluster.wait_pods(job, names(job, worker=2), phase="Running")
    cluster.patch_job_spec(job, {"runPolicy": {"suspend": True}})
    cluster.wait_condition(job, "Suspended", "JobSuspended")
    cluster.wait_pods(job, set())
    assert cluster.job(job)["status"]["state"] == "Suspended"

    cluster.patch_job_spec(job, {"runPolicy": {"suspend": False}})
    cluster.wait_pods(job, names(job, worker=2), phase="Running")
    cluster.wait_condition(job, "Running", "AllReplicasRunning")
    assert cluster.condition(job, "Suspended")["status"] == "False"
    cluster.wait_event(job, "Suspended")
    cluster.wait_event(job, "Resumed")


def test_deleting_job_garbage_collects_children(cluster: Cluster) -> None:
    job = "gc"
    cluster.create_job(job, {"worker": {"replicas": 2}})
    cluster.wait_pods(job, names(job, worker=2))
    service = cluster.core.read_namespaced_service(job, cluster.ns)
    assert service.metadata.owner_references[0].kind == "DistTrainJob"
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, job)

    def service_gone() -> bool:
        try:
            cluster.core.read_namespaced_service(job, cluster.ns)
            return False
        except client.ApiException as error:
            return error.status == 404

    wait_for(lambda: not cluster.pods(job), timeout=TIMEOUT, what="pods garbage-collected")
    wait_for(service_gone, timeout=TIMEOUT, what="service garbage-collected")


def test_invalid_pod_template_fails_job_as_invalid_spec(cluster: Cluster) -> None:
    job = "bad"
    # The CRD preserves the template as it is; only the API server's pod validation can refuse it.
    template = {"spec": {"dnsPolicy": "Sometimes"}}
    cluster.create_job(job, {"worker": {"replicas": 2, "template": template}}, runPolicy={"ttlSecondsAfterFinished": 5})
    failed = cluster.wait_condition(job, "Failed", "InvalidSpec")
    assert "spec.replicaSpecs.worker" in failed["message"] and "dnsPolicy" in failed["message"]
    assert cluster.wait_event(job, "InvalidSpec")[0] == "Warning"
    assert not cluster.live_pods(job)
    wait_for(lambda: cluster.job(job) is None, timeout=TIMEOUT, what="the invalid job deleted after its TTL")


def test_operator_restarted_mid_creation_creates_exactly_the_pods(
    cluster: Cluster, operator: Operator, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = "big"
    replicas = 20
    operator.stop()
    create = Kube.create_or_adopt
    serial: dict[str, asyncio.Lock] = {}

    async def slow_create(self: Kube, obj: Obj, owner_uid: str) -> bool:
        """Creates pods one at a time, slowly, so that the operator can be stopped half-way."""
        async with serial.setdefault("lock", asyncio.Lock()):
            await asyncio.sleep(0.4)
            return await create(self, obj, owner_uid)

    monkeypatch.setattr(Kube, "create_or_adopt", slow_create)
    operator.start()
    uid = cluster.create_job(job, {"worker": {"replicas": replicas}})["metadata"]["uid"]
    wait_for(lambda: len(cluster.pods(job)) >= 3, timeout=TIMEOUT, what="the first pods")
    operator.stop()
    monkeypatch.undo()
    partial = len(cluster.pods(job))
    assert 3 <= partial < replicas, f"the operator was meant to stop half-way, but {partial} pods exist"

    operator.start()
    cluster.wait_condition(job, "Running", "AllReplicasRunning")
    pods = cluster.pods(job)
    assert set(pods) == names(job, worker=replicas)
    assert all(p["metadata"]["ownerReferences"][0]["uid"] == uid for p in pods.values())
    env = pods[f"{job}-worker-7"]["spec"]["containers"][0]["env"]
    assert json.loads(next(e["value"] for e in env if e["name"] == "TF_CONFIG"))["task"]["index"] == 7
    assert cluster.job(job)["status"]["replicaStatuses"]["worker"]["summary"] == f"{replicas}/{replicas}"


# ---------------------------------------------------------------- security in the namespace (issue #11)

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def enforce_restricted(cluster: Cluster) -> None:
    """Pod Security Admission (built into kube-apiserver) at the strictest level, as a hardened cluster sets it."""
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    cluster.core.patch_namespace(cluster.ns, {"metadata": {"labels": labels}})


def example_jobs() -> list[Obj]:
    docs = [doc for path in EXAMPLES for doc in yaml.safe_load_all(path.read_text()) if doc]
    return [doc for doc in docs if doc.get("kind") == "DistTrainJob"]


def test_restricted_pod_security_admits_every_examples_pods(cluster: Cluster) -> None:
    enforce_restricted(cluster)
    expected: dict[str, set[str]] = {}
    for job in example_jobs():
        job["metadata"].pop("namespace", None)
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, job)
        counts = {role: spec.get("replicas", 1) for role, spec in job["spec"]["replicaSpecs"].items()}
        expected[job["metadata"]["name"]] = names(job["metadata"]["name"], **counts)
    assert len(expected) == len(EXAMPLES)  # every example is a DistTrainJob
    for job, pods in expected.items():
        cluster.wait_pods(job, pods)  # created, so admitted; a refusal would end the job Failed instead
        assert cluster.condition(job, "Failed") is None


def test_pod_security_refusal_fails_the_job_with_the_api_servers_message(cluster: Cluster) -> None:
    enforce_restricted(cluster)
    job = "runs-as-root"
    template = {"spec": {"securityContext": {"runAsNonRoot": False, "runAsUser": 0}}}
    cluster.create_job(job, {"worker": {"replicas": 1, "template": template}})
    cluster.create_job("fine", {"worker": {"replicas": 1}})  # the operator keeps serving good jobs meanwhile
    failed = cluster.wait_condition(job, "Failed")
    assert 'violates PodSecurity "restricted:latest"' in failed["message"], failed
    assert "spec.replicaSpecs.worker" in failed["message"] and "runAsNonRoot" in failed["message"]
    assert not cluster.live_pods(job)
    cluster.wait_pods("fine", names("fine", worker=1))


def test_each_job_gets_a_network_policy_unless_its_spec_says_no(cluster: Cluster) -> None:
    networking = client.NetworkingV1Api(cluster.api_client)
    cluster.create_job("isolated", {"worker": {"replicas": 1}}, port=2345)
    cluster.create_job("open", {"worker": {"replicas": 1}}, networkPolicy=False)
    cluster.wait_pods("isolated", names("isolated", worker=1))
    cluster.wait_pods("open", names("open", worker=1))
    found = cluster.api_client.sanitize_for_serialization(
        networking.read_namespaced_network_policy("isolated", cluster.ns)
    )
    own = {"matchLabels": {LABEL_JOB: "isolated"}}
    assert found["spec"]["podSelector"] == own
    assert found["spec"]["ingress"][0] == {"from": [{"podSelector": own}], "ports": [{"port": 2345, "protocol": "TCP"}]}
    assert [p.metadata.name for p in networking.list_namespaced_network_policy(cluster.ns).items] == ["isolated"]


def test_a_strangers_service_with_a_task_name_gets_no_pods_until_it_is_gone(cluster: Cluster) -> None:
    job = "taken"
    stranger = {"metadata": {"name": f"{job}-worker-0"}, "spec": {"ports": [{"port": 2222}], "selector": {"a": "b"}}}
    cluster.core.create_namespaced_service(cluster.ns, stranger)  # TF_CONFIG would send worker 0's traffic there
    cluster.create_job(job, {"worker": {"replicas": 2}})
    assert "not controlled by this job" in cluster.wait_event(job, "NameTaken", f"{job}-worker-0")[2]
    assert not cluster.live_pods(job)
    cluster.core.delete_namespaced_service(f"{job}-worker-0", cluster.ns)
    cluster.wait_pods(job, names(job, worker=2))  # the retry creates our own Service, then the pods


def test_a_status_decided_on_a_stale_read_never_overwrites_a_newer_one(cluster: Cluster) -> None:
    # the operator under test is running too: the job is suspended, so it only writes the Suspended condition
    cluster.create_job("contested", {"worker": {"replicas": 1}}, runPolicy={"suspend": True})
    cluster.wait_condition("contested", "Suspended")
    stale = cluster.job("contested")
    assert stale is not None
    newer = {"status": {"conditions": [*stale["status"]["conditions"], {
        "type": "Succeeded", "status": "True", "reason": "ByAnotherOperator", "message": "",
        "lastTransitionTime": "2026-12-02T00:00:00Z"}]}}
    cluster.custom.patch_namespaced_custom_object_status(GROUP, VERSION, cluster.ns, PLURAL, "contested", newer)
    kube = Kube(cluster.api_client)
    with pytest.raises(StaleReadError):  # before: the merge patch won and the Succeeded condition vanished
        asyncio.run(kube.patch_job_status(cluster.ns, "contested", {"conditions": stale["status"]["conditions"]},
                                          stale["metadata"]["resourceVersion"]))
    assert cluster.condition("contested", "Succeeded")["reason"] == "ByAnotherOperator"


def test_a_sidecar_that_keeps_running_neither_hides_success_nor_outlives_the_job(cluster: Cluster) -> None:
    job = "sidecar"
    template = {"spec": {"containers": [{"name": "logger", "image": "busybox"}, {"name": "tensorflow"}]}}
    cluster.create_job(job, {"worker": {"replicas": 1, "restartPolicy": "Never", "template": template}})
    (pod,) = cluster.wait_pods(job, names(job, worker=1), phase="Running").values()
    # what the kubelet reports when the trainer exits 0 and the log shipper keeps going: the pod stays Running
    now = "2026-12-02T00:00:00Z"
    pod["status"]["containerStatuses"] = [
        {"name": "logger", "image": "busybox", "imageID": "", "ready": True, "restartCount": 0,
         "state": {"running": {"startedAt": now}}},
        {"name": "tensorflow", "image": IMAGE, "imageID": "", "ready": False, "restartCount": 0,
         "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}},
    ]
    cluster.core.patch_namespaced_pod_status(f"{job}-worker-0", cluster.ns, {"status": pod["status"]})
    cluster.wait_condition(job, "Succeeded")  # before: the Running phase hid the end and the job never finished
    cluster.wait_pods(job, set())  # and the pod, still running its sidecar, is stopped


def test_a_full_quota_costs_one_post_per_backoff_and_the_job_says_why_it_waits(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    posts: list[str] = []
    create = Kube.create_or_adopt

    async def counted(self: Kube, obj: Obj, owner_uid: str) -> bool:
        if obj["kind"] == "Pod":
            posts.append(obj["metadata"]["name"])
        return await create(self, obj, owner_uid)

    monkeypatch.setattr(Kube, "create_or_adopt", counted)  # the operator runs in this process
    quota = {"metadata": {"name": "pods"}, "spec": {"hard": {"pods": "3"}}}
    cluster.core.create_namespaced_resource_quota(cluster.ns, quota)
    wait_for(lambda: cluster.core.read_namespaced_resource_quota("pods", cluster.ns).status.hard, timeout=TIMEOUT,
             what="the quota in force")
    job = "queued"
    cluster.create_job(job, {"worker": {"replicas": 10}})
    event = cluster.wait_event(job, "FailedCreate", "exceeded quota")
    assert "creating again in" in event[2]
    waiting = cluster.wait_condition(job, "ReplicaFailure", "FailedCreate")  # `kubectl describe` says why it waits
    assert "exceeded quota" in waiting["message"]
    window_start, before = time.monotonic(), len(posts)
    wait_for(lambda: time.monotonic() - window_start > 20, timeout=30, what="a 20 s window", interval=1)
    # before: every pass (every 5 s, and on every pod event) POSTed all 7 missing pods again
    assert len(posts) - before <= 5, posts[before:]
    assert len(cluster.events(job)) < 6  # one FailedCreate, not one per pass
    cluster.core.patch_namespaced_resource_quota("pods", cluster.ns, {"spec": {"hard": {"pods": "10"}}})
    cluster.wait_pods(job, names(job, worker=10), timeout=120)  # the backoff ends, the pods come
    wait_for(lambda: cluster.condition(job, "ReplicaFailure")["status"] == "False", timeout=TIMEOUT,
             what="ReplicaFailure False once the pods went through")


def test_a_completed_worker_whose_pod_is_garbage_collected_never_trains_again(cluster: Cluster) -> None:
    job = "gc"
    cluster.create_job(job, {"worker": {"replicas": 2}}, successPolicy="AllWorkers")
    cluster.wait_pods(job, names(job, worker=2), phase="Running")
    cluster.drive(f"{job}-worker-1", ANNOTATION_COMPLETE, "true")
    wait_for(lambda: cluster.pods(job)[f"{job}-worker-1"]["status"]["phase"] == "Succeeded", timeout=TIMEOUT,
             what="worker 1 completed")
    wait_for(lambda: (cluster.job(job) or {}).get("status", {}).get("completedReplicas") == {"worker": [1]},
             timeout=TIMEOUT, what="worker 1 recorded as completed")
    cluster.core.delete_namespaced_pod(f"{job}-worker-1", cluster.ns)  # as PodGC does past its threshold
    cluster.wait_pods(job, {f"{job}-worker-0"})
    cluster.drive(f"{job}-worker-0", ANNOTATION_COMPLETE, "true")
    cluster.wait_condition(job, "Succeeded")  # before: worker 1 was recreated, trained again, and held the job
    assert f"{job}-worker-1" not in cluster.pods(job)
