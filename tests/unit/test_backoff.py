"""Refused creations: slow-start batches, exponential backoff with jitter, expectations (a fake clock)."""

from __future__ import annotations

import random

from disttrain_operator.backoff import BASE_SECONDS, EXPECTATION_SECONDS, JITTER, MAX_SECONDS, CreateGate, SlowStart


def test_slow_start_doubles_per_round_trip_up_to_its_limit_and_stops_at_a_refusal() -> None:
    window, allowed = SlowStart(limit=16), []
    for _ in range(6):  # a round trip in which everything in flight succeeds
        allowed.append(window.allowed)
        for _ in range(window.allowed):
            window.succeeded()
    assert allowed == [1, 2, 4, 8, 16, 16]
    assert window.may_start(15) and not window.may_start(16)
    window.refused()
    assert not window.may_start(0)


def test_refused_passes_back_off_exponentially_with_jitter_up_to_the_cap() -> None:
    gate, rng, now = CreateGate(), random.Random(7), 1000.0
    delays = [gate.refused(now, rng) for _ in range(10)]
    for failures, delay in enumerate(delays, start=1):
        nominal = min(BASE_SECONDS * 2 ** (failures - 1), MAX_SECONDS)
        assert nominal * (1 - JITTER) <= delay <= nominal * (1 + JITTER)
    assert not gate.open(now + delays[-1] - 1) and gate.open(now + delays[-1])
    gate.succeeded()
    assert gate.open(now) and BASE_SECONDS * (1 - JITTER) <= gate.refused(now, rng) <= BASE_SECONDS * (1 + JITTER)


def test_a_pod_created_moments_ago_is_not_created_again_until_its_expectation_lapses() -> None:
    gate = CreateGate(created={"j-worker-0": 100.0, "j-worker-1": 100.0})
    assert gate.still_expected(["j-worker-0", "j-worker-2"], now=110.0) == {"j-worker-0"}
    assert "j-worker-1" not in gate.created  # seen in the watch (no longer missing): forgotten
    assert gate.still_expected(["j-worker-0"], now=100.0 + EXPECTATION_SECONDS) == set()


def test_a_pod_seen_in_the_watch_is_no_longer_awaited_so_its_recreation_is_not_held_back() -> None:
    gate = CreateGate(created={"j-worker-0": 100.0})
    gate.seen({"j-worker-0"})  # it ran, then failed and was deleted: the next pass recreates it at once
    assert gate.still_expected(["j-worker-0"], now=101.0) == set()
