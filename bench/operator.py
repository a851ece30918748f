"""Operator benchmark: disttrain's operator against a raw client, interleaved, on one real control plane.

Starts its own control plane (hack/controlplane.py: etcd, kube-apiserver, controller-manager, scheduler, kwok)
with extra kwok nodes for capacity, installs the CRD, and for each scenario alternates two sides per round:

* **raw**: a direct client (a subprocess, 16 threads, one connection each, responses not decoded) creating
  exactly the objects the operator would create for the same jobs, built with the operator's own builders
  (Service, NetworkPolicy, a Service per training task, pods); the jobs exist beforehand (untimed), so only
  the creations are timed;
* **operator**: `disttrain operator` as a subprocess watching a fresh namespace; the jobs are applied at once
  (16 threads) and the clock starts with the first.

Both sides are timed by one watch on the namespace's pods (first time seen, first time Running), the same for
both. CPU-seconds come from /proc/<pid>/stat of the creating process (the operator: from the first job until it
is idle again), peak RSS from VmHWM. Scenarios: (1) one 1 chief + 10 ps + 100 worker job; (2) 200 jobs x 5 pods
at once; (3) status latency, pod phase change (kwok) -> job condition seen, idle and during scenario 2's burst;
(4) the cost curve, CPU per created pod at 100, 1,000 and 5,000 pods (RSS at the largest).

    .venv/bin/python bench/operator.py [--quick] [--rounds N] [--out DIR]

Writes operator.json and operator.png under bench/results/ (or --out).
"""

# ruff: noqa: E402  (the path fix below comes first)
import os
import sys

# Run as a script, this file's folder comes first on sys.path, and this file would shadow the standard library's
# `operator` module (which nearly everything imports): drop that entry before importing anything else.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import concurrent.futures
import contextlib
import json
import platform
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "hack"))

import controlplane
from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

from disttrain_operator.api import GROUP, PLURAL, VERSION, parse_spec
from disttrain_operator.builders import (
    build_network_policy,
    build_pod,
    build_service,
    build_task_service,
)
from disttrain_operator.tfconfig import TRAINING_ROLES

