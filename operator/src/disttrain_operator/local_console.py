"""Local mode's console: replica output prefixed by its name, the reporting replica's progress lines drawn as a
progress bar, the job's events, and the closing summary (pure rendering, behind one lock)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import IO, Any

from .api import DistTrainJobStatus, ReplicaType

PROGRESS_PATTERN = re.compile(r"^progress\s+(?P<fields>.*)$")
SUMMARY_FIELDS = (
    ("train_seconds", "train time", "{:.1f}s"),
    ("examples_per_second", "examples/s", "{:.0f}"),
    ("accuracy", "accuracy", "{:.2%} (held out)"),
    ("inference_ms_per_example", "inference", "{:.3f} ms/example"),
)
OUTPUT_FOLDERS = (("logs", "TensorBoard"), ("checkpoints", "checkpoints"), ("model", "model"))


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


def prefixed(replica_name: str, line: str) -> str:
    return f"{replica_name:>11} | {line}"


class Console:
    """Where local mode writes; `quiet` shows only the reporter's progress, events and failed replicas' tails."""

    def __init__(self, out: IO[str], quiet: bool, reporter: tuple[ReplicaType, int]) -> None:
        self.out = out
        self.quiet = quiet
        self.reporter = reporter
        self.lock = threading.Lock()

    def say(self, text: str) -> None:
        with self.lock:
            self.out.write(text + "\n")
            self.out.flush()

    def replica_line(self, replica: Any, line: str) -> None:
        """One line a replica printed (called from its reader thread)."""
        if (replica.role, replica.index) == self.reporter:
            fields = parse_progress(line)
            if fields is not None:
                self.say(prefixed(replica.name, format_progress(fields)))
                return
        if not self.quiet:
            self.say(prefixed(replica.name, line))

    def tail(self, replica_name: str, lines: list[str]) -> None:
        """The last lines of a failed replica, which quiet would otherwise hide (like kubectl logs --tail)."""
        for line in lines:
            self.say(prefixed(replica_name, line))

    def summary(self, name: str, status: DistTrainJobStatus, wall_seconds: float, output_dir: Path) -> None:
        outcome = status.condition("Succeeded") if status.is_true("Succeeded") else status.condition("Failed")
        lines = ["", f"[disttrain] job {name}: {status.state}"]
        if outcome is not None:
            lines.append(f"  reason:      {outcome.reason}: {outcome.message}")
        lines.append(f"  wall time:   {wall_seconds:.1f}s, restarts: {status.restarts}")
        results = status.results
        metrics = results.model_dump(exclude_none=True) if results else _read_json(output_dir / "metrics.json")
        for key, label, fmt in SUMMARY_FIELDS if metrics else ():
            if metrics.get(key) is not None:  # a resumed run that added no steps has no time or rate
                lines.append(f"  {label + ':':<13}{fmt.format(metrics[key])}")
        lines.append(f"  outputs:     {output_dir}")
        for sub, label in OUTPUT_FOLDERS:
            if (output_dir / sub).exists():
                lines.append(f"  {label + ':':<13}{output_dir / sub}")
        if (output_dir / "logs").exists():
            lines.append(f"  view with:   tensorboard --logdir {output_dir / 'logs'}")
        self.say("\n".join(lines))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
