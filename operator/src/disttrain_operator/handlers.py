"""Thin Kopf handlers for DistTrainJob: read the world, ask `lifecycle` and `builders`, act.

Every path (a job created, its spec changed or listed at start-up, any event on one of its pods, a wake-up) ends
in `reconcile_job`, which is level-triggered: it takes the job as its watch last delivered it (no GET per pass) and
its pods from the pod informer (informer.py; no API list per event), asks `lifecycle.reconcile` for a Plan and
applies it. Before any create
or delete, and at every resync, a fresh list checks the index (a watch gap can leave it stale); deletes carry
the pod's UID and the status patch the job's resourceVersion, so no decision acts on a stale view. Refused
creations back off per job (backoff.py); with --leader-elect only the Lease holder runs (leader.py).
Deadlines and TTLs are enforced by an operator-wide wake-up loop, not by waiting for the next event. A per-job
lock serializes reconciles and a "queued" mark coalesces bursts of pod events into one pass.

Order of effects: the status is patched *before* pods are deleted or created, so a counted restart is
recorded before its pod disappears; every step is idempotent, so a crash between steps is repaired by
the next pass (or by the pass every job gets when a restarted operator lists it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import threading
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client import ApiException

from . import metrics
from .api import (
    GROUP,
    PLURAL,
    VERSION,
    DistTrainJobSpec,
    DistTrainJobStatus,
    InvalidSpecError,
    ReplicaType,
    parse_spec,
    readable_ttl,
)
from .backoff import CreateGate, SlowStart
from .builders import build_network_policy, build_pod, build_service, build_task_service
from .informer import PodInformer
from .kube import (
    API_CONCURRENCY,
    ForeignObjectError,
    Kube,
    RefusedCreateError,
    RejectedObjectError,
    StaleReadError,
    error_message,
    make_api_client,
)
from .leader import LeaderElector, standby_liveness
from .lifecycle import Plan, ReplicaObservation, fail_invalid_spec, reconcile
from .names import LABEL_ROLE, controller_uid, pod_replica
from .observe import observe_pod
from .policy import DEFAULT_POLICY, TemplatePolicy
from .tfconfig import TRAINING_ROLES, pod_name

JOB_RESOURCE = (GROUP, VERSION, PLURAL)
PREFIX = "disttrain.io"
RESYNC_SECONDS = 60.0  # look at every unfinished job at least this often, whatever happens
RETRY_SECONDS = 5.0  # look again this soon after a failed reconcile
TICK_SECONDS = 0.5
COALESCE_SECONDS = 0.03  # a pod event's pass waits this long for the job's other pod events (one pass for a burst)
# A pod that appeared, was scheduled or started: its pass waits this long more, unless a pod of the job ends or goes
# meanwhile. While 200 jobs' 1,000 pods started, the operator spent ~10% less CPU (fewer passes, status patches and
# the job events they bring back); a job's end still reaches its status at once.
SETTLE_SECONDS = 0.3
BUILD_OFF_LOOP = 20  # more pods than this in a pass are built in a worker thread: the event loop stays responsive

logger = logging.getLogger(__name__)
JobKey = tuple[str, str]  # (namespace, name)
Obj = dict[str, Any]
PodIndex = Mapping[JobKey, Any]  # job -> [(controlling owner's UID, observation)]: the informer, or a dict in tests


@dataclass
class OperatorState:
    """Per-operator memory: the API client, per-job locks, coalescing marks and wake-up times."""

    kube: Kube
    locks: dict[JobKey, asyncio.Lock] = field(default_factory=dict)
    queued: dict[JobKey, asyncio.Event] = field(default_factory=dict)  # a pass waits; set: it should go at once
    due: dict[JobKey, float] = field(default_factory=dict)  # loop.time() of the next look
    index: PodIndex | None = None  # the job's pods (the informer once started)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    reported: dict[JobKey, set[tuple[str, str]]] = field(
        default_factory=dict
    )  # warnings posted once: names taken, refusals
    policy: TemplatePolicy = DEFAULT_POLICY  # what job templates may do (the chart's templatePolicy values)
    network_policy: bool = True  # a NetworkPolicy per job unless its spec says otherwise
    gates: dict[JobKey, CreateGate] = field(default_factory=dict)  # refused-create backoff and expectations
    relisted: dict[JobKey, float] = field(default_factory=dict)  # loop.time() of each job's last fresh pod list
    jobs: dict[JobKey, Obj] = field(default_factory=dict)  # each job as last delivered by its watch or our patch
    specs: dict[JobKey, tuple[str, int | None, DistTrainJobSpec]] = field(default_factory=dict)  # by uid, generation
    generations: dict[JobKey, tuple[str | None, int | None]] = field(default_factory=dict)  # (uid, generation) seen

    def lock(self, key: JobKey) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def forget(self, key: JobKey) -> None:
        """Drops everything kept for a job that is gone, so the operator's memory follows the jobs that exist."""
        self.locks.pop(key, None)
        self.due.pop(key, None)
        self.reported.pop(key, None)
        self.gates.pop(key, None)
        self.relisted.pop(key, None)
        self.jobs.pop(key, None)
        self.specs.pop(key, None)
        self.generations.pop(key, None)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Runs `coroutine` as a task the operator keeps (and cancels at cleanup)."""
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def keep_job(self, job: Obj) -> bool:
        """Remembers the newest copy of a job: an older resourceVersion (a watch event overtaken by our own patch)
        never replaces a newer one. A stale copy would only cost a 409 and a fresh GET. True when the job is new
        to this operator or has a new generation (its spec changed) since the last copy.

        The copy leaves out metadata.managedFields: never read, and most of a job's size once its status has fields
        (at 1,000 jobs the kept copies were the largest thing the operator held)."""
        key, kept = job_key(job), self.jobs.get(job_key(job))
        if kept is None or _version(job) is None or _version(kept) is None or _version(job) >= _version(kept):
            meta = job["metadata"]
            if "managedFields" in meta:
                job = {**job, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
            self.jobs[key] = job
        generation = (job["metadata"].get("uid"), job["metadata"].get("generation"))
        if self.generations.get(key) == generation:
            return False
        self.generations[key] = generation
        return True

    def spec_of(self, job: Obj) -> DistTrainJobSpec:
        """The job's validated spec, parsed once per generation (the spec cannot change without a new one)."""
        meta, key = job["metadata"], job_key(job)
        cached = self.specs.get(key)
        if cached is not None and cached[:2] == (meta["uid"], meta.get("generation")):
            return cached[2]
        spec = parse_spec(meta["name"], job.get("spec") or {}, self.policy)
        self.specs[key] = (meta["uid"], meta.get("generation"), spec)
        return spec

    def gate(self, key: JobKey) -> CreateGate:
        return self.gates.setdefault(key, CreateGate())

    def first_report(self, key: JobKey, uid: str, what: str) -> bool:
        """True the first time `what` is reported for this job (by UID: a new job of the same name starts over)."""
        seen = self.reported.setdefault(key, set())
        if (uid, what) in seen:
            return False
        seen.add((uid, what))
        return True


