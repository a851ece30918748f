"""TF_CONFIG parsing, role and strategy selection, and the startup barrier (pure Python, no TensorFlow)."""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class Role(enum.StrEnum):
    """A task type of TF_CONFIG (a job of its cluster)."""

    CHIEF = "chief"
    WORKER = "worker"
    PS = "ps"
    EVALUATOR = "evaluator"


class Strategy(enum.StrEnum):
    """How training is distributed (`--strategy`; AUTO: from the cluster's shape)."""

    AUTO = "auto"
    PARAMETER_SERVER = "parameter-server"
    MULTI_WORKER_MIRRORED = "multi-worker-mirrored"
    SINGLE = "single"


TRAINING_JOBS = (Role.CHIEF, Role.WORKER, Role.PS)
KNOWN_JOBS = (*TRAINING_JOBS, Role.EVALUATOR)
STRATEGIES = tuple(strategy.value for strategy in Strategy)  # plain strings: argparse prints their repr
SLOW_REPLICA_ENV = "DISTTRAIN_TEST_SLOW_REPLICA"  # tests only: "<replica index>:<seconds per batch>"


class ConfigError(ValueError):
    """TF_CONFIG or the command line describe something the trainer cannot run."""


class StartupTimeout(RuntimeError):
    """Some peers never became reachable before the startup deadline."""


@dataclass(frozen=True)
class ClusterConfig:
    """One process's view of the cluster: every job's addresses and its own task."""

    cluster: dict[str, list[str]]
    task_type: Role
    task_index: int
    environment: str = "cloud"
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """This task's own host:port."""
        return self.cluster[self.task_type][self.task_index]

    def count(self, job: str) -> int:
        """How many tasks `job` has."""
        return len(self.cluster.get(job, []))

    @property
    def training_cluster(self) -> dict[str, list[str]]:
        """The cluster spec TensorFlow's strategies see: the evaluator is not part of training."""
        return {job: list(addrs) for job, addrs in self.cluster.items() if job in TRAINING_JOBS and addrs}

    @property
    def chief_address(self) -> str | None:
        """The coordinating task's address: the chief, else worker 0."""
        for job in (Role.CHIEF, Role.WORKER):
            if self.cluster.get(job):
                return self.cluster[job][0]
        return None

    @property
    def is_chief(self) -> bool:
        """Whether this task coordinates and writes outputs (chief, or worker 0 when there is no chief)."""
        if self.task_type == Role.CHIEF:
            return True
        return self.task_type == Role.WORKER and self.task_index == 0 and not self.cluster.get(Role.CHIEF)


def parse_tf_config(raw: str | None) -> ClusterConfig | None:
    """Parse a TF_CONFIG JSON string; None or empty means single-process training."""
    if raw is None or not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("TF_CONFIG must be a JSON object")
    cluster = data.get("cluster") or {}
    task = data.get("task") or {}
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ConfigError("TF_CONFIG 'cluster' and 'task' must be objects")
    parsed: dict[str, list[str]] = {}
    for job, addrs in cluster.items():
        if job not in KNOWN_JOBS:
            raise ConfigError(f"TF_CONFIG has unknown job {job!r}; expected one of {', '.join(KNOWN_JOBS)}")
        if not isinstance(addrs, list) or not all(isinstance(a, str) and ":" in a for a in addrs):
            raise ConfigError(f"TF_CONFIG job {job!r} must be a list of 'host:port' strings")
        parsed[job] = list(addrs)
    if not parsed:
        if task:
            raise ConfigError("TF_CONFIG has a task but an empty cluster")
        return None
    if len(parsed.get(Role.CHIEF, [])) > 1:
        raise ConfigError("TF_CONFIG may list at most one chief")
    if len(parsed.get(Role.EVALUATOR, [])) > 1:
        raise ConfigError("TF_CONFIG may list at most one evaluator")
    task_type = task.get("type")
    task_index = task.get("index", 0)
    if task_type == Role.EVALUATOR and Role.EVALUATOR not in parsed and task_index == 0:
        # TensorFlow's side-car evaluator is no member of the cluster it watches: the operator (as TensorFlow's
        # own launchers) names it only in `task`
        return ClusterConfig(parsed, Role.EVALUATOR, task_index, environment=str(data.get("environment", "cloud")))
    if task_type not in parsed:
        raise ConfigError(f"TF_CONFIG task type {task_type!r} is not a job of the cluster {sorted(parsed)}")
    if not isinstance(task_index, int) or not 0 <= task_index < len(parsed[task_type]):
        raise ConfigError(
            f"TF_CONFIG task index {task_index!r} out of range for job {task_type!r} ({len(parsed[task_type])} tasks)"
        )
    return ClusterConfig(
        cluster=parsed,
        task_type=Role(task_type),
        task_index=task_index,
        environment=str(data.get("environment", "cloud")),
    )


