"""How a replica's trainer is invoked (pure): its command, its arguments and its environment, in order of
precedence. The pod builder puts it in the trainer container; local mode starts the same process.

Precedence, later wins: the job's `env`, the role's `env`, then the operator's own variables (TF_CONFIG,
DISTTRAIN_OUTPUT_DIR), which no manifest may set. A role's `args` replace the job's; its `command` replaces
the image's entrypoint (locally: the installed trainer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .api import DistTrainJobSpec, ReplicaSpec, ReplicaType
from .policy import OUTPUT_DIR_ENV, TF_CONFIG_ENV


@dataclass(frozen=True)
class Invocation:
    """One replica's trainer process."""

    command: list[str] | None
    """The program and its fixed arguments; None: the image's entrypoint (locally, the installed trainer)."""
    args: list[str]
    env: list[dict[str, Any]]
    """Kubernetes EnvVars (`value` or `valueFrom`), in order of precedence: a later one of a name wins."""

    def local_env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` (this process's environment) with the variables that have a plain value."""
        return {**base, **{var["name"]: var["value"] for var in self.env if "value" in var}}


def container_invocation(
    spec: DistTrainJobSpec, role: ReplicaType, tf_config: str, output_dir: str | None
) -> Invocation:
    """The command, args and env of `role`'s trainer, given its TF_CONFIG and where it writes (if anywhere)."""
    replica: ReplicaSpec = getattr(spec.replica_specs, ReplicaType(role).value)
    env = [var.to_wire() for var in [*spec.env, *replica.env]]
    env.append({"name": TF_CONFIG_ENV, "value": tf_config})
    if output_dir:
        env.append({"name": OUTPUT_DIR_ENV, "value": output_dir})
    command = list(replica.command) if replica.command is not None else None
    args = list(replica.args if replica.args is not None else spec.args)
    return Invocation(command, args, env)
