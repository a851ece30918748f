"""The few Kubernetes API calls the operator makes, each idempotent.

Each call is one HTTP request (`ApiRequests`) through the `kubernetes` client's connection pool, TLS settings and
credentials, but not through its typed API: that validated every body into the client's pydantic models and dumped
it back (~8% of the operator's CPU while it created 1,000 pods). Bodies and responses are plain JSON (orjson).
The blocking requests run in a pool of API_CONCURRENCY worker threads (one connection each) so that Kopf's event
loop never waits on them.
Create-or-adopt treats `409 AlreadyExists` as success when the existing object is controlled by the
same job (a retried or restarted operator), and as a clear error when it belongs to someone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import os
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import kubernetes
import orjson
import urllib3
from kubernetes.client import ApiClient, ApiException, Configuration

from .api import GROUP, PLURAL, VERSION
from .names import LABEL_JOB, controller_uid

Obj = dict[str, Any]
logger = logging.getLogger(__name__)
COMPONENT = "disttrain-operator"
# How Pod Security Admission words a refusal (403): permanent for this spec in this namespace, unlike quota 403s.
POD_SECURITY_REFUSAL = "violates PodSecurity"
# Concurrent API calls (threads and pooled connections): asyncio's default pool has min(32, CPUs + 4), 6 on 2 cores.
API_CONCURRENCY = 16
# Reads and status patches of jobs get threads of their own: behind a burst's thousands of queued creations they
# waited a minute (a pod's end reached its job's status 39 s late at the median while 200 jobs were created).
STATUS_CONCURRENCY = 4
# Among those, a patch that ends a job or counts a failure goes first: behind 200 new jobs' first status patches, a
# job's Succeeded reached its status 1 s late (what `kubectl wait` and a recreated pod wait for).
URGENT, ROUTINE = 0, 1


class ForeignObjectError(RuntimeError):
    """A child's deterministic name is taken by an object this job does not control."""


class RejectedObjectError(ValueError):
    """The API server refused a child for good: invalid (400/422), e.g. a bad field in the user's pod template, or
    against the namespace's Pod Security level (403)."""


class StaleReadError(RuntimeError):
    """The job changed after the pass read it (409 Conflict): the pass must read and decide again."""


class RefusedCreateError(RuntimeError):
    """The API server refused a create for now (403 quota or policy, 429, 5xx): retried later, reported as
    FailedCreate."""


def error_message(error: ApiException) -> str:
    """The API server's own message (a Status object's `message`), else the raw body."""
    try:
        return str(orjson.loads(error.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(error.body or error.reason)


JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
USER_AGENT = "disttrain-operator"  # how the API server's audit log and metrics name our requests


def collection(kind: str, namespace: str) -> str:
    """The URL path of a namespace's objects of `kind` (Pod, Service, NetworkPolicy, Event, DistTrainJob)."""
    group_version = {"NetworkPolicy": "apis/networking.k8s.io/v1", "DistTrainJob": f"apis/{GROUP}/{VERSION}"}
    resource = {"NetworkPolicy": "networkpolicies", "DistTrainJob": PLURAL}.get(kind, f"{kind.lower()}s")
    return f"/{group_version.get(kind, 'api/v1')}/namespaces/{quote(namespace, safe='')}/{resource}"


def item(kind: str, namespace: str, name: str) -> str:
    """The URL path of one object."""
    return f"{collection(kind, namespace)}/{quote(name, safe='')}"


class ApiRequests:
    """Blocking HTTP requests to the API server with an ApiClient's pool, TLS, proxy and credentials (a rotating
    service-account token is re-read by the client's refresh hook): non-2xx responses raise ApiException, as the
    typed client's do."""

    def __init__(self, api_client: ApiClient) -> None:
        self.api_client = api_client
        self.pool = api_client.rest_client.pool_manager
        self.host = api_client.configuration.host

    def __call__(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = JSON,
        timeout: float | tuple[float, float] = 30.0,
        decode: bool = True,
        stream: bool = False,
    ) -> Any:
        """The response's JSON (None for an empty one or unless `decode`); with `stream`, the unread response (to be
        released by the caller)."""
        headers = {"Accept": JSON, "User-Agent": USER_AGENT}
        if body is not None:
            headers["Content-Type"] = content_type
        self.api_client.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
        url = self.host + path + (f"?{urlencode(query)}" if query else "")
        if isinstance(timeout, tuple):
            limit = urllib3.Timeout(connect=timeout[0], read=timeout[1])
        else:
            limit = urllib3.Timeout(total=timeout)
        response = self.pool.request(
            method, url, body=None if body is None else orjson.dumps(body), headers=headers, timeout=limit,
            preload_content=False,
        )
        if stream and 200 <= response.status <= 299:
            return response
        data = response.data  # read in full: only then does the connection go back to the pool
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response)
        return orjson.loads(data) if data and decode else None


class PriorityGate:
    """At most `slots` holders at once; waiters are let in by priority (lowest first), then in arrival order."""

    def __init__(self, slots: int) -> None:
        self.free = slots
        self.waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self.arrivals = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        if self.free and not self.waiting:
            self.free -= 1
        else:
            admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self.waiting, (priority, next(self.arrivals), admitted))
            try:
                await admitted
            except asyncio.CancelledError:
                if admitted.done() and not admitted.cancelled():  # let in, then cancelled: pass the slot on
                    self._release()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self.waiting:
            admitted = heapq.heappop(self.waiting)[2]
            if not admitted.done():  # a cancelled waiter's future is done: skip it
                admitted.set_result(None)
                return
        self.free += 1


