"""The chief's shutdown token is tried again until a task takes it: on a busy machine (CI, 2 cores, 5 TensorFlow
processes) one attempt failed and worker-1 served on after the job had succeeded, until it was stopped."""

from __future__ import annotations

import time

import pytest

from disttrain_trainer import servers
from disttrain_trainer.cluster import ClusterConfig


def cluster() -> ClusterConfig:
    return ClusterConfig({"chief": ["c:1"], "ps": ["p:1"], "worker": ["w0:1", "w1:1"]}, "chief", 0)


def test_a_token_that_failed_once_is_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: dict[tuple[str, int], int] = {}

    def flaky(config: ClusterConfig, job: str, index: int) -> None:
        attempts[(job, index)] = attempts.get((job, index), 0) + 1
        if (job, index) == ("worker", 1) and attempts[(job, index)] < 3:
            raise TimeoutError("Timed out waiting for the session to run")

    monkeypatch.setattr(servers, "_enqueue_token", flaky)
    monkeypatch.setattr(servers, "RETRY_PAUSE", 0.01)
    servers.send_shutdown(cluster())
    assert attempts == {("ps", 0): 1, ("worker", 0): 1, ("worker", 1): 3}


def test_a_task_that_never_takes_its_token_costs_at_most_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    def dead(config: ClusterConfig, job: str, index: int) -> None:
        if job == "ps":
            raise ConnectionError("unavailable")

    monkeypatch.setattr(servers, "_enqueue_token", dead)
    monkeypatch.setattr(servers, "SHUTDOWN_SECONDS", 0.3)
    monkeypatch.setattr(servers, "RETRY_PAUSE", 0.01)
    started = time.monotonic()
    servers.send_shutdown(cluster())
    assert time.monotonic() - started < 2.0
