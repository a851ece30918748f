"""The status lane's gate (issue 13): a job's end reached its status a second late while a burst of 200 new jobs'
status patches queued ahead of it; urgent patches now go first, and no waiter ever loses or leaks a slot."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from disttrain_operator.api import Condition, DistTrainJobStatus
from disttrain_operator.handlers import OperatorState, apply_plan
from disttrain_operator.kube import PriorityGate
from disttrain_operator.lifecycle import Plan


async def take(gate: PriorityGate, priority: int, order: list[str], name: str, release: asyncio.Event) -> None:
    async with gate.slot(priority):
        order.append(name)
        await release.wait()


def test_waiters_are_admitted_by_priority_then_in_arrival_order() -> None:
    async def scenario() -> list[str]:
        gate, order, release = PriorityGate(1), [], asyncio.Event()
        holder = asyncio.create_task(take(gate, 1, order, "holder", release))
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(take(gate, p, order, name, release))
                   for p, name in [(1, "count-a"), (1, "count-b"), (0, "ended"), (1, "count-c")]]
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(holder, *waiters)
        return order

    assert asyncio.run(scenario()) == ["holder", "ended", "count-a", "count-b", "count-c"]


def test_at_most_slots_holders_at_once() -> None:
    async def scenario() -> int:
        gate, busiest, inside = PriorityGate(3), 0, 0

        async def work(priority: int) -> None:
            nonlocal busiest, inside
            async with gate.slot(priority):
                inside += 1
                busiest = max(busiest, inside)
                await asyncio.sleep(0.001)
                inside -= 1

        await asyncio.gather(*(work(i % 2) for i in range(40)))
        return busiest

    assert asyncio.run(scenario()) == 3


@pytest.mark.parametrize("when", ["waiting", "just admitted"])
def test_a_cancelled_waiter_leaks_no_slot(when: str) -> None:
    async def scenario() -> list[str]:
        gate, order, release = PriorityGate(1), [], asyncio.Event()
        release.set()
        async with gate.slot(1):
            doomed = asyncio.create_task(take(gate, 0, order, "doomed", release))
            await asyncio.sleep(0)  # it waits for the slot
            if when == "waiting":
                doomed.cancel()
                await asyncio.gather(doomed, return_exceptions=True)
        if when == "just admitted":  # the slot was handed to it; cancelled before it could run
            doomed.cancel()
            await asyncio.gather(doomed, return_exceptions=True)
        await asyncio.wait_for(take(gate, 1, order, "later", release), timeout=5)
        return order

    assert asyncio.run(scenario()) == ["later"]


class RecordingKube:
    """Records whether each status patch was urgent."""

    def __init__(self) -> None:
        self.urgent: list[bool] = []

    async def patch_job_status(self, *_: Any, urgent: bool = False) -> str:
        self.urgent.append(urgent)
        return "2"

    async def post_event(self, *_: Any) -> None:
        return None


def condition(type_: str, reason: str) -> Condition:
    return Condition(type=type_, status="True", reason=reason, lastTransitionTime="2026-12-02T18:00:00Z")


@pytest.mark.parametrize(("status", "stored", "urgent"), [
    (DistTrainJobStatus(state="Created", conditions=[condition("Created", "JobCreated")]), {}, False),
    (DistTrainJobStatus(state="Running", restarts=1), {"state": "Running"}, True),  # a replacement waits for it
    (DistTrainJobStatus(state="Succeeded", conditions=[condition("Succeeded", "JobSucceeded")]),
     {"state": "Running"}, True),
])
def test_a_patch_that_ends_a_job_or_counts_a_failure_is_urgent(status: DistTrainJobStatus, stored: dict[str, Any],
                                                               urgent: bool) -> None:
    kube = RecordingKube()
    state = OperatorState(kube=kube)  # type: ignore[arg-type]
    job = {"apiVersion": "disttrain.io/v1alpha1", "kind": "DistTrainJob",
           "metadata": {"name": "j", "namespace": "ns", "uid": "u", "resourceVersion": "1"}}
    asyncio.run(apply_plan(state, job, None, Plan(status=status), stored))
    assert kube.urgent == [urgent]