# ---------------------------------------------------------------- operator activities


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf diffs every event against a copy of the object for create/update handlers; there are none (job_event
    compares generations), so no copy is built (a deep copy per event), stored or read."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.login(id="login")
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account, else $KUBECONFIG as set now (not when `kubernetes` was imported)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup(id="configure")
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Storage prefixes, posting, timeouts, server-side pod filtering, and our own API client."""
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING
    # Serve the CRD and namespaces that exist at start-up: discovering new ones would need cluster-wide
    # namespace and CRD reads, which least-privilege RBAC does not grant (helm/kustomize install the CRD first).
    settings.scanning.disabled = True
    settings.networking.request_timeout = 60.0
    settings.networking.connect_timeout = 10.0
    settings.watching.server_timeout = 300  # an int: the API server rejects "300.0"
    state = OperatorState(
        kube=Kube(make_api_client(), request_timeout=30.0),
        policy=memo.get("policy", DEFAULT_POLICY),
        network_policy=memo.get("network_policy", True),
    )

    def on_change(key: JobKey, urgent: bool) -> None:
        request_pass(state, key, COALESCE_SECONDS, 0.0 if urgent else SETTLE_SECONDS)

    informer = PodInformer(make_api_client(), memo.get("namespaces"), on_change)
    informer.start()
    state.index = informer
    state.spawn(wake_up_loop(state))
    memo.state = state


@kopf.on.cleanup(id="close")
async def close(memo: kopf.Memo, **_: Any) -> None:
    """Stops the wake-up loop and closes our API client's connection pool."""
    state: OperatorState | None = memo.get("state")
    if state is None:
        return
    if isinstance(state.index, PodInformer):
        state.index.stop()
    for task in state.tasks:
        task.cancel()
    await asyncio.gather(*state.tasks, return_exceptions=True)
    state.kube.close()


