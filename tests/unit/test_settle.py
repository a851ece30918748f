"""Pod events that can wait (issue 13): a pod that appeared, was scheduled or started lets its job's pass wait
SETTLE_SECONDS for its siblings; a pod that ended, restarted or went is passed on at once, and hurries a pass
already waiting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from kubernetes.client import ApiClient

from disttrain_operator import handlers
from disttrain_operator.handlers import COALESCE_SECONDS, SETTLE_SECONDS, OperatorState, reconcile_soon
from disttrain_operator.informer import PodInformer, decisive
from disttrain_operator.lifecycle import ReplicaObservation

KEY = ("ns", "job")


def seen(phase: str, restarts: int = 0, deleting: bool = False, uid: str = "u1") -> ReplicaObservation:
    return ReplicaObservation(role="worker", index=0, phase=phase, uid=uid, restarts=restarts, deleting=deleting)


@pytest.mark.parametrize(("before", "after", "urgent"), [
    (None, seen("Pending"), False),  # created
    (seen("Pending"), seen("Running"), False),  # started
    (seen("Running"), seen("Succeeded"), True),
    (seen("Running"), seen("Failed"), True),
    (seen("Running"), seen("Running", deleting=True), True),
    (seen("Running"), seen("Running", restarts=1), True),  # restarted in place (OnFailure)
    (seen("Running"), seen("Pending", uid="u2"), True),  # replaced while the watch was away
])
def test_which_pod_changes_cannot_wait(before: ReplicaObservation | None, after: ReplicaObservation,
                                       urgent: bool) -> None:
    assert decisive(before, after) is urgent


def test_the_informer_says_which_changes_are_urgent() -> None:
    calls: list[bool] = []

    async def scenario() -> None:
        informer = PodInformer(ApiClient(), ["ns"], lambda key, urgent: calls.append(urgent))
        pod = {"metadata": {"name": "job-worker-0", "namespace": "ns", "uid": "u1",
                            "labels": {"disttrain.io/job-name": "job", "disttrain.io/replica-type": "worker",
                                       "disttrain.io/replica-index": "0"}}, "status": {"phase": "Pending"}}
        for kind, phase in [("ADDED", "Pending"), ("MODIFIED", "Running"), ("MODIFIED", "Failed"),
                            ("DELETED", "Failed")]:
            informer._apply(kind, pod | {"status": {"phase": phase}})

    asyncio.run(scenario())
    assert calls == [False, False, True, True]


def test_an_urgent_change_hurries_a_pass_that_waits_to_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> float:
        state = OperatorState(kube=None, index={})  # type: ignore[arg-type]
        ran: list[float] = []

        async def reconcile(*_: Any, **__: Any) -> None:
            ran.append(time.monotonic())

        monkeypatch.setattr(handlers, "reconcile_or_retry", reconcile)
        started = time.monotonic()
        waiting = asyncio.create_task(reconcile_soon(state, KEY, COALESCE_SECONDS, SETTLE_SECONDS))  # a pod started
        await asyncio.sleep(0.01)
        await reconcile_soon(state, KEY, COALESCE_SECONDS)  # a pod ended: no second pass, the first goes now
        await waiting
        assert len(ran) == 1
        return ran[0] - started

    took = asyncio.run(scenario())
    assert took < SETTLE_SECONDS, f"the pass waited {took:.2f}s"


def test_pod_events_of_a_job_whose_pass_waits_start_no_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pod event started a task that, once run, found the job's pass already waiting and ended: ~4 tasks per
    pod for nothing while 1,000 pods started."""

    async def scenario() -> tuple[int, int]:
        state = OperatorState(kube=None, index={})  # type: ignore[arg-type]
        passes: list[int] = []

        async def reconcile(*_: Any, **__: Any) -> None:
            passes.append(1)

        monkeypatch.setattr(handlers, "reconcile_or_retry", reconcile)
        handlers.request_pass(state, KEY, COALESCE_SECONDS, SETTLE_SECONDS)  # a pod appeared
        await asyncio.sleep(0)  # its pass is waiting to settle
        for _ in range(50):  # its siblings appear and start
            handlers.request_pass(state, KEY, COALESCE_SECONDS, SETTLE_SECONDS)
        spawned = len(state.tasks)
        handlers.request_pass(state, KEY, COALESCE_SECONDS)  # one ends: the waiting pass goes now
        await asyncio.gather(*state.tasks)
        return spawned, len(passes)

    spawned, passes = asyncio.run(scenario())
    assert (spawned, passes) == (1, 1)
