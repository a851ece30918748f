"""The chaos tests' jobs: mixed shapes, restart policies and success policies, each with a script of pod endings
(driven by the test, one at a time, or by kwok annotations on the job's template) and the outcome it implies.

Every script is deterministic whatever the operator's timing: failures the job survives are injected one at a
time, each only once the previous one's pod is back, so each counts once and nothing races the job's end.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from controlplane import ANNOTATION_COMPLETE, ANNOTATION_DELAY, ANNOTATION_FAIL_EXIT_CODE

from disttrain_operator.api import GROUP, VERSION

Obj = dict
IMAGE = "registry.invalid/disttrain/trainer:test"
KINDS = ("succeed", "permanent", "backoff", "template-success", "template-permanent", "template-backoff")
KIND_WEIGHTS = (30, 12, 13, 15, 12, 18)
HOLD_SECONDS = (2.0, 12.0)  # a driven job's replicas all run this long before its script starts


@dataclass(frozen=True)
class Step:
    """One pod ending the test brings about: the replica's Running pod exits with `code` (0: completes)."""

    role: str
    index: int
    code: int
    replaced: bool = False  # wait for the replica's new pod before the next step
    settle: bool = False  # wait until the job's status counts the completion before the next step


@dataclass
class JobPlan:
    name: str
    kind: str
    counts: dict[str, int]
    policies: dict[str, str]
    success_policy: str
    backoff_limit: int
    clean_pod_policy: str
    steps: list[Step] = field(default_factory=list)
    annotations: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> its template's annotations
    expect: tuple[str, str] = ("Succeeded", "JobSucceeded")
    expect_restarts: int = 0
    hold: float = 0.0  # seconds every replica runs untouched before the first step: pods a lost node may take

    @property
    def driven(self) -> bool:
        """The test drives its pods (after every replica runs); else its template's annotations do."""
        return not self.kind.startswith("template-")

    def deciders(self) -> list[tuple[str, int]]:
        """The replicas whose exit 0 ends the job under its success policy."""
        if self.success_policy == "AllWorkers":
            return [(r, i) for r in ("chief", "worker") for i in range(self.counts.get(r, 0))]
        return [("chief", 0)] if "chief" in self.counts else [("worker", 0)]

    def manifest(self) -> Obj:
        """The DistTrainJob to create."""
        specs: Obj = {}
        for role, count in self.counts.items():
            specs[role] = {"replicas": count, "restartPolicy": self.policies[role]}
            if role in self.annotations:
                specs[role]["template"] = {"metadata": {"annotations": self.annotations[role]}}
        run_policy = {"backoffLimit": self.backoff_limit, "cleanPodPolicy": self.clean_pod_policy}
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DistTrainJob",
            "metadata": {"name": self.name, "labels": {"chaos-kind": self.kind}},
            "spec": {"image": IMAGE, "replicaSpecs": specs, "runPolicy": run_policy,
                     "successPolicy": self.success_policy, "networkPolicy": False},
        }


def retryable(policy: str, code: int) -> bool:
    """lifecycle's rule: whether a pod of a role under `policy` that exited `code` is recreated."""
    if policy == "Never":
        return False
    return policy != "ExitCode" or not 1 <= code <= 127


def retryable_code(rng: random.Random, policy: str) -> int | None:
    """An exit code `policy` retries (None under Never)."""
    return None if policy == "Never" else rng.choice([137, 143] if policy == "ExitCode" else [1, 137])


def permanent_code(rng: random.Random, policy: str) -> int | None:
    """An exit code that fails the job under `policy` (None where every code is retried)."""
    return {"ExitCode": rng.choice([1, 2, 127]), "Never": rng.choice([1, 137])}.get(policy)


def _shape(rng: random.Random) -> dict[str, int]:
    shape = rng.choice(["workers", "chief", "ps"])
    if shape == "workers":
        return {"worker": rng.randint(1, 3)}
    if shape == "chief":
        return {"chief": 1, **({"worker": n} if (n := rng.randint(0, 3)) else {})}
    return {"chief": 1, "ps": rng.randint(1, 2), "worker": rng.randint(1, 2)}


def _policies(rng: random.Random, counts: dict[str, int], deciders: set[str]) -> dict[str, str]:
    choices = ["ExitCode", "ExitCode", "OnFailure", "Never"]
    return {role: rng.choice(choices if role in deciders else [*choices, "Always"]) for role in counts}


def _replicas(plan: JobPlan, codes: str, rng: random.Random) -> list[tuple[str, int, int]]:
    """(role, index, code) for every replica with a `codes` ('retryable' or 'permanent') exit code."""
    pick = retryable_code if codes == "retryable" else permanent_code
    found = []
    for role, count in plan.counts.items():
        for index in range(count):
            code = pick(rng, plan.policies[role])
            if code is not None:
                found.append((role, index, code))
    return found