def make_api_client() -> ApiClient:
    """An API client from the in-cluster service account, else from $KUBECONFIG (read now, not at import)."""
    configuration = Configuration()
    configuration.connection_pool_maxsize = API_CONCURRENCY + STATUS_CONCURRENCY
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
        )
    return ApiClient(configuration)


class Kube:
    """Idempotent calls on pods, services, jobs and their status."""

    def __init__(self, api_client: ApiClient, request_timeout: float = 30.0) -> None:
        self.api_client = api_client
        self.request = ApiRequests(api_client)
        self.timeout = request_timeout
        self.executor = ThreadPoolExecutor(API_CONCURRENCY, thread_name_prefix="kube")
        self.status_executor = ThreadPoolExecutor(STATUS_CONCURRENCY, thread_name_prefix="kube-status")
        self.status_lane = PriorityGate(STATUS_CONCURRENCY)  # its threads never queue: the order is decided here

    def close(self) -> None:
        for executor in (self.executor, self.status_executor):
            executor.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()

    async def _call(
        self, method: str, path: str, *, status_lane: bool = False, priority: int = ROUTINE, **kwargs: Any
    ) -> Any:
        """One request in a worker thread: job reads and status patches in the status lane, by `priority`."""
        call = functools.partial(self.request, method, path, timeout=self.timeout, **kwargs)
        loop = asyncio.get_running_loop()
        if not status_lane:
            return await loop.run_in_executor(self.executor, call)
        async with self.status_lane.slot(priority):
            return await loop.run_in_executor(self.status_executor, call)

    async def create_or_adopt(self, obj: Obj, owner_uid: str) -> bool:
        """Creates a Pod, Service or NetworkPolicy; True if created, False if ours already (or its namespace is going).

        Raises ForeignObjectError when the name is taken by another owner's object, RejectedObjectError
        when the API server finds the object invalid, RefusedCreateError when it refuses it for now.
        """
        kind, namespace, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        try:
            await self._call("POST", collection(kind, namespace), body=obj, decode=False)  # nobody reads it back
            return True
        except ApiException as error:
            if error.status in (400, 422) or (error.status == 403 and POD_SECURITY_REFUSAL in str(error.body)):
                raise RejectedObjectError(f"{kind} {name}: {error_message(error)}") from None
            if error.status == 403 and "being terminated" in str(error.body):
                return False  # the namespace, and the job with it, is going away
            if error.status in (403, 429) or error.status >= 500:  # 5xx: no ClusterIP left, a webhook down, ...
                raise RefusedCreateError(f"{kind} {name}: {error_message(error)}") from None
            if error.status != 409:
                raise
        existing = await self._call("GET", item(kind, namespace, name))
        if controller_uid(existing) != owner_uid:
            raise ForeignObjectError(
                f"{kind} {namespace}/{name} already exists and is not controlled by this job; "
                f"delete or rename it so the job can create its own"
            )
        return False

    async def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> bool:
        """Deletes a pod, only if it is still the pod `uid` when one is given (a decision made on a stale view never
        deletes its replacement); False if it was gone or replaced."""
        options = {"preconditions": {"uid": uid}} if uid else None
        try:
            await self._call("DELETE", item("Pod", namespace, name), body=options)
            return True
        except ApiException as error:
            if error.status in (404, 409):  # 409: the UID precondition failed, another pod has the name now
                return False
            raise

    async def list_job_pods(self, namespace: str, job_name: str, chunk: int = 500) -> list[Obj]:
        """The job's pods as the API server has them now (by label, in chunks): the check on the watch's view."""
        pods: list[Obj] = []
        token: str | None = None
        while True:
            query = {"labelSelector": f"{LABEL_JOB}={job_name}", "limit": chunk}
            if token:
                query["continue"] = token
            listed = await self._call("GET", collection("Pod", namespace), query=query)
            pods += listed["items"]
            token = listed["metadata"].get("continue")
            if not token:
                return pods

    async def get_job(self, namespace: str, name: str) -> Obj | None:
        """The DistTrainJob as stored now, or None when it is gone."""
        try:
            return await self._call("GET", item("DistTrainJob", namespace, name), status_lane=True)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def patch_job_status(
        self, namespace: str, name: str, status: Obj, resource_version: str, urgent: bool = False
    ) -> str | None:
        """Merge-patches the job's /status subresource (null values remove fields), only if the job is still at
        `resource_version` (what the pass read): a decision made on an older read never overwrites a newer one
        (another operator's, say); an `urgent` one ahead of routine ones. Returns the new resourceVersion; None
        when the job is gone; raises StaleReadError when the job changed since it was read."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        try:
            patched = await self._call(
                "PATCH", f"{item('DistTrainJob', namespace, name)}/status", body=body, content_type=MERGE_PATCH,
                status_lane=True, priority=URGENT if urgent else ROUTINE,
            )
        except ApiException as error:
            if error.status == 409:
                raise StaleReadError(f"{namespace}/{name} changed since it was read; planning again") from None
            if error.status != 404:
                raise
            return None
        return str(patched["metadata"]["resourceVersion"])

    async def delete_job(self, namespace: str, name: str) -> None:
        """Deletes the job; its children follow by garbage collection (owner references)."""
        try:
            await self._call("DELETE", item("DistTrainJob", namespace, name), body={"propagationPolicy": "Background"})
        except ApiException as error:
            if error.status != 404:
                raise

    async def post_event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        """Posts a core/v1 Event about `obj` (best effort: a lost event is logged, never fatal)."""
        meta = obj["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": os.environ.get("HOSTNAME", COMPONENT),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._call("POST", collection("Event", meta["namespace"]), body=event)
        except ApiException as error:
            logger.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], error)
