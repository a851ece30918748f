"""Restart policies as one table (pure): what each replica `restartPolicy` means for the pod's own
restartPolicy, for a trainer that exits (restart in place or not), and for a pod that ends Failed
(recreate it, or fail the job). The pod builder, `lifecycle` and local mode all read it.

What happens when a worker exits 137? Under `ExitCode` (the default) 137 is a signal (128 + 9, e.g. an
OOM kill): the pod is recreated and one restart counts against backoffLimit; 1-127 are the program's own
verdicts (a bad argument, a failed chief) and fail the job. Under `Never` any failure fails the job. Under
`OnFailure`/`Always` the kubelet (or local mode) restarts the trainer in place; a pod that still ends
Failed was evicted or lost its node, and only a new pod can run it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .api import RestartPolicy

PERMANENT_EXIT_CODES = range(1, 128)


def _never(exit_code: int | None) -> bool:
    return False


def _always(exit_code: int | None) -> bool:
    return True


def _unless_permanent(exit_code: int | None) -> bool:
    return exit_code is None or exit_code not in PERMANENT_EXIT_CODES


@dataclass(frozen=True)
class RestartRule:
    """How one replica restartPolicy is carried out."""

    pod_restart_policy: str
    """The pod's own spec.restartPolicy (Kubernetes' vocabulary; ExitCode recreates pods instead)."""
    restart_in_place: Callable[[int], bool]
    """Given the trainer's exit code: does the kubelet (or local mode) start it again in the same pod?"""
    recreate_failed_pod: Callable[[int | None], bool]
    """Given the exit code of a pod that ended Failed (None: unknown): recreate it (True) or fail the job?"""


RESTART_RULES: dict[RestartPolicy, RestartRule] = {
    RestartPolicy.NEVER: RestartRule("Never", restart_in_place=_never, recreate_failed_pod=_never),
    RestartPolicy.EXIT_CODE: RestartRule("Never", restart_in_place=_never, recreate_failed_pod=_unless_permanent),
    RestartPolicy.ON_FAILURE: RestartRule("OnFailure", restart_in_place=bool, recreate_failed_pod=_always),
    RestartPolicy.ALWAYS: RestartRule("Always", restart_in_place=_always, recreate_failed_pod=_always),
}
