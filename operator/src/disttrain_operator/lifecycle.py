"""Replica states -> job conditions, restarts, success and failure (pure).

`reconcile` is the whole job semantics in one function. The operator feeds it the job's pods and local
mode feeds it its processes; both act on the returned `Plan`. It is level-triggered: given the same
world it returns the same answer, so it can be called on every event, timer tick or restart.

What a failed pod means under each restartPolicy is restarts.py's table; under `OnFailure`/`Always` the
container's restart count is what counts against backoffLimit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from .api import (
    CleanPodPolicy,
    ConditionType,
    DistTrainJobSpec,
    DistTrainJobStatus,
    JobState,
    ReplicaStatus,
    ReplicaType,
    RestartPolicy,
    SuccessPolicy,
    TrainingResults,
)
from .api import Condition as ConditionModel
from .restarts import RESTART_RULES

ReplicaKey = tuple[ReplicaType, int]
PodPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]
EventType = Literal["Normal", "Warning"]
MESSAGE_EXCERPT_CHARS = 500


@dataclass(frozen=True)
class ReplicaObservation:
    """What is known of one replica's pod (or local process)."""

    role: ReplicaType
    index: int
    phase: PodPhase
    uid: str = ""
    ready: bool = False
    exit_code: int | None = None
    restarts: int = 0
    reason: str | None = None
    deleting: bool = False
    message: str | None = None
    """The trainer container's termination message: final metrics (JSON) on success, its one-line error on
    failure (the kubelet's log tail when the program wrote nothing)."""
    sidecars_running: bool = False
    """The trainer has ended for good (`phase` says how) but other containers keep the pod running."""

    @property
    def name(self) -> str:
        """`<role>-<index>`, as used in messages."""
        return f"{self.role.value}-{self.index}"

    @property
    def key(self) -> ReplicaKey:
        return self.role, self.index

    @property
    def active(self) -> bool:
        """Pending or running, and not on its way out."""
        return self.phase in ("Pending", "Running", "Unknown") and not self.deleting


@dataclass(frozen=True)
class JobEvent:
    """A Kubernetes Event to post on the job (or a line to print in local mode)."""

    type: EventType
    reason: str
    message: str
    replica: ReplicaKey | None = None
    """The replica it is about, if one: local mode shows that replica's last lines."""


@dataclass
class Plan:
    """What to do next: the new status, pods to create and delete, events, and when to look again."""

    status: DistTrainJobStatus
    create: list[tuple[ReplicaType, int]] = field(default_factory=list)
    delete: list[tuple[ReplicaType, int]] = field(default_factory=list)
    events: list[JobEvent] = field(default_factory=list)
    delete_job: bool = False
    requeue_after: float | None = None


# After success, pods still running get this long to end by themselves before cleanPodPolicy stops them:
# the trainer's servers exit 0 about a second after the chief's shutdown token, and a pod that ends by
# itself keeps its logs and shows Completed. Nothing ends a failed job by itself, so failure stops them at once.
SELF_EXIT_GRACE_SECONDS = 15.0


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with seconds, as Kubernetes writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Parses a Kubernetes RFC 3339 time."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def is_retryable(policy: RestartPolicy, observation: ReplicaObservation) -> bool:
    """Whether a failed pod is recreated (True) or fails the job (False), by restarts.py's table."""
    return RESTART_RULES[RestartPolicy(policy)].recreate_failed_pod(observation.exit_code)


def describe_failure(observation: ReplicaObservation, with_last_line: bool = False) -> str:
    """`worker-1 exited with code 137 (OOMKilled)` and the like; `with_last_line` adds the last line of its
    termination message (the trainer's own error line, else the log tail), which usually says why."""
    if observation.exit_code is not None:
        text = f"{observation.name} exited with code {observation.exit_code}"
    else:
        text = f"{observation.name} failed"
    text = f"{text} ({observation.reason})" if observation.reason else text
    if not with_last_line:
        return text
    last_line = next((line.strip() for line in reversed((observation.message or "").splitlines()) if line.strip()), "")
    if len(last_line) > MESSAGE_EXCERPT_CHARS:
        last_line = last_line[:MESSAGE_EXCERPT_CHARS] + "..."
    return f"{text}: {last_line}" if last_line else text