# ---------------------------------------------------------------- passes


def request_pass(state: OperatorState, key: JobKey, coalesce: float = 0.0, settle: float = 0.0) -> None:
    """A pass for the job soon (`reconcile_soon`), unless one already waits: no task for each of a job's pod events
    (several per pod) only to find that."""
    waiting = state.queued.get(key)
    if waiting is None:
        state.spawn(reconcile_soon(state, key, coalesce, settle))
    elif not settle:
        waiting.set()


async def reconcile_soon(state: OperatorState, key: JobKey, coalesce: float = 0.0, settle: float = 0.0) -> None:
    """Reconciles after `coalesce` seconds (and first up to `settle` more) unless a pass for this job is already
    waiting: it will see the latest state anyway, and goes at once when this change cannot wait (no `settle`).

    Failures are logged and retried by the wake-up loop: events and wake-ups are not retried by Kopf.
    """
    waiting = state.queued.get(key)
    if waiting is not None or state.index is None:
        if waiting is not None and not settle:
            waiting.set()
        return
    hurry = state.queued[key] = asyncio.Event()
    await _synced(state)
    if settle:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), settle)
    if coalesce:
        await asyncio.sleep(coalesce)
    with contextlib.suppress(InvalidSpecError):  # the job is Failed/InvalidSpec; nothing more to do
        await reconcile_or_retry(state, key, state.index)


async def _synced(state: OperatorState) -> None:
    """Waits until the informer has listed every watched namespace (no pass decides on a view still empty)."""
    if isinstance(state.index, PodInformer):
        await state.index.synced.wait()


async def reconcile_or_retry(
    state: OperatorState, key: JobKey, index: PodIndex, ensure_service: bool = False
) -> None:
    """One pass; a failed one is one log line naming the job and the cause (the traceback only with --verbose)
    and a retry after RETRY_SECONDS. Raises InvalidSpecError (the job is now Failed/InvalidSpec)."""
    try:
        try:
            await reconcile_job(state, key, index, ensure_service)
        except StaleReadError as error:  # not a failure: another writer was first; decide again from a fresh read
            logger.info("%s", error)
            state.jobs.pop(key, None)
            await reconcile_job(state, key, index, ensure_service)
    except InvalidSpecError:
        raise
    except StaleReadError as error:  # again: leave it to the wake-up loop
        logger.info("%s", error)
        state.jobs.pop(key, None)
        state.due[key] = asyncio.get_running_loop().time()
    except Exception as error:
        now = asyncio.get_running_loop().time()
        retry = max(RETRY_SECONDS, state.gate(key).not_before - now)  # refused creations: when the backoff ends
        logger.warning("reconciling %s/%s failed: %s; retrying in %.0fs", *key, failure_cause(error), retry)
        logger.debug("traceback of the failed pass", exc_info=True)
        state.due[key] = now + retry


def failure_cause(error: BaseException) -> str:
    """What went wrong, in one line: the API server's own message for an API error."""
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}: {error_message(error)}"
    return " ".join(f"{type(error).__name__}: {error}".split())


