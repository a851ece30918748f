"""The machine a benchmark ran on: CPU model, cores, load before and after."""

from __future__ import annotations

import os
import platform
import subprocess

from disttrain_trainer.cluster import available_cpus


def cpu_model() -> str:
    """The CPU's model name as lscpu reports it (else platform's guess)."""
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    fields = dict(line.split(":", 1) for line in listing.splitlines() if ":" in line)
    return fields.get("Model name", "unknown").strip()


def machine(note: str = "", earlier: dict[str, object] | None = None) -> dict[str, object]:
    """The machine's description; with `earlier` (taken at the start), the load average at both ends."""
    load = [round(x, 2) for x in os.getloadavg()]
    info: dict[str, object] = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_available": available_cpus(),
        "platform": platform.platform(),
        "note": note,
    }
    if earlier is None:
        return {**info, "load_average_at_start": load}
    return {**earlier, "load_average_at_end": load}


def source() -> dict[str, object]:
    """The commit the trainer ran from, and its files changed since (other work in progress on this checkout)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "trainer/src").splitlines()
    return {"commit": git("rev-parse", "HEAD").strip() or None, "uncommitted": [line[3:] for line in changed]}