def training_results(observation: ReplicaObservation | None) -> TrainingResults | None:
    """The metrics a finished replica left in its termination message (JSON), or None if it left none."""
    try:
        data = json.loads(observation.message or "") if observation is not None else None
        return TrainingResults.model_validate(data) if isinstance(data, dict) else None
    except ValueError:  # not JSON, or not metrics (pydantic's ValidationError is a ValueError)
        return None


class _Builder:
    """Accumulates one reconcile's decisions."""

    def __init__(self, previous: DistTrainJobStatus, now: datetime) -> None:
        self.status = previous.model_copy(deep=True)
        self.now = now
        self.plan = Plan(status=self.status)

    def set_condition(self, kind: ConditionType, holds: bool, reason: str, message: str = "") -> None:
        value = "True" if holds else "False"
        current = self.status.condition(kind)
        if current is None:
            if not holds:
                return  # absent means False; only record conditions once they have held
            self.status.conditions.append(
                ConditionModel(
                    type=kind,
                    status=value,
                    reason=reason,
                    message=message,
                    last_transition_time=format_time(self.now),
                )
            )
            return
        if current.status != value:
            current.last_transition_time = format_time(self.now)
        current.status, current.reason, current.message = value, reason, message

    def event(self, kind: EventType, reason: str, message: str, replica: ReplicaKey | None = None) -> None:
        self.plan.events.append(JobEvent(kind, reason, message, replica))

    def finish(self, succeeded: bool, reason: str, message: str, replica: ReplicaKey | None = None) -> None:
        self.set_condition("Succeeded" if succeeded else "Failed", True, reason, message)
        self.set_condition("Running", False, reason, "the job has finished")
        self.set_condition("Restarting", False, reason, "the job has finished")
        self.status.completion_time = format_time(self.now)
        self.event("Normal" if succeeded else "Warning", reason, message, replica)


def _completed(previous: DistTrainJobStatus, observed: list[ReplicaObservation]) -> dict[str, list[int]]:
    """The replicas that exited 0 so far: those recorded before and those whose pods say so now."""
    done = {role: set(indices) for role, indices in previous.completed_replicas.items()}
    for o in observed:
        if o.phase == "Succeeded":
            done.setdefault(o.role.value, set()).add(o.index)
    return {role: sorted(indices) for role, indices in sorted(done.items())}


def _is_completed(status: DistTrainJobStatus, role: ReplicaType, index: int) -> bool:
    return index in status.completed_replicas.get(role.value, ())


def _replica_statuses(
    spec: DistTrainJobSpec,
    observed: list[ReplicaObservation],
    previous: DistTrainJobStatus,
    completed: dict[str, list[int]],
) -> dict[str, ReplicaStatus]:
    statuses: dict[str, ReplicaStatus] = {}
    for role, replica_spec in spec.replica_specs.items():
        mine = [o for o in observed if o.role == role]
        live = [o for o in mine if not (o.uid and o.uid in previous.counted_failures)]
        before = previous.replica_statuses.get(role.value, ReplicaStatus())
        ready = sum(1 for o in mine if o.ready and o.phase == "Running" and not o.deleting)
        statuses[role.value] = ReplicaStatus(
            desired=replica_spec.replicas,
            active=sum(1 for o in mine if o.active),
            ready=ready,
            succeeded=len([i for i in completed.get(role.value, ()) if i < replica_spec.replicas]),
            failed=sum(1 for o in mine if o.phase == "Failed" and not o.deleting),
            retired_restarts=before.retired_restarts,
            restarts=before.retired_restarts + sum(o.restarts for o in live),
            summary=f"{ready}/{replica_spec.replicas}",
        )
    return statuses


