"""The pure helpers of the Kopf handlers: status merge patches and pod selection from the index."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest

from disttrain_operator.api import DistTrainJobStatus, ReplicaStatus, ReplicaType, parse_spec
from disttrain_operator.handlers import OperatorState, observed_pods, status_patch
from disttrain_operator.lifecycle import ReplicaObservation


def test_status_patch_is_none_when_nothing_changed() -> None:
    status = DistTrainJobStatus(state="Running", restarts=1)
    stored = status.model_dump(by_alias=True, mode="json")
    assert status_patch(stored, status) is None


def test_status_patch_removes_roles_that_are_gone() -> None:
    stored = DistTrainJobStatus(
        replica_statuses={"ps": ReplicaStatus(desired=2), "worker": ReplicaStatus(desired=1)}
    ).model_dump(by_alias=True, mode="json")
    new = DistTrainJobStatus(replica_statuses={"worker": ReplicaStatus(desired=3)})
    patch = status_patch(stored, new)
    assert patch is not None
    assert patch["replicaStatuses"]["ps"] is None  # a merge patch null deletes the field
    assert patch["replicaStatuses"]["worker"]["desired"] == 3


def test_observed_pods_keeps_only_pods_this_job_controls() -> None:
    mine = ReplicaObservation(ReplicaType.WORKER, 0, "Running", uid="a")
    stranger = ReplicaObservation(ReplicaType.WORKER, 1, "Running", uid="b")
    index = {("ns", "job"): [("job-uid", mine), ("old-job-uid", stranger)]}
    assert observed_pods(index, ("ns", "job"), "job-uid") == [mine]  # type: ignore[arg-type]
    assert observed_pods(index, ("ns", "other"), "job-uid") == []  # type: ignore[arg-type]


def test_the_operator_forgets_a_deleted_job_entirely() -> None:
    state = OperatorState(kube=None)  # type: ignore[arg-type]
    key = ("ns", "job")
    assert state.first_report(key, "uid-1", "quota") and not state.first_report(key, "uid-1", "quota")
    assert state.first_report(key, "uid-2", "quota")  # a new job of the same name is told again
    state.lock(key)
    state.due[key] = 1.0
    state.gate(key)
    state.relisted[key] = 1.0
    state.keep_job(job("uid-2", 1, 5))
    state.forget(key)
    assert not (state.locks or state.due or state.reported or state.gates or state.relisted or state.jobs
                or state.generations)  # only live jobs


def job(uid: str, generation: int, version: int) -> dict[str, object]:
    return {"metadata": {"namespace": "ns", "name": "job", "uid": uid, "generation": generation,
                         "resourceVersion": str(version)}}


def test_a_job_is_passed_with_its_service_when_new_or_its_spec_changed_not_on_status_updates() -> None:
    """What Kopf's create, update(spec) and resume handlers did, from the job's watch events alone."""
    state = OperatorState(kube=None)  # type: ignore[arg-type]
    assert state.keep_job(job("uid-1", 1, 10))  # created, or listed by a (re)started operator
    assert not state.keep_job(job("uid-1", 1, 11))  # our own status patch coming back
    assert state.keep_job(job("uid-1", 2, 12))  # the spec changed
    assert not state.keep_job(job("uid-1", 2, 11))  # an older event after a newer one: the newer copy stays
    assert state.jobs[("ns", "job")]["metadata"]["resourceVersion"] == "12"  # type: ignore[index]
    assert state.keep_job(job("uid-2", 1, 20))  # deleted and created again under the same name
    state.forget(("ns", "job"))
    assert not state.generations and state.keep_job(job("uid-2", 1, 21))


def test_a_kept_job_leaves_out_its_managed_fields() -> None:
    """Field ownership is never read, and at 1,000 jobs it was most of what the kept copies held (#13)."""
    state = OperatorState(kube=None)  # type: ignore[arg-type]
    delivered = job("uid-1", 1, 10)
    managed = [{"manager": "disttrain-operator", "fieldsV1": {"f:status": {"f:state": {}}}}]
    delivered["metadata"]["managedFields"] = managed  # type: ignore[index]
    state.keep_job(delivered)
    kept = state.jobs[("ns", "job")]
    assert "managedFields" not in kept["metadata"] and kept["metadata"]["uid"] == "uid-1"
    assert delivered["metadata"]["managedFields"] == managed  # type: ignore[index]  # Kopf's own copy untouched


class ListingKube:
    """The API server's pods of the job, as a fresh list returns them."""

    def __init__(self, pods: list[dict[str, object]]) -> None:
        self.pods = pods

    async def list_job_pods(self, namespace: str, job_name: str) -> list[dict[str, object]]:
        return self.pods


def test_a_watch_behind_the_operators_own_creations_is_no_news_but_pods_gone_from_it_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In a healthy 200-job burst, 171 passes logged at INFO that the watch's view was stale: it had not shown yet
    the pods the job's first pass had just created. Only pods the watch still shows but the API server no longer has
    (a watch gap) are worth a line."""
    from disttrain_operator.builders import build_pod
    from disttrain_operator.handlers import plan_pass
    from disttrain_operator.observe import observe_pod

    spec = parse_spec("j", {"image": "trainer:test", "replicaSpecs": {"worker": {"replicas": 5}}})
    pods = [build_pod("j", "ns", "job-uid", spec, "worker", i) for i in range(5)]
    for i, pod in enumerate(pods):
        pod["metadata"]["uid"], pod["status"] = f"pod-{i}", {"phase": "Pending"}
    meta = {"name": "j", "namespace": "ns", "uid": "job-uid", "generation": 1, "resourceVersion": "3"}
    job_obj = {"metadata": meta, "spec": {}, "status": {"state": "Created"}}

    def next_pass(listed: list[dict[str, object]], seen: list[dict[str, object]]) -> list[str]:
        caplog.clear()
        state = OperatorState(kube=ListingKube(listed))  # type: ignore[arg-type]
        with caplog.at_level(logging.INFO, logger="disttrain_operator.handlers"):
            asyncio.run(plan_pass(state, job_obj, spec, [observe_pod(p) for p in seen], datetime.now(UTC)))
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]

    assert next_pass(listed=pods, seen=pods[:3]) == []  # before: "the watch's view of its pods was stale"
    assert next_pass(listed=pods[:4], seen=pods) == [
        "ns/j: the watch still shows 1 pod(s) the API server no longer has (a watch gap); deciding on a fresh list"]
