"""The pure helpers of the Kopf handlers: status merge patches and pod selection from the index."""

from __future__ import annotations

from disttrain_operator.api import DistTrainJobStatus, ReplicaStatus, ReplicaType
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
    state.forget(key)
    assert not (state.locks or state.due or state.reported or state.gates or state.relisted)  # only live jobs