def _failures(plan: JobPlan, rng: random.Random, count: int) -> list[Step]:
    """`count` retryable failures on random replicas, each awaiting its replacement (a role is made ExitCode if
    none can fail retryably)."""
    if not _replicas(plan, "retryable", rng):
        plan.policies[rng.choice(list(plan.counts))] = "ExitCode"
    return [Step(*rng.choice(_replicas(plan, "retryable", rng)), replaced=True) for _ in range(count)]


def plan_job(rng: random.Random, name: str) -> JobPlan:
    """A random job and its script."""
    counts = _shape(rng)
    success = rng.choice(["ChiefOrWorker0", "AllWorkers"]) if "worker" in counts else "ChiefOrWorker0"
    kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
    plan = JobPlan(name, kind, counts, {}, success, backoff_limit=0,
                   clean_pod_policy=rng.choice(["Running", "Running", "All", "None"]))
    plan.policies = _policies(rng, counts, {role for role, _ in plan.deciders()})
    {"succeed": _succeed, "permanent": _permanent, "backoff": _backoff, "template-success": _template_success,
     "template-permanent": _template_permanent, "template-backoff": _template_backoff}[kind](plan, rng)
    if plan.driven:  # on a fast machine a script runs in moments: without a hold there is no Running pod to lose
        plan.hold = round(rng.uniform(*HOLD_SECONDS), 1)
    return plan


def _succeed(plan: JobPlan, rng: random.Random) -> None:
    failures = _failures(plan, rng, rng.randint(0, 3))
    plan.backoff_limit = rng.randint(len(failures), len(failures) + 3)
    deciders = plan.deciders()  # each completion recorded before the next: a window for PodGC (lost pods)
    plan.steps = [*failures, *(Step(role, index, 0, settle=n < len(deciders) - 1) for n, (role, index)
                               in enumerate(deciders))]
    plan.expect, plan.expect_restarts = ("Succeeded", "JobSucceeded"), len(failures)


def _permanent(plan: JobPlan, rng: random.Random) -> None:
    if not _replicas(plan, "permanent", rng):  # before the failures are chosen: a Never role fails for good
        plan.policies[rng.choice(list(plan.counts))] = "Never"
    failures = _failures(plan, rng, rng.randint(0, 2))
    plan.backoff_limit = rng.randint(len(failures), len(failures) + 3)
    plan.steps = [*failures, Step(*rng.choice(_replicas(plan, "permanent", rng)))]
    plan.expect, plan.expect_restarts = ("Failed", "PodFailed"), len(failures)


def _backoff(plan: JobPlan, rng: random.Random) -> None:
    plan.backoff_limit = rng.randint(0, 2)
    failures = _failures(plan, rng, plan.backoff_limit + 1)
    plan.steps = [*failures[:-1], Step(failures[-1].role, failures[-1].index, failures[-1].code)]
    plan.expect, plan.expect_restarts = ("Failed", "BackoffLimitExceeded"), plan.backoff_limit + 1


def _template_success(plan: JobPlan, rng: random.Random) -> None:
    delay = f"{rng.randint(2, 6)}s"
    for role in {role for role, _ in plan.deciders()}:
        plan.annotations[role] = {ANNOTATION_COMPLETE: "true", ANNOTATION_DELAY: delay}
    plan.backoff_limit = rng.randint(0, 3)


def _template_permanent(plan: JobPlan, rng: random.Random) -> None:
    role = rng.choice(list(plan.counts))
    plan.policies[role] = rng.choice(["ExitCode", "Never"])
    code = permanent_code(rng, plan.policies[role])
    plan.annotations[role] = {ANNOTATION_FAIL_EXIT_CODE: str(code), ANNOTATION_DELAY: f"{rng.randint(1, 4)}s"}
    plan.backoff_limit = rng.randint(0, 3)
    plan.expect = ("Failed", "PodFailed")


def _template_backoff(plan: JobPlan, rng: random.Random) -> None:
    """One replica (so its failures come one at a time) fails on every pod, until backoffLimit is exceeded."""
    role = "chief" if "chief" in plan.counts else "worker"
    plan.counts[role] = 1
    plan.policies[role] = rng.choice(["ExitCode", "OnFailure"])
    code = retryable_code(rng, plan.policies[role])
    plan.annotations[role] = {ANNOTATION_FAIL_EXIT_CODE: str(code), ANNOTATION_DELAY: f"{rng.randint(1, 3)}s"}
    plan.backoff_limit = rng.randint(0, 2)
    plan.expect, plan.expect_restarts = ("Failed", "BackoffLimitExceeded"), plan.backoff_limit + 1


def plan_jobs(rng: random.Random, count: int, prefix: str = "j") -> list[JobPlan]:
    """`count` random jobs named <prefix>00, <prefix>01, ..."""
    return [plan_job(rng, f"{prefix}{i:02d}") for i in range(count)]

