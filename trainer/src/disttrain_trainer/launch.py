"""Start a whole cluster as local processes on 127.0.0.1 (used by tests and the benchmark)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .cluster import Role


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def local_cluster(chief: int = 1, ps: int = 0, worker: int = 0, evaluator: int = 0) -> dict[str, list[str]]:
    """A cluster dict with loopback addresses on free ports (jobs with zero tasks are left out)."""
    counts = {Role.CHIEF: chief, Role.PS: ps, Role.WORKER: worker, Role.EVALUATOR: evaluator}
    ports = iter(free_ports(sum(counts.values())))
    return {job.value: [f"127.0.0.1:{next(ports)}" for _ in range(n)] for job, n in counts.items() if n}


def tf_config(cluster: dict[str, list[str]], task_type: str, index: int) -> str:
    """The TF_CONFIG JSON for one task."""
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}, "environment": "cloud"})


@dataclass
class Task:
    """One running replica and where its output goes."""

    task_type: str
    index: int
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def name(self) -> str:
        """e.g. 'worker-1'."""
        return f"{self.task_type}-{self.index}"

    def output(self) -> str:
        """Everything it printed to stdout so far."""
        return self.stdout.read_text(errors="replace")


@dataclass
class LocalCluster:
    """Processes of one job; `tasks` in start order."""

    cluster: dict[str, list[str]]
    tasks: list[Task] = field(default_factory=list)

    def task(self, task_type: str, index: int = 0) -> Task:
        """The task of that type and index."""
        return next(t for t in self.tasks if t.task_type == task_type and t.index == index)

    def wait(self, timeout: float) -> dict[str, int | None]:
        """Wait until every process ended or `timeout` passed; exit codes by task name (None: still running)."""
        deadline = time.monotonic() + timeout
        for task in self.tasks:
            with contextlib.suppress(subprocess.TimeoutExpired):
                task.process.wait(max(0.1, deadline - time.monotonic()))
        return {t.name: t.process.poll() for t in self.tasks}

    def stop(self) -> None:
        """Kill whatever is still running."""
        for task in self.tasks:
            if task.process.poll() is None:
                task.process.kill()
                task.process.wait()


def start_task(
    cluster: dict[str, list[str]],
    task_type: str | None,
    index: int,
    args: Sequence[str],
    log_dir: Path,
    env: dict[str, str] | None = None,
    wrapper: Sequence[str] = (),
) -> Task:
    """Start `disttrain-trainer ARGS` as one task (no TF_CONFIG when task_type is None), behind `wrapper`
    (a command prefix such as `unshare ...`) when one is given."""
    log_dir.mkdir(parents=True, exist_ok=True)
    name = f"{task_type or 'single'}-{index}"
    full_env = {**os.environ, **(env or {})}
    full_env.pop("TF_CONFIG", None)
    if task_type is not None:
        full_env["TF_CONFIG"] = tf_config(cluster, task_type, index)
    stdout, stderr = log_dir / f"{name}.out", log_dir / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "disttrain_trainer", *args], stdout=out, stderr=err, env=full_env
        )
    return Task(task_type or "single", index, process, stdout, stderr)


def start_cluster(
    cluster: dict[str, list[str]],
    args: Sequence[str],
    log_dir: Path,
    env: dict[str, str] | None = None,
    wrappers: dict[str, Sequence[str]] | None = None,
) -> LocalCluster:
    """Start every task of `cluster` with the same command line (servers first, the chief last); `wrappers`
    gives a command prefix per task type."""
    running = LocalCluster(cluster)
    for job in (Role.PS, Role.WORKER, Role.EVALUATOR, Role.CHIEF):
        for index in range(len(cluster.get(job, []))):
            wrapper = (wrappers or {}).get(job, ())
            running.tasks.append(start_task(cluster, job, index, args, log_dir, env, wrapper))
    return running
