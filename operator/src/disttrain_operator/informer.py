"""The operator's view of every job's pods: a chunked list, then a watch, in a thread of its own.

Kopf's own pod watch did this before, at a cost: every pod event went through Kopf's per-object machinery (a deep
copy of the pod for its diff base, handler invocation, logging), most of the operator's CPU per created pod, and
its initial list was not chunked. Here each event is one JSON parse (orjson, of the raw line) and one
`observe_pod`, applied on the event loop.

After a 410 Gone (the watch fell too far behind: an API server restart, etcd compaction) the view is rebuilt from
a fresh list and every job whose pods changed meanwhile is reconciled: pods deleted during the gap do not linger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
from kubernetes.client import ApiClient, ApiException

from .kube import ApiRequests, collection
from .lifecycle import ReplicaObservation
from .names import LABEL_JOB, controller_uid, pod_replica
from .observe import observe_pod

logger = logging.getLogger(__name__)
JobKey = tuple[str, str]  # (namespace, job name)
Entry = tuple[str | None, ReplicaObservation]  # (controlling owner's UID, what lifecycle needs of the pod)
WATCH_SECONDS = 300  # the server ends each watch after this long; it is resumed from the last resourceVersion
RETRY_SECONDS = 1.0


def decisive(before: ReplicaObservation | None, after: ReplicaObservation) -> bool:
    """A change to pass on at once: the pod ended, is being deleted, or its container restarted in place (what a
    job's outcome, restarts and replacements depend on); not a pod that appeared, was scheduled or started."""
    return (after.phase in ("Succeeded", "Failed") or after.deleting
            or (before is not None and (before.restarts, before.uid) != (after.restarts, after.uid)))


def entry_of(pod: dict[str, Any]) -> tuple[JobKey, str, Entry] | None:
    """(job key, pod name, entry) of a pod of some job; None for a pod that is no replica."""
    if pod_replica(pod) is None:
        return None
    meta = pod["metadata"]
    return (meta["namespace"], meta["labels"][LABEL_JOB]), meta["name"], (controller_uid(pod), observe_pod(pod))


class PodInformer:
    """Pods labelled with a job, by job: `get(key)` lists (owner UID, observation) as Kopf's index did.

    The view is changed only on the event loop (the thread hands each change over); `on_change(key, urgent)` is
    called there for every job whose pods changed, `urgent` when a pod ended, restarted or went (`decisive`); a pod
    that appeared or started can wait for its siblings. `synced` is set once every namespace has been listed.
    """

    def __init__(
        self,
        api_client: ApiClient,
        namespaces: Iterable[str] | None,
        on_change: Callable[[JobKey, bool], None],
        chunk: int = 500,
    ) -> None:
        self.request = ApiRequests(api_client)
        self.namespaces: list[str | None] = list(namespaces) if namespaces else [None]  # None: all of them
        self.on_change, self.chunk = on_change, chunk
        self.pods: dict[JobKey, dict[str, Entry]] = {}
        self.synced = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.stopped = threading.Event()
        self.responses: set[Any] = set()
        self._unsynced = set(self.namespaces)

    def get(self, key: JobKey, default: Any = ()) -> list[Entry]:
        found = self.pods.get(key)
        return list(found.values()) if found else default

    def start(self) -> None:
        for namespace in self.namespaces:
            name = f"pods-{namespace or 'all'}"
            threading.Thread(target=self._run, args=(namespace,), name=name, daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()
        for response in list(self.responses):
            with contextlib.suppress(Exception):
                response.shutdown()

    # -- on the event loop

    def _replace(self, namespace: str | None, listed: dict[JobKey, dict[str, Entry]]) -> None:
        """A fresh list of a namespace (every one for None) replaces its part of the view."""
        old = {key for key in self.pods if namespace is None or key[0] == namespace}
        for key in old:
            del self.pods[key]
        self.pods.update(listed)
        if namespace in self._unsynced:
            self._unsynced.discard(namespace)
            if not self._unsynced:
                self.synced.set()
            return  # the first list: the jobs' own start-up passes look at them
        for key in old | set(listed):
            self.on_change(key, True)

    def _apply(self, kind: str, pod: dict[str, Any]) -> None:
        found = entry_of(pod)
        if found is None:
            return
        key, name, entry = found
        pods = self.pods.setdefault(key, {})
        before = pods.get(name)
        if kind == "DELETED":
            pods.pop(name, None)
        else:
            pods[name] = entry
        if not pods:
            self.pods.pop(key, None)
        self.on_change(key, kind == "DELETED" or decisive(before[1] if before else None, entry[1]))

    # -- in the thread

    def _run(self, namespace: str | None) -> None:
        while not self.stopped.is_set():
            try:
                version = self._list(namespace)
                while version and not self.stopped.is_set():
                    version = self._watch(namespace, version)  # None: 410 Gone, list again
            except Exception as error:  # the API server unreachable, say: try again shortly
                if self.stopped.is_set():
                    return
                logger.warning("watching pods%s failed: %s; again in %.0fs", _where(namespace), error, RETRY_SECONDS)
                self.stopped.wait(RETRY_SECONDS)

    def _call(self, namespace: str | None, query: dict[str, Any], **kwargs: Any) -> Any:
        path = "/api/v1/pods" if namespace is None else collection("Pod", namespace)
        return self.request("GET", path, query={"labelSelector": LABEL_JOB, **query}, **kwargs)

    def _list(self, namespace: str | None) -> str:
        """Lists the pods in chunks; hands the view over; returns the list's resourceVersion."""
        listed: dict[JobKey, dict[str, Entry]] = {}
        token: str | None = None
        while True:
            extra = {"continue": token} if token else {}
            page = self._call(namespace, {"limit": self.chunk, **extra}, timeout=60.0)
            for pod in page["items"]:
                found = entry_of(pod)
                if found is not None:
                    listed.setdefault(found[0], {})[found[1]] = found[2]
            token = page["metadata"].get("continue")
            if not token:
                self.loop.call_soon_threadsafe(self._replace, namespace, listed)
                return str(page["metadata"]["resourceVersion"])

    def _watch(self, namespace: str | None, version: str) -> str | None:
        """Watches from `version` until the server ends the watch; the last resourceVersion, or None after 410."""
        query = {"watch": "true", "resourceVersion": version, "allowWatchBookmarks": "true"}
        response = self._call(
            namespace, {**query, "timeoutSeconds": WATCH_SECONDS}, timeout=(10.0, WATCH_SECONDS + 30.0), stream=True
        )
        self.responses.add(response)
        try:
            for event in _events(response):
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = obj["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    self.loop.call_soon_threadsafe(self._apply, kind, obj)
        finally:
            self.responses.discard(response)
            response.release_conn()
        return version


def _events(response: Any) -> Iterator[dict[str, Any]]:
    """A watch response's events: one JSON document per line, parsed from the raw bytes."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                yield orjson.loads(line)


def _where(namespace: str | None) -> str:
    return f" in {namespace}" if namespace else ""