@dataclass(frozen=True)
class SuccessRule:
    """What the job's success policy asks: the replicas that must succeed, in words, and who reports."""

    must_succeed: list[tuple[ReplicaType, int]]
    who: str
    reporter: tuple[ReplicaType, int]


def success_rule(spec: DistTrainJobSpec) -> SuccessRule:
    """The one home of "who decides and who reports": the chief, else worker 0, reports the results; under
    ChiefOrWorker0 its success is the job's, under AllWorkers every worker (and the chief, if any) must succeed."""
    has_chief = spec.replica_specs.count(ReplicaType.CHIEF) > 0
    reporter = (ReplicaType.CHIEF if has_chief else ReplicaType.WORKER), 0
    if spec.success_policy == SuccessPolicy.ALL_WORKERS:
        workers = [(ReplicaType.WORKER, i) for i in range(spec.replica_specs.count(ReplicaType.WORKER))]
        return SuccessRule([*([reporter] if has_chief else []), *workers], "every worker", reporter)
    return SuccessRule([reporter], "the chief" if has_chief else "worker 0", reporter)


def reporting_replica(spec: DistTrainJobSpec) -> tuple[ReplicaType, int]:
    """The replica that coordinates and reports the job's results: the chief, else worker 0."""
    return success_rule(spec).reporter


def _succeeded(
    rule: SuccessRule, by_key: dict[tuple[ReplicaType, int], ReplicaObservation], status: DistTrainJobStatus
) -> bool:
    def done(role: ReplicaType, index: int) -> bool:
        found = by_key.get((role, index))
        return (found is not None and found.phase == "Succeeded") or _is_completed(status, role, index)

    return all(done(role, index) for role, index in rule.must_succeed)


def cleanup_targets(policy: CleanPodPolicy, observed: list[ReplicaObservation]) -> list[tuple[ReplicaType, int]]:
    """Pods that cleanPodPolicy removes once the job has finished."""
    if policy == CleanPodPolicy.NONE:
        return []
    keep_finished = policy == CleanPodPolicy.RUNNING
    return [
        (o.role, o.index)
        for o in observed
        if not o.deleting and not (keep_finished and o.phase in ("Succeeded", "Failed") and not o.sidecars_running)
    ]


def _state(status: DistTrainJobStatus) -> JobState:
    for kind in ("Failed", "Succeeded", "Suspended", "Restarting", "Running", "Created"):
        if status.is_true(kind):  # type: ignore[arg-type]
            return kind  # type: ignore[return-value]
    return "Pending"


def _requeue(b: _Builder, seconds: float) -> None:
    """Look again after `seconds` (the earliest of every reason to)."""
    current = b.plan.requeue_after
    b.plan.requeue_after = seconds if current is None else min(current, seconds)


def _after_finish(b: _Builder, spec: DistTrainJobSpec, observed: list[ReplicaObservation]) -> Plan:
    targets = cleanup_targets(spec.run_policy.clean_pod_policy, observed)
    if b.status.is_true("Failed"):  # nothing ends a failed job's pods by themselves, whatever the policy keeps
        targets += [
            (o.role, o.index)
            for o in observed
            if (o.active or (o.sidecars_running and not o.deleting)) and (o.role, o.index) not in targets
        ]
    if b.status.is_true("Succeeded") and b.status.completion_time:
        grace_ends = parse_time(b.status.completion_time) + timedelta(seconds=SELF_EXIT_GRACE_SECONDS)
        if b.now < grace_ends:
            running = {(o.role, o.index) for o in observed if o.active}
            targets = [key for key in targets if key not in running]
            if running:
                _requeue(b, (grace_ends - b.now).total_seconds())
    b.plan.delete = targets
    _expire(b, spec.run_policy.ttl_seconds_after_finished)
    b.status.state = _state(b.status)
    return b.plan


def _expire(b: _Builder, ttl: int | None) -> None:
    """ttlSecondsAfterFinished: delete the finished job once it has passed, else look again then."""
    if ttl is not None and b.status.completion_time:
        expiry = parse_time(b.status.completion_time) + timedelta(seconds=ttl)
        if b.now >= expiry:
            b.plan.delete_job = True
        else:
            _requeue(b, (expiry - b.now).total_seconds())


