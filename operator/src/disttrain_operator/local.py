"""`disttrain run job.yaml`: a DistTrainJob manifest run as local processes.

The manifest is validated by the same models as in the cluster, TF_CONFIG comes from the same builder
(with 127.0.0.1 and free ports instead of Service names), and the job's outcome is decided by the same
`lifecycle.reconcile` that drives the operator. This module plays the kubelet's part: it starts each
replica as a process in its own process group, restarts it in place under OnFailure/Always, and
stops whole process groups when the plan deletes a "pod" or the user presses Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import yaml

from . import api, lifecycle, tfconfig
from .api import DistTrainJobSpec, ReplicaType
from .kubeyaml import KubectlYamlLoader
from .lifecycle import SELF_EXIT_GRACE_SECONDS, ReplicaObservation
from .restarts import RESTART_RULES

POLL_SECONDS = 0.5
RESTART_DELAY_SECONDS = 1.0
TERM_GRACE_SECONDS = 5.0
PROGRESS_PATTERN = re.compile(r"^progress\s+(?P<fields>.*)$")
FINAL_PREFIX = "final "
TAIL_LINES = 8
READER_DRAIN_SECONDS = 10.0  # the pipe closes once the process group is gone; this bounds a stray holder


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that nothing listens on right now.

    All sockets stay bound until every port is chosen, so no two replicas get the same one.
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


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


def exit_code_of(returncode: int) -> int:
    """Popen's return code as a container's exit code (a signal N becomes 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def parse_progress(line: str) -> dict[str, str] | None:
    """The key=value fields of a trainer `progress ...` line, or None for other lines."""
    match = PROGRESS_PATTERN.match(line.strip())
    if not match:
        return None
    return dict(part.split("=", 1) for part in match["fields"].split() if "=" in part)


def format_progress(fields: dict[str, str], width: int = 24) -> str:
    """`step 120/600 [#####.....] 20% loss 0.2310 acc 93.40% 812 ex/s` from progress fields."""
    step = fields.get("step", "?")
    bar = ""
    if "/" in step:
        done, total = (int(x) for x in step.split("/", 1))
        filled = int(width * done / max(total, 1))
        bar = f" [{'#' * filled}{'.' * (width - filled)}] {100 * done // max(total, 1):3d}%"
    parts = [f"step {step}{bar}"]
    if "loss" in fields:
        parts.append(f"loss {float(fields['loss']):.4f}")
    if "accuracy" in fields:
        parts.append(f"acc {100 * float(fields['accuracy']):.2f}%")
    if "examples_per_sec" in fields:
        parts.append(f"{float(fields['examples_per_sec']):.0f} ex/s")
    return "  ".join(parts)


@dataclass
class LocalReplica:
    """One replica run as a local process; it stands for the pod of the same name."""

    role: ReplicaType
    index: int
    argv: list[str]
    env: dict[str, str]
    restart_policy: api.RestartPolicy
    process: subprocess.Popen[str] | None = None
    attempt: int = 0
    restarts: int = 0
    exit_code: int | None = None
    restart_at: float | None = None
    swept: bool = False
    termination_message: str | None = None  # what its `final` line reported, as a pod's termination message
    reader: threading.Thread | None = field(default=None, repr=False)
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES), repr=False)

    @property
    def name(self) -> str:
        return f"{self.role.value}-{self.index}"

    def observe(self) -> ReplicaObservation:
        """The replica as the lifecycle sees a pod."""
        uid = f"{self.name}-{self.attempt}"
        if self.process is not None and self.process.poll() is None:
            return ReplicaObservation(self.role, self.index, "Running", uid=uid, ready=True, restarts=self.restarts)
        if self.restart_at is not None:  # the kubelet's CrashLoopBackOff: still a running pod, not ready
            return ReplicaObservation(self.role, self.index, "Running", uid=uid, restarts=self.restarts)
        phase = "Succeeded" if self.exit_code == 0 else "Failed"
        # like the kubelet's FallbackToLogsOnError: the final metrics, else the last lines it printed
        message = self.termination_message or "\n".join(self.last_lines)
        return ReplicaObservation(
            self.role, self.index, phase, uid=uid, exit_code=self.exit_code, restarts=self.restarts, message=message
        )


