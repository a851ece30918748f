"""The fake nodes kwok serves and the pod lifecycle it plays (``kwok-stages.yaml`` beside this file).

The annotation names below are the ones ``kwok-stages.yaml`` selects on; a unit test keeps the two equal.
"""

from __future__ import annotations

from pathlib import Path

KWOK_STAGES_FILE = Path(__file__).with_name("kwok-stages.yaml")

ANNOTATION_COMPLETE = "kwok.disttrain.io/complete"
ANNOTATION_FAIL_EXIT_CODE = "kwok.disttrain.io/fail-exit-code"
ANNOTATION_DELAY = "kwok.disttrain.io/delay"
ANNOTATION_TERMINATION_MESSAGE = "kwok.disttrain.io/termination-message"
ANNOTATIONS = (ANNOTATION_COMPLETE, ANNOTATION_FAIL_EXIT_CODE, ANNOTATION_DELAY, ANNOTATION_TERMINATION_MESSAGE)

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
GPUS_PER_NODE = 4
CPU_NODES = ("kwok-cpu-0", "kwok-cpu-1")
GPU_NODES = ("kwok-gpu-0", "kwok-gpu-1")
NODE_CAPACITY = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "500Gi"}


def kwok_stages() -> str:
    """kwok's Stage objects (multi-document YAML with Go templates), as kwok's --config reads them."""
    return KWOK_STAGES_FILE.read_text()


def node_manifests(kubelet_version: str) -> list[dict]:
    """The fake Node objects: Ready, amd64/linux, NODE_CAPACITY; the GPU ones tainted with GPUs."""
    return [_node(i, name, name in GPU_NODES, kubelet_version) for i, name in enumerate(CPU_NODES + GPU_NODES)]


def _node(index: int, name: str, gpu: bool, kubelet_version: str) -> dict:
    resources = dict(NODE_CAPACITY, **({GPU_RESOURCE: str(GPUS_PER_NODE)} if gpu else {}))
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "disttrain.io/pool": "gpu" if gpu else "cpu",
        **({"nvidia.com/gpu.present": "true"} if gpu else {}),
    }
    node_info = dict.fromkeys(("kubeProxyVersion", "machineID", "systemUUID", "bootID"), "")
    node_info.update(kubeletVersion=kubelet_version, architecture="amd64", operatingSystem="linux")
    node_info.update(dict.fromkeys(("containerRuntimeVersion", "kernelVersion", "osImage"), "kwok"))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": labels,
        },
        "spec": {"taints": [GPU_TAINT]} if gpu else {},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": f"10.1.0.{10 + index}"},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": node_info,
        },
    }
