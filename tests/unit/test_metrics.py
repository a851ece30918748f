"""The operator's Prometheus metrics: outcomes of reconcile passes and the jobs-by-state gauge."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from disttrain_operator import metrics
from disttrain_operator.api import InvalidSpecError


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_reconcile_outcomes_are_counted_and_timed() -> None:
    before = {o: sample("disttrain_reconciles_total", outcome=o) for o in ("ok", "invalid_spec", "error")}
    timed = sample("disttrain_reconcile_duration_seconds_count")
    with metrics.reconcile_timer():
        pass
    with pytest.raises(InvalidSpecError), metrics.reconcile_timer():
        raise InvalidSpecError("spec.replicaSpecs: bad")
    with pytest.raises(RuntimeError), metrics.reconcile_timer():
        raise RuntimeError("API server gone")
    for outcome in before:
        assert sample("disttrain_reconciles_total", outcome=outcome) == before[outcome] + 1
    assert sample("disttrain_reconcile_duration_seconds_count") == timed + 3


def test_jobs_by_state_follow_each_jobs_latest_state() -> None:
    # other tests may have run an operator in this process: count from what is there now
    before = {state: sample("disttrain_jobs", state=state) for state in metrics.JOB_STATES}

    def added(state: str) -> float:
        return sample("disttrain_jobs", state=state) - before[state]

    one, two, three = ("unit-a", "one"), ("unit-a", "two"), ("unit-b", "one")
    metrics.record_job_state(one, "Running")
    metrics.record_job_state(two, "Running")
    metrics.record_job_state(three, "Created")
    assert added("Running") == 2 and added("Created") == 1
    metrics.record_job_state(one, "Succeeded")
    metrics.record_job_state(three, None)  # deleted
    assert (added("Running"), added("Succeeded"), added("Created")) == (1, 1, 0)
    for key in (one, two):
        metrics.record_job_state(key, None)
    assert all(added(state) == 0 for state in metrics.JOB_STATES)