def choose_strategy(requested: str, config: ClusterConfig | None) -> Strategy:
    """Resolve `--strategy` (auto picks from the cluster shape) and reject impossible combinations."""
    if requested not in STRATEGIES:
        raise ConfigError(f"unknown strategy {requested!r}; expected one of {', '.join(STRATEGIES)}")
    if config is None:
        if requested in (Strategy.AUTO, Strategy.SINGLE):
            return Strategy.SINGLE
        raise ConfigError(f"strategy {str(requested)!r} needs a cluster: set TF_CONFIG")
    has_ps = config.count(Role.PS) > 0
    replicas = config.count(Role.WORKER) + config.count(Role.CHIEF)
    chosen = Strategy(requested)
    if chosen == Strategy.AUTO:
        if has_ps:
            chosen = Strategy.PARAMETER_SERVER
        elif replicas > 1:
            chosen = Strategy.MULTI_WORKER_MIRRORED
        else:
            chosen = Strategy.SINGLE
    if chosen == Strategy.PARAMETER_SERVER:
        if not has_ps or config.count(Role.WORKER) == 0 or config.count(Role.CHIEF) == 0:
            raise ConfigError("parameter-server strategy needs a chief, at least one ps and one worker")
    elif chosen == Strategy.MULTI_WORKER_MIRRORED and has_ps:
        raise ConfigError("multi-worker-mirrored strategy cannot use ps tasks; use parameter-server")
    return chosen


def peers_to_wait_for(config: ClusterConfig, strategy: str) -> list[str]:
    """Addresses this task must reach before training: every other training task."""
    own = config.address if config.task_type in TRAINING_JOBS else None
    if strategy == Strategy.SINGLE:
        return []
    return [a for job in TRAINING_JOBS for a in config.cluster.get(job, []) if a != own]


def split_address(address: str) -> tuple[str, int]:
    """'host:port' (or '[v6]:port') -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def address_accepts(address: str, timeout: float = 1.0, connect: bool = True) -> bool:
    """Whether `address` resolves and (when `connect`) accepts a TCP connection."""
    host, port = split_address(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    if not connect:
        return True
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                return True
        except OSError:
            continue
    return False


def wait_for_peers(
    addresses: Iterable[str],
    timeout: float,
    connect: bool = True,
    interval: float = 1.0,
    report_every: float = 10.0,
    probe: Callable[[str, float, bool], bool] = address_accepts,
) -> float:
    """Block until every address resolves (and accepts TCP); log who is missing; return the wait time.

    Raises StartupTimeout naming the missing peers when `timeout` seconds pass.
    """
    start = time.monotonic()
    missing = list(dict.fromkeys(addresses))
    last_report = -math.inf  # report the first miss at once, then every `report_every` seconds
    while True:
        missing = [a for a in missing if not probe(a, min(interval, 1.0), connect)]
        now = time.monotonic()
        if not missing:
            return now - start
        if now - start >= timeout:
            raise StartupTimeout(f"peers not reachable after {timeout:.0f}s: {', '.join(missing)}")
        if now - last_report >= report_every:
            log.info("waiting for %d peer(s): %s", len(missing), ", ".join(missing))
            last_report = now
        time.sleep(interval)


def slow_replica_for_tests() -> tuple[int, float] | None:
    """Tests only: (replica index, seconds of delay per batch) from DISTTRAIN_TEST_SLOW_REPLICA, else None."""
    raw = os.environ.get(SLOW_REPLICA_ENV, "")
    if not raw:
        return None
    try:
        index, seconds = raw.split(":")
        return int(index), float(seconds)
    except ValueError as exc:
        raise ConfigError(f"{SLOW_REPLICA_ENV} must be <index>:<seconds>, got {raw!r}") from exc


MIN_INTER_OP_THREADS = 2


def thread_pools(threads: int) -> tuple[int, int]:
    """TensorFlow's (intra-op, inter-op) pool sizes for `threads` CPUs. Computation gets `threads`; the inter-op
    pool never fewer than 2: a step's blocking ops (a Recv from a parameter server, the input pipeline) each hold an
    inter-op thread while they wait, and with only one a parameter-server worker deadlocked (a pod limited to one
    CPU, or --threads 1)."""
    return threads, max(threads, MIN_INTER_OP_THREADS)


def available_cpus() -> int:
    """CPUs this process may really use: affinity mask, capped by a cgroup v2/v1 CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, int(quota + 0.5)))
    return max(1, count)


def _cgroup_cpu_quota() -> float | None:
    """The cgroup CPU limit in CPUs, or None when unlimited/unknown."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as q, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as p:
            quota_us, period_us = int(q.read()), int(p.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
