"""What the chaos tests do to the cluster and how they watch it: operator processes to start, SIGKILL, SIGSTOP and
restart, a kube-apiserver restart, and two watchers (pods, jobs) that record every state they pass through."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane import ControlPlane, spawn_logged, stop_pids, wait_for
from kubernetes import client
from kubernetes.client import ApiException
from kubernetes.watch.watch import iter_resp_lines

from disttrain_operator.api import GROUP, PLURAL, VERSION
from disttrain_operator.names import LABEL_INDEX, LABEL_JOB, LABEL_ROLE
from disttrain_operator.policy import TRAINER_CONTAINER

Obj = dict[str, Any]
Replica = tuple[str, str, int]  # (job, role, index)
TERMINAL = ("Succeeded", "Failed")


def log(message: str) -> None:
    """One timestamped progress line on the terminal (`make test-chaos` runs pytest with -s)."""
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- operators


class Operators:
    """`disttrain operator` processes watching one namespace, each with its own log file."""

    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path, elect: bool = False) -> None:
        self.kubeconfig, self.namespace, self.log_dir, self.elect = kubeconfig, namespace, log_dir, elect
        self.procs: dict[str, subprocess.Popen] = {}
        self.started = 0
        self.kills = 0

    def start(self, name: str) -> None:
        """Starts operator `name` (its Lease identity starts with it)."""
        command = [str(Path(sys.executable).with_name("disttrain")), "operator", "-n", self.namespace,
                   "--liveness", "none", "--metrics-port", "0"]
        if self.elect:
            command += ["--leader-elect", "--leader-election-namespace", self.namespace]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "POD_NAME": name}
        other = os.environ.get("DISTTRAIN_CHAOS_OPERATOR_SRC")  # another build's operator/src, e.g. the old code's
        if other:
            env["PYTHONPATH"] = os.pathsep.join([other, *filter(None, [env.get("PYTHONPATH")])])
        with (self.log_dir / f"operator-{name}.log").open("a") as out:
            out.write(f"---- started {time.strftime('%H:%M:%S')}\n")
            out.flush()
            self.procs[name] = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.started += 1

    def kill(self, name: str) -> None:
        """SIGKILL: no handler finishes, no Lease is given up."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(30)
        self.kills += 1

    def pause(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGCONT)

    def exited(self, name: str) -> int | None:
        """The exit code of operator `name` once it has stopped by itself (then it is forgotten), else None."""
        code = self.procs[name].poll()
        if code is not None:
            del self.procs[name]
        return code

    def stop_all(self) -> None:
        """SIGKILLs every operator still running (resumed first if paused)."""
        for name in list(self.procs):
            with contextlib.suppress(ProcessLookupError):
                self.procs[name].send_signal(signal.SIGCONT)
            self.kill(name)

    def tails(self, lines: int = 15) -> str:
        """The last lines of every operator log (for a failure's report)."""
        out = []
        for path in sorted(self.log_dir.glob("operator-*.log")):
            out.append(f"----- {path}")
            out.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(out)


def lease_holder(api: client.ApiClient, namespace: str) -> str:
    """The identity holding the operators' Lease (`<POD_NAME>_<random>`), '' when none does."""
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease("disttrain-operator", namespace)
    except ApiException as error:
        if error.status == 404:
            return ""
        raise
    return lease.spec.holder_identity or ""


def apiserver_ready(cp: ControlPlane) -> bool:
    """kube-apiserver answers /readyz."""
    return cp.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode == 0


def restart_apiserver(cp: ControlPlane) -> float:
    """Stops kube-apiserver (SIGTERM) and starts it again with the same command line; every watch breaks and
    resumes or relists. Returns the seconds it was away."""
    assert cp.log_dir is not None and cp.workdir is not None
    command = (cp.log_dir / "kube-apiserver.cmd").read_text().split()
    started = time.monotonic()
    stop_pids({"kube-apiserver": cp.pids["kube-apiserver"]}, expect={"kube-apiserver": command[0]})
    proc = spawn_logged(cp.log_dir, "kube-apiserver", command, cp.workdir, detach=False)
    cp.procs["kube-apiserver"], cp.pids["kube-apiserver"] = proc, proc.pid
    wait_for(lambda: apiserver_ready(cp), timeout=120, what="kube-apiserver ready again", interval=0.5)
    return time.monotonic() - started


