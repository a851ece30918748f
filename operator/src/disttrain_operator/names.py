"""The names and labels that tie a job's children to it: written by builders.py, read by observe.py, kube.py and
the handlers (pure functions)."""

from __future__ import annotations

from typing import Any

from .api import API_VERSION, KIND, ReplicaType

LABEL_JOB = "disttrain.io/job-name"
LABEL_ROLE = "disttrain.io/replica-type"
LABEL_INDEX = "disttrain.io/replica-index"
MANAGED_BY = "disttrain-operator"

Obj = dict[str, Any]


def job_labels(job_name: str) -> dict[str, str]:
    """Labels on every child of a job; the Service selects pods by the first."""
    return {
        LABEL_JOB: job_name,
        "app.kubernetes.io/name": "disttrain",
        "app.kubernetes.io/instance": job_name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def replica_labels(job_name: str, role: ReplicaType, index: int) -> dict[str, str]:
    """Labels of one replica's pod: the job's plus role and index."""
    return {
        **job_labels(job_name),
        LABEL_ROLE: role.value,
        LABEL_INDEX: str(index),
        "app.kubernetes.io/component": role.value,
    }


def owner_reference(job_name: str, uid: str) -> Obj:
    """The controller ownerReference that makes a child garbage-collected with its job."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job_name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_replica(pod: Obj) -> tuple[ReplicaType, int] | None:
    """The (role, index) a pod's labels name, or None for a pod that is not a valid replica."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    try:
        return ReplicaType(labels[LABEL_ROLE]), int(labels[LABEL_INDEX])
    except (KeyError, ValueError):
        return None


def controller_uid(obj: Obj) -> str | None:
    """The UID of the object's controlling owner, if any."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((ref.get("uid") for ref in refs if ref.get("controller")), None)