Obj = dict[str, Any]
RESULTS = REPO / "bench" / "results"
CRD_FILE = REPO / "deploy" / "crd" / "disttrain.io_disttrainjobs.yaml"
IMAGE = "registry.invalid/disttrain/trainer:bench"
THREADS = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")
PODS_PER_NODE = 1000  # kwok nodes are free: a few large ones instead of many small ones
TIMEOUT = 900.0
SERVICE_CIDR = "10.96.0.0/16"  # added to the control plane's: one Service per training task


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is (--quick: a smoke run of a few seconds per scenario)."""

    rounds: int = 3
    big_ps: int = 10
    big_workers: int = 100
    burst_jobs: int = 200
    probes: int = 200  # status changes per latency measurement
    probe_rate: float = 8.0  # status changes triggered per second
    scale_jobs: tuple[int, ...] = (20, 200, 1000)  # x 5 pods: the cost curve


QUICK = Sizes(rounds=1, big_ps=1, big_workers=4, burst_jobs=4, probes=6, probe_rate=20.0, scale_jobs=(1, 4))


def shape(chief: int, ps: int, workers: int) -> Obj:
    """A job spec with that many replicas of each role (kwok runs the pods; the image never starts)."""
    specs = {"chief": chief, "ps": ps, "worker": workers}
    return {"image": IMAGE, "replicaSpecs": {role: {"replicas": n} for role, n in specs.items() if n}}


FIVE_PODS = shape(1, 1, 3)
PROBE = shape(0, 0, 1)


# ---------------------------------------------------------------- processes


def proc_cpu(pid: int) -> float:
    """User + system CPU-seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`disttrain operator` watching the given namespaces, as a subprocess (log in `log`)."""

    def __init__(self, namespaces: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        scope = [arg for ns in namespaces for arg in ("-n", ns)]
        cmd = [str(Path(sys.executable).parent / "disttrain"), "operator", *scope, "--metrics-port", "0"]
        cmd += ["--liveness", f"http://127.0.0.1:{self.port}/healthz"]
        self.log = log.open("ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        controlplane.wait_for(self.healthy, timeout=120, what="the operator's /healthz", interval=0.2)
        self.profiler = self._profile(os.environ.get("DISTTRAIN_BENCH_PROFILE"), log)

    def _profile(self, folder: str | None, log: Path) -> subprocess.Popen[bytes] | None:
        """With $DISTTRAIN_BENCH_PROFILE, py-spy samples the operator (collapsed stacks in that folder)."""
        if not folder:
            return None
        out = Path(folder) / f"{log.stem}.txt"
        cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(self.proc.pid), "--gil"]
        cmd += ["--format", "raw"]
        return subprocess.Popen([*cmd, "--rate", "200", "-o", str(out)], stdout=subprocess.DEVNULL)

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {self.proc.returncode}; log: {self.log.name}")
        url = f"http://127.0.0.1:{self.port}/healthz"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
        return False

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def peak_rss_mb(self) -> float:
        return proc_peak_rss_mb(self.proc.pid)

    def wait_idle(self, quiet: float = 0.05, window: float = 1.0, limit: float = 60.0) -> float:
        """Waits until the operator spends under `quiet` CPU-seconds per `window`; returns its CPU-seconds then."""
        deadline, before = time.monotonic() + limit, self.cpu()
        while time.monotonic() < deadline:
            time.sleep(window)
            now = self.cpu()
            if now - before < quiet:
                return now
            before = now
        return before

    def stop(self) -> None:
        if self.profiler is not None:
            self.profiler.send_signal(signal.SIGINT)
            self.profiler.wait()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------- watching


class Watch(threading.Thread):
    """One watch on a namespace's pods or jobs (resumed from its last resourceVersion whenever the server ends it),
    recording when each object first reached each mark."""

    def __init__(self, stream: Callable[[str | None], Any], marks: Callable[[Obj], Iterable[str]]) -> None:
        super().__init__(daemon=True)
        self.stream, self.marks = stream, marks
        self.response: Any = None
        self.closed = threading.Event()
        self.seen: dict[str, dict[str, float]] = {}  # mark -> object name -> first time seen
        self.changed = threading.Condition()
        self.start()

    def run(self) -> None:
        version: str | None = None
        while not self.closed.is_set():
            with contextlib.suppress(Exception):  # the server ended the watch, or it was closed
                self.response = self.stream(version)
                for line in iter_resp_lines(self.response):
                    event = json.loads(line)
                    obj, now = event["object"], time.monotonic()
                    if event["type"] == "ERROR":  # 410: start over (first times are kept)
                        version = None
                        break
                    version = obj["metadata"]["resourceVersion"]
                    with self.changed:
                        for mark in self.marks(obj):
                            self.seen.setdefault(mark, {}).setdefault(obj["metadata"]["name"], now)
                        self.changed.notify_all()
            self.closed.wait(0.1)

    def at(self, mark: str) -> dict[str, float]:
        with self.changed:
            return dict(self.seen.get(mark, {}))

    def wait_count(self, mark: str, count: int, timeout: float = TIMEOUT) -> float:
        """The time the `count`-th object reached `mark` (waits for it; now when `count` is 0)."""
        if count == 0:
            return time.monotonic()
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.seen.get(mark, {})) < count:
                self.changed.wait(timeout=1.0)  # short waits: SIGTERM is handled between them
                if time.monotonic() > deadline:
                    have = len(self.seen.get(mark, {}))
                    raise TimeoutError(f"{have} of {count} objects reached {mark} in {timeout:.0f}s")
            return sorted(self.seen[mark].values())[count - 1]

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(Exception):
            self.response.shutdown()
        with contextlib.suppress(Exception):
            self.response.release_conn()


def pod_marks(pod: Obj) -> list[str]:
    phase = (pod.get("status") or {}).get("phase")
    return ["created", *([phase] if phase else [])]


def job_marks(job: Obj) -> list[str]:
    return [c["type"] for c in (job.get("status") or {}).get("conditions", []) if c.get("status") == "True"]


# ---------------------------------------------------------------- the cluster


class Bench:
    """The control plane, an API client on it, and helpers for namespaces, jobs and watches."""

    def __init__(self, cp: controlplane.ControlPlane, workdir: Path, settle: bool = True) -> None:
        self.cp, self.workdir, self.settle = cp, workdir, settle  # settle: wait until a dropped namespace is gone
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(cp.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = THREADS * 2
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.pool = concurrent.futures.ThreadPoolExecutor(THREADS)

    def install(self, capacity: int) -> None:
        """The CRD (Established) and enough kwok node capacity for `capacity` pods at once."""
        self.cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
        controlplane.wait_for(
            lambda: (
                self.cp.kubectl(
                    "get",
                    "crd/disttrainjobs.disttrain.io",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                    check=False,
                ).stdout
                == "True"
            ),
            timeout=180,
            what="the DistTrainJob CRD Established",
        )
        # every training task has a Service with a cluster IP: more than the control plane's /24 holds
        networking = client.NetworkingV1Api(self.api)
        networking.create_service_cidr({"metadata": {"name": "bench"}, "spec": {"cidrs": [SERVICE_CIDR]}})
        controlplane.wait_for(
            lambda: job_marks(self.api.sanitize_for_serialization(networking.read_service_cidr("bench")))
            == ["Ready"],
            timeout=60,
            what=f"ServiceCIDR {SERVICE_CIDR} Ready",
        )
        names = [f"bench-node-{i}" for i in range(capacity // PODS_PER_NODE + 1)]
        for name in names:
            self.core.create_node(node_manifest(name))
        controlplane.wait_for(lambda: self.nodes_ready(names), timeout=120, what="the bench's kwok nodes Ready")

    def nodes_ready(self, names: list[str]) -> bool:
        ready = {
            n.metadata.name
            for n in self.core.list_node().items
            if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
        }
        return set(names) <= ready

    def namespace(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace({"metadata": {"name": name}})
        controlplane.wait_for(
            lambda: self.core.list_namespaced_service_account(name).items, timeout=60, what=f"ServiceAccount in {name}"
        )
        return name

    def drop_namespace(self, name: str, timeout: float = TIMEOUT) -> float:
        """Deletes a namespace and, when settling, waits until it is gone (so the next measurement starts on a quiet
        cluster)."""
        started = time.monotonic()
        self.core.delete_namespace(name, propagation_policy="Background")
        if not self.settle:
            return 0.0

        def gone() -> bool:
            try:
                self.core.read_namespace(name)
                return False
            except client.ApiException as error:
                return error.status == 404

        controlplane.wait_for(gone, timeout=timeout, what=f"namespace {name} deleted", interval=1.0)
        return time.monotonic() - started

    def watch_pods(self, namespace: str) -> Watch:
        return Watch(lambda rv: self.core.list_namespaced_pod(namespace, **watch_options(rv)), pod_marks)

    def watch_jobs(self, namespace: str) -> Watch:
        list_jobs = self.custom.list_namespaced_custom_object
        return Watch(lambda rv: list_jobs(GROUP, VERSION, namespace, PLURAL, **watch_options(rv)), job_marks)

    def create_jobs(self, namespace: str, jobs: dict[str, Obj]) -> dict[str, str]:
        """Creates the jobs at once (THREADS at a time); returns their UIDs by name."""

        def create(name: str) -> tuple[str, str]:
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DistTrainJob", "metadata": {"name": name}}
            made = self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, {**body, "spec": jobs[name]}
            )
            return name, made["metadata"]["uid"]

        return dict(self.pool.map(create, jobs))


def watch_options(version: str | None) -> Obj:
    resume = {"resource_version": version} if version else {}
    return {"watch": True, "_preload_content": False, "timeout_seconds": 3600, "_request_timeout": None, **resume}


def node_manifest(name: str) -> Obj:
    """A kwok node for PODS_PER_NODE pods (kwok keeps it Ready)."""
    resources = {"cpu": "1000", "memory": "4Ti", "pods": str(PODS_PER_NODE), "ephemeral-storage": "10Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"},
        },
        "status": {"capacity": resources, "allocatable": resources},
    }


def job_children(name: str, namespace: str, uid: str, spec: Obj) -> list[Obj]:
    """What the operator creates for a new job, in its order: Service, NetworkPolicy, task Services, pods."""
    parsed = parse_spec(name, spec)
    replicas = [(role, i) for role, replica in parsed.replica_specs.items() for i in range(replica.replicas)]
    return [
        build_service(name, namespace, uid, parsed),
        build_network_policy(name, namespace, uid, parsed),
        *(build_task_service(name, namespace, uid, parsed, r, i) for r, i in replicas if r in TRAINING_ROLES),
        *(build_pod(name, namespace, uid, parsed, r, i) for r, i in replicas),
    ]


def pod_count(jobs: dict[str, Obj]) -> int:
    return sum(r["replicas"] for spec in jobs.values() for r in spec["replicaSpecs"].values())


# ---------------------------------------------------------------- the two sides


def raw_client(objects_file: Path, kubeconfig: str) -> None:
    """The raw side's process: loads the objects, says `ready`, creates them all (THREADS at a time, responses not
    decoded) when told `go`, says `done <failures>`, and exits at the end of its input."""
    objects = json.loads(objects_file.read_text())
    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = THREADS
    api = client.ApiClient(configuration)
    core, networking = client.CoreV1Api(api), client.NetworkingV1Api(api)
    create = {
        "Pod": core.create_namespaced_pod,
        "Service": core.create_namespaced_service,
        "NetworkPolicy": networking.create_namespaced_network_policy,
    }

    def one(obj: Obj) -> str | None:
        try:
            create[obj["kind"]](obj["metadata"]["namespace"], obj, _preload_content=False).data  # noqa: B018
            return None
        except client.ApiException as error:
            return f"{error.status} {str(error.body)[:300]}"

    print("ready", flush=True)
    sys.stdin.readline()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        failures = [f for f in pool.map(one, objects) if f]
    print(f"done {len(failures)} {failures[:1]}", flush=True)
    sys.stdin.read()


def run_raw(bench: Bench, jobs: dict[str, Obj], label: str) -> Obj:
    """The raw side: the jobs exist (untimed), then one process creates what the operator would for them."""
    namespace = bench.namespace(f"raw-{label}")
    try:
        uids = bench.create_jobs(namespace, jobs)
        objects = [o for name, spec in jobs.items() for o in job_children(name, namespace, uids[name], spec)]
        objects_file = bench.workdir / f"{namespace}.json"
        objects_file.write_text(json.dumps(objects))
        watch = bench.watch_pods(namespace)
        cmd = [sys.executable, __file__, "--raw-client", str(objects_file), "--kubeconfig", str(bench.cp.kubeconfig)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the raw client did not start")
        cpu, started = proc_cpu(proc.pid), time.monotonic()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _, failures, first = proc.stdout.readline().split(" ", 2)
        if int(failures):
            log(f"the raw client's creations failed {failures} times, first: {first.strip()}")
        cpu, rss = proc_cpu(proc.pid) - cpu, proc_peak_rss_mb(proc.pid)
        proc.stdin.close()
        proc.wait()
        return {**timings(watch, pod_count(jobs), started), "cpu_s": cpu, "rss_mb": rss, "failures": int(failures)}
    finally:
        bench.drop_namespace(namespace)


def timings(watch: Watch, pods: int, started: float) -> Obj:
    """Seconds from `started` to all `pods` seen, and to all Running."""
    try:
        created = watch.wait_count("created", pods) - started
        running = watch.wait_count("Running", pods) - started
    finally:
        watch.close()
    return {"pods": pods, "created_s": created, "running_s": running}


class Prober:
    """Status latency: single-worker jobs, Running, whose pods kwok completes one after another on request; the
    latency of each is from its pod's Succeeded to its job's Succeeded condition, both as seen by a watch."""

    def __init__(self, bench: Bench, namespace: str, count: int, rate: float) -> None:
        self.bench, self.namespace, self.count, self.rate = bench, namespace, count, rate
        self.pods, self.jobs = bench.watch_pods(namespace), bench.watch_jobs(namespace)
        bench.create_jobs(namespace, {f"probe-{i}": PROBE for i in range(count)})
        self.jobs.wait_count("Running", count)
        self.triggered: dict[int, float] = {}
        self.thread = threading.Thread(target=self._trigger, daemon=True)

    def _trigger(self) -> None:
        patch = {"metadata": {"annotations": {controlplane.ANNOTATION_COMPLETE: "true"}}}
        for i in range(self.count):
            self.triggered[i] = time.monotonic()
            self.bench.core.patch_namespaced_pod(f"probe-{i}-worker-0", self.namespace, patch)
            time.sleep(1 / self.rate)

    def start(self) -> None:
        self.thread.start()

    def latencies(self, until: float = float("inf")) -> list[float]:
        """Latencies of the changes triggered before `until` (all, by default)."""
        self.thread.join()
        self.jobs.wait_count("Succeeded", self.count, timeout=300)
        pods, jobs = self.pods.at("Succeeded"), self.jobs.at("Succeeded")
        self.pods.close()
        self.jobs.close()
        return [jobs[f"probe-{i}"] - pods[f"probe-{i}-worker-0"] for i, at in self.triggered.items() if at <= until]


class HealthProbe(threading.Thread):
    """The slowest /healthz answer while it runs (the operator's event loop stalling shows here)."""

    def __init__(self, operator: OperatorProcess) -> None:
        super().__init__(daemon=True)
        self.operator, self.worst, self.stopped = operator, 0.0, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            started = time.monotonic()
            with contextlib.suppress(OSError, RuntimeError):
                self.operator.healthy()
            self.worst = max(self.worst, time.monotonic() - started)


def run_operator(bench: Bench, jobs: dict[str, Obj], label: str, probes: Sizes | None = None) -> Obj:
    """The operator side: the jobs applied at once; with `probes`, status changes triggered meanwhile."""
    namespace = bench.namespace(f"op-{label}")
    probe_ns = bench.namespace(f"probe-{label}") if probes else None
    watched = [namespace, *([probe_ns] if probe_ns else [])]
    operator = OperatorProcess(watched, bench.cp.env(), bench.workdir / f"operator-{label}.log")
    health: HealthProbe | None = None
    try:
        prober = Prober(bench, probe_ns, probes.probes, probes.probe_rate) if probes and probe_ns else None
        watch, cpu = bench.watch_pods(namespace), operator.wait_idle()
        health, started = HealthProbe(operator), time.monotonic()
        if prober:
            prober.start()
        bench.create_jobs(namespace, jobs)
        result = timings(watch, pod_count(jobs), started)
        health.stopped.set()
        if prober:
            result["latency_s"] = prober.latencies(until=started + result["running_s"] if jobs else float("inf"))
        cpu = operator.wait_idle() - cpu
        return {**result, "cpu_s": cpu, "rss_mb": operator.peak_rss_mb(), "healthz_worst_s": health.worst}
    finally:
        if health is not None:
            health.stopped.set()
        operator.stop()
        for ns in watched:
            bench.drop_namespace(ns)


SIDES: dict[str, Callable[[Bench, dict[str, Obj], str], Obj]] = {"raw": run_raw, "operator": run_operator}


# ---------------------------------------------------------------- scenarios


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def interleaved(bench: Bench, jobs: dict[str, Obj], label: str, rounds: int) -> dict[str, list[Obj]]:
    """Both sides, `rounds` times, alternating which goes first."""
    runs: dict[str, list[Obj]] = {"raw": [], "operator": []}
    for r in range(rounds):
        for side in ("raw", "operator") if r % 2 == 0 else ("operator", "raw"):
            runs[side].append(SIDES[side](bench, jobs, f"{label}{r}"))
            log(f"{label} round {r + 1}/{rounds} {side}: {json.dumps(runs[side][-1])}")
    return runs


def spread(values: list[float]) -> Obj:
    return {"min": min(values), "median": statistics.median(values), "all": values}


def summary(runs: dict[str, list[Obj]], metrics: Iterable[str]) -> Obj:
    """Min and median of each metric per side, and the operator/raw ratio of the medians."""
    out: Obj = {"pods": runs["raw"][0]["pods"], "rounds": len(runs["raw"])}
    for metric in metrics:
        raw, op = (spread([run[metric] for run in runs[side]]) for side in ("raw", "operator"))
        out[metric] = {"raw": raw, "operator": op, "ratio": op["median"] / raw["median"] if raw["median"] else None}
    out["operator_healthz_worst_s"] = max(run["healthz_worst_s"] for run in runs["operator"])
    return out


def percentiles(latencies: list[float]) -> Obj:
    ordered = sorted(latencies)
    if not ordered:
        return {"n": 0}
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50_s": at(0.5), "p99_s": at(0.99), "max_s": ordered[-1]}


def burst(jobs: int) -> dict[str, Obj]:
    return {f"j{i}": FIVE_PODS for i in range(jobs)}


def scale_point(bench: Bench, jobs: int, known: dict[str, list[Obj]] | None) -> Obj:
    """CPU per created pod (ms) for both sides at `jobs` x 5 pods (medians of `known` runs when given)."""
    runs = known or {side: [SIDES[side](bench, burst(jobs), f"scale{jobs}-")] for side in SIDES}
    point: Obj = {"pods": runs["raw"][0]["pods"]}
    for side, side_runs in runs.items():
        point[f"{side}_cpu_ms_per_pod"] = 1000 * statistics.median(r["cpu_s"] / r["pods"] for r in side_runs)
        point[f"{side}_created_s"] = statistics.median(r["created_s"] for r in side_runs)
        point[f"{side}_rss_mb"] = statistics.median(r["rss_mb"] for r in side_runs)
    log(f"scale {jobs} jobs: {json.dumps(point)}")
    return point


def run_all(bench: Bench, sizes: Sizes) -> Obj:
    big = {"big": shape(1, sizes.big_ps, sizes.big_workers)}
    one_job = interleaved(bench, big, "big", sizes.rounds)
    many = interleaved(bench, burst(sizes.burst_jobs), "burst", sizes.rounds)
    idle = run_operator(bench, {}, "latency-idle", probes=sizes)
    log(f"status latency idle: {json.dumps(percentiles(idle['latency_s']))}")
    loaded = run_operator(bench, burst(sizes.burst_jobs), "latency-load", probes=sizes)
    log(f"status latency under load: {json.dumps(percentiles(loaded['latency_s']))}")
    curve = [scale_point(bench, n, many if n == sizes.burst_jobs else None) for n in sizes.scale_jobs]
    return {
        "one_job": summary(one_job, ("created_s", "running_s", "cpu_s")),
        "many_jobs": summary(many, ("created_s", "running_s", "cpu_s", "rss_mb")),
        "status_latency": {"idle": percentiles(idle["latency_s"]), "under_load": percentiles(loaded["latency_s"])},
        "scale": curve,
    }


def goals(results: Obj) -> dict[str, Obj]:
    """Each goal of issue 13 with the measured figure and whether it is met."""
    one, many, latency, curve = (results[k] for k in ("one_job", "many_jobs", "status_latency", "scale"))
    figures = {
        "one job, all pods created, operator/raw (<= 1.1)": (one["created_s"]["ratio"], 1.1),
        "200 jobs, all pods created, operator/raw (<= 1.3)": (many["created_s"]["ratio"], 1.3),
        "CPU per created pod, operator/raw (<= 2)": (many["cpu_s"]["ratio"], 2.0),
        "status latency p50 idle, s (<= 0.1)": (latency["idle"].get("p50_s"), 0.1),
        "status latency p99 idle, s (<= 0.5)": (latency["idle"].get("p99_s"), 0.5),
        "status latency p50 under load, s (<= 0.1)": (latency["under_load"].get("p50_s"), 0.1),
        "status latency p99 under load, s (<= 0.5)": (latency["under_load"].get("p99_s"), 0.5),
        f"peak RSS at {curve[-1]['pods']} pods, MB (<= 150)": (curve[-1]["operator_rss_mb"], 150.0),
        f"CPU per pod at {curve[-1]['pods']} / at {curve[0]['pods']} pods (<= 1.2)": (
            curve[-1]["operator_cpu_ms_per_pod"] / curve[0]["operator_cpu_ms_per_pod"],
            1.2,
        ),
    }
    return {name: {"value": v, "goal": g, "met": v is not None and v <= g} for name, (v, g) in figures.items()}


def chart(results: Obj, path: Path) -> None:
    """Four panels: time to all pods, CPU per pod by size, status latency, peak RSS by size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    one, many, curve = results["one_job"], results["many_jobs"], results["scale"]
    labels = [f"1 job, {one['pods']} pods", f"{many['pods'] // 5} jobs, {many['pods']} pods"]
    for offset, side in ((-0.2, "raw"), (0.2, "operator")):
        medians = [s["created_s"][side]["median"] for s in (one, many)]
        axes[0].bar([i + offset for i in range(2)], medians, width=0.4, label=side)
    axes[0].set(xticks=range(2), xticklabels=labels, ylabel="s to all pods created (median)")
    pods = [p["pods"] for p in curve]
    for side in ("raw", "operator"):
        axes[1].plot(pods, [p[f"{side}_cpu_ms_per_pod"] for p in curve], marker="o", label=side)
        axes[3].plot(pods, [p[f"{side}_rss_mb"] for p in curve], marker="o", label=side)
    axes[1].set(xscale="log", xlabel="pods", ylabel="CPU ms per created pod")
    axes[3].set(xscale="log", xlabel="pods", ylabel="peak RSS, MB")
    latency = results["status_latency"]
    for offset, q in ((-0.2, "p50_s"), (0.2, "p99_s")):
        axes[2].bar(
            [i + offset for i in range(2)],
            [latency[k].get(q, 0) for k in ("idle", "under_load")],
            width=0.4,
            label=q[:3],
        )
    axes[2].set(xticks=range(2), xticklabels=["idle", "during 200-job burst"], ylabel="pod phase -> job status, s")
    for ax in axes:
        ax.legend()
    fig.suptitle(f"disttrain operator vs raw client (16 threads), {results['machine']['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine() -> Obj:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu if ln.startswith("Model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds per interleaved scenario (default 3; --quick 1)")
    parser.add_argument("--workers", type=int, help="workers of scenario 1's job (default 100, with 10 ps)")
    parser.add_argument("--jobs", type=int, help="5-pod jobs applied at once in scenario 2 (default 200)")
    parser.add_argument("--probes", type=int, help="status changes per latency measurement (default 200)")
    parser.add_argument("--scale", help="comma-separated 5-pod job counts of the cost curve (default 20,200,1000)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where operator.json/.png go (%(default)s)")
    parser.add_argument("--raw-client", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the control plane and operator on the way out
    if args.raw_client:
        raw_client(args.raw_client, args.kubeconfig)
        return 0
    sizes = QUICK if args.quick else Sizes()
    scale = tuple(int(n) for n in args.scale.split(",")) if args.scale else None
    given = {"rounds": args.rounds, "big_workers": args.workers, "burst_jobs": args.jobs, "probes": args.probes}
    sizes = replace(sizes, **{k: v for k, v in {**given, "scale_jobs": scale}.items() if v})
    with tempfile.TemporaryDirectory(prefix="disttrain-bench-") as tmp, started_control_plane() as cp:
        bench = Bench(cp, Path(tmp), settle=not args.quick)
        bench.install(capacity=5 * max(sizes.scale_jobs) + sizes.probes)
        results: Obj = {"machine": machine(), "sizes": asdict(sizes), **run_all(bench, sizes)}
    results["goals"] = goals(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "operator.json").write_text(json.dumps(results, indent=2) + "\n")
    chart(results, args.out / "operator.png")
    for name, goal in results["goals"].items():
        log(f"{'met ' if goal['met'] else 'MISS'} {name}: {goal['value']}")
    return 0


@contextlib.contextmanager
def started_control_plane() -> Iterator[controlplane.ControlPlane]:
    cp = controlplane.ControlPlane(startup_timeout=float(os.environ.get("DISTTRAIN_CP_TIMEOUT", "180")))
    cp.start()
    log(f"control plane up in {cp.startup_seconds:.1f}s")
    try:
        yield cp
    finally:
        cp.stop(remove_workdir=True)


if __name__ == "__main__":
    sys.exit(main())
