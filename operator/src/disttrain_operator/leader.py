"""Leader election on a coordination.k8s.io/v1 Lease, by client-go's rules: one operator acts, the others wait.

A Deployment rollout, a pod replaced on a NotReady node, `kubectl scale` or a second Helm release can run two
operators at once; two deciding about the same job overwrite each other's status. With `--leader-elect` an
operator first waits for the Lease, then renews it; one that cannot renew in time stops (and is restarted as a
candidate), one that stops cleanly gives the Lease up so that another takes over at once.

A candidate never compares clocks with the holder: it notes, on its own monotonic clock, when it last saw the
Lease change, and takes it over only when it has not changed for the Lease's duration.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubernetes.client import ApiClient, ApiException, CoordinationV1Api

logger = logging.getLogger(__name__)

LEASE_NAME = "disttrain-operator"
LEASE_SECONDS = 15  # a holder silent this long has lost the Lease
RENEW_DEADLINE_SECONDS = 10  # a holder that could not renew for this long stops acting
RETRY_SECONDS = 2.0  # how often candidates look and holders renew

Obj = dict[str, Any]


def default_identity() -> str:
    """The pod's name (unique among running pods) plus a random suffix (a restarted container is a new holder)."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Observation:
    """What a candidate last saw of the Lease, and when (its own monotonic clock)."""

    record: tuple[str, str] | None = None  # (holderIdentity, renewTime)
    since: float = 0.0


def decide(lease: Obj | None, identity: str, seen: Observation, now: float, lease_seconds: float) -> str:
    """What to do with the Lease as read now: 'create', 'renew' (ours), 'take' (expired or released), or 'wait'.
    Updates `seen` (pure but for that)."""
    if lease is None:
        return "create"
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if holder == identity:
        return "renew"
    if not holder:
        return "take"  # released by a holder that stopped cleanly
    record = (holder, str(spec.get("renewTime")))
    if record != seen.record:
        seen.record, seen.since = record, now
        return "wait"
    return "take" if now - seen.since >= lease_seconds else "wait"


@dataclass
class LeaderElector:
    """Acquires, renews and releases the operator's Lease in `namespace`."""

    api_client: ApiClient
    namespace: str
    identity: str = field(default_factory=default_identity)
    name: str = LEASE_NAME
    lease_seconds: int = LEASE_SECONDS
    clock: Callable[[], float] = time.monotonic
    seen: Observation = field(default_factory=Observation)

    def __post_init__(self) -> None:
        self.api = CoordinationV1Api(self.api_client)

    def _body(self, lease: Obj | None, taking: bool) -> Obj:
        spec = dict((lease or {}).get("spec") or {})
        now = _now_micro()
        if taking or lease is None:
            spec.update(acquireTime=now, leaseTransitions=int(spec.get("leaseTransitions") or 0) + (lease is not None))
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=self.lease_seconds, renewTime=now)
        metadata = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]  # lost races are 409s
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def _read(self) -> Obj | None:
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=10)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return self.api_client.sanitize_for_serialization(lease)

    def try_acquire_or_renew(self) -> bool:
        """One look at the Lease; True when this operator holds it afterwards."""
        lease = self._read()
        action = decide(lease, self.identity, self.seen, self.clock(), self.lease_seconds)
        if action == "wait":
            return False
        body = self._body(lease, taking=action == "take")
        try:
            if lease is None:
                self.api.create_namespaced_lease(self.namespace, body, _request_timeout=10)
            else:
                self.api.replace_namespaced_lease(self.name, self.namespace, body, _request_timeout=10)
        except ApiException as error:
            if error.status == 409:  # another candidate was faster, or the holder renewed meanwhile
                return False
            raise
        if action != "renew":
            logger.info("leading: acquired Lease %s/%s as %s", self.namespace, self.name, self.identity)
        return True

    def wait_until_leader(self, stop: threading.Event) -> bool:
        """Blocks until this operator holds the Lease (True) or `stop` is set (False)."""
        announced = False
        while not stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    return True
            except ApiException as error:
                logger.warning(
                    "reading Lease %s/%s failed: %s %s", self.namespace, self.name, error.status, error.reason
                )
            if not announced and self.seen.record:
                logger.info("waiting: Lease %s/%s is held by %s", self.namespace, self.name, self.seen.record[0])
                announced = True
            stop.wait(RETRY_SECONDS)
        return False

    def keep_renewing(self, stop: threading.Event, lost: Callable[[], None]) -> None:
        """Renews every RETRY_SECONDS until `stop`; calls `lost` (once) when it could not for RENEW_DEADLINE_SECONDS
        or someone else holds the Lease."""
        last_renewed = self.clock()
        while not stop.wait(RETRY_SECONDS):
            try:
                if self.try_acquire_or_renew():
                    last_renewed = self.clock()
                    continue
                reason = f"held by {self.seen.record[0] if self.seen.record else 'another operator'}"
            except Exception as error:
                reason = f"{type(error).__name__}: {error}"
            if self.clock() - last_renewed >= RENEW_DEADLINE_SECONDS or reason.startswith("held by"):
                logger.error("leadership lost (%s): stopping so that one leader acts", reason)
                lost()
                return

    def release(self) -> None:
        """Gives the Lease up (a clean stop), so that a candidate takes over without waiting for it to expire."""
        try:
            lease = self._read()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            body = self._body(lease, taking=False)
            body["spec"].update(holderIdentity="", leaseDurationSeconds=1)
            self.api.replace_namespaced_lease(self.name, self.namespace, body, _request_timeout=10)
            logger.info("released Lease %s/%s", self.namespace, self.name)
        except ApiException as error:
            logger.warning("releasing Lease %s/%s failed: %s %s", self.namespace, self.name, error.status, error.reason)


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == self.server.health_path else 404)  # type: ignore[attr-defined]
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@contextlib.contextmanager
def standby_liveness(url: str | None) -> Iterator[None]:
    """Answers the liveness URL while this operator waits for the Lease (Kopf serves it once leading), so that the
    kubelet does not restart a healthy candidate."""
    if not url:
        yield
        return
    parts = urllib.parse.urlsplit(url)
    server = ThreadingHTTPServer((parts.hostname or "0.0.0.0", parts.port or 80), _Healthy)
    server.health_path = parts.path or "/"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="standby-liveness", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
