"""The chaos harness's own guarantees, checked in `make test`: a pod the test loses is gone at once, the driver
never ends a pod it has already lost (the CI run at 620d5a3 had a job stuck that way), and it deletes a completed pod
only once the job's status counts that very replica (a replay of seed 377506 had a job stuck the other way)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from chaos_driver import Driver
from chaos_harness import JobLedger, PodLedger, delete_pod_now
from chaos_scenarios import JobPlan, Step
from kubernetes import client
from kubernetes.client import ApiException

from disttrain_operator.names import LABEL_INDEX, LABEL_JOB, LABEL_ROLE


def pod_event(uid: str, phase: str, index: int = 0) -> dict[str, Any]:
    labels = {LABEL_JOB: "j", LABEL_ROLE: "worker", LABEL_INDEX: str(index)}
    return {"metadata": {"uid": uid, "name": f"j-worker-{index}", "labels": labels}, "status": {"phase": phase}}


def test_a_lost_pod_is_not_the_replicas_running_pod_even_before_its_deletion_is_seen() -> None:
    ledger = PodLedger()
    ledger.seen("ADDED", pod_event("u1", "Running"))
    assert ledger.running(("j", "worker", 0)) is not None
    ledger.lose("u1")  # the test deleted it; the watch has not said so yet
    assert ledger.running(("j", "worker", 0)) is None


def test_a_completion_counts_as_recorded_only_once_the_status_counts_that_very_replica() -> None:
    """worker-0 completed and is counted; worker-1 was told to exit 0 but still runs. The status's one completion is
    worker-0's: deleting worker-1 now (as PodGC would a completed pod) loses a Running pod, which the operator
    rightly recreates, and the script then waits for an end that cannot come."""
    pods, jobs = PodLedger(), JobLedger()
    pods.seen("ADDED", pod_event("w0", "Succeeded", 0))
    pods.seen("ADDED", pod_event("w1", "Running", 1))
    status = {"completedReplicas": {"worker": [0]}, "replicaStatuses": {"worker": {"succeeded": 1}}}
    jobs.seen("MODIFIED", {"metadata": {"name": "j"}, "status": status})
    plan = JobPlan("j", "ps", {"worker": 2}, {}, "AllWorkers", 3, "None", steps=[Step("worker", 1, 0, settle=True)])
    driver = Driver(client.ApiClient(), "ns", pods, jobs)
    deleted: list[str] = []
    driver.core = SimpleNamespace(delete_namespaced_pod=lambda name, *_, **__: deleted.append(name))
    driver.add(plan)
    run = driver.runs["j"]
    run.started, run.awaiting = True, "w1"
    driver.tick()
    assert (run.step, run.awaiting, pods.pods["w1"].lost) == (0, "w1", False), run.history
    pods.seen("MODIFIED", pod_event("w1", "Succeeded", 1))
    driver.tick()  # the test saw it end, and the status still counts worker-0 alone
    assert (run.step, run.awaiting) == (0, "w1"), run.history
    jobs.seen("MODIFIED", {"metadata": {"name": "j"}, "status": {**status, "completedReplicas": {"worker": [0, 1]}}})
    driver.tick()
    assert (run.step, run.awaiting) == (1, None) and "recorded" in run.history[-1], run.history
    assert deleted == ["j-worker-1"] and pods.pods["w1"].lost  # now PodGC may take it: it must never run again


@pytest.mark.cluster
def test_a_pod_the_test_loses_is_gone_at_once_though_bound_to_a_node(k8s_client: client.ApiClient,
                                                                     namespace: str) -> None:
    # bound to a node that no kubelet (and no kwok) serves: a graceful deletion would leave it there for 30 s
    core = client.CoreV1Api(k8s_client)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="lost"),
        spec=client.V1PodSpec(node_name="nobody-serves-this-node", termination_grace_period_seconds=30,
                              containers=[client.V1Container(name="c", image="none")]))
    uid = core.create_namespaced_pod(namespace, pod).metadata.uid
    delete_pod_now(core, namespace, "lost", uid)
    with pytest.raises(ApiException) as gone:
        left = core.read_namespaced_pod("lost", namespace)
        pytest.fail(f"still there: deletionTimestamp {left.metadata.deletion_timestamp}, "
                    f"grace {left.metadata.deletion_grace_period_seconds}")
    assert gone.value.status == 404