def _retire(b: _Builder, o: ReplicaObservation, recreation: bool) -> bool:
    """Moves a pod's restarts into its role's retired count before the pod goes away (once per pod UID);
    a recreation also counts as one restart. Returns False when the pod was counted already."""
    role_status = b.status.replica_statuses.get(o.role.value)
    if role_status is None or (o.uid and o.uid in b.status.counted_failures):
        return False
    role_status.retired_restarts += o.restarts + (1 if recreation else 0)
    role_status.restarts += 1 if recreation else 0
    if o.uid:
        b.status.counted_failures = [*b.status.counted_failures, o.uid]
    return True


def _retire_deleted(b: _Builder, by_key: dict[tuple[ReplicaType, int], ReplicaObservation]) -> None:
    """Keeps the restarts of every pod the plan deletes (clean-up, suspension, scale-down)."""
    for key in b.plan.delete:
        if key in by_key:
            _retire(b, by_key[key], recreation=False)
    b.status.restarts = sum(r.restarts for r in b.status.replica_statuses.values())


def _failed_pods(spec: DistTrainJobSpec, observed: list[ReplicaObservation]) -> list[ReplicaObservation]:
    """Failed pods of the spec's replicas (one beyond them is removed by scale-down, not retried)."""
    return [
        o for o in observed if o.phase == "Failed" and not o.deleting and o.index < spec.replica_specs.count(o.role)
    ]


def _permanent_failure(spec: DistTrainJobSpec, observed: list[ReplicaObservation]) -> ReplicaObservation | None:
    """The first failure its replica's restartPolicy does not retry, if any."""
    return next(
        (
            o
            for o in _failed_pods(spec, observed)
            if not is_retryable(getattr(spec.replica_specs, o.role.value).restart_policy, o)
        ),
        None,
    )


def _count_failures(
    b: _Builder, spec: DistTrainJobSpec, observed: list[ReplicaObservation]
) -> list[tuple[ReplicaKey, str]]:
    """Counts each retryable failed pod once and plans its deletion (so it is recreated); returns what to say
    about each replica, said only if the job goes on (a pass that ends the job recreates nothing)."""
    messages = []
    for o in _failed_pods(spec, observed):
        policy = getattr(spec.replica_specs, o.role.value).restart_policy
        b.plan.delete.append((o.role, o.index))
        if _retire(b, o, recreation=True):  # False: already counted, a stale view still shows the pod we deleted
            messages.append((o.key, f"{describe_failure(o)}; recreating the pod (restartPolicy {policy})"))
    return messages


def reconcile(
    spec: DistTrainJobSpec,
    observed: list[ReplicaObservation],
    previous: DistTrainJobStatus,
    now: datetime,
    generation: int | None = None,
    creation_refused: str | None = None,
) -> Plan:
    """Decides the job's next status and actions from the replicas observed now; `creation_refused` is the API
    server's last refusal of the job's pods while its creations back off (None once they went through)."""
    b = _Builder(previous, now)
    # Counted UIDs matter while their pods can still be seen; the bookkeeping is bounded by the job's pods, so a
    # pass that dies after its status patch never counts any of them twice, however many failed at once.
    seen = {o.uid for o in observed}
    b.status.counted_failures = [uid for uid in previous.counted_failures if uid in seen]
    b.status.observed_generation = generation if generation is not None else b.status.observed_generation
    if not previous.finished:  # why the job waits, as Deployments say it
        b.set_condition(
            "ReplicaFailure",
            creation_refused is not None,
            "FailedCreate" if creation_refused else "PodsCreated",
            creation_refused or "",
        )
    observed = sorted(observed, key=lambda o: (o.role.value, o.index))
    by_key = {(o.role, o.index): o for o in observed}
    b.status.completed_replicas = _completed(previous, observed)
    b.status.replica_statuses = _replica_statuses(spec, observed, previous, b.status.completed_replicas)
    b.status.restarts = sum(r.restarts for r in b.status.replica_statuses.values())
    plan = _decide(b, spec, observed, previous, by_key)
    _retire_deleted(b, by_key)
    return plan


