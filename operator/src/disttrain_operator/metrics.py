"""The operator's Prometheus metrics: reconciles, the pods it created and deleted, the events it posted and
the jobs it follows by state (plus the client library's process metrics: memory, CPU, open files)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import get_args

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from .api import InvalidSpecError, JobState
from .kube import StaleReadError

JOB_STATES: tuple[JobState, ...] = get_args(JobState)

RECONCILES = Counter(
    "disttrain_reconciles", "Reconcile passes, by outcome (ok, invalid_spec, conflict, error).", ["outcome"]
)
RECONCILE_SECONDS = Histogram(
    "disttrain_reconcile_duration_seconds",
    "Time of one reconcile pass: read the job, plan, patch status, create and delete pods.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
PODS_CREATED = Counter("disttrain_pods_created", "Replica pods created (not counting ours found already there).")
PODS_DELETED = Counter(
    "disttrain_pods_deleted", "Replica pods deleted: clean-up, recreation, suspension, scale-down (not those gone)."
)
JOB_EVENTS = Counter(
    "disttrain_job_events", "Events posted on jobs, by reason (JobSucceeded, PodFailed, Restarted, ...).", ["reason"]
)
JOBS = Gauge("disttrain_jobs", "Jobs the operator follows, by state.", ["state"])
for _state in JOB_STATES:
    JOBS.labels(_state)  # every state shows, 0 until a job is in it

_states: dict[tuple[str, str], JobState] = {}


@contextmanager
def reconcile_timer() -> Iterator[None]:
    """Times one reconcile pass and counts its outcome: ok, invalid_spec, conflict (StaleReadError) or error."""
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    except InvalidSpecError:
        outcome = "invalid_spec"
        raise
    except StaleReadError:
        outcome = "conflict"  # another writer was first: the pass runs again on a fresh read, nothing failed
        raise
    finally:
        RECONCILE_SECONDS.observe(time.perf_counter() - started)
        RECONCILES.labels(outcome).inc()


def record_job_state(key: tuple[str, str], state: JobState | None) -> None:
    """Remembers a job's state (None: the job is gone) and moves it between the jobs-by-state counts."""
    previous = _states.pop(key, None)
    if previous is not None:
        JOBS.labels(previous).dec()
    if state is not None:
        _states[key] = state
        JOBS.labels(state).inc()


def serve_metrics(port: int, address: str = "0.0.0.0") -> None:
    """Serves /metrics on `port` from a background thread."""
    start_http_server(port, addr=address)
