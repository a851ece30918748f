"""`disttrain run job.yaml`: a DistTrainJob manifest run as local processes.

The manifest is validated by the same models as in the cluster, TF_CONFIG comes from the same builder
(with 127.0.0.1 and free ports instead of Service names), each replica's command and environment from the
same `container_invocation` as its pod's, and the job's outcome is decided by the same `lifecycle.reconcile`
that drives the operator. local_processes.py plays the kubelet's part (a process group per replica, restarts
in place); local_console.py draws what the user sees; this module runs the loop between them.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import yaml

from . import api, lifecycle, tfconfig
from .api import DistTrainJobSpec, ReplicaType
from .invocation import container_invocation
from .kubeyaml import KubectlYamlLoader
from .lifecycle import SELF_EXIT_GRACE_SECONDS
from .local_console import Console
from .local_processes import TERM_GRACE_SECONDS, LocalReplica, free_ports

POLL_SECONDS = 0.5


def load_manifest(path: Path) -> dict[str, Any]:
    """The DistTrainJob document of a YAML file (the first one, if the file holds several objects), with
    scalars typed as kubectl types them (see `KubectlYamlLoader`)."""
    try:
        documents = [doc for doc in yaml.load_all(path.read_text(), Loader=KubectlYamlLoader) if doc]
    except (OSError, yaml.YAMLError) as error:
        raise api.InvalidSpecError(f"cannot read {path}: {error}") from None
    jobs = [doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == api.KIND]
    if not jobs:
        raise api.InvalidSpecError(f"{path} holds no {api.KIND} object")
    return jobs[0]


class LocalJob:
    """Runs one validated DistTrainJob as processes on this machine."""

    def __init__(
        self, name: str, spec: DistTrainJobSpec, output_dir: Path, trainer: list[str], out: IO[str], quiet: bool
    ) -> None:
        self.name = name
        self.spec = spec
        self.output_dir = output_dir
        self.trainer = trainer
        self.console = Console(out, quiet, lifecycle.reporting_replica(spec))
        self.status = api.DistTrainJobStatus()
        self.stop_signal: int | None = None
        keys = [(role, i) for role, rs in spec.replica_specs.items() for i in range(rs.replicas)]
        ports = dict(zip(keys, free_ports(len(keys)), strict=True))
        self.cluster = tfconfig.cluster_spec(spec, lambda role, index: f"127.0.0.1:{ports[(role, index)]}")
        self.replicas: dict[tuple[ReplicaType, int], LocalReplica] = {}
        self.attempts = itertools.count(1)  # one sequence for the job: every process gets its own "pod UID"

    def say(self, text: str) -> None:
        self.console.say(text)

    # ------------------------------------------------------------ replicas
    def _replica(self, role: ReplicaType, index: int) -> LocalReplica:
        tf_config = tfconfig.tf_config_json(self.cluster, role, index)
        invocation = container_invocation(self.spec, role, tf_config, str(self.output_dir))
        env = invocation.local_env(dict(os.environ)) | {"PYTHONUNBUFFERED": "1"}
        argv = [*(invocation.command or self.trainer), *invocation.args]
        return LocalReplica(role, index, argv, env, getattr(self.spec.replica_specs, role.value).restart_policy)

    def _start(self, replica: LocalReplica) -> None:
        replica.start(next(self.attempts), self.console.replica_line)

    def _reap(self, replica: LocalReplica) -> None:
        """Notices an exit; restarts in place as the kubelet would under OnFailure/Always."""
        if replica.reap(may_restart=not self.status.finished and self.stop_signal is None):
            replica.restarts += 1
            self.say(f"[disttrain] restarting {replica.name} (restartPolicy {replica.restart_policy})")
            self._start(replica)

    def stop_all(self, grace: float = TERM_GRACE_SECONDS) -> None:
        for replica in self.replicas.values():
            replica.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for replica in self.replicas.values():
            replica.stop(grace=max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------ the loop
    def _act(self, plan: lifecycle.Plan) -> None:
        for event in plan.events:
            self.say(f"[disttrain] {event.type} {event.reason}: {event.message}")
            failed = self.replicas.get(event.replica) if event.replica else None
            if event.reason == "PodFailed" and self.console.quiet and failed is not None:
                if failed.reader is not None:
                    failed.reader.join(timeout=2)
                self.console.tail(failed.name, list(failed.last_lines))
        if self.status.is_true("Succeeded"):
            return  # clean-up waits: servers first get a grace to exit by themselves (_wait_for_self_exit)
        for key in plan.delete:
            replica = self.replicas.pop(key, None)
            if replica is not None:
                replica.stop()
        if self.status.finished:
            return
        for role, index in plan.create:
            replica = self._replica(role, index)
            self.replicas[(role, index)] = replica
            self._start(replica)

    def _wait_for_self_exit(self) -> None:
        """After success, gives servers a moment to exit by themselves; then (at once after a failure, which
        nothing ends by itself) stops the rest."""
        grace = SELF_EXIT_GRACE_SECONDS if self.status.is_true("Succeeded") else 0.0
        deadline = time.monotonic() + grace
        while (
            time.monotonic() < deadline and self.stop_signal is None and any(r.running for r in self.replicas.values())
        ):
            time.sleep(POLL_SECONDS)
        for replica in self.replicas.values():
            if replica.running:
                self.say(f"[disttrain] stopping {replica.name}: still running after the job finished")
            else:
                self._reap(replica)
        self.stop_all()

    def run(self) -> int:
        """Runs the job to its end; returns the process exit code (0 on success)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        started = time.monotonic()
        try:
            while self.stop_signal is None:
                for replica in list(self.replicas.values()):
                    self._reap(replica)
                observations = [r.observe() for r in self.replicas.values()]
                plan = lifecycle.reconcile(self.spec, observations, self.status, datetime.now(UTC))
                self.status = plan.status
                self._act(plan)
                if self.status.finished:
                    break
                time.sleep(POLL_SECONDS)
            if self.stop_signal is None:
                self._wait_for_self_exit()
            if self.stop_signal is not None:
                self.say(f"[disttrain] {signal.Signals(self.stop_signal).name}: stopping every replica")
                self.stop_all()
                return 128 + self.stop_signal
        finally:
            self.stop_all(grace=1)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.console.summary(self.name, self.status, time.monotonic() - started, self.output_dir)
        return 0 if self.status.is_true("Succeeded") else 1

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stop_signal = signum