async def wake_up_loop(state: OperatorState) -> None:
    """Deadlines, TTLs, retries and periodic resyncs: reconciles each job when its wake-up time comes.

    One operator-wide loop rather than a Kopf timer per job: timers put a finalizer on every job (a job
    could not be deleted while the operator is down), and a timer that deletes its own job (TTL) waits
    for itself to stop.
    """
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(TICK_SECONDS)
        now = loop.time()
        for key, due in list(state.due.items()):
            if due <= now and key not in state.queued:
                state.due.pop(key, None)
                request_pass(state, key)


# ---------------------------------------------------------------- jobs


@kopf.on.event(*JOB_RESOURCE, id="job")
async def job_event(event: kopf.RawEvent, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Keeps the job as delivered, for the next pass, and reconciles it (its Service ensured) when it is new to this
    operator (created, or listed at start-up) or its spec changed (a new generation); a job deleted: forgets its
    lock, wake-up time and reports (no pass may follow when it had no pods).

    Only this event handler, no Kopf create/update/resume handlers: those made Kopf keep a copy of every job's spec
    in an annotation (one more PATCH per job, and one more event) and diff it on every event, a quarter of the
    operator's CPU while it created 1,000 pods. The decisions never needed it: they are level-triggered.
    """
    state: OperatorState | None = memo.get("state")
    job = event.get("object")
    if state is None:
        return
    if event.get("type") == "DELETED":
        state.forget((namespace, name))
    elif isinstance(job, dict) and state.keep_job(job):
        state.spawn(job_changed(state, (namespace, name)))


async def job_changed(state: OperatorState, key: JobKey) -> None:
    """Job created, its spec changed, or the operator (re)started: ensure the Service, then reconcile."""
    state.queued.setdefault(key, asyncio.Event())
    await _synced(state)
    assert state.index is not None
    with contextlib.suppress(InvalidSpecError):  # the job is Failed/InvalidSpec; nothing more to do until it changes
        await reconcile_or_retry(state, key, state.index, ensure_service=True)


# ---------------------------------------------------------------- the one reconcile


def job_key(job: Obj) -> JobKey:
    """(namespace, name) of a job object: the key of its lock, index entries and per-job memory."""
    return job["metadata"]["namespace"], job["metadata"]["name"]


def _version(job: Obj) -> int | None:
    """The job's resourceVersion as a number (etcd's revision), None when it is not one."""
    version = str(job["metadata"].get("resourceVersion", ""))
    return int(version) if version.isdigit() else None


def observed_pods(job_pods: PodIndex, key: JobKey, uid: str) -> list[ReplicaObservation]:
    """The job's pods from the index: only those this very job (by UID) controls."""
    entries: Iterable[tuple[str | None, ReplicaObservation]] = job_pods.get(key, [])
    return [observation for owner, observation in entries if owner == uid]


def status_patch(stored: Obj, new: DistTrainJobStatus) -> Obj | None:
    """The merge patch from the stored status to `new` (nulls remove fields), or None when equal."""
    wire = new.model_dump(by_alias=True, mode="json")
    if wire == DistTrainJobStatus.model_validate(stored).model_dump(by_alias=True, mode="json"):
        return None
    for role in set(stored.get("replicaStatuses") or {}) - set(wire["replicaStatuses"]):
        wire["replicaStatuses"][role] = None
    return wire


async def reconcile_job(state: OperatorState, key: JobKey, job_pods: PodIndex, ensure_service: bool = False) -> None:
    """Reads the job and its pods, plans with `lifecycle`, applies the plan (one pass at a time per job, timed).

    A spec that cannot run (pydantic says so, or the API server refuses a pod built from it) turns the
    job Failed/InvalidSpec and re-raises InvalidSpecError, so that job handlers stop retrying.
    """
    async with state.lock(key):
        state.queued.pop(key, None)
        with metrics.reconcile_timer():
            await _reconcile_locked(state, key, job_pods, ensure_service)


