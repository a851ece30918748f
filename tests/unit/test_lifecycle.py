"""The job state machine: the cases Kubeflow's TFJob suite covers, and the ones it gets wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from disttrain_operator.api import DistTrainJobSpec, DistTrainJobStatus, ReplicaType, readable_ttl
from disttrain_operator.lifecycle import (
    SELF_EXIT_GRACE_SECONDS,
    Plan,
    ReplicaObservation,
    fail_invalid_spec,
    is_retryable,
    reconcile,
)

from .helpers import ps_spec, spec_from

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
CHIEF, PS, WORKER, EVALUATOR = ReplicaType.CHIEF, ReplicaType.PS, ReplicaType.WORKER, ReplicaType.EVALUATOR


def pod(role: ReplicaType, index: int, phase: str = "Running", **fields) -> ReplicaObservation:
    fields.setdefault("ready", phase == "Running")
    fields.setdefault("uid", f"{role.value}-{index}-uid")
    return ReplicaObservation(role, index, phase, **fields)  # type: ignore[arg-type]


def all_running(spec: DistTrainJobSpec) -> list[ReplicaObservation]:
    return [pod(role, i) for role, rs in spec.replica_specs.items() for i in range(rs.replicas)]


def replace(pods: list[ReplicaObservation], new: ReplicaObservation) -> list[ReplicaObservation]:
    return [new if (p.role, p.index) == (new.role, new.index) else p for p in pods]


def step(
    spec: DistTrainJobSpec, pods: list[ReplicaObservation], status: DistTrainJobStatus | None = None, at: datetime = T0
) -> Plan:
    return reconcile(spec, pods, status or DistTrainJobStatus(), at)


def reasons(plan: Plan) -> list[str]:
    return [event.reason for event in plan.events]


def test_new_job_creates_every_replica_and_is_created() -> None:
    spec = ps_spec(workers=2, ps=2)
    plan = step(spec, [])
    assert sorted(plan.create) == sorted([(CHIEF, 0), (PS, 0), (PS, 1), (WORKER, 0), (WORKER, 1)])
    assert plan.status.state == "Created"
    assert plan.status.start_time == "2026-11-25T12:00:00Z"
    assert reasons(plan) == ["Created"]


def test_all_running_sets_running_and_summaries() -> None:
    spec = ps_spec(workers=2, ps=1)
    plan = step(spec, all_running(spec))
    assert plan.status.state == "Running"
    assert plan.status.replica_statuses["worker"].summary == "2/2"
    assert plan.status.replica_statuses["ps"].active == 1
    assert not plan.create and not plan.delete


def test_pending_pod_is_not_running_yet() -> None:
    spec = ps_spec(workers=1, ps=1)
    pods = replace(all_running(spec), pod(WORKER, 0, "Pending"))
    assert step(spec, pods).status.state == "Created"


def test_chief_success_succeeds_and_stops_running_ps() -> None:
    spec = ps_spec(workers=2, ps=2)
    pods = replace(all_running(spec), pod(CHIEF, 0, "Succeeded", exit_code=0))
    pods = replace(pods, pod(WORKER, 1, "Succeeded", exit_code=0))
    plan = step(spec, pods)
    assert plan.status.state == "Succeeded"
    assert plan.status.is_true("Succeeded") and not plan.status.is_true("Running")
    assert plan.status.completion_time == "2026-11-25T12:00:00Z"
    assert "JobSucceeded" in reasons(plan)
    # cleanPodPolicy Running: after the grace, the still-running ps and worker 0 go, finished pods stay for their logs
    later = step(spec, pods, plan.status, at=T0 + timedelta(seconds=SELF_EXIT_GRACE_SECONDS))
    assert sorted(later.delete) == [(PS, 0), (PS, 1), (WORKER, 0)]


def test_after_success_running_servers_get_a_grace_to_end_by_themselves() -> None:
    # Found on a real node: the trainer's servers exit 0 about a second after the chief's shutdown token,
    # but clean-up deleted them the moment the chief completed, so they never ended Completed.
    spec = ps_spec(workers=2, ps=2)
    pods = replace(all_running(spec), pod(CHIEF, 0, "Succeeded", exit_code=0))
    done = step(spec, pods)
    assert done.status.state == "Succeeded"
    assert done.delete == []
    assert done.requeue_after == pytest.approx(SELF_EXIT_GRACE_SECONDS)
    servers_ended = [p if p.role == CHIEF else pod(p.role, p.index, "Succeeded", exit_code=0) for p in pods]
    assert step(spec, servers_ended, done.status, at=T0 + timedelta(seconds=3)).delete == []
    later = step(spec, pods, done.status, at=T0 + timedelta(seconds=SELF_EXIT_GRACE_SECONDS))
    assert sorted(later.delete) == [(PS, 0), (PS, 1), (WORKER, 0), (WORKER, 1)]


def test_after_failure_running_pods_are_stopped_at_once() -> None:
    spec = ps_spec(workers=2, ps=1)
    pods = replace(all_running(spec), pod(WORKER, 1, "Failed", exit_code=1))
    failed = step(spec, pods)
    assert failed.status.state == "Failed"
    assert sorted(failed.delete) == [(CHIEF, 0), (PS, 0), (WORKER, 0)]


@pytest.mark.parametrize("worker_code", [1, 137])
def test_chief_success_decides_even_when_a_worker_fails_in_the_same_pass(worker_code: int) -> None:
    # ChiefOrWorker0: the chief decides. Failures used to be checked first, so the same events seen in one
    # pass ended Failed (exit 1) or posted a "recreating" event and counted a restart (exit 137) for a
    # pod that is never recreated, while seen one after the other they ended Succeeded.
    spec = ps_spec(workers=2, ps=1)
    pods = replace(all_running(spec), pod(CHIEF, 0, "Succeeded", exit_code=0))
    pods = replace(pods, pod(WORKER, 1, "Failed", exit_code=worker_code))
    plan = step(spec, pods)
    assert plan.status.state == "Succeeded"
    assert reasons(plan) == ["Created", "JobSucceeded"]
    assert plan.status.restarts == 0


def test_worker0_success_without_chief() -> None:
    spec = spec_from({"worker": {"replicas": 3}})
    pods = replace(all_running(spec), pod(WORKER, 0, "Succeeded", exit_code=0))
    plan = step(spec, pods)
    assert plan.status.state == "Succeeded"
    assert "worker 0" in plan.status.condition("Succeeded").message


METRICS = '{"accuracy": 0.9861, "loss": 0.05, "steps": 1000, "train_seconds": 54.0, "strategy": "parameter-server"}'


def test_success_keeps_the_chiefs_final_metrics_as_results() -> None:
    spec = ps_spec(workers=1, ps=1)
    plan = step(spec, replace(all_running(spec), pod(CHIEF, 0, "Succeeded", exit_code=0, message=METRICS)))
    results = plan.status.results
    assert results is not None
    assert (results.accuracy, results.steps, results.strategy) == (0.9861, 1000, "parameter-server")
    wire = plan.status.model_dump(by_alias=True, mode="json")["results"]
    assert wire["trainSeconds"] == 54.0 and wire["accuracy"] == 0.9861
    # the finished job keeps them on later passes
    assert step(spec, [], plan.status).status.results == results


def test_worker0_reports_the_results_without_a_chief() -> None:
    spec = spec_from({"worker": {"replicas": 2}})
    pods = replace(all_running(spec), pod(WORKER, 0, "Succeeded", exit_code=0, message=METRICS))
    pods = replace(pods, pod(WORKER, 1, "Succeeded", exit_code=0, message='{"accuracy": 0.5}'))
    assert step(spec, pods).status.results.accuracy == 0.9861


@pytest.mark.parametrize("message", [None, "", "all done", "[1, 2]", '{"accuracy": "high"}'])
def test_success_without_readable_metrics_has_no_results(message: str | None) -> None:
    spec = ps_spec(workers=1, ps=1)
    plan = step(spec, replace(all_running(spec), pod(CHIEF, 0, "Succeeded", exit_code=0, message=message)))
    assert plan.status.state == "Succeeded" and plan.status.results is None


def test_a_failure_message_ends_with_the_replicas_last_log_line() -> None:
    spec = spec_from({"chief": {}, "worker": {"replicas": 1, "restartPolicy": "Never"}})
    log_tail = "Traceback ...\n  File x.py\ndisttrain-trainer: error: no MNIST data in /data\n\n"
    pods = replace(all_running(spec), pod(WORKER, 0, "Failed", exit_code=1, reason="Error", message=log_tail))
    failed = step(spec, pods).status.condition("Failed")
    assert failed.message == "worker-0 exited with code 1 (Error): disttrain-trainer: error: no MNIST data in /data"
    long_line = "error: the start says most" + "x" * 1000
    pods = replace(all_running(spec), pod(WORKER, 0, "Failed", exit_code=1, message=long_line))
    message = step(spec, pods).status.condition("Failed").message
    assert message.startswith("worker-0 exited with code 1: error: the start says most") and len(message) < 600


def test_worker1_success_alone_is_not_enough() -> None:
    spec = spec_from({"worker": {"replicas": 3}})
    pods = replace(all_running(spec), pod(WORKER, 1, "Succeeded", exit_code=0))
    assert step(spec, pods).status.state == "Running"


def test_all_workers_policy_waits_for_every_worker() -> None:
    spec = spec_from({"chief": {}, "worker": {"replicas": 2}}, successPolicy="AllWorkers")
    pods = replace(all_running(spec), pod(CHIEF, 0, "Succeeded", exit_code=0))
    pods = replace(pods, pod(WORKER, 0, "Succeeded", exit_code=0))
    assert step(spec, pods).status.state == "Running"
    pods = replace(pods, pod(WORKER, 1, "Succeeded", exit_code=0))
    assert step(spec, pods).status.state == "Succeeded"


@pytest.mark.parametrize("role", [PS, EVALUATOR, WORKER])
def test_failure_under_never_fails_the_job_naming_the_replica(role: ReplicaType) -> None:
    spec = spec_from(
        {"chief": {}, "ps": {"replicas": 1}, "worker": {"replicas": 1}, "evaluator": {}}
        | {role.value: {"replicas": 1, "restartPolicy": "Never"}},
        storage={"claimName": "outputs"},
    )
    pods = replace(all_running(spec), pod(role, 0, "Failed", exit_code=1, reason="Error"))
    plan = step(spec, pods)
    failed = plan.status.condition("Failed")
    assert failed is not None and failed.reason == "PodFailed"
    assert failed.message == f"{role.value}-0 exited with code 1 (Error)"
    assert (role, 0) not in plan.delete  # the failed pod stays for its logs


def test_exit_code_policy_recreates_signals_and_counts_them() -> None:
    spec = ps_spec(workers=2, ps=1)
    pods = replace(all_running(spec), pod(WORKER, 1, "Failed", exit_code=137, reason="OOMKilled", uid="w1-a"))
    plan = step(spec, pods)
    assert plan.delete == [(WORKER, 1)]
    assert not plan.create  # the new pod is made once the old one is gone
    assert plan.status.state == "Restarting"
    assert plan.status.restarts == 1
    assert plan.status.replica_statuses["worker"].restarts == 1
    failures = [event.message for event in plan.events if event.reason == "PodFailed"]
    assert failures == ["worker-1 exited with code 137 (OOMKilled); recreating the pod (restartPolicy ExitCode)"]
    # next look: the old pod is gone, so it is created again, and nothing is counted twice
    gone = [p for p in pods if (p.role, p.index) != (WORKER, 1)]
    plan2 = step(spec, gone, plan.status)
    assert plan2.create == [(WORKER, 1)]
    assert plan2.status.restarts == 1
    plan3 = step(spec, all_running(spec), plan2.status)
    assert plan3.status.state == "Running" and not plan3.status.is_true("Restarting")


def test_stale_view_of_a_deleted_pod_is_not_counted_twice() -> None:
    spec = ps_spec(workers=1, ps=1)
    pods = replace(all_running(spec), pod(WORKER, 0, "Failed", exit_code=143, uid="w0-a"))
    first = step(spec, pods)
    again = step(spec, pods, first.status)
    assert again.status.replica_statuses["worker"].retired_restarts == 1
    assert again.status.restarts == 1 and "PodFailed" not in reasons(again)
    assert again.delete == [(WORKER, 0)]


def test_exit_code_policy_treats_1_to_127_as_permanent() -> None:
    spec = ps_spec(workers=1, ps=1)
    pods = replace(all_running(spec), pod(WORKER, 0, "Failed", exit_code=2))
    assert step(spec, pods).status.condition("Failed").reason == "PodFailed"


def test_retryable_rules() -> None:
    assert is_retryable("ExitCode", pod(WORKER, 0, "Failed", exit_code=None, reason="Evicted"))
    assert is_retryable("ExitCode", pod(WORKER, 0, "Failed", exit_code=128))
    assert not is_retryable("ExitCode", pod(WORKER, 0, "Failed", exit_code=127))
    assert is_retryable("OnFailure", pod(WORKER, 0, "Failed", exit_code=1))
    assert not is_retryable("Never", pod(WORKER, 0, "Failed", exit_code=137))


def test_in_place_restarts_count_against_backoff_limit() -> None:
    spec = ps_spec(workers=1, ps=1, runPolicy={"backoffLimit": 2})
    spec.replica_specs.worker.restart_policy = "OnFailure"  # type: ignore[union-attr]
    status = step(spec, all_running(spec)).status
    plan = step(spec, replace(all_running(spec), pod(WORKER, 0, restarts=2)), status)
    assert plan.status.state == "Restarting" and "Restarted" in reasons(plan)
    plan = step(spec, replace(all_running(spec), pod(WORKER, 0, restarts=3)), plan.status)
    failed = plan.status.condition("Failed")
    assert failed is not None and failed.reason == "BackoffLimitExceeded"
    assert failed.message == "3 restarts exceed backoffLimit 2"


def test_recreations_count_against_backoff_limit() -> None:
    spec = ps_spec(workers=1, ps=1, runPolicy={"backoffLimit": 1})
    status = DistTrainJobStatus()
    for attempt in range(2):
        pods = replace(all_running(spec), pod(WORKER, 0, "Failed", exit_code=137, uid=f"w0-{attempt}"))
        plan = step(spec, pods, status)
        status = step(spec, all_running(spec), plan.status).status
    assert plan.status.condition("Failed").reason == "BackoffLimitExceeded"


def test_deadline_fails_the_job_and_requeues_before() -> None:
    spec = ps_spec(workers=1, ps=1, runPolicy={"activeDeadlineSeconds": 30})
    plan = step(spec, all_running(spec))
    assert plan.requeue_after == pytest.approx(30)
    plan = step(spec, all_running(spec), plan.status, at=T0 + timedelta(seconds=10))
    assert plan.requeue_after == pytest.approx(20)
    plan = step(spec, all_running(spec), plan.status, at=T0 + timedelta(seconds=31))
    assert plan.status.condition("Failed").reason == "DeadlineExceeded"
    assert len(plan.delete) == 3  # every running pod is cleaned up


def test_suspend_deletes_pods_and_resume_recreates_them() -> None:
    spec = ps_spec(workers=1, ps=1, runPolicy={"suspend": True})
    running = step(ps_spec(workers=1, ps=1), all_running(spec)).status
    plan = step(spec, all_running(spec), running)
    assert plan.status.state == "Suspended" and len(plan.delete) == 3 and not plan.create
    assert plan.status.start_time is None and not plan.status.is_true("Running")
    assert "Suspended" in reasons(plan)
    resumed = step(ps_spec(workers=1, ps=1), [], plan.status, at=T0 + timedelta(minutes=5))
    assert len(resumed.create) == 3
    assert resumed.status.condition("Suspended").status == "False"
    assert resumed.status.start_time == "2026-11-25T12:05:00Z"
    assert "Resumed" in reasons(resumed)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("Running", [(PS, 0)]), ("All", [(CHIEF, 0), (PS, 0), (WORKER, 0)]), ("None", [])],
)
def test_clean_pod_policies(policy: str, expected: list) -> None:
    spec = ps_spec(workers=1, ps=1, runPolicy={"cleanPodPolicy": policy})
    pods = replace(all_running(spec), pod(CHIEF, 0, "Succeeded", exit_code=0))
    pods = replace(pods, pod(WORKER, 0, "Succeeded", exit_code=0))
    done = step(spec, pods)
    assert sorted(step(spec, pods, done.status, at=T0 + timedelta(seconds=SELF_EXIT_GRACE_SECONDS)).delete) == expected


@pytest.mark.parametrize(
    ("runPolicy", "pods_change"),
    [
        ({"cleanPodPolicy": "None", "backoffLimit": 0}, "worker-restart"),
        ({"cleanPodPolicy": "None", "activeDeadlineSeconds": 60}, "deadline"),
    ],
)
def test_a_failed_job_stops_its_running_pods_even_under_clean_pod_policy_none(runPolicy: dict, pods_change: str):
    # As the Job controller does: nothing ends a failed job's servers by themselves, so None keeps the
    # finished pods (for their logs) but does not leave the rest running, holding resources (#10 item 12).
    spec = ps_spec(workers=2, ps=1, runPolicy=runPolicy)
    pods = all_running(spec)
    at = T0
    if pods_change == "worker-restart":
        pods = replace(pods, pod(WORKER, 1, "Failed", exit_code=137))
    else:
        at = T0 + timedelta(seconds=61)
    started = step(spec, all_running(spec))
    plan = step(spec, pods, started.status, at=at)
    assert plan.status.state == "Failed"
    assert sorted(plan.delete) == [(CHIEF, 0), (PS, 0), (WORKER, 0)] + (
        [] if pods_change == "worker-restart" else [(WORKER, 1)]
    )


def test_ttl_deletes_the_finished_job_when_due() -> None:
    spec = ps_spec(workers=1, ps=1, runPolicy={"ttlSecondsAfterFinished": 60})
    pods = replace(all_running(spec), pod(CHIEF, 0, "Succeeded", exit_code=0))
    done = step(spec, pods)
    assert done.requeue_after == pytest.approx(SELF_EXIT_GRACE_SECONDS) and not done.delete_job  # the running ps
    servers_ended = [p if p.role == CHIEF else pod(p.role, p.index, "Succeeded", exit_code=0) for p in pods]
    assert step(spec, servers_ended, done.status).requeue_after == pytest.approx(60)
    later = step(spec, pods, done.status, at=T0 + timedelta(seconds=61))
    assert later.delete_job


def test_finished_job_stays_finished_and_creates_nothing() -> None:
    spec = ps_spec(workers=1, ps=1)
    pods = replace(all_running(spec), pod(CHIEF, 0, "Succeeded", exit_code=0))
    done = step(spec, pods).status
    plan = step(spec, [], done, at=T0 + timedelta(minutes=1))
    assert plan.status.state == "Succeeded" and not plan.create and not plan.events
    assert plan.status.completion_time == "2026-11-25T12:00:00Z"


def test_scale_down_deletes_extra_replicas() -> None:
    spec = ps_spec(workers=1, ps=1)
    pods = [*all_running(spec), pod(WORKER, 1)]
    assert step(spec, pods).delete == [(WORKER, 1)]


def test_invalid_spec_fails_once() -> None:
    plan = fail_invalid_spec(DistTrainJobStatus(), "spec.replicaSpecs.chief.replicas must be 0 or 1", T0)
    failed = plan.status.condition("Failed")
    assert failed is not None and failed.reason == "InvalidSpec" and plan.status.state == "Failed"
    again = fail_invalid_spec(plan.status, "same", T0 + timedelta(seconds=5))
    assert again.events == [] and again.status.condition("Failed").last_transition_time == "2026-11-25T12:00:00Z"


def test_invalid_spec_stops_pods_left_running_from_before() -> None:
    pods = [pod(CHIEF, 0), pod(PS, 0), pod(WORKER, 0, "Succeeded", exit_code=0)]
    plan = fail_invalid_spec(DistTrainJobStatus(), "spec.replicaSpecs.ps: the API server rejected it", T0, pods)
    assert sorted(plan.delete) == [(CHIEF, 0), (PS, 0)]
    assert plan.status.condition("Failed").reason == "InvalidSpec"


def test_a_recreated_pod_still_visible_is_not_counted_again() -> None:
    spec = ps_spec(workers=1, ps=1)
    spec.replica_specs.worker.restart_policy = "OnFailure"  # type: ignore[union-attr]
    running = step(spec, replace(all_running(spec), pod(WORKER, 0, restarts=3))).status
    evicted = pod(WORKER, 0, "Failed", restarts=3, reason="Evicted", uid="w0-a")
    plan = step(spec, replace(all_running(spec), evicted), running)
    assert plan.status.restarts == 4 and plan.delete == [(WORKER, 0)]  # 3 in place + 1 recreation
    leaving = pod(WORKER, 0, "Failed", restarts=3, reason="Evicted", uid="w0-a", deleting=True)
    plan = step(spec, replace(all_running(spec), leaving), plan.status)
    assert plan.status.restarts == 4
    assert "Restarted" not in reasons(plan) and "PodFailed" not in reasons(plan)


def test_restarts_survive_cleanup_and_suspension() -> None:
    spec = ps_spec(workers=1, ps=1, runPolicy={"backoffLimit": 2})
    spec.replica_specs.worker.restart_policy = "OnFailure"  # type: ignore[union-attr]
    pods = replace(all_running(spec), pod(WORKER, 0, restarts=3))
    failed = step(spec, pods, step(spec, all_running(spec)).status)
    assert failed.status.condition("Failed").reason == "BackoffLimitExceeded"
    assert failed.status.restarts == 3 and (WORKER, 0) in failed.delete
    after = step(spec, [], failed.status)  # the pods are gone
    assert after.status.restarts == 3

    suspended_spec = ps_spec(workers=1, ps=1, runPolicy={"suspend": True})
    before = step(suspended_spec, [], DistTrainJobStatus())
    live = replace(all_running(spec), pod(WORKER, 0, restarts=2))
    running = step(ps_spec(workers=1, ps=1), live, before.status)
    suspended = step(suspended_spec, live, running.status)
    resumed = step(ps_spec(workers=1, ps=1), [], suspended.status)
    assert resumed.status.restarts == 2  # suspension does not reset the restart budget


def test_a_failed_pod_of_a_removed_role_is_deleted_not_retried() -> None:
    spec = spec_from({"chief": {}, "worker": {"replicas": 1}})
    pods = [*all_running(spec), pod(PS, 0, "Failed", exit_code=137)]
    plan = step(spec, pods)
    assert plan.delete == [(PS, 0)]
    assert "PodFailed" not in reasons(plan) and plan.status.restarts == 0


def test_invalid_spec_leaves_a_finished_job_alone() -> None:
    spec = ps_spec(workers=1, ps=1)
    done = step(spec, replace(all_running(spec), pod(CHIEF, 0, "Succeeded", exit_code=0))).status
    plan = fail_invalid_spec(done, "spec.replicaSpecs: broken", T0, all_running(spec))
    assert plan.status.state == "Succeeded" and not plan.status.is_true("Failed")
    assert plan.delete == [] and plan.events == []


def test_an_invalid_job_expires_after_its_ttl_too() -> None:
    failed = fail_invalid_spec(DistTrainJobStatus(), "spec.replicaSpecs: broken", T0, ttl=30)
    assert failed.status.is_true("Failed") and not failed.delete_job
    assert failed.requeue_after == 30  # looked at again when it expires
    later = fail_invalid_spec(failed.status, "spec.replicaSpecs: broken", T0 + timedelta(seconds=31), ttl=30)
    assert later.delete_job and later.status.is_true("Failed")
    assert not fail_invalid_spec(failed.status, "same", T0 + timedelta(days=9)).delete_job  # no TTL: kept


def test_readable_ttl_reads_only_a_sound_value() -> None:
    assert readable_ttl({"runPolicy": {"ttlSecondsAfterFinished": 10}, "replicaSpecs": "broken"}) == 10
    for spec in (None, [], {"runPolicy": "x"}, {"runPolicy": {"ttlSecondsAfterFinished": -1}},
                 {"runPolicy": {"ttlSecondsAfterFinished": True}}, {"runPolicy": {"ttlSecondsAfterFinished": "5"}}):
        assert readable_ttl(spec) is None, spec


def test_pods_kept_running_by_sidecars_are_cleaned_up_when_the_job_ends() -> None:
    spec = spec_from({"worker": {"replicas": 2}})  # worker 0 decides; cleanPodPolicy Running keeps finished pods
    done = pod(WORKER, 0, "Succeeded", exit_code=0, sidecars_running=True, ready=False)
    plan = step(spec, [done, pod(WORKER, 1, "Succeeded", exit_code=0)])
    assert plan.status.is_true("Succeeded")
    assert plan.delete == [(WORKER, 0)]  # its sidecar would run forever; the pod that ended stays, as the policy says


def test_a_job_whose_pods_are_refused_says_why_it_waits_until_they_go_through() -> None:
    spec = spec_from({"worker": {"replicas": 2}})
    refusal = 'Pod mnist-worker-1: pods "mnist-worker-1" is forbidden: exceeded quota: pods'
    waiting = reconcile(spec, [pod(WORKER, 0)], DistTrainJobStatus(), T0, creation_refused=refusal)
    condition = waiting.status.condition("ReplicaFailure")
    assert condition is not None and (condition.status, condition.reason) == ("True", "FailedCreate")
    assert "exceeded quota" in condition.message
    through = reconcile(spec, all_running(spec), waiting.status, T0 + timedelta(seconds=5))
    assert through.status.condition("ReplicaFailure").status == "False"  # type: ignore[union-attr]
    assert "ReplicaFailure" not in {c.type for c in step(spec, all_running(spec)).status.conditions}  # never held


def test_a_mass_failure_is_counted_once_even_when_the_pass_is_repeated() -> None:
    spec = spec_from({"worker": {"replicas": 150}}, runPolicy={"backoffLimit": 1000})
    killed = [pod(WORKER, i, "Failed", exit_code=137, reason="OOMKilled") for i in range(150)]
    first = step(spec, killed)
    assert first.status.restarts == 150 and len(first.delete) == 150
    # the pass died after its status patch (SIGKILL, a 5xx in the deletes): the retry sees the same pods
    again = step(spec, killed, first.status, T0 + timedelta(seconds=5))
    assert again.status.restarts == 150  # before: 100 UIDs were remembered, 50 counted again (then 100 more...)
    gone = step(spec, [], again.status, T0 + timedelta(seconds=10))  # deleted at last: their UIDs can go
    assert gone.status.counted_failures == [] and gone.status.restarts == 150


def test_a_replica_that_completed_never_runs_again_once_its_pod_is_gone() -> None:
    spec = spec_from({"worker": {"replicas": 2}}, successPolicy="AllWorkers")
    first = step(spec, [pod(WORKER, 0), pod(WORKER, 1, "Succeeded", exit_code=0)])
    assert first.status.completed_replicas == {"worker": [1]} and not first.status.is_true("Succeeded")
    gone = step(spec, [pod(WORKER, 0)], first.status, T0 + timedelta(seconds=5))  # PodGC, a lost node, a user
    assert gone.create == []  # before: worker 1 was created again and trained a second time
    assert gone.status.replica_statuses["worker"].succeeded == 1
    done = step(spec, [pod(WORKER, 0, "Succeeded", exit_code=0)], gone.status, T0 + timedelta(seconds=9))
    assert done.status.is_true("Succeeded")  # every worker completed, one of them without a pod left


def test_a_pass_that_ends_the_job_recreates_nothing_and_says_so() -> None:
    spec = spec_from({"worker": {"replicas": 3, "restartPolicy": "ExitCode"}}, runPolicy={"backoffLimit": 5})
    permanent = pod(WORKER, 0, "Failed", exit_code=1)
    retryable = pod(WORKER, 1, "Failed", exit_code=137, reason="OOMKilled")
    plan = step(spec, [permanent, retryable, pod(WORKER, 2)])
    assert plan.status.is_true("Failed") and plan.status.restarts == 0  # before: worker 1 counted as a restart
    assert not [e for e in plan.events if "recreating" in e.message]  # ...and announced as recreated
    limited = spec_from({"worker": {"replicas": 2}}, runPolicy={"backoffLimit": 0})
    over = step(limited, [retryable, pod(WORKER, 0)])
    assert over.status.condition("Failed").reason == "BackoffLimitExceeded"  # type: ignore[union-attr]
    assert not [e for e in over.events if "recreating" in e.message]