class LocalJob:
    """Runs one validated DistTrainJob as processes on this machine."""

    def __init__(
        self, name: str, spec: DistTrainJobSpec, output_dir: Path, trainer: list[str], out: IO[str], quiet: bool
    ) -> None:
        self.name = name
        self.spec = spec
        self.output_dir = output_dir
        self.trainer = trainer
        self.out = out
        self.quiet = quiet
        self.lock = threading.Lock()
        self.status = api.DistTrainJobStatus()
        self.stop_signal: int | None = None
        keys = [(role, i) for role, rs in spec.replica_specs.items() for i in range(rs.replicas)]
        ports = dict(zip(keys, free_ports(len(keys)), strict=True))
        self.cluster = tfconfig.cluster_spec(spec, lambda role, index: f"127.0.0.1:{ports[(role, index)]}")
        self.replicas: dict[tuple[ReplicaType, int], LocalReplica] = {}
        self.attempts = itertools.count(1)  # one sequence for the job: every process gets its own "pod UID"
        self.reporter = lifecycle.reporting_replica(spec)

    # ------------------------------------------------------------ output
    def say(self, text: str) -> None:
        with self.lock:
            self.out.write(text + "\n")
            self.out.flush()

    def _pump(self, replica: LocalReplica, stream: IO[str]) -> None:
        prefix = f"{replica.name:>11} | "
        for raw in stream:
            line = raw.rstrip("\n")
            if line.startswith(FINAL_PREFIX):
                replica.termination_message = line[len(FINAL_PREFIX) :]
                continue  # the job's results; the summary shows them
            replica.last_lines.append(line)
            if (replica.role, replica.index) == self.reporter:
                fields = parse_progress(line)
                if fields is not None:
                    self.say(prefix + format_progress(fields))
                    continue
            if not self.quiet:
                self.say(prefix + line)

    # ------------------------------------------------------------ processes
    def _replica(self, role: ReplicaType, index: int) -> LocalReplica:
        role_spec: api.ReplicaSpec = getattr(self.spec.replica_specs, role.value)
        env = dict(os.environ)
        for var in [*self.spec.env, *role_spec.env]:
            if var.value is not None:
                env[var.name] = var.value
        env.update(
            TF_CONFIG=tfconfig.tf_config_json(self.cluster, role, index),
            DISTTRAIN_OUTPUT_DIR=str(self.output_dir),
            PYTHONUNBUFFERED="1",
        )
        args = role_spec.args if role_spec.args is not None else self.spec.args
        command = role_spec.command or self.trainer
        return LocalReplica(role, index, [*command, *args], env, role_spec.restart_policy)

    def start(self, replica: LocalReplica) -> None:
        replica.attempt = next(self.attempts)
        replica.exit_code = None
        replica.swept = False
        replica.restart_at = None
        replica.termination_message = None
        replica.last_lines.clear()
        replica.process = subprocess.Popen(
            replica.argv,
            env=replica.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group, so a stop reaches every child it made
            preexec_fn=_die_with_parent,
        )
        assert replica.process.stdout is not None
        replica.reader = threading.Thread(target=self._pump, args=(replica, replica.process.stdout), daemon=True)
        replica.reader.start()

    def _reap(self, replica: LocalReplica) -> None:
        """Notices an exit; restarts in place as the kubelet would under OnFailure/Always."""
        now = time.monotonic()
        if replica.restart_at is not None and now >= replica.restart_at:
            replica.restarts += 1
            self.say(f"[disttrain] restarting {replica.name} (restartPolicy {replica.restart_policy})")
            self.start(replica)
            return
        if replica.process is None or replica.exit_code is not None or replica.process.poll() is None:
            return
        replica.exit_code = exit_code_of(replica.process.returncode)
        self._sweep(replica)
        in_place = RESTART_RULES[replica.restart_policy].restart_in_place(replica.exit_code)
        if in_place and not self.status.finished and self.stop_signal is None:
            replica.restart_at = now + RESTART_DELAY_SECONDS

    def stop(self, replica: LocalReplica, grace: float = TERM_GRACE_SECONDS) -> None:
        """Stops a replica's whole process group: SIGTERM, then SIGKILL after the grace period."""
        replica.restart_at = None
        process = replica.process
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        self._sweep(replica)
        if replica.exit_code is None:
            replica.exit_code = exit_code_of(process.returncode)

    @staticmethod
    def _sweep(replica: LocalReplica) -> None:
        """Kills what the exited process left in its group, once (later its PID may belong to another), then
        lets its log reader drain the pipe, so no line it printed is missing from the output."""
        if replica.process is not None and not replica.swept:
            _signal_group(replica.process.pid, signal.SIGKILL)
            replica.swept = True
        if replica.reader is not None:
            replica.reader.join(timeout=READER_DRAIN_SECONDS)

    def stop_all(self, grace: float = TERM_GRACE_SECONDS) -> None:
        alive = [r for r in self.replicas.values() if r.process is not None and r.process.poll() is None]
        for replica in alive:
            if replica.process is not None:
                _signal_group(replica.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for replica in self.replicas.values():
            if replica.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    replica.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                self.stop(replica, grace=0)

    # ------------------------------------------------------------ the loop
    def _act(self, plan: lifecycle.Plan) -> None:
        for event in plan.events:
            self.say(f"[disttrain] {event.type} {event.reason}: {event.message}")
            if event.reason == "PodFailed" and self.quiet:
                self._show_tail(event.message.split(" ", 1)[0])
        if self.status.is_true("Succeeded"):
            return  # clean-up waits: servers first get a grace to exit by themselves (_wait_for_self_exit)
        for key in plan.delete:
            replica = self.replicas.pop(key, None)
            if replica is not None:
                self.stop(replica)
        if self.status.finished:
            return
        for role, index in plan.create:
            replica = self._replica(role, index)
            self.replicas[(role, index)] = replica
            self.start(replica)

    def _show_tail(self, replica_name: str) -> None:
        """The last lines of a failed replica, which --quiet would otherwise hide (like kubectl logs --tail)."""
        for replica in self.replicas.values():
            if replica.name == replica_name:
                if replica.reader is not None:
                    replica.reader.join(timeout=2)
                for line in replica.last_lines:
                    self.say(f"{replica.name:>11} | {line}")

    def _wait_for_self_exit(self) -> None:
        """After success, gives servers a moment to exit by themselves; then (at once after a failure, which
        nothing ends by itself) stops the rest."""
        grace = SELF_EXIT_GRACE_SECONDS if self.status.is_true("Succeeded") else 0.0
        deadline = time.monotonic() + grace
        while (
            time.monotonic() < deadline
            and self.stop_signal is None
            and any(r.process is not None and r.process.poll() is None for r in self.replicas.values())
        ):
            time.sleep(POLL_SECONDS)
        for replica in self.replicas.values():
            if replica.process is not None and replica.process.poll() is None:
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
        self._summary(time.monotonic() - started)
        return 0 if self.status.is_true("Succeeded") else 1

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stop_signal = signum

    def _summary(self, wall_seconds: float) -> None:
        outcome = (
            self.status.condition("Succeeded") if self.status.is_true("Succeeded") else self.status.condition("Failed")
        )
        lines = ["", f"[disttrain] job {self.name}: {self.status.state}"]
        if outcome is not None:
            lines.append(f"  reason:      {outcome.reason}: {outcome.message}")
        lines.append(f"  wall time:   {wall_seconds:.1f}s, restarts: {self.status.restarts}")
        results = self.status.results
        metrics = results.model_dump(exclude_none=True) if results else _read_json(self.output_dir / "metrics.json")
        if metrics:
            for key, label, fmt in (
                ("train_seconds", "train time", "{:.1f}s"),
                ("examples_per_second", "examples/s", "{:.0f}"),
                ("accuracy", "accuracy", "{:.2%} (held out)"),
                ("inference_ms_per_example", "inference", "{:.3f} ms/example"),
            ):
                if key in metrics:
                    lines.append(f"  {label + ':':<13}{fmt.format(metrics[key])}")
        lines.append(f"  outputs:     {self.output_dir}")
        for sub, label in (("logs", "TensorBoard"), ("checkpoints", "checkpoints"), ("model", "model")):
            if (self.output_dir / sub).exists():
                lines.append(f"  {label + ':':<13}{self.output_dir / sub}")
        if (self.output_dir / "logs").exists():
            lines.append(f"  view with:   tensorboard --logdir {self.output_dir / 'logs'}")
        self.say("\n".join(lines))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGKILL it if this runner dies, so nothing is orphaned.

    (prctl is looked up in the parent: nothing is imported or loaded between fork and exec.)
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


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
