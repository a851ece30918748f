"""Smoke suite: the local control plane is a real Kubernetes (issue 2)."""

from __future__ import annotations

import json
import subprocess

import controlplane
import pytest
from controlplane import (
    ANNOTATION_COMPLETE,
    ANNOTATION_FAIL_EXIT_CODE,
    ANNOTATION_TERMINATION_MESSAGE,
    GPU_NODES,
    GPU_RESOURCE,
    GPU_TOLERATION,
    wait_for,
)
from kubernetes import client

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "smoke.disttrain.io", "v1", "widgets"


@pytest.fixture(scope="module")
def widget_crd(k8s_client):
    """A namespaced CRD with a structural schema (replicas 1..10, size enum)."""
    ext = client.ApiextensionsV1Api(k8s_client)
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["replicas"],
                "properties": {
                    "replicas": {"type": "integer", "minimum": 1, "maximum": 10},
                    "size": {"type": "string", "enum": ["small", "large"]},
                },
            },
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                }
            ],
        },
    }
    ext.create_custom_resource_definition(crd)

    def established():
        got = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        return any(c.type == "Established" and c.status == "True" for c in (got.status.conditions or []))

    wait_for(established, timeout=30, what="CRD Established")
    yield crd
    ext.delete_custom_resource_definition(f"{PLURAL}.{GROUP}")


def _pod(
    name: str, gpus: int = 0, tolerate: bool = False, annotations: dict | None = None, owner: dict | None = None
) -> dict:
    container = {
        "name": "main",
        "image": "registry.invalid/disttrain/smoke:1",
        "command": ["true"],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
    }
    if gpus:
        container["resources"]["limits"] = {GPU_RESOURCE: str(gpus)}
    meta: dict = {"name": name, "annotations": annotations or {}}
    if owner:
        meta["ownerReferences"] = [owner]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "containers": [container],
            "restartPolicy": "Never",
            "tolerations": [GPU_TOLERATION] if tolerate else [],
        },
    }


def _unschedulable_message(core, namespace: str, name: str):
    pod = core.read_namespaced_pod(name, namespace)
    for c in pod.status.conditions or []:
        if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
            return c.message
    return None


def test_binaries_report_their_versions(control_plane):
    out = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    expected = controlplane.kube_version()
    assert out["clientVersion"]["gitVersion"] == expected
    assert out["serverVersion"]["gitVersion"] == expected
    nodes = control_plane.kubectl("get", "nodes", "-o", "name").stdout.split()
    assert sorted(nodes) == sorted(f"node/{n}" for n in controlplane.CPU_NODES + GPU_NODES)
    helm = subprocess.run(
        ["helm", "version", "--short"], capture_output=True, text=True, check=True, env=control_plane.env()
    )
    assert helm.stdout.startswith("v3.")


def test_crd_applied_and_served(k8s_client, widget_crd, namespace):
    custom = client.CustomObjectsApi(k8s_client)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"replicas": 3, "size": "small", "unknownField": "pruned"},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    got = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w1")
    assert got["spec"] == {"replicas": 3, "size": "small"}  # unknown field pruned by the schema
    # The status subresource is served separately from the main resource.
    got["status"] = {"phase": "Ready"}
    custom.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "w1", got)
    assert custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w1")["status"] == {"phase": "Ready"}


def test_schema_violation_rejected_with_api_server_message(k8s_client, widget_crd, namespace):
    custom = client.CustomObjectsApi(k8s_client)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": "bad"},
        "spec": {"replicas": 0, "size": "huge"},
    }
    with pytest.raises(client.ApiException) as info:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert info.value.status == 422
    message = json.loads(info.value.body)["message"]
    assert 'Widget.smoke.disttrain.io "bad" is invalid' in message
    assert "spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1" in message
    assert 'spec.size: Unsupported value: "huge"' in message


def test_gpu_pod_without_toleration_stays_pending(k8s_client, namespace):
    core = client.CoreV1Api(k8s_client)
    core.create_namespaced_pod(namespace, _pod("gpu-no-toleration", gpus=1))
    message = wait_for(
        lambda: _unschedulable_message(core, namespace, "gpu-no-toleration"),
        timeout=30,
        what="PodScheduled=False/Unschedulable",
    )
    assert "untolerated taint" in message and GPU_RESOURCE in message
    pod = core.read_namespaced_pod("gpu-no-toleration", namespace)
    assert pod.status.phase == "Pending" and not pod.spec.node_name