def _decide(
    b: _Builder,
    spec: DistTrainJobSpec,
    observed: list[ReplicaObservation],
    previous: DistTrainJobStatus,
    by_key: dict[tuple[ReplicaType, int], ReplicaObservation],
) -> Plan:
    """The decisions in order; the first step that ends the pass (finished, suspended) returns its plan."""
    if b.status.finished:
        return _after_finish(b, spec, observed)
    for step in (_suspension, _deadline, _success, _failures):
        plan = step(b, spec, observed, previous, by_key)
        if plan is not None:
            return plan
    replacing = bool(b.plan.delete)  # failed pods on their way to recreation
    _create_missing(b, spec, observed, by_key)
    _running_condition(b, spec, previous, by_key, replacing)
    b.status.state = _state(b.status)
    return b.plan


Observed = dict[tuple[ReplicaType, int], ReplicaObservation]


def _suspension(
    b: _Builder, spec: DistTrainJobSpec, observed: list[ReplicaObservation], _: DistTrainJobStatus, __: Observed
) -> Plan | None:
    """Suspended: every pod goes, the deadline clock stops. Resumed or running: the job is (again) started."""
    status = b.status
    if spec.run_policy.suspend:
        if not status.is_true("Suspended"):
            b.event("Normal", "Suspended", "job suspended: its pods are deleted")
        b.set_condition("Suspended", True, "JobSuspended", "spec.runPolicy.suspend is true")
        b.set_condition("Running", False, "JobSuspended", "the job is suspended")
        b.set_condition("Restarting", False, "JobSuspended", "the job is suspended")
        status.start_time = None  # activeDeadlineSeconds counts again from resumption, as for batch Jobs
        b.plan.delete = [(o.role, o.index) for o in observed if not o.deleting]
        status.state = _state(status)
        return b.plan
    if status.is_true("Suspended"):
        b.set_condition("Suspended", False, "JobResumed", "spec.runPolicy.suspend is false")
        b.event("Normal", "Resumed", "job resumed: its pods are recreated")
    if status.start_time is None:
        status.start_time = format_time(b.now)
    if not status.is_true("Created"):
        b.set_condition("Created", True, "JobCreated", "the job's Service and pods are being created")
        b.event("Normal", "Created", "creating the job's Service and pods")
    return None


def _deadline(
    b: _Builder, spec: DistTrainJobSpec, observed: list[ReplicaObservation], _: DistTrainJobStatus, __: Observed
) -> Plan | None:
    """activeDeadlineSeconds: fail once passed, else look again when it passes."""
    deadline = spec.run_policy.active_deadline_seconds
    if deadline is None:
        return None
    started = parse_time(b.status.start_time or format_time(b.now))
    remaining = (started + timedelta(seconds=deadline) - b.now).total_seconds()
    if remaining <= 0:
        b.finish(False, "DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds ({deadline}s)")
        return _after_finish(b, spec, observed)
    b.plan.requeue_after = remaining
    return None


def _success(
    b: _Builder, spec: DistTrainJobSpec, observed: list[ReplicaObservation], _: DistTrainJobStatus, by_key: Observed
) -> Plan | None:
    """The success policy decides first: what else failed in the same pass does not change the outcome, and a
    pod that will never be recreated is not counted as a restart."""
    rule = success_rule(spec)
    if not _succeeded(rule, by_key, b.status):
        return None
    b.finish(True, "JobSucceeded", f"{rule.who} completed successfully")
    b.status.results = training_results(by_key.get(rule.reporter))
    return _after_finish(b, spec, observed)


