"""Cluster addresses and TF_CONFIG for a job (pure functions).

Every training task is reachable as `<job>-<role>-<index>.<namespace>.svc:<port>`: its own Service, a virtual
IP in front of whichever pod runs the task now, publishing not-ready addresses. TensorFlow resolves a peer's
name once and keeps dialling that address, and a recreated pod gets a new IP, so a name that resolved to the
pod itself would leave a replacement worker unreachable for the chief (seen on a real node). The cluster
domain is left to the pod's DNS search path rather than hard-coded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .api import DistTrainJobSpec, ReplicaType

AddressOf = Callable[[ReplicaType, int], str]

# TensorFlow's side-car evaluator is not a member of the training cluster: the chief and the workers
# never talk to it, and listing it would make the coordinator wait for it. It still gets the cluster in
# its own TF_CONFIG, with task type "evaluator".
TRAINING_ROLES: tuple[ReplicaType, ...] = (ReplicaType.CHIEF, ReplicaType.WORKER, ReplicaType.PS)


def pod_name(job_name: str, role: ReplicaType | str, index: int) -> str:
    """The deterministic name (and hostname) of a replica's pod: `<job>-<role>-<index>`."""
    return f"{job_name}-{ReplicaType(role).value}-{index}"


def service_address_of(job_name: str, namespace: str, port: int) -> AddressOf:
    """Addresses through each task's own Service: `<job>-<role>-<index>.<namespace>.svc:<port>`."""

    def address(role: ReplicaType, index: int) -> str:
        return f"{pod_name(job_name, role, index)}.{namespace}.svc:{port}"

    return address


def cluster_spec(spec: DistTrainJobSpec, address_of: AddressOf) -> dict[str, list[str]]:
    """TF_CONFIG's `cluster`: the address of every training task, keyed by task type."""
    cluster: dict[str, list[str]] = {}
    for role in TRAINING_ROLES:
        count = spec.replica_specs.count(role)
        if count:
            cluster[role.value] = [address_of(role, index) for index in range(count)]
    return cluster


def tf_config(cluster: dict[str, list[str]], role: ReplicaType | str, index: int) -> dict[str, Any]:
    """The TF_CONFIG of one task."""
    return {
        "cluster": cluster,
        "task": {"type": ReplicaType(role).value, "index": index},
        "environment": "cloud",
    }


def tf_config_json(cluster: dict[str, list[str]], role: ReplicaType | str, index: int) -> str:
    """TF_CONFIG as the compact, key-sorted JSON placed in the environment and the pod annotation."""
    return json.dumps(tf_config(cluster, role, index), sort_keys=True, separators=(",", ":"))
