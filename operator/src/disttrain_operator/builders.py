"""Service, NetworkPolicy and Pod objects for a validated job (pure functions; observe.py reads pods back).

The user's `template` is deep-merged *under* the operator's settings: names, labels the operator
selects on, the owner reference, hostname/subdomain, TF_CONFIG, the TensorFlow port and the restart
policy are always the operator's; everything else (node selectors, sidecars, volumes, security
contexts) is the user's to set. Secure defaults fill only what the template leaves unset.
"""

from __future__ import annotations

import copy
from typing import Any

from .api import DistTrainJobSpec, ReplicaSpec, ReplicaType
from .invocation import container_invocation
from .names import LABEL_INDEX, LABEL_JOB, LABEL_ROLE, job_labels, owner_reference, replica_labels
from .policy import REDACT_ENV, TRAINER_CONTAINER
from .restarts import RESTART_RULES
from .tfconfig import cluster_spec, pod_name, service_address_of, tf_config_json

PORT_NAME = "tf-port"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
STORAGE_VOLUME = "disttrain-storage"
MAX_PORT = 65535

Obj = dict[str, Any]


def _metadata(name: str, namespace: str, labels: dict[str, str], job_name: str, uid: str) -> Obj:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(job_name, uid)],
    }


def build_service(job_name: str, namespace: str, uid: str, spec: DistTrainJobSpec) -> Obj:
    """The job's one headless Service: `<pod>.<job>.<ns>.svc` resolves for every pod, ready or not."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job_name, namespace, job_labels(job_name), job_name, uid),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: job_name},
            "ports": [{"name": PORT_NAME, "port": spec.port, "targetPort": spec.port, "protocol": "TCP"}],
        },
    }


def build_task_service(
    job_name: str, namespace: str, uid: str, spec: DistTrainJobSpec, role: ReplicaType, index: int
) -> Obj:
    """The Service of one training task, named like its pod: a stable virtual IP (tfconfig's addresses) in front
    of whichever pod runs the task now, ready or not."""
    labels = replica_labels(job_name, role, index)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(pod_name(job_name, role, index), namespace, labels, job_name, uid),
        "spec": {
            "publishNotReadyAddresses": True,
            "selector": {key: labels[key] for key in (LABEL_JOB, LABEL_ROLE, LABEL_INDEX)},
            "ports": [{"name": PORT_NAME, "port": spec.port, "targetPort": spec.port, "protocol": "TCP"}],
        },
    }


def _ports_except(port: int) -> list[Obj]:
    """NetworkPolicy ports: every TCP port but `port`, every UDP and SCTP port."""
    tcp = [(1, port - 1), (port + 1, MAX_PORT)]
    ranges = [{"protocol": "TCP", "port": low, "endPort": high} for low, high in tcp if low <= high]
    return [*ranges, *({"protocol": p, "port": 1, "endPort": MAX_PORT} for p in ("UDP", "SCTP"))]


def build_network_policy(job_name: str, namespace: str, uid: str, spec: DistTrainJobSpec) -> Obj:
    """Only the job's own pods reach its TensorFlow port (gRPC has no authentication of its own); other ports of
    its pods stay as the cluster's other policies leave them."""
    own_pods = {"matchLabels": {LABEL_JOB: job_name}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(job_name, namespace, job_labels(job_name), job_name, uid),
        "spec": {
            "podSelector": own_pods,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": own_pods}], "ports": [{"protocol": "TCP", "port": spec.port}]},
                {"ports": _ports_except(spec.port)},
            ],
        },
    }