async def _reconcile_locked(state: OperatorState, key: JobKey, job_pods: PodIndex, ensure_service: bool) -> None:
    namespace, name = key
    job = state.jobs.get(key) or await state.kube.get_job(namespace, name)
    if job is not None:  # this pass's own copy: it records the resourceVersion of its patches
        job = {**job, "metadata": dict(job["metadata"])}
    if job is None or job["metadata"].get("deletionTimestamp"):
        state.forget(key)
        metrics.record_job_state(key, None)
        return
    uid = job["metadata"]["uid"]
    stored = job.get("status") or {}
    now = datetime.now(UTC)
    try:
        spec = state.spec_of(job)
        observed, plan = await plan_pass(state, job, spec, observed_pods(job_pods, key, uid), now)
        stored = await apply_plan(state, job, spec, plan, stored, ensure_service, observed)
    except InvalidSpecError as error:
        previous = DistTrainJobStatus.model_validate(stored)
        ttl = readable_ttl(job.get("spec"))
        observed = observed_pods(job_pods, key, uid)
        failed = fail_invalid_spec(previous, str(error), now, observed, ttl)
        await apply_plan(state, job, None, failed, stored, observed=observed)
        _schedule(state, key, None if failed.delete_job else failed.requeue_after)
        metrics.record_job_state(key, None if failed.delete_job else failed.status.state)
        raise
    metrics.record_job_state(key, None if plan.delete_job else plan.status.state)
    logger.debug(
        "reconciled %s/%s: %s, create %s, delete %s, requeue %s, delete job %s",
        namespace,
        name,
        plan.status.state,
        plan.create,
        plan.delete,
        plan.requeue_after,
        plan.delete_job,
    )
    wait = plan.requeue_after
    if not plan.status.finished:
        wait = min(wait if wait is not None else RESYNC_SECONDS, RESYNC_SECONDS)
        gate = state.gates.get(key)
        if gate is not None and gate.failures:  # creations backing off: look again when they may be tried
            wait = min(wait, max(gate.not_before - asyncio.get_running_loop().time(), 0.0))
    _schedule(state, key, None if plan.delete_job else wait)


async def plan_pass(
    state: OperatorState, job: Obj, spec: DistTrainJobSpec, observed: list[ReplicaObservation], now: datetime
) -> tuple[list[ReplicaObservation], Plan]:
    """`lifecycle`'s plan from the watch's view of the pods, checked against a fresh list of them before any
    create or delete and at least every RESYNC_SECONDS: after a watch gap (410, a restarted API server) the
    index may still hold pods that are gone, and nothing would recreate them."""
    meta = job["metadata"]
    key = job_key(job)
    previous = DistTrainJobStatus.model_validate(job.get("status") or {})

    def decide(pods: list[ReplicaObservation]) -> Plan:
        gate = state.gates.get(key)
        if gate is not None:  # pods seen are no longer awaited
            gate.seen({pod_name(meta["name"], o.role, o.index) for o in pods})
        refusal = gate.refusal if gate is not None else None
        return reconcile(spec, pods, previous, now, meta.get("generation"), refusal)

    plan = decide(observed)
    clock = asyncio.get_running_loop().time()
    if not (plan.create or plan.delete or clock - state.relisted.get(key, float("-inf")) >= RESYNC_SECONDS):
        return observed, plan
    state.relisted[key] = clock
    listed = await state.kube.list_job_pods(meta["namespace"], meta["name"])
    fresh = [observe_pod(p) for p in listed if controller_uid(p) == meta["uid"] and pod_replica(p) is not None]
    if _view(fresh) == _view(observed):
        return observed, plan
    # pods the watch has not shown yet (often the ones this operator just created) only mean it is behind: no news;
    # pods it shows that the API server no longer has mean it missed their deletion, and they would not be recreated
    gone = {(o.role, o.index, o.uid) for o in observed} - {(o.role, o.index, o.uid) for o in fresh}
    if gone:
        logger.info("%s/%s: the watch still shows %d pod(s) the API server no longer has (a watch gap); deciding on a "
                    "fresh list", *key, len(gone))
    return fresh, decide(fresh)


