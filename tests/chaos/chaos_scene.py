"""One chaos run's world: the namespace's watches, the operators, the jobs created as time goes by and the driver
of their scripts; and the verdict over all of it at the end."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

from chaos_driver import Driver, Run, failed_retryable, implied_outcome, pod_faults
from chaos_harness import JobLedger, Operators, PodLedger, PodRecord, Watcher, delete_pod_now, log, watch_namespace
from chaos_scenarios import JobPlan
from controlplane import ControlPlane
from kubernetes import client
from kubernetes.client import ApiException

from disttrain_operator.api import GROUP, PLURAL, VERSION

TICK_SECONDS = 0.25


@dataclass
class Scene:
    cp: ControlPlane
    api: client.ApiClient
    namespace: str
    rng: random.Random
    operators: Operators
    pods: PodLedger
    jobs: JobLedger
    watchers: list[Watcher]
    driver: Driver
    pending: list[JobPlan] = field(default_factory=list)
    create_every: float = 1.0
    next_create: float = 0.0
    started: float = field(default_factory=time.monotonic)
    problems: list[str] = field(default_factory=list)  # found while the run goes on

    @classmethod
    def open(cls, cp: ControlPlane, api: client.ApiClient, namespace: str, rng: random.Random,
             operators: Operators) -> Scene:
        """Starts the test's watches of the namespace (the operators start later)."""
        pods, jobs, watchers = watch_namespace(api, namespace)
        return cls(cp, api, namespace, rng, operators, pods, jobs, watchers, Driver(api, namespace, pods, jobs))

    def close(self) -> None:
        """Kills the operators still running and stops the watches."""
        self.operators.stop_all()
        for watcher in self.watchers:
            watcher.stop()

    def schedule(self, plans: list[JobPlan], over_seconds: float) -> None:
        """Creates `plans` one by one, evenly over the next `over_seconds` (the churn the operators face)."""
        self.pending = list(plans)
        self.create_every = over_seconds / max(len(plans), 1)
        self.next_create = time.monotonic()

    def pump(self, seconds: float) -> None:
        """Drives the scripts and creates the jobs due for `seconds`."""
        until = time.monotonic() + seconds
        while True:
            self.driver.tick()
            if self.pending and time.monotonic() >= self.next_create and self._create(self.pending[0]):
                self.driver.add(self.pending.pop(0))
                self.next_create += self.create_every
            if time.monotonic() >= until:
                return
            time.sleep(TICK_SECONDS)

    def _create(self, plan: JobPlan) -> bool:
        custom = client.CustomObjectsApi(self.api)
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, plan.manifest(),
                                                   _request_timeout=10)
        except ApiException as error:
            return error.status == 409  # created before the connection broke
        except Exception:  # the API server away: next tick
            return False
        return True

    def recreated(self, lost: list[PodRecord], within: float) -> list[str]:
        """Drives until every lost Running pod of an unfinished job has a successor or `within` seconds passed;
        returns those still missing."""
        deadline = time.monotonic() + within
        while True:
            missing = [f"{'-'.join(map(str, p.replica))} ({p.uid})" for p in lost if p.phase == "Running"
                       and self.jobs.outcome(p.replica[0]) is None and not self.pods.successor(p)]
            if not missing or time.monotonic() >= deadline:
                return missing
            self.pump(0.5)

    def finish(self, timeout: float) -> None:
        """Drives until every job is created and has ended, no job is stuck, or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self.pending or self.driver.unfinished()):
            if self.driver.stuck():
                return
            self.pump(1.0)


def lose_pods(scene: Scene, count: int) -> list[PodRecord]:
    """Deletes (grace 0) up to `count` pods as a lost node or PodGC would: Running pods of scripted jobs that the
    test has not told to end (they must be recreated, not counted), and completed pods the job's status counts
    (they must never come back). Returns the pods deleted."""
    candidates, lost = [], []
    for pod in list(scene.pods.pods.values()):
        job, role, index = pod.replica
        run = scene.driver.runs.get(job)
        if pod.gone or pod.deleting or run is None or scene.jobs.outcome(job) is not None:
            continue
        if (pod.phase == "Running" and run.plan.driven and pod.uid not in scene.driver.annotated) or (
                pod.phase == "Succeeded" and scene.driver.recorded(job, role, index)):
            candidates.append(pod)
    core = client.CoreV1Api(scene.api)
    for pod in scene.rng.sample(candidates, min(count, len(candidates))):
        job, role, index = pod.replica
        try:
            delete_pod_now(core, scene.namespace, f"{job}-{role}-{index}", pod.uid)
        except Exception:  # gone already, or the API server away
            continue
        scene.pods.lose(pod.uid)
        lost.append(pod)
    return lost


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)
    divergences: list[str] = field(default_factory=list)  # jobs whose pods did not follow their script


# A job's pods may end other than its script meant (a failure the test injected that did not happen as planned):
# the operator is still judged on what did happen. More than this many means the test no longer steers its jobs.
MAX_DIVERGENCES = 2


def describe(pods: list[PodRecord]) -> list[str]:
    """Each pod's history in the order first seen, for a problem's message: what the script did not foresee."""
    return [f"{'-'.join(map(str, p.replica[1:]))} {p.uid[:8]} {p.phase} exit {p.exit_code}"
            f"{' lost' if p.lost else ''}{' gone' if p.gone else ''} seen #{p.order} ended #{p.ended}" for p in pods]


def judge_job(scene: Scene, run: Run) -> tuple[list[str], str | None, tuple[str, str] | None, int, int]:
    """One job against what its pods imply: (problems, how its pods diverged from its script if they did, its
    outcome, pods failed retryably, restarts in status)."""
    plan, pods = run.plan, scene.pods.of_job(run.plan.name)
    outcome, status = scene.jobs.outcome(plan.name), scene.jobs.status.get(plan.name) or {}
    implied, _ = implied_outcome(plan, pods)
    failed, restarts = len(failed_retryable(plan, pods)), int(status.get("restarts") or 0)
    where = f"{plan.name} ({plan.kind}, {plan.counts}, {plan.policies}, backoffLimit {plan.backoff_limit})"
    if outcome is None:
        return [f"stuck: {where}: waiting for {run.waiting_for()}; driver {run.history}; pods {describe(pods)}; "
                f"status {status}"], None, None, failed, restarts
    problems, divergence = [], None
    if outcome != implied:
        problems.append(f"outcome: {where} ended {outcome}, its pods imply {implied}")
    if restarts != failed:
        problems.append(f"restarts: {where} says {restarts}, {failed} pods failed retryably")
    if (implied, failed) != (plan.expect, plan.expect_restarts):
        divergence = (f"script: {where} meant {plan.expect} with {plan.expect_restarts} restarts, "
                      f"its pods imply {implied} with {failed}; driver {run.history}; pods {describe(pods)}")
    duplicates, missing = pod_faults(plan, pods)
    problems += [f"duplicate pod: {d}" for d in duplicates] + [f"missing pod: {m}" for m in missing]
    if run.ended_early:
        problems.append(f"{where}: {run.ended_early}")
    return problems, divergence, outcome, failed, restarts


def judge(scene: Scene, seed: int) -> Verdict:
    """Every job against what its pods imply; the ledgers' own findings; the run's figures (all logged)."""
    verdict = Verdict()
    outcomes: Counter[str] = Counter()
    failed_total = restarts_total = 0
    for run in scene.driver.runs.values():
        problems, divergence, outcome, failed, restarts = judge_job(scene, run)
        verdict.problems += problems
        verdict.divergences += [divergence] if divergence else []
        outcomes[f"{outcome[0]}/{outcome[1]}" if outcome else "stuck"] += 1
        failed_total, restarts_total = failed_total + failed, restarts_total + restarts
    verdict.problems += scene.problems
    verdict.problems += [f"duplicate pods: {d}" for d in dict.fromkeys(scene.pods.duplicates)]
    verdict.problems += [f"status went back: {r}" for r in dict.fromkeys(scene.jobs.regressions)]
    if len(verdict.divergences) > MAX_DIVERGENCES:
        verdict.problems.append(f"{len(verdict.divergences)} jobs did not follow their scripts: the test no longer "
                                f"steers what it means to test")
    verdict.figures = {
        "seed": seed, "seconds": round(time.monotonic() - scene.started), "jobs": len(scene.driver.runs),
        "operators started": scene.operators.started, "operator SIGKILLs": scene.operators.kills,
        "pods (UIDs)": len(scene.pods.pods), "pods failed retryably": failed_total,
        "restarts in status": restarts_total, "pods ended by the test": len(scene.driver.annotated),
        "pods deleted by the test": sum(p.lost for p in scene.pods.pods.values()),
        "of them completed": sum(p.lost and p.phase == "Succeeded" for p in scene.pods.pods.values()),
        "outcomes": dict(sorted(outcomes.items())), "jobs off their scripts": len(verdict.divergences),
    }
    log(f"figures: {verdict.figures}")
    for divergence in verdict.divergences:  # the operator is judged on what happened; this is for the test's author
        log(f"OFF SCRIPT {divergence}")
    for problem in verdict.problems:
        log(f"PROBLEM {problem}")
    if verdict.problems:
        log(f"operator logs:\n{scene.operators.tails(40)}")
    return verdict
