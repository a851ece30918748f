"""The chaos harness's own guarantees, checked in `make test`: a pod the test loses is gone at once, and the
driver never ends a pod it has already lost (the CI run at 620d5a3 had a job stuck that way)."""

from __future__ import annotations

from typing import Any

import pytest
from chaos_harness import PodLedger, delete_pod_now
from kubernetes import client
from kubernetes.client import ApiException

from disttrain_operator.names import LABEL_INDEX, LABEL_JOB, LABEL_ROLE


def pod_event(uid: str, phase: str) -> dict[str, Any]:
    labels = {LABEL_JOB: "j", LABEL_ROLE: "worker", LABEL_INDEX: "0"}
    return {"metadata": {"uid": uid, "name": "j-worker-0", "labels": labels}, "status": {"phase": phase}}


def test_a_lost_pod_is_not_the_replicas_running_pod_even_before_its_deletion_is_seen() -> None:
    ledger = PodLedger()
    ledger.seen("ADDED", pod_event("u1", "Running"))
    assert ledger.running(("j", "worker", 0)) is not None
    ledger.lose("u1")  # the test deleted it; the watch has not said so yet
    assert ledger.running(("j", "worker", 0)) is None


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