def _view(observed: list[ReplicaObservation]) -> set[tuple[object, ...]]:
    return {(o.role, o.index, o.uid, o.phase, o.deleting, o.restarts, o.sidecars_running) for o in observed}


def _schedule(state: OperatorState, key: JobKey, wait: float | None) -> None:
    """The job's next look in `wait` seconds; none when None."""
    if wait is None:
        state.due.pop(key, None)
    else:
        state.due[key] = asyncio.get_running_loop().time() + max(wait, 0.0)


async def create_children(state: OperatorState, job: Obj, children: list[Obj]) -> tuple[set[str], list[str]]:
    """Creates (or adopts) children concurrently; returns the names taken by strangers (each reported once as an
    event) and the API server's refusals for now. An object it refuses for good makes the spec invalid."""
    uid = job["metadata"]["uid"]
    taken: set[str] = set()
    results = await asyncio.gather(*(state.kube.create_or_adopt(c, uid) for c in children), return_exceptions=True)
    refused: list[str] = []
    for child, result in zip(children, results, strict=True):
        if result is True and child["kind"] == "Pod":
            metrics.PODS_CREATED.inc()
        elif isinstance(result, ForeignObjectError):
            taken.add(child["metadata"]["name"])
            if state.first_report(job_key(job), uid, child["metadata"]["name"]):  # retried on every pass; reported once
                await state.kube.post_event(job, "Warning", "NameTaken", str(result))
                metrics.JOB_EVENTS.labels("NameTaken").inc()
        elif isinstance(result, RefusedCreateError):
            refused.append(str(result))
        elif isinstance(result, RejectedObjectError):
            role = child["metadata"].get("labels", {}).get(LABEL_ROLE)
            where = f"spec.replicaSpecs.{role}" if role else "spec"
            raise InvalidSpecError(f"{where}: the API server rejected {result}") from result
        elif isinstance(result, BaseException):
            raise result
    return taken, refused


def names_taken(taken: set[str]) -> RefusedCreateError:
    """No pods while a stranger's Service has a name of ours: it would receive the TensorFlow traffic that TF_CONFIG
    sends to that name."""
    return RefusedCreateError(f"{', '.join(sorted(taken))}: taken by another owner; no pods until it is gone")


async def create_pods(state: OperatorState, job: Obj, pods: list[Obj], task_services: dict[str, Obj]) -> list[str]:
    """Creates pods slow-start (backoff.SlowStart: 1 in flight, then one more per success) until the first refusal,
    each pod's task Service (named like it) just before it, so a full quota costs one pod POST and one Service POST
    per pass, not one of each per missing pod. Returns the refusals; raises the first error once nothing is in
    flight."""
    window, waiting = SlowStart(limit=API_CONCURRENCY), list(reversed(pods))
    running: set[asyncio.Future[list[str]]] = set()
    refused: list[str] = []
    errors: list[BaseException] = []
    try:
        while waiting or running:
            while waiting and not errors and window.may_start(len(running)):
                running.add(asyncio.ensure_future(create_task_pod(state, job, waiting.pop(), task_services)))
            if not running:
                break
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    errors.append(task.exception())  # type: ignore[arg-type]
                elif task.result():
                    refused += task.result()
                    window.refused()
                else:
                    window.succeeded()
    finally:
        for task in running:  # the pass was cancelled (the operator stops): so are its creations
            task.cancel()
    if errors:
        raise errors[0]
    return refused


async def create_task_pod(state: OperatorState, job: Obj, pod: Obj, task_services: dict[str, Obj]) -> list[str]:
    """One pod, after its task Service when it has one; returns the API server's refusals (none: created or ours)."""
    service = task_services.get(pod["metadata"]["name"])
    if service is not None:
        taken, refused = await create_children(state, job, [service])
        if taken:
            raise names_taken(taken)
        if refused:
            return refused
    return (await create_children(state, job, [pod]))[1]