def deep_merge(base: Any, override: Any) -> Any:
    """`override` merged onto a copy of `base`: dicts merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def merge_named(items: list[Obj], updates: list[Obj], key: str = "name") -> list[Obj]:
    """A list of named items (env, ports, volumes) with `updates` replacing same-named ones in place."""
    merged = [copy.deepcopy(item) for item in items]
    positions = {item.get(key): position for position, item in enumerate(merged)}
    for update in updates:
        if update.get(key) in positions:
            merged[positions[update[key]]] = copy.deepcopy(update)
        else:
            positions[update.get(key)] = len(merged)
            merged.append(copy.deepcopy(update))
    return merged


def trainer_container_index(containers: list[Obj]) -> int | None:
    """Which container runs TensorFlow: the one named `tensorflow` (never a position), None if none is."""
    return next((i for i, c in enumerate(containers) if c.get("name") == TRAINER_CONTAINER), None)


def output_dir(spec: DistTrainJobSpec, job_name: str) -> str | None:
    """Where the trainer writes (DISTTRAIN_OUTPUT_DIR), when the job has shared storage."""
    return f"{spec.storage.mount_path.rstrip('/')}/{job_name}" if spec.storage else None


def _secure_defaults(pod_spec: Obj) -> None:
    """Restricted-profile settings, and no service-account token, wherever the template left them unset."""
    pod_spec.setdefault("automountServiceAccountToken", False)  # the trainer never calls the API
    pod_security = pod_spec.setdefault("securityContext", {})
    pod_security.setdefault("runAsNonRoot", True)
    pod_security.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    for container in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        security = container.setdefault("securityContext", {})
        security.setdefault("allowPrivilegeEscalation", False)
        security.setdefault("capabilities", {}).setdefault("drop", ["ALL"])


def _trainer_container(
    base: Obj, job_name: str, spec: DistTrainJobSpec, role: ReplicaType, replica: ReplicaSpec, tf_config: str
) -> Obj:
    """The TensorFlow container: the template's, with the operator's image, args, env, port, resources."""
    container = copy.deepcopy(base)
    container.setdefault("name", TRAINER_CONTAINER)
    # the trainer writes its final metrics there on success, its error on failure; otherwise the log tail says why
    container.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")
    container["image"] = replica.image or spec.image
    invocation = container_invocation(spec, role, tf_config, output_dir(spec, job_name))
    if invocation.command is not None:
        container["command"] = invocation.command
    if invocation.args:
        container["args"] = invocation.args
    container["env"] = merge_named(container.get("env", []), invocation.env)
    # Names of the trainer's variables whose values come from Secrets: the trainer masks those values in its failure
    # message, and the kubelet does not copy the log tail (terminationMessagePolicy File), so no Secret reaches the
    # job's conditions and events (docs/contract.md).
    secret_names = [var["name"] for var in container["env"] if "secretKeyRef" in (var.get("valueFrom") or {})]
    from_secrets = any("secretRef" in source for source in container.get("envFrom", []))
    if secret_names or from_secrets:
        hidden = [*secret_names, *(["*"] if from_secrets else [])]  # `*`: a whole Secret, its keys unknown here
        container["env"] = merge_named(container["env"], [{"name": REDACT_ENV, "value": ",".join(hidden)}])
        container["terminationMessagePolicy"] = "File"  # the log tail might print a Secret's value
    port = {"name": PORT_NAME, "containerPort": spec.port, "protocol": "TCP"}
    container["ports"] = merge_named([p for p in container.get("ports", []) if p.get("name") != PORT_NAME], [port])
    resources = container.get("resources", {})
    if replica.resources:
        resources = deep_merge(resources, replica.resources.to_wire())
    if replica.gpus:
        resources = deep_merge(resources, {"limits": {GPU_RESOURCE: str(replica.gpus)}})
    if resources:
        container["resources"] = {kind: {k: str(v) for k, v in amounts.items()} for kind, amounts in resources.items()}
    if spec.storage:
        mount = {"name": STORAGE_VOLUME, "mountPath": spec.storage.mount_path}
        container["volumeMounts"] = merge_named(container.get("volumeMounts", []), [mount])
    return container


def build_pod(job_name: str, namespace: str, uid: str, spec: DistTrainJobSpec, role: ReplicaType, index: int) -> Obj:
    """The pod of replica `<role>-<index>`, named `<job>-<role>-<index>`, with its TF_CONFIG."""
    role = ReplicaType(role)
    replica: ReplicaSpec = getattr(spec.replica_specs, role.value)
    if replica is None:
        raise ValueError(f"the job has no {role.value} replicas")
    template = copy.deepcopy(replica.template or {})
    config = tf_config_json(cluster_spec(spec, service_address_of(job_name, namespace, spec.port)), role, index)
    name = pod_name(job_name, role, index)

    user_meta = template.get("metadata") or {}
    metadata = _metadata(
        name, namespace, {**user_meta.get("labels", {}), **replica_labels(job_name, role, index)}, job_name, uid
    )
    # TF_CONFIG lives once per pod, in the trainer's env: it names every task, so a copy doubles every pod
    if user_meta.get("annotations"):
        metadata["annotations"] = dict(user_meta["annotations"])

    pod_spec: Obj = template.get("spec") or {}
    containers = pod_spec.get("containers") or []
    position = trainer_container_index(containers)
    if position is None:  # the API refuses other containers without it, so here the template listed none
        containers.append({"name": TRAINER_CONTAINER})
        position = len(containers) - 1
    containers[position] = _trainer_container(containers[position], job_name, spec, role, replica, config)
    pod_spec["containers"] = containers
    restart_policy = RESTART_RULES[replica.restart_policy].pod_restart_policy
    pod_spec.update(hostname=name, subdomain=job_name, restartPolicy=restart_policy)
    if replica.gpus and not any(t.get("key") == GPU_RESOURCE for t in pod_spec.get("tolerations", [])):
        pod_spec["tolerations"] = [*pod_spec.get("tolerations", []), dict(GPU_TOLERATION)]
    if spec.storage:
        volume = {"name": STORAGE_VOLUME, "persistentVolumeClaim": {"claimName": spec.storage.claim_name}}
        pod_spec["volumes"] = merge_named(pod_spec.get("volumes", []), [volume])
    _secure_defaults(pod_spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
