"""Plays each job's script against the cluster (kwok ends a pod once the test annotates it), one step at a time,
and judges the end: the outcome and restarts the pods imply, duplicate and missing pods, stuck jobs."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from chaos_harness import JobLedger, PodLedger, PodRecord, delete_pod_now
from chaos_scenarios import JobPlan, Step, retryable
from controlplane import ANNOTATION_COMPLETE, ANNOTATION_FAIL_EXIT_CODE
from kubernetes import client
from kubernetes.client import ApiException

MERGE_PATCH = "application/merge-patch+json"
STUCK_SECONDS = 240.0  # no progress for this long: the job is stuck


@dataclass
class Run:
    """Where one job's script stands."""

    plan: JobPlan
    step: int = 0
    started: bool = False  # every replica ran (driven jobs only)
    go_at: float = 0.0  # monotonic time of the first step: the plan's hold after every replica ran
    awaiting: str | None = None  # the failed pod's UID whose replacement the next step waits for
    progress_at: float = field(default_factory=time.monotonic)
    ended_early: str | None = None
    history: list[str] = field(default_factory=list)  # what the driver did and saw, for a problem's message

    def holding(self) -> bool:
        """Every replica runs, and the script waits out its hold before the first step."""
        return self.started and self.step == 0 and not self.awaiting and time.monotonic() < self.go_at

    def waiting_for(self) -> str:
        """What the script waits for now, in words (for a stuck job's report)."""
        if not self.started:
            return "every replica Running"
        if self.holding():
            return "the hold before the first step"
        if self.awaiting:
            step = self.plan.steps[self.step]
            if step.settle:
                return f"the status to count {step.role}-{step.index} ({self.awaiting}) completed"
            return f"a new pod for {step.role}-{step.index} after {self.awaiting} failed"
        if self.step < len(self.plan.steps):
            step = self.plan.steps[self.step]
            return f"{step.role}-{step.index} Running to exit {step.code}"
        return f"the terminal condition {self.plan.expect}"


class Driver:
    """Advances every job's script on each `tick`, from what the ledgers saw (no API reads of its own)."""

    def __init__(self, api: client.ApiClient, namespace: str, pods: PodLedger, jobs: JobLedger) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace, self.pods, self.jobs = namespace, pods, jobs
        self.runs: dict[str, Run] = {}
        self.annotated: set[str] = set()  # UIDs of the pods the test told kwok to end

    def add(self, plan: JobPlan) -> None:
        """Starts playing `plan` (its job has just been created)."""
        self.runs[plan.name] = Run(plan, started=not plan.driven)

    def unfinished(self) -> list[str]:
        """Jobs without a terminal condition yet."""
        return [name for name in self.runs if self.jobs.outcome(name) is None]

    def tick(self) -> None:
        """One step further for every job that can take one; notes when each last moved."""
        for run in self.runs.values():
            before = (run.step, run.started, run.awaiting)
            self._advance(run)
            if (run.step, run.started, run.awaiting) != before:
                run.progress_at = time.monotonic()

    def _advance(self, run: Run) -> None:
        plan = run.plan
        if self.jobs.outcome(plan.name) is not None:
            if run.step < len(plan.steps) and run.ended_early is None:
                run.ended_early = f"ended with steps left ({run.waiting_for()})"
            return
        if not run.started:
            replicas = [(plan.name, role, i) for role, count in plan.counts.items() for i in range(count)]
            run.started = all(self.pods.running(r) for r in replicas)
            run.go_at = time.monotonic() + plan.hold
            return
        if run.step >= len(plan.steps) or run.holding():
            return
        step = plan.steps[run.step]
        pod = self.pods.running((plan.name, step.role, step.index))
        if run.awaiting:
            if step.settle and self.recorded(plan.name, step.role, step.index):
                self._collect(run.awaiting, f"{plan.name}-{step.role}-{step.index}")
                run.history.append(f"step {run.step}: {run.awaiting[:8]} recorded")
                run.step, run.awaiting = run.step + 1, None
            elif step.replaced and pod is not None and pod.uid != run.awaiting:
                run.history.append(f"step {run.step}: {pod.uid[:8]} replaced {run.awaiting[:8]}")
                run.step, run.awaiting = run.step + 1, None
            return
        if pod is not None and self._end(pod, step):
            run.history.append(f"step {run.step}: {step.role}-{step.index} {pod.uid[:8]} told to exit {step.code}")
            waits = step.replaced or step.settle
            run.awaiting = pod.uid if waits else None
            run.step += 0 if waits else 1

    def _collect(self, uid: str, name: str) -> None:
        """Deletes a completed pod as PodGC does past its threshold (#10 item 4: it must never run again)."""
        try:
            delete_pod_now(self.core, self.namespace, name, uid)
        except Exception:  # gone already, or the API server away: it stays
            return
        self.pods.lose(uid)

    def recorded(self, job: str, role: str, index: int) -> bool:
        """The test saw the replica's pod complete and the job's status counts that very replica as completed (the
        operator saw it). A count of completions is not enough: it may be another replica's, while this pod still
        runs (a replay of seed 377506 deleted worker-1 so, and the operator rightly made a new one)."""
        done = any(p.replica == (job, role, index) and p.phase == "Succeeded" for p in self.pods.of_job(job))
        status = self.jobs.status.get(job) or {}
        return done and index in ((status.get("completedReplicas") or {}).get(role) or ())

    def _end(self, pod: PodRecord, step: Step) -> bool:
        """Annotates the pod (only while it is still that UID) so that kwok ends it with the step's exit code."""
        annotation = {ANNOTATION_COMPLETE: "true"} if step.code == 0 else {ANNOTATION_FAIL_EXIT_CODE: str(step.code)}
        name = f"{pod.replica[0]}-{step.role}-{step.index}"
        body = {"metadata": {"uid": pod.uid, "annotations": annotation}}
        try:
            self.core.patch_namespaced_pod(name, self.namespace, body, _content_type=MERGE_PATCH, _request_timeout=10)
        except (ApiException, OSError, Exception):  # gone, replaced, or the API server away: try again next tick
            return False
        self.annotated.add(pod.uid)
        return True

    def stuck(self) -> list[str]:
        """Unfinished jobs that made no progress for STUCK_SECONDS, with what they wait for."""
        now = time.monotonic()
        return [f"{name}: waiting for {run.waiting_for()}" for name, run in self.runs.items()
                if self.jobs.outcome(name) is None and now - run.progress_at > STUCK_SECONDS]


