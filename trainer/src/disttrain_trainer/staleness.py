"""Staleness of asynchronous updates: for each applied update, how many other updates reached the parameter
servers between the moment its replica read the parameters and the moment it applied its own gradients.

Downpour SGD trades this staleness for throughput; synchronous strategies have none by construction (every
replica applies the all-reduced gradients of the same parameters), so their count is 0 for every update.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Staleness:
    """A histogram of update staleness (updates by count), bounded by the largest staleness seen, not by steps."""

    counts: Counter[int] = field(default_factory=Counter)

    def add(self, values: Iterable[float]) -> None:
        """Record the staleness of each update in `values`."""
        self.counts.update(round(float(v)) for v in values)

    @property
    def updates(self) -> int:
        """Updates recorded."""
        return sum(self.counts.values())

    def percentile(self, q: float) -> int:
        """The nearest-rank `q`th percentile (0 < q <= 100): the smallest staleness v such that at least q% of the
        updates were v or fresher."""
        if not self.counts:
            raise ValueError("no updates recorded")
        rank = max(1, int(np.ceil(q / 100 * self.updates)))
        seen = 0
        for value in sorted(self.counts):
            seen += self.counts[value]
            if seen >= rank:
                return value
        raise AssertionError("unreachable: the ranks add up to the updates")

    def summary(self) -> dict[str, float | int] | None:
        """p50, p99, max and mean staleness and the updates they cover; None when nothing was recorded."""
        if not self.counts:
            return None
        mean = sum(value * count for value, count in self.counts.items()) / self.updates
        return {
            "p50": self.percentile(50),
            "p99": self.percentile(99),
            "max": max(self.counts),
            "mean": round(mean, 2),
            "updates": self.updates,
        }