def compact_etcd(cp: ControlPlane) -> int:
    """Compacts etcd's history up to now (its v3 JSON gateway), so that no watch can resume from before: every
    watcher gets 410 Gone and must list again. Returns the revision."""
    assert cp.log_dir is not None
    command = (cp.log_dir / "etcd.cmd").read_text().split()
    url = next(arg.split("=", 1)[1] for arg in command if arg.startswith("--listen-client-urls=")).split(",")[0]

    def post(path: str, body: Obj) -> Obj:
        request = urllib.request.Request(f"{url}{path}", json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    revision = int(post("/v3/kv/range", {"key": "AA=="})["header"]["revision"])
    post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
    return revision


# ---------------------------------------------------------------- watching


class Gone(Exception):
    """410: the watch's resourceVersion is too old; list again."""


class Watcher(threading.Thread):
    """Lists, then watches one kind in a namespace, reconnecting (and listing again after 410 Gone) until stopped.
    Every object goes to `seen(type, obj)`, every fresh list to `listed(objs)`."""

    def __init__(self, list_call: Callable[..., Any], seen: Callable[[str, Obj], None],
                 listed: Callable[[list[Obj]], None]) -> None:
        super().__init__(daemon=True)
        self.list_call, self.seen, self.listed = list_call, seen, listed
        self.stopping = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        version: str | None = None
        while not self.stopping.is_set():
            try:
                if version is None:
                    found = json.loads(self.list_call(_preload_content=False, _request_timeout=30).data)
                    self.listed(found["items"])
                    version = found["metadata"]["resourceVersion"]
                    self.ready.set()
                version = self._watch(version)
            except Gone:
                version = None
            except Exception:  # the API server restarting, a dropped connection: try again
                self.stopping.wait(0.5)

    def _watch(self, version: str) -> str:
        response = self.list_call(watch=True, resource_version=version, timeout_seconds=10,
                                  allow_watch_bookmarks=True, _preload_content=False, _request_timeout=(5, 30))
        try:
            for line in iter_resp_lines(response):
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise RuntimeError(obj.get("message"))
                version = obj["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    self.seen(event["type"], obj)
                if self.stopping.is_set():
                    break
        finally:
            response.close()
        return version

    def stop(self) -> None:
        self.stopping.set()


@dataclass
class PodRecord:
    """One pod (one UID) of a replica, as the watch saw it."""

    uid: str
    replica: Replica
    order: int  # when first seen
    phase: str = "Pending"
    exit_code: int | None = None
    ended: int | None = None  # the order in which it was seen to end (Succeeded or Failed)
    deleting: bool = False
    gone: bool = False
    lost: bool = False  # deleted by the test (a lost node, PodGC), not by the operator

    @property
    def live(self) -> bool:
        return not self.gone and not self.deleting and self.phase not in TERMINAL


def exit_code(pod: Obj) -> int | None:
    """The trainer container's exit code once it has terminated."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    trainer = next((s for s in statuses if s.get("name") == TRAINER_CONTAINER), {})
    return ((trainer.get("state") or {}).get("terminated") or {}).get("exitCode")


@dataclass
class PodLedger:
    """Every pod of every job: its UIDs per replica, the phases they reached, and any moment at which one replica
    had two live pods."""

    pods: dict[str, PodRecord] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: int = 0

    def seen(self, kind: str, pod: Obj) -> None:
        """Records a watch event (or a listed pod): its phase, exit code, deletion; notes two live pods at once."""
        meta, labels = pod["metadata"], pod["metadata"].get("labels") or {}
        if LABEL_JOB not in labels:
            return
        with self.lock:
            self.counter += 1
            record = self.pods.get(meta["uid"])
            if record is None:
                replica = (labels[LABEL_JOB], labels[LABEL_ROLE], int(labels[LABEL_INDEX]))
                record = self.pods[meta["uid"]] = PodRecord(meta["uid"], replica, self.counter)
            phase = (pod.get("status") or {}).get("phase") or "Pending"
            if phase in TERMINAL and record.ended is None:
                record.ended, record.exit_code = self.counter, exit_code(pod)
            record.phase = phase
            record.deleting = bool(meta.get("deletionTimestamp"))
            record.gone = kind == "DELETED"
            twins = [p.uid for p in self.pods.values() if p.replica == record.replica and p.live]
            if len(twins) > 1:
                self.duplicates.append(f"{record.replica}: live pods {twins} at once")

    def listed(self, pods: list[Obj]) -> None:
        """A fresh list after a watch gap: pods missing from it are gone."""
        present = {p["metadata"]["uid"] for p in pods}
        with self.lock:
            for record in self.pods.values():
                record.gone = record.gone or record.uid not in present
        for pod in pods:
            self.seen("LISTED", pod)

    def of_job(self, job: str) -> list[PodRecord]:
        """The job's pods in the order they were first seen."""
        with self.lock:
            return sorted((p for p in self.pods.values() if p.replica[0] == job), key=lambda p: p.order)

    def lose(self, uid: str) -> None:
        """Marks a pod the test deleted."""
        with self.lock:
            self.pods[uid].lost = True

    def successor(self, pod: PodRecord) -> PodRecord | None:
        """A pod of the same replica first seen after `pod`."""
        with self.lock:
            return next((p for p in self.pods.values() if p.replica == pod.replica and p.order > pod.order), None)

    def running(self, replica: Replica) -> PodRecord | None:
        """The replica's live pod once it is Running; never one the test lost (its deletion may not be seen yet)."""
        with self.lock:
            return next((p for p in self.pods.values()
                         if p.replica == replica and p.live and not p.lost and p.phase == "Running"), None)


@dataclass
class JobLedger:
    """Every job's latest status, and every moment its status went back: a terminal condition that vanished (or
    turned False), restarts that decreased."""

    status: dict[str, Obj] = field(default_factory=dict)
    terminal: dict[str, dict[str, str]] = field(default_factory=dict)  # job -> {condition type: reason}
    restarts: dict[str, int] = field(default_factory=dict)  # the highest seen
    regressions: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self, kind: str, job: Obj) -> None:
        """Records the job's status; notes a terminal condition that vanished or restarts that decreased."""
        name, status = job["metadata"]["name"], job.get("status") or {}
        if kind == "DELETED":
            return
        with self.lock:
            self.status[name] = status
            true = {c["type"]: c.get("reason", "") for c in status.get("conditions", []) if c.get("status") == "True"}
            known = self.terminal.setdefault(name, {})
            for kind_ in TERMINAL:
                if kind_ in known and kind_ not in true:
                    self.regressions.append(f"{name}: condition {kind_}/{known[kind_]} vanished: {status}")
                if kind_ in true:
                    known.setdefault(kind_, true[kind_])
            restarts = int(status.get("restarts") or 0)
            if restarts < self.restarts.get(name, 0):
                self.regressions.append(f"{name}: restarts went back from {self.restarts[name]} to {restarts}")
            self.restarts[name] = max(restarts, self.restarts.get(name, 0))

    def listed(self, jobs: list[Obj]) -> None:
        for job in jobs:
            self.seen("LISTED", job)

    def outcome(self, name: str) -> tuple[str, str] | None:
        """(condition type, reason) of the job's terminal condition once it has one."""
        with self.lock:
            known = self.terminal.get(name) or {}
            return next(((kind, known[kind]) for kind in TERMINAL if kind in known), None)


def delete_pod_now(core: client.CoreV1Api, namespace: str, name: str, uid: str) -> None:
    """Deletes pod `name` at once (no graceful deletion), as a lost node or PodGC would, only while it is still
    `uid`. The grace period goes in the body: with a body, the API server ignores the query's gracePeriodSeconds,
    and the pod stayed for its 30 s grace, still Running (the driver could tell it to exit after losing it)."""
    options = client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid))
    core.delete_namespaced_pod(name, namespace, body=options, _request_timeout=10)


def watch_namespace(api: client.ApiClient, namespace: str) -> tuple[PodLedger, JobLedger, list[Watcher]]:
    """Starts watching the namespace's pods and jobs; returns once both have listed."""
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    pods, jobs = PodLedger(), JobLedger()
    watchers = [
        Watcher(lambda **kw: core.list_namespaced_pod(namespace, **kw), pods.seen, pods.listed),
        Watcher(lambda **kw: custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kw),
                jobs.seen, jobs.listed),
    ]
    for watcher in watchers:
        watcher.start()
    for watcher in watchers:
        assert watcher.ready.wait(60), "the test's own watches did not start"
    return pods, jobs, watchers
