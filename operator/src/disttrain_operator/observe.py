"""What a replica's pod tells the operator back: the observation `lifecycle` decides on (pure functions)."""

from __future__ import annotations

from typing import Any

from .lifecycle import ReplicaObservation
from .names import LABEL_INDEX, LABEL_ROLE, pod_replica
from .policy import TRAINER_CONTAINER

# Container termination reasons that say nothing beyond the exit code.
UNINFORMATIVE_REASONS = {"Error", "Completed"}

Obj = dict[str, Any]


def _trainer_status(pod: Obj) -> Obj:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == TRAINER_CONTAINER), {})


def trainer_outcome(pod: Obj, trainer: Obj) -> str | None:
    """Succeeded or Failed when the trainer container has ended for good while the pod still runs (a plain
    sidecar keeps the pod Running), else None. For good: the kubelet will not restart it under the pod's
    restartPolicy (Never; OnFailure after exit 0). Native sidecars (init containers with restartPolicy Always)
    need none of this: the kubelet ends them and the pod's phase says it."""
    ended = (trainer.get("state") or {}).get("terminated")
    if not ended or "exitCode" not in ended:
        return None
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    if not any(s.get("name") != TRAINER_CONTAINER and "running" in (s.get("state") or {}) for s in statuses):
        return None  # no sidecar runs: the kubelet is about to set the pod's phase itself (a real kubelet lags)
    code, policy = ended["exitCode"], (pod.get("spec") or {}).get("restartPolicy", "Always")
    if policy == "Never" or (policy == "OnFailure" and code == 0):
        return "Succeeded" if code == 0 else "Failed"
    return None


def observe_pod(pod: Obj) -> ReplicaObservation:
    """What lifecycle needs of a replica's pod: phase, readiness, exit code, restarts, reason, deletion, and
    the trainer's termination message."""
    replica = pod_replica(pod)
    if replica is None:
        raise ValueError(f"pod {pod.get('metadata', {}).get('name')!r} lacks valid {LABEL_ROLE}/{LABEL_INDEX} labels")
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    trainer = _trainer_status(pod)
    terminated = (trainer.get("state") or {}).get("terminated") or (trainer.get("lastState") or {}).get("terminated")
    terminated = terminated or {}
    reason = status.get("reason") or terminated.get("reason")
    ended = trainer_outcome(pod, trainer) if phase == "Running" else None
    return ReplicaObservation(
        role=replica[0],
        index=replica[1],
        phase=ended or (phase if phase in ("Pending", "Running", "Succeeded", "Failed") else "Unknown"),
        sidecars_running=ended is not None,
        uid=metadata.get("uid", ""),
        ready=ready,
        exit_code=terminated.get("exitCode"),
        restarts=int(trainer.get("restartCount") or 0),
        reason=None if reason in UNINFORMATIVE_REASONS else reason,
        deleting=metadata.get("deletionTimestamp") is not None,
        message=terminated.get("message") or None,
    )