async def report_refused_creates(state: OperatorState, job: Obj, refused: list[str]) -> None:
    """Backs the job's creations off, posts a FailedCreate Warning quoting the API server (once per distinct cause
    and job), and ends the pass as failed (the retry comes when the backoff ends)."""
    key = job_key(job)
    delay = state.gate(key).refused(asyncio.get_running_loop().time(), why=refused[0])
    cause = f"{refused[0]} (creating again in {delay:.0f}s)"
    same_cause = re.sub(r'"[^"]*"', '""', refused[0].split(": ", 1)[-1])  # whichever pod it was
    if state.first_report(key, job["metadata"]["uid"], same_cause):
        await state.kube.post_event(job, "Warning", "FailedCreate", cause)
        metrics.JOB_EVENTS.labels("FailedCreate").inc()
    raise RefusedCreateError(cause)


async def apply_plan(
    state: OperatorState,
    job: Obj,
    spec: DistTrainJobSpec | None,
    plan: Plan,
    stored: Obj,
    ensure_service: bool = False,
    observed: list[ReplicaObservation] | None = None,
) -> Obj:
    """Status first (so restarts are never lost), then the events beside pod deletions, the Service and pod
    creations, and TTL deletion last.

    The job's Service is created (or adopted) in every pass that creates pods, so one deleted while the job runs
    is back before a replacement pod needs its DNS name, and on `ensure_service` (job created, changed or
    resumed) while the job is unfinished; so is each new training pod's own Service (its stable address).
    Returns the job's status as now stored.
    """
    meta = job["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    patch = status_patch(stored, plan.status)
    if patch is not None:
        # what `kubectl wait` and a replacement pod wait for goes ahead of other jobs' routine counts
        urgent = plan.status.finished or plan.status.restarts != int(stored.get("restarts") or 0)
        version = await state.kube.patch_job_status(namespace, name, patch, meta["resourceVersion"], urgent=urgent)
        meta["resourceVersion"] = version or meta["resourceVersion"]  # a later patch in this pass builds on it
        stored = plan.status.model_dump(by_alias=True, mode="json")
        if version is not None:
            state.keep_job({**job, "status": stored})
    posting = asyncio.ensure_future(post_events(state, job, plan))  # beside the pods: a round trip less per pass
    try:
        uids = {(o.role, o.index): o.uid for o in observed or []}
        for role, index in plan.delete:  # only the very pod the decision saw (its UID), never a replacement
            if await state.kube.delete_pod(namespace, pod_name(name, role, index), uids.get((role, index)) or None):
                metrics.PODS_DELETED.inc()
        if spec is not None and (plan.create or (ensure_service and not plan.status.finished)):
            pods, task_services = await build_children(name, namespace, uid, spec, plan.create)
            await create_job_children(state, job, spec, plan, pods, task_services)
    finally:
        await posting
    if plan.delete_job:
        await state.kube.delete_job(namespace, name)
    return stored


async def post_events(state: OperatorState, job: Obj, plan: Plan) -> None:
    """The plan's events on the job, in order (best effort: a lost one is logged by post_event)."""
    for event in plan.events:
        await state.kube.post_event(job, event.type, event.reason, event.message)
        metrics.JOB_EVENTS.labels(event.reason).inc()


async def build_children(
    name: str, namespace: str, uid: str, spec: DistTrainJobSpec, replicas: list[tuple[ReplicaType, int]]
) -> tuple[list[Obj], list[Obj]]:
    """The pods and task Services of `replicas`; many are built in a worker thread, so that a large job (1,000
    workers: each pod names every task) stalls neither /healthz nor the other jobs' passes."""

    def build() -> tuple[list[Obj], list[Obj]]:
        pods = [build_pod(name, namespace, uid, spec, role, i) for role, i in replicas]
        services = [build_task_service(name, namespace, uid, spec, r, i) for r, i in replicas if r in TRAINING_ROLES]
        return pods, services

    return await asyncio.to_thread(build) if len(replicas) > BUILD_OFF_LOOP else build()


async def create_job_children(
    state: OperatorState, job: Obj, spec: DistTrainJobSpec, plan: Plan, pods: list[Obj], task_services: list[Obj]
) -> None:
    """The Service and NetworkPolicy first, then the pods with their task Services: slow start, no POST of a pod created
    moments ago (not yet seen), none at all while the job's creations back off after a refusal."""
    meta = job["metadata"]
    key, now = job_key(job), asyncio.get_running_loop().time()
    gate = state.gate(key)
    if not gate.open(now):
        return  # the pass's schedule looks again when the backoff ends
    isolation = spec.network_policy if spec.network_policy is not None else state.network_policy
    job_wide = [build_service(meta["name"], meta["namespace"], meta["uid"], spec)]
    if isolation:
        job_wide.append(build_network_policy(meta["name"], meta["namespace"], meta["uid"], spec))
    taken, refused = await create_children(state, job, job_wide)
    if taken:
        raise names_taken(taken)
    expected = gate.still_expected([p["metadata"]["name"] for p in pods], now)
    pods = [p for p in pods if p["metadata"]["name"] not in expected]
    by_name = {service["metadata"]["name"]: service for service in task_services}
    refused = refused or await create_pods(state, job, pods, by_name)
    if refused:
        await report_refused_creates(state, job, refused)
    gate.created.update((p["metadata"]["name"], now) for p in pods)
    gate.succeeded()


# ---------------------------------------------------------------- entry point


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` (before Kopf runs and installs its own handlers)."""
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_operator(
    namespaces: list[str] | None,
    liveness: str | None,
    metrics_port: int | None = None,
    standalone: bool = True,
    policy: TemplatePolicy = DEFAULT_POLICY,
    network_policy: bool = True,
    verbose: bool = False,
    leader_namespace: str | None = None,
) -> int:
    """Runs the operator until stopped: cluster-wide when `namespaces` is None, else in those namespaces;
    Prometheus metrics on `metrics_port` unless it is None; job templates checked under `policy`; a NetworkPolicy
    per job by default when `network_policy`; with `leader_namespace`, only while holding the Lease there.
    Returns 0 when stopped; exits 1 at once (no graceful stop) when leadership is lost."""
    # timestamped lines from Kopf and from us; tracebacks of failed passes only with `verbose`
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)
    if not verbose:  # not a line per job event ("Handler 'job' succeeded."): failures still reach the log
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # nor per liveness probe (aiohttp's access log of Kopf's /healthz): 8,640 lines a day at a 10 s period, and the
    # formatting cost 2% of the operator's CPU while the benchmark probed it every 0.1 s
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    stop = threading.Event()
    elector = LeaderElector(make_api_client(), leader_namespace) if leader_namespace else None
    if elector is not None:
        with standby_liveness(liveness), stop_on_signals(stop):
            if not elector.wait_until_leader(stop):
                return 0  # stopped (SIGTERM) while waiting for the Lease

        def on_lost() -> None:
            # Another operator leads now: not one more write from this one. A graceful stop (SIGTERM) let Kopf's
            # running and queued passes act for seconds beside the new leader; the chaos suite saw a Running pod
            # replaced that way. An exit at any moment loses nothing (status and pods are the state).
            logging.shutdown()
            os._exit(1)

        threading.Thread(target=elector.keep_renewing, args=(stop, on_lost), name="lease", daemon=True).start()
    if metrics_port is not None:
        metrics.serve_metrics(metrics_port)
    try:
        kopf.run(
            clusterwide=namespaces is None,
            namespaces=namespaces or (),
            liveness_endpoint=liveness,
            standalone=standalone,
            memo=kopf.Memo(policy=policy, network_policy=network_policy, namespaces=namespaces),
        )
    finally:
        stop.set()
        if elector is not None:
            elector.release()
    return 0