def default_trainer() -> list[str]:
    """The trainer installed beside this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "disttrain-trainer"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("disttrain-trainer")
    if found:
        return [found]
    return [sys.executable, "-m", "disttrain_trainer.cli"]


def local_notes(spec: DistTrainJobSpec) -> list[str]:
    """What the manifest asks for that local mode does not do, one note each."""
    notes = ["image fields are ignored locally: the trainer installed in this environment runs"]
    roles = spec.replica_specs.items()
    if any(rs.gpus for _, rs in roles):
        notes.append("gpus are not reserved locally: TensorFlow uses whatever GPUs this machine has")
    if any(rs.resources or rs.template for _, rs in roles):
        notes.append("resources and pod templates apply in Kubernetes only")
    if spec.storage is not None:
        notes.append("storage is replaced by the local output directory")
    if any(var.value_from is not None for var in [*spec.env, *(v for _, rs in roles for v in rs.env)]):
        notes.append("env entries with valueFrom are skipped locally")
    return notes


def run_manifest(
    path: Path,
    output_dir: Path | None = None,
    trainer: str | None = None,
    quiet: bool = False,
    out: IO[str] = sys.stdout,
) -> int:
    """Validates a manifest and runs it; the exit code is 0 on success, 1 on failure, 2 on a bad manifest."""
    try:
        _, name, spec = api.parse_manifest(load_manifest(path))
    except api.InvalidSpecError as error:
        print(f"disttrain: invalid {api.KIND} in {path}: {error}", file=sys.stderr)
        return 2
    if output_dir is None:
        output_dir = Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if spec.run_policy.suspend:
        print(f"disttrain: job {name} is suspended (spec.runPolicy.suspend: true): nothing to run", file=out)
        return 0
    job = LocalJob(name, spec, output_dir.resolve(), trainer.split() if trainer else default_trainer(), out, quiet)
    roles = ", ".join(f"{rs.replicas} {role.value}" for role, rs in spec.replica_specs.items() if rs.replicas)
    job.say(f"[disttrain] running job {name} locally: {roles}; outputs in {job.output_dir}")
    for note in local_notes(spec):
        job.say(f"[disttrain] note: {note}")
    return job.run()