# ---------------------------------------------------------------- judging the end


def implied_outcome(plan: JobPlan, pods: list[PodRecord]) -> tuple[tuple[str, str] | None, int]:
    """The terminal condition the job's pods imply, in the order they ended, and the restarts counted by then."""
    restarts, completed = 0, set()
    for pod in sorted((p for p in pods if p.ended is not None), key=lambda p: p.ended or 0):
        _, role, index = pod.replica
        if pod.phase == "Succeeded":
            completed.add((role, index))
            if set(plan.deciders()) <= completed:
                return ("Succeeded", "JobSucceeded"), restarts
        elif not retryable(plan.policies[role], pod.exit_code or 0):
            return ("Failed", "PodFailed"), restarts
        else:
            restarts += 1
            if restarts > plan.backoff_limit:
                return ("Failed", "BackoffLimitExceeded"), restarts
    return None, restarts


def failed_retryable(plan: JobPlan, pods: list[PodRecord]) -> list[str]:
    """UIDs of the job's pods that failed with an exit code their role's policy retries."""
    return [p.uid for p in pods if p.phase == "Failed" and retryable(plan.policies[p.replica[1]], p.exit_code or 0)]


def pod_faults(plan: JobPlan, pods: list[PodRecord]) -> tuple[list[str], list[str]]:
    """(duplicates, missing): a replica's pod replaced though it had not failed retryably or been lost unfinished
    (a completed one lost must stay gone); a retryably failed pod never replaced though the job went on; a driven
    job's replica never created."""
    duplicates, missing = [], []
    by_replica: dict[tuple[str, int], list[PodRecord]] = {}
    for pod in pods:
        by_replica.setdefault(pod.replica[1:], []).append(pod)
    decisive = _decisive_end(plan, pods)
    for (role, index), incarnations in sorted(by_replica.items()):
        for before, after in itertools.pairwise(incarnations):
            lost_unfinished = before.lost and before.phase != "Succeeded"
            if not (lost_unfinished or (before.phase == "Failed" and retryable(plan.policies[role],
                                                                               before.exit_code or 0))):
                duplicates.append(f"{plan.name} {role}-{index}: {after.uid} replaced {before.uid} ({before.phase})")
        last = incarnations[-1]
        failed = last.phase == "Failed" and retryable(plan.policies[role], last.exit_code or 0)
        if failed and decisive is not None and (last.ended or 0) < decisive:
            missing.append(f"{plan.name} {role}-{index}: {last.uid} failed and was never replaced")
    if plan.driven:
        missing += [f"{plan.name} {role}-{i}: never created" for role, count in plan.counts.items()
                    for i in range(count) if (role, i) not in by_replica]
    return duplicates, missing


def _decisive_end(plan: JobPlan, pods: list[PodRecord]) -> int | None:
    """When (ledger order) the pod that ended the job ended; None when no pod did."""
    outcome, _ = implied_outcome(plan, pods)
    if outcome is None:
        return None
    ended = sorted(p.ended for p in pods if p.ended is not None)
    for moment in ended:
        if implied_outcome(plan, [p for p in pods if p.ended is not None and p.ended <= moment])[0] is not None:
            return moment
    return None
