"""Local mode's kubelet: each replica a process in its own process group, standing for its pod.

A `LocalReplica` owns its process: it starts it, reads its output (the `final {json}` line becomes its
termination message, as the trainer's file does in a pod), notices its exit, restarts it in place as its
restartPolicy says (restarts.py), and stops its whole process group. What is shown to the user is
local_console's business; what the job does next is `lifecycle`'s.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from .api import ReplicaType, RestartPolicy
from .lifecycle import ReplicaObservation
from .restarts import RESTART_RULES

RESTART_DELAY_SECONDS = 1.0
TERM_GRACE_SECONDS = 5.0
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


def exit_code_of(returncode: int) -> int:
    """Popen's return code as a container's exit code (a signal N becomes 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


OnLine = Callable[["LocalReplica", str], None]


@dataclass
class LocalReplica:
    """One replica run as a local process; it stands for the pod of the same name."""

    role: ReplicaType
    index: int
    argv: list[str]
    env: dict[str, str]
    restart_policy: RestartPolicy
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

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def observe(self) -> ReplicaObservation:
        """The replica as the lifecycle sees a pod."""
        uid = f"{self.name}-{self.attempt}"
        if self.running:
            return ReplicaObservation(self.role, self.index, "Running", uid=uid, ready=True, restarts=self.restarts)
        if self.restart_at is not None:  # the kubelet's CrashLoopBackOff: still a running pod, not ready
            return ReplicaObservation(self.role, self.index, "Running", uid=uid, restarts=self.restarts)
        phase = "Succeeded" if self.exit_code == 0 else "Failed"
        # like the kubelet's FallbackToLogsOnError: the final metrics, else the last lines it printed
        message = self.termination_message or "\n".join(self.last_lines)
        return ReplicaObservation(
            self.role, self.index, phase, uid=uid, exit_code=self.exit_code, restarts=self.restarts, message=message
        )

    def start(self, attempt: int, on_line: OnLine) -> None:
        """Starts (or starts again) the process; `on_line` gets each line it prints, but its `final` line."""
        self.attempt = attempt
        self.exit_code = None
        self.swept = False
        self.restart_at = None
        self.termination_message = None
        self.last_lines.clear()
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group, so a stop reaches every child it made
            preexec_fn=_die_with_parent,
        )
        assert self.process.stdout is not None
        self.reader = threading.Thread(target=self.pump, args=(self.process.stdout, on_line), daemon=True)
        self.reader.start()

    def pump(self, stream: IO[str], on_line: OnLine) -> None:
        """Reads the process's output to its end (on the reader thread)."""
        for raw in stream:
            line = raw.rstrip("\n")
            if line.startswith(FINAL_PREFIX):
                self.termination_message = line[len(FINAL_PREFIX) :]
                continue  # the job's results; the summary shows them
            self.last_lines.append(line)
            on_line(self, line)

    def reap(self, may_restart: bool) -> bool:
        """Notices an exit and, if its restartPolicy and `may_restart` say so, schedules a restart in place (as the
        kubelet would); True when a scheduled restart is due now (the caller starts it)."""
        now = time.monotonic()
        if self.restart_at is not None and now >= self.restart_at:
            return True
        if self.process is None or self.exit_code is not None or self.process.poll() is None:
            return False
        self.exit_code = exit_code_of(self.process.returncode)
        self.sweep()
        if may_restart and RESTART_RULES[self.restart_policy].restart_in_place(self.exit_code):
            self.restart_at = now + RESTART_DELAY_SECONDS
        return False

    def signal(self, signum: int) -> None:
        """Sends `signum` to the whole process group, if it still runs."""
        if self.running:
            assert self.process is not None
            _signal_group(self.process.pid, signum)

    def stop(self, grace: float = TERM_GRACE_SECONDS) -> None:
        """Stops the whole process group: SIGTERM, then SIGKILL after the grace period."""
        self.restart_at = None
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        self.sweep()
        if self.exit_code is None:
            self.exit_code = exit_code_of(process.returncode)

    def sweep(self) -> None:
        """Kills what the exited process left in its group, once (later its PID may belong to another), then
        lets its reader drain the pipe, so no line it printed is missing from the output."""
        if self.process is not None and not self.swept:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.swept = True
        if self.reader is not None:
            self.reader.join(timeout=READER_DRAIN_SECONDS)


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
