"""Validation and defaults of the DistTrainJob models."""

from __future__ import annotations

import pytest

from disttrain_operator.api import InvalidSpecError, ReplicaType, parse_manifest, parse_spec

from .helpers import ps_spec


def test_defaults_are_applied() -> None:
    spec = ps_spec()
    assert spec.port == 2222
    assert spec.run_policy.clean_pod_policy == "Running"
    assert spec.run_policy.backoff_limit == 6
    assert spec.success_policy == "ChiefOrWorker0"
    assert spec.replica_specs.worker is not None and spec.replica_specs.worker.restart_policy == "ExitCode"


def test_camel_case_fields_are_read() -> None:
    spec = ps_spec(runPolicy={"cleanPodPolicy": "All", "activeDeadlineSeconds": 60})
    assert spec.run_policy.clean_pod_policy == "All"
    assert spec.run_policy.active_deadline_seconds == 60


@pytest.mark.parametrize(
    ("replica_specs", "fragment"),
    [
        ({"chief": {"replicas": 2}}, "chief.replicas must be 0 or 1"),
        ({"worker": {"replicas": 1}, "evaluator": {"replicas": 2}}, "evaluator.replicas must be 0 or 1"),
        ({"ps": {"replicas": 2}, "worker": {"replicas": 2}}, "chief.replicas must be 1 when ps"),
        ({"chief": {"replicas": 1}, "ps": {"replicas": 1}}, "worker.replicas must be at least 1"),
        ({"evaluator": {"replicas": 1}}, "needs a chief or at least one worker"),
        ({"worker": {"replicas": -1}}, "spec.replicaSpecs.worker.replicas"),
        ({"worker": {"replicas": 1, "restartPolicy": "Sometimes"}}, "spec.replicaSpecs.worker.restartPolicy"),
        ({"worker": {"replicas": 1, "colour": "red"}}, "spec.replicaSpecs.worker.colour"),
        # the trainer container is found by name, never by position (#11)
        (
            {"worker": {"template": {"spec": {"containers": [{"name": "logger"}, {"name": "trainer"}]}}}},
            "spec.replicaSpecs.worker.template: template.spec.containers has no container named 'tensorflow'",
        ),
    ],
)
def test_invalid_specs_name_the_field(replica_specs: dict, fragment: str) -> None:
    with pytest.raises(InvalidSpecError, match=fragment.replace(".", r"\.")):
        parse_spec("mnist", {"replicaSpecs": replica_specs})


def test_long_names_are_refused_before_pods_exist() -> None:
    name = "a" * 54
    with pytest.raises(InvalidSpecError, match="too long"):
        parse_spec(name, {"replicaSpecs": {"worker": {"replicas": 100}}})
    parse_spec(name, {"replicaSpecs": {"worker": {"replicas": 10}}})  # 54 + len("-worker-") + 1 digit = 63 fits


def test_job_name_must_be_a_dns_label() -> None:
    with pytest.raises(InvalidSpecError, match="DNS label"):
        parse_spec("my.job", {"replicaSpecs": {"worker": {"replicas": 1}}})


def test_manifest_checks_kind_and_version() -> None:
    with pytest.raises(InvalidSpecError, match=r"apiVersion disttrain\.io/v1alpha1"):
        parse_manifest({"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": "x"}, "spec": {}})
    namespace, name, spec = parse_manifest(
        {
            "apiVersion": "disttrain.io/v1alpha1",
            "kind": "DistTrainJob",
            "metadata": {"name": "x"},
            "spec": {"replicaSpecs": {"worker": {"replicas": 3}}},
        }
    )
    assert (namespace, name, spec.replica_specs.count(ReplicaType.WORKER)) == ("default", "x", 3)


def test_wire_form_round_trips() -> None:
    spec = ps_spec(storage={"claimName": "shared"})
    wire = spec.to_wire()
    assert wire["storage"] == {"claimName": "shared", "mountPath": "/var/lib/disttrain"}
    assert parse_spec("mnist", wire) == spec


@pytest.mark.parametrize(
    ("body", "role"),
    [
        ({"replicaSpecs": {"chief": {"restartPolicy": "Always"}, "worker": {}}}, "chief"),
        ({"replicaSpecs": {"worker": {"replicas": 2, "restartPolicy": "Always"}}}, "worker"),
        (
            {"replicaSpecs": {"chief": {}, "worker": {"restartPolicy": "Always"}}, "successPolicy": "AllWorkers"},
            "worker",
        ),
    ],
)
def test_always_is_refused_where_it_would_keep_the_job_from_succeeding(body: dict, role: str) -> None:
    with pytest.raises(InvalidSpecError, match=rf"spec\.replicaSpecs\.{role}\.restartPolicy: Always"):
        parse_spec("mnist", body)
    parse_spec("mnist", {"replicaSpecs": {"chief": {}, "ps": {"restartPolicy": "Always"}, "worker": {}}})
