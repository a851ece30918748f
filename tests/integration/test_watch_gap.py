"""A watch gap (410 Gone, a restarted API server, a long disconnect) leaves the operator's index holding pods that
are gone. Its decisions must still be right: a fresh list by label checks the index before any create or delete and
at every resync, and deletes carry the UID of the pod the decision saw. The operator's reconcile runs here directly
(no Kopf), fed an index as a watch gap leaves it, against the real API server and kwok."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from controlplane import wait_for
from kubernetes import client

from disttrain_operator.api import GROUP, PLURAL, VERSION
from disttrain_operator.handlers import OperatorState, reconcile_job
from disttrain_operator.kube import Kube
from disttrain_operator.names import LABEL_JOB
from disttrain_operator.observe import observe_pod

pytestmark = pytest.mark.cluster
IMAGE = "registry.invalid/disttrain/trainer:test"


def pods(api: client.ApiClient, namespace: str, job: str) -> dict[str, dict[str, Any]]:
    listed = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"{LABEL_JOB}={job}")
    found = api.sanitize_for_serialization(listed)["items"]
    return {p["metadata"]["name"]: p for p in found if not p["metadata"].get("deletionTimestamp")}


def index_of(found: dict[str, dict[str, Any]], key: tuple[str, str], uid: str) -> dict:
    """What Kopf's index holds for the job: (owner UID, observation) per pod."""
    return {key: [(uid, observe_pod(p)) for p in found.values()]}


@pytest.fixture
def job(k8s_client: client.ApiClient, crd: None, namespace: str) -> tuple[OperatorState, tuple[str, str], str]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DistTrainJob",
        "metadata": {"name": "gap"},
        "spec": {"image": IMAGE, "replicaSpecs": {"worker": {"replicas": 2}}},
    }
    created = client.CustomObjectsApi(k8s_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    state, key = OperatorState(kube=Kube(k8s_client)), (namespace, "gap")
    asyncio.run(reconcile_job(state, key, {}, ensure_service=True))  # an empty index: the pods are created
    wait_for(
        lambda: (
            len(pods(k8s_client, namespace, "gap")) == 2
            and all(p["status"].get("phase") == "Running" for p in pods(k8s_client, namespace, "gap").values())
        ),
        timeout=60,
        what="both workers Running",
    )
    return state, key, created["metadata"]["uid"]


def test_a_pod_deleted_during_a_watch_gap_is_recreated_at_the_next_resync(k8s_client, job) -> None:
    state, key, uid = job
    namespace = key[0]
    stale = index_of(pods(k8s_client, namespace, "gap"), key, uid)  # the view before the gap
    client.CoreV1Api(k8s_client).delete_namespaced_pod("gap-worker-1", namespace, grace_period_seconds=0)
    wait_for(lambda: "gap-worker-1" not in pods(k8s_client, namespace, "gap"), timeout=60, what="the pod gone")
    state.relisted.clear()  # a resync is due (RESYNC_SECONDS passed)
    asyncio.run(reconcile_job(state, key, stale))  # before: the index said Running, nothing was ever recreated
    wait_for(lambda: "gap-worker-1" in pods(k8s_client, namespace, "gap"), timeout=60, what="gap-worker-1 again")


def test_a_stale_failed_entry_never_deletes_the_healthy_replacement(k8s_client, job) -> None:
    state, key, uid = job
    namespace = key[0]
    found = pods(k8s_client, namespace, "gap")
    healthy_uid = found["gap-worker-0"]["metadata"]["uid"]
    gone = dict(
        found["gap-worker-0"],
        metadata={**found["gap-worker-0"]["metadata"], "uid": "uid-of-a-gone-pod"},
        status={
            "phase": "Failed",
            "containerStatuses": [
                {"name": "tensorflow", "state": {"terminated": {"exitCode": 137}}, "restartCount": 0}
            ],
        },
    )
    stale = index_of({**found, "gap-worker-0": gone}, key, uid)  # the old pod failed; its replacement runs
    asyncio.run(reconcile_job(state, key, stale))  # before: "recreate worker-0" deleted the replacement by name
    assert pods(k8s_client, namespace, "gap")["gap-worker-0"]["metadata"]["uid"] == healthy_uid


def test_a_delete_carries_the_uid_of_the_pod_it_means(k8s_client, job) -> None:
    state, key, _ = job
    namespace = key[0]
    healthy_uid = pods(k8s_client, namespace, "gap")["gap-worker-0"]["metadata"]["uid"]
    assert not asyncio.run(state.kube.delete_pod(namespace, "gap-worker-0", "uid-of-a-gone-pod"))
    assert pods(k8s_client, namespace, "gap")["gap-worker-0"]["metadata"]["uid"] == healthy_uid
    assert asyncio.run(state.kube.delete_pod(namespace, "gap-worker-0", healthy_uid))
