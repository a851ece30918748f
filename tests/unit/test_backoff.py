"""Refused creations: slow-start batches, exponential backoff with jitter, expectations (a fake clock)."""

from __future__ import annotations

import random

from disttrain_operator.backoff import BASE_SECONDS, EXPECTATION_SECONDS, JITTER, MAX_SECONDS, CreateGate, slow_start


def test_slow_start_batches_double_and_cover_everything_once() -> None:
    assert list(slow_start(111)) == [(0, 1), (1, 3), (3, 7), (7, 15), (15, 31), (31, 63), (63, 111)]
    assert list(slow_start(0)) == []


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
