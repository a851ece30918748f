"""When to try creating a job's pods again after the API server refused some (quota, 429, a webhook), and which
pods not to create again because they were just created (pure; the caller passes the clock).

As Kubernetes' Job controller: pods go out slow-start (1, then 2, 4, ... per round trip) and stop at the first
refusal, refused passes back off exponentially with jitter per job, and a pod created moments ago but not yet seen
in the watch is not POSTed again (an expectation).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

BASE_SECONDS = 5.0
MAX_SECONDS = 300.0
JITTER = 0.2  # +-20%: jobs refused together do not come back together
EXPECTATION_SECONDS = 30.0  # a created pod not seen in the watch by then is created again


@dataclass
class SlowStart:
    """How many of a pass's creations may be in flight: 1 at first and one more for each that succeeds, so 1, 2, 4,
    ... per round trip as the Job controller's batches, but a slow creation never holds the others back as a
    batch's slowest does; at most `limit`; none once one is refused (a full quota costs one POST, not one per pod).
    """

    limit: int
    allowed: int = 1
    stopped: bool = False

    def may_start(self, in_flight: int) -> bool:
        return not self.stopped and in_flight < self.allowed

    def succeeded(self) -> None:
        self.allowed = min(self.allowed + 1, self.limit)

    def refused(self) -> None:
        self.stopped = True


@dataclass
class CreateGate:
    """One job's refused-create history and its recent creations."""

    failures: int = 0
    not_before: float = 0.0
    refusal: str | None = None  # the API server's last word, while backing off
    created: dict[str, float] = field(default_factory=dict)  # pod name -> when it was created

    def open(self, now: float) -> bool:
        """Whether creating may be tried now."""
        return now >= self.not_before

    def refused(self, now: float, rng: random.Random | None = None, why: str | None = None) -> float:
        """Records a refused pass (and the API server's reason); returns the delay before the next try."""
        self.failures += 1
        self.refusal = why
        delay = min(BASE_SECONDS * 2 ** (self.failures - 1), MAX_SECONDS)
        delay *= 1 + JITTER * (2 * (rng or random).random() - 1)
        self.not_before = now + delay
        return delay

    def succeeded(self) -> None:
        """A pass that created all it wanted: the next refusal starts the backoff over."""
        self.failures, self.not_before, self.refusal = 0, 0.0, None

    def seen(self, names: set[str]) -> None:
        """Pods now in the watch: their creations are no longer awaited (a later recreation is not held back)."""
        self.created = {name: at for name, at in self.created.items() if name not in names}

    def still_expected(self, wanted: list[str], now: float) -> set[str]:
        """Which of the `wanted` (missing from the watch) were created moments ago: not created again. Creations
        no longer wanted were seen (or are moot) and are forgotten."""
        self.created = {name: at for name, at in self.created.items() if name in wanted}
        return {name for name, at in self.created.items() if now - at < EXPECTATION_SECONDS}
