"""What the API server itself does with our generated CRD: defaults, CEL rules, explain, printer columns."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.cluster


def job(name: str, replica_specs: dict[str, Any], **spec: Any) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "disttrain.io/v1alpha1",
            "kind": "DistTrainJob",
            "metadata": {"name": name},
            "spec": {"replicaSpecs": replica_specs, **spec},
        }
    )


def apply(control_plane: Any, namespace: str, manifest: str, check: bool = True):
    return control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=manifest, check=check)


def test_server_applies_the_models_defaults(control_plane: Any, crd: None, namespace: str) -> None:
    apply(control_plane, namespace, job("defaults", {"chief": {}, "ps": {"replicas": 2}, "worker": {}}))
    stored = json.loads(control_plane.kubectl("get", "dtj", "defaults", "-n", namespace, "-o", "json").stdout)
    spec = stored["spec"]
    assert spec["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 6, "suspend": False}
    assert spec["replicaSpecs"]["worker"] == {"replicas": 1, "gpus": 0, "restartPolicy": "ExitCode"}
    assert spec["port"] == 2222 and spec["image"] == "disttrain/trainer:0.1.0"
    assert spec["successPolicy"] == "ChiefOrWorker0"


@pytest.mark.parametrize(
    ("name", "replica_specs", "message"),
    [
        ("two-chiefs", {"chief": {"replicas": 2}, "worker": {}}, "chief.replicas must be 0 or 1"),
        ("ps-no-chief", {"ps": {}, "worker": {}}, "ps replicas need exactly one chief"),
        ("ps-no-worker", {"chief": {}, "ps": {}}, "ps replicas need at least one worker"),
        ("only-evaluator", {"evaluator": {}}, "replicaSpecs needs a chief or at least one worker"),
        ("a" * 55, {"worker": {"replicas": 10}}, "pod names <name>-worker-<index> must fit"),
        ("negative", {"worker": {"replicas": -1}}, "should be greater than or equal to 0"),
        ("bad-policy", {"worker": {"restartPolicy": "Sometimes"}}, 'Unsupported value: "Sometimes"'),
        ("always-chief", {"chief": {"restartPolicy": "Always"}, "worker": {}}, "job could never succeed"),
        (
            "sidecar-first",
            {"worker": {"template": {"spec": {"containers": [{"name": "logger"}, {"name": "trainer"}]}}}},
            "template.spec.containers has no container named 'tensorflow'",
        ),
        (
            "sidecar-and-trainer",
            {"worker": {"template": {"spec": {"containers": [{"name": "logger"}, {"name": "tensorflow"}]}}}},
            None,
        ),
        # 52 characters: worker pods fit 63; an evaluator with 0 replicas makes no pod, so no limit from it
        ("zero-evaluator-" + "a" * 37, {"chief": {}, "worker": {}, "evaluator": {"replicas": 0}}, None),
    ],
)
def test_server_rejects_invalid_jobs_with_our_message(
    control_plane: Any, crd: None, namespace: str, name: str, replica_specs: dict, message: str | None
) -> None:
    result = apply(control_plane, namespace, job(name, replica_specs), check=False)
    if message is None:  # accepted, as pydantic accepts it ("same errors" both ways)
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_kubectl_explain_teaches_the_api(control_plane: Any, crd: None) -> None:
    out = control_plane.kubectl("explain", "dtj.spec.replicaSpecs.worker.restartPolicy").stdout
    assert "exit codes 1-127 are permanent" in out
    out = control_plane.kubectl("explain", "dtj.spec.runPolicy").stdout
    assert "cleanPodPolicy" in out and "activeDeadlineSeconds" in out


def test_status_subresource_and_printer_columns(control_plane: Any, crd: None, namespace: str) -> None:
    apply(control_plane, namespace, job("columns", {"chief": {}, "worker": {"replicas": 4}}))
    status = {
        "status": {
            "state": "Running",
            "restarts": 2,
            "replicaStatuses": {"chief": {"summary": "1/1"}, "worker": {"summary": "3/4"}},
            "results": {"accuracy": 0.9861, "steps": 1000},
            "conditions": [
                {
                    "type": "Running",
                    "status": "True",
                    "reason": "AllReplicasRunning",
                    "lastTransitionTime": "2026-11-25T12:00:00Z",
                }
            ],
        }
    }
    control_plane.kubectl(
        "patch", "dtj", "columns", "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    table = control_plane.kubectl("get", "dtj", "columns", "-n", namespace).stdout.split("\n")
    assert table[0].split() == ["NAME", "STATE", "CHIEF", "PS", "WORKERS", "RESTARTS", "ACCURACY", "AGE"]
    assert table[1].split()[:6] == ["columns", "Running", "1/1", "3/4", "2", "0.9861"]  # blank PS column: no ps
    control_plane.kubectl("wait", "--for=condition=Running", "dtj/columns", "-n", namespace, "--timeout=5s")


def test_a_running_jobs_topology_is_frozen_but_a_suspended_one_may_change(
    control_plane: Any, crd: None, namespace: str
) -> None:
    apply(control_plane, namespace, job("frozen", {"worker": {"replicas": 2}}))

    def patch(spec: dict[str, Any]) -> Any:
        return control_plane.kubectl("patch", "dtj", "frozen", "-n", namespace, "--type", "merge", "-p",
                                     json.dumps({"spec": spec}), check=False)

    refused = patch({"replicaSpecs": {"worker": {"replicas": 3}}})  # before: accepted, pods kept the old TF_CONFIG
    assert refused.returncode != 0 and "only spec.runPolicy may change while the job runs" in refused.stderr
    assert patch({"image": "other:1"}).returncode != 0
    assert patch({"runPolicy": {"backoffLimit": 9}}).returncode == 0  # the run policy may change
    assert patch({"runPolicy": {"suspend": True}, "replicaSpecs": {"worker": {"replicas": 3}}}).returncode == 0
    assert patch({"runPolicy": {"suspend": False}, "image": "other:1"}).returncode == 0  # resumed with the change
    stored = json.loads(control_plane.kubectl("get", "dtj", "frozen", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["replicaSpecs"]["worker"]["replicas"] == 3 and stored["spec"]["image"] == "other:1"
