"""Starting, finding and stopping the control plane's processes; waiting for a condition."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


def pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn_logged(log_dir: Path, name: str, cmd: list[str], cwd: Path, detach: bool) -> subprocess.Popen:
    """Start `cmd` in its own session, output to `<log_dir>/<name>.log` and its command line in `<name>.cmd`;
    unless `detach`, it gets SIGTERM when this process dies."""
    log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 (kept open by the child)
    (log_dir / f"{name}.cmd").write_text(" ".join(cmd) + "\n")
    try:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=None if detach else _set_pdeathsig,
        )
    finally:
        log.close()


def stop_pids(pids: dict[str, int], expect: dict[str, str] | None = None, timeout: float = 15.0) -> list[str]:
    """SIGTERM every live PID (only if its command line still contains ``expect[name]``), then
    SIGKILL what is left after ``timeout``. Returns the names that were signalled."""
    signalled = []
    for name, pid in pids.items():
        if not pid or not pid_alive(pid):
            continue
        if expect and expect.get(name) and expect[name] not in pid_cmdline(pid):
            continue  # the PID was reused by an unrelated process
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            signalled.append(name)
    deadline = time.monotonic() + timeout
    for name in signalled:
        pid = pids[name]
        while pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            time.sleep(0.05)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return signalled


def wait_for(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.2):
    """Poll ``predicate()`` until it returns something truthy (returned); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last value: {last!r})")
        time.sleep(interval)


def tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200 * lines))
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError as e:
        return [f"({e})"]
