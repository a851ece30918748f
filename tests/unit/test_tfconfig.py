"""TF_CONFIG and cluster addresses."""

from __future__ import annotations

import json

from disttrain_operator.api import ReplicaType
from disttrain_operator.tfconfig import cluster_spec, pod_name, service_address_of, tf_config_json

from .helpers import ps_spec, spec_from


def test_cluster_uses_each_tasks_own_service_name() -> None:
    # A Service per task (a stable virtual IP), not the pod's own DNS record: a recreated pod gets a new IP,
    # and TensorFlow keeps dialling the address it resolved first (seen on a real node).
    cluster = cluster_spec(ps_spec(workers=2, ps=1), service_address_of("mnist", "team-a", 2222))
    assert cluster == {
        "chief": ["mnist-chief-0.team-a.svc:2222"],
        "worker": ["mnist-worker-0.team-a.svc:2222", "mnist-worker-1.team-a.svc:2222"],
        "ps": ["mnist-ps-0.team-a.svc:2222"],
    }


def test_evaluator_is_not_part_of_the_training_cluster_but_gets_a_task() -> None:
    spec = spec_from({"chief": {}, "ps": {}, "worker": {}, "evaluator": {}}, storage={"claimName": "outputs"})
    cluster = cluster_spec(spec, service_address_of("j", "ns", 2222))
    assert "evaluator" not in cluster
    config = json.loads(tf_config_json(cluster, ReplicaType.EVALUATOR, 0))
    assert config["task"] == {"type": "evaluator", "index": 0}
    assert config["cluster"] == cluster
    assert config["environment"] == "cloud"


def test_zero_replica_roles_are_left_out() -> None:
    spec = spec_from({"chief": {"replicas": 1}, "worker": {"replicas": 0}})
    assert cluster_spec(spec, lambda role, i: f"{role.value}:{i}") == {"chief": ["chief:0"]}


def test_pod_name() -> None:
    assert pod_name("mnist", "worker", 3) == "mnist-worker-3"