def _failures(
    b: _Builder, spec: DistTrainJobSpec, observed: list[ReplicaObservation], previous: DistTrainJobStatus, _: Observed
) -> Plan | None:
    """A permanent failure ends the job before anything is counted; retryable ones are counted and recreated
    unless they exceed backoffLimit; container restarts in place are reported."""
    status = b.status
    permanent = _permanent_failure(spec, observed)
    if permanent is not None:
        b.finish(False, "PodFailed", describe_failure(permanent, with_last_line=True), permanent.key)
        return _after_finish(b, spec, observed)
    in_place = [
        f"{role}: {r.restarts - previous.replica_statuses[role].restarts} container restart(s)"
        for role, r in status.replica_statuses.items()
        if role in previous.replica_statuses and r.restarts > previous.replica_statuses[role].restarts
    ]
    recreating = _count_failures(b, spec, observed)
    status.restarts = sum(r.restarts for r in status.replica_statuses.values())
    if status.restarts > spec.run_policy.backoff_limit:
        limit = spec.run_policy.backoff_limit
        b.finish(False, "BackoffLimitExceeded", f"{status.restarts} restarts exceed backoffLimit {limit}")
        return _after_finish(b, spec, observed)
    for replica, message in recreating:
        b.event("Warning", "PodFailed", message, replica)
        b.set_condition("Restarting", True, "PodRestarting", message)
    if in_place:
        message = "; ".join(in_place)
        b.event("Warning", "Restarted", message)
        b.set_condition("Restarting", True, "ContainerRestarted", message)
    return None


def _create_missing(b: _Builder, spec: DistTrainJobSpec, observed: list[ReplicaObservation], by_key: Observed) -> None:
    """Pods for the replicas that have none (and never completed); pods beyond the spec's replicas go."""
    deleting = set(b.plan.delete)
    for role, replica_spec in spec.replica_specs.items():
        for index in range(replica_spec.replicas):
            completed = _is_completed(b.status, role, index)  # exited 0: never again, its pod gone or not
            if (role, index) not in by_key and (role, index) not in deleting and not completed:
                b.plan.create.append((role, index))
    b.plan.delete.extend(
        (o.role, o.index) for o in observed if o.index >= spec.replica_specs.count(o.role) and not o.deleting
    )


def _running_condition(
    b: _Builder, spec: DistTrainJobSpec, previous: DistTrainJobStatus, by_key: Observed, replacing: bool
) -> None:
    """Running once every replica runs (or has completed) and nothing is being replaced or restarted."""
    status = b.status
    restarted = any(
        role in previous.replica_statuses and r.restarts > previous.replica_statuses[role].restarts
        for role, r in status.replica_statuses.items()
    )
    all_up = not b.plan.create and all(
        by_key[(role, i)].phase in ("Running", "Succeeded")
        for role, replica_spec in spec.replica_specs.items()
        for i in range(replica_spec.replicas)
        if (role, i) in by_key
    )
    if all_up and not replacing and not restarted:
        b.set_condition("Running", True, "AllReplicasRunning", "every replica is running")
        if status.is_true("Restarting"):
            b.set_condition("Restarting", False, "AllReplicasRunning", "every replica is running again")
    elif status.is_true("Restarting"):
        b.set_condition("Running", False, "Restarting", "replicas are being restarted")


def fail_invalid_spec(
    previous: DistTrainJobStatus,
    message: str,
    now: datetime,
    observed: list[ReplicaObservation] | None = None,
    ttl: int | None = None,
) -> Plan:
    """The plan for a job whose spec cannot run: Failed/InvalidSpec, nothing created, never retried; deleted
    `ttl` seconds after it failed when the spec's ttlSecondsAfterFinished could be read.

    Pods left from before the spec turned invalid are cleaned up by the default policy (Running): an
    invalid spec's own cleanPodPolicy cannot be trusted.
    """
    b = _Builder(previous, now)
    if not previous.finished:  # a finished job keeps its outcome and its pods
        b.finish(False, "InvalidSpec", message)
        b.plan.delete = cleanup_targets("Running", observed or [])
        b.status.state = _state(b.status)
    _expire(b, ttl)
    return b.plan
