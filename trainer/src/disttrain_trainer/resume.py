"""What wrote a checkpoint folder, so that a run resumes only from checkpoints it can really continue.

TensorFlow restores by object path and shard index: a checkpoint restores silently into another optimizer (its
slots are left out), another number of parameter servers (slots are keyed by shard index) or another strategy.
The chief therefore writes `run.json` beside its checkpoints: the settings that decide the checkpoint's layout,
and the training time each checkpoint had cost (so a resumed run reports the whole time, not its own share).
No TensorFlow here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .cluster import ConfigError

log = logging.getLogger(__name__)

RUN_FILE = "run.json"


class IncompatibleCheckpoint(ConfigError):
    """The checkpoint to resume from was written by a run with another layout."""


@dataclass(frozen=True)
class Layout:
    """The settings a checkpoint's variables and slots depend on."""

    strategy: str
    optimizer: str
    num_ps: int

    def differences(self, other: Layout) -> list[str]:
        """`'<setting> <ours> (checkpoint) vs <theirs> (this run)'` for each setting that differs."""
        ours, theirs = asdict(self), asdict(other)
        return [
            f"{key} {ours[key]} (checkpoint) vs {theirs[key]} (this run)" for key in ours if ours[key] != theirs[key]
        ]


@dataclass(frozen=True)
class History:
    """What came before this run: the step it resumed from (None: a fresh run) and the training seconds that
    step had cost (None: unknown, a checkpoint without run.json)."""

    resumed_from_step: int | None = None
    seconds_before: float | None = 0.0

    def total_seconds(self, run_seconds: float) -> float | None:
        """Training seconds to get where this run is, over every run (None: unknown)."""
        return None if self.seconds_before is None else self.seconds_before + run_seconds


FRESH = History()


@dataclass
class RunRecord:
    """`run.json`: the layout of the checkpoints beside it and the training seconds each had cost, by step."""

    layout: Layout
    train_seconds: dict[int, float] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path) -> RunRecord | None:
        """The record in `folder`, or None when there is none (a fresh folder, or an older trainer's)."""
        path = folder / RUN_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            seconds = {int(step): float(value) for step, value in raw.get("train_seconds", {}).items()}
            return cls(Layout(**raw["layout"]), seconds)
        except (ValueError, TypeError, KeyError) as exc:
            raise IncompatibleCheckpoint(f"{path} is unreadable ({exc}); move it away to resume anyway") from exc

    def write(self, folder: Path) -> None:
        """Write atomically (a chief killed mid-write leaves the previous record)."""
        folder.mkdir(parents=True, exist_ok=True)
        seconds = {str(step): round(value, 2) for step, value in sorted(self.train_seconds.items())}
        tmp = folder / f".{RUN_FILE}.tmp"
        tmp.write_text(json.dumps({"layout": asdict(self.layout), "train_seconds": seconds}, indent=2) + "\n")
        tmp.replace(folder / RUN_FILE)

    def saved(self, step: int, seconds: float | None, kept: Iterable[int], folder: Path) -> None:
        """Note a checkpoint saved at `step` after `seconds` of training in all (None: unknown); forget the
        checkpoints the manager deleted."""
        keep = set(kept) | {step}
        self.train_seconds = {s: v for s, v in self.train_seconds.items() if s in keep}
        if seconds is not None:
            self.train_seconds[step] = seconds
        self.write(folder)


def check_resume(folder: Path, checkpoint: str | None, layout: Layout) -> tuple[RunRecord, float | None]:
    """The record to keep writing, and the training seconds already spent (None when unknown); raises
    IncompatibleCheckpoint, naming every difference, when `checkpoint` was written with another layout."""
    record = RunRecord.read(folder)
    if checkpoint is None:
        return RunRecord(layout), 0.0  # a fresh run: any earlier record in the folder no longer describes it
    if record is None:
        log.warning("%s has no %s (an older trainer's): its layout cannot be checked", checkpoint, RUN_FILE)
        return RunRecord(layout), None
    differences = record.layout.differences(layout)
    if differences:
        raise IncompatibleCheckpoint(
            f"checkpoint {checkpoint} was written by another kind of run: {'; '.join(differences)}. Resume with "
            "the same settings, or start afresh with another --output-dir (or --checkpoint-dir)"
        )
    step = int(checkpoint.rsplit("-", 1)[-1])
    return record, record.train_seconds.get(step)