def test_gpu_pod_with_toleration_runs_on_gpu_node(k8s_client, namespace):
    core = client.CoreV1Api(k8s_client)
    core.create_namespaced_pod(namespace, _pod("gpu-tolerated", gpus=1, tolerate=True))

    def running():
        pod = core.read_namespaced_pod("gpu-tolerated", namespace)
        return pod if pod.status.phase == "Running" else None

    pod = wait_for(running, timeout=30, what="GPU pod Running")
    assert pod.spec.node_name in GPU_NODES
    assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)
    assert pod.status.container_statuses[0].state.running is not None
    assert pod.status.pod_ip


def test_too_many_gpus_is_unschedulable(k8s_client, namespace):
    core = client.CoreV1Api(k8s_client)
    too_many = controlplane.GPUS_PER_NODE + 1
    core.create_namespaced_pod(namespace, _pod("gpu-greedy", gpus=too_many, tolerate=True))
    message = wait_for(
        lambda: _unschedulable_message(core, namespace, "gpu-greedy"),
        timeout=30,
        what="PodScheduled=False/Unschedulable",
    )
    assert f"Insufficient {GPU_RESOURCE}" in message
    assert core.read_namespaced_pod("gpu-greedy", namespace).status.phase == "Pending"


def test_deleting_owner_garbage_collects_owned_pod(k8s_client, namespace):
    core = client.CoreV1Api(k8s_client)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    core.create_namespaced_pod(namespace, _pod("owned", owner=ref))
    wait_for(
        lambda: core.read_namespaced_pod("owned", namespace).status.phase == "Running",
        timeout=30,
        what="owned pod Running",
    )
    core.delete_namespaced_config_map("owner", namespace)

    def gone():
        try:
            core.read_namespaced_pod("owned", namespace)
            return False
        except client.ApiException as e:
            return e.status == 404

    wait_for(gone, timeout=60, what="garbage collection of the owned pod")


METRICS_MESSAGE = '{"accuracy":0.985,"steps":20}'


@pytest.mark.parametrize(
    ("annotations", "phase", "exit_code", "reason", "message"),
    [
        ({ANNOTATION_COMPLETE: "true"}, "Succeeded", 0, "Completed", None),
        ({ANNOTATION_FAIL_EXIT_CODE: "3"}, "Failed", 3, "Error", f"exit code 3 ({ANNOTATION_FAIL_EXIT_CODE})"),
        ({ANNOTATION_COMPLETE: "true", ANNOTATION_FAIL_EXIT_CODE: "137"}, "Failed", 137, "Error", None),
        ({ANNOTATION_COMPLETE: "true", ANNOTATION_TERMINATION_MESSAGE: METRICS_MESSAGE}, "Succeeded", 0, "Completed",
         METRICS_MESSAGE),
        ({ANNOTATION_FAIL_EXIT_CODE: "1", ANNOTATION_TERMINATION_MESSAGE: "error: no data"}, "Failed", 1, "Error",
         "error: no data"),
    ],
    ids=["complete", "fail-3", "fail-wins", "complete-with-message", "fail-with-message"],
)
def test_kwok_annotations_finish_pods(k8s_client, namespace, annotations, phase, exit_code, reason, message):
    core = client.CoreV1Api(k8s_client)
    core.create_namespaced_pod(namespace, _pod("finisher", annotations=annotations))

    def finished():
        pod = core.read_namespaced_pod("finisher", namespace)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    pod = wait_for(finished, timeout=30, what=f"pod {phase}")
    assert pod.status.phase == phase
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == exit_code
    assert terminated.reason == reason
    if message is not None:
        assert terminated.message == message


def test_annotation_patched_later_finishes_running_pod(k8s_client, namespace):
    core = client.CoreV1Api(k8s_client)
    core.create_namespaced_pod(namespace, _pod("late"))
    wait_for(
        lambda: core.read_namespaced_pod("late", namespace).status.phase == "Running", timeout=30, what="pod Running"
    )
    core.patch_namespaced_pod("late", namespace, {"metadata": {"annotations": {ANNOTATION_FAIL_EXIT_CODE: "42"}}})
    pod = wait_for(
        lambda: (p := core.read_namespaced_pod("late", namespace)).status.phase == "Failed" and p,
        timeout=30,
        what="pod Failed",
    )
    assert pod.status.container_statuses[0].state.terminated.exit_code == 42
