"""Pods, Service and TF_CONFIG built for a job, and what a pod tells the lifecycle back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from disttrain_operator.api import DistTrainJobSpec, ReplicaType, parse_spec
from disttrain_operator.builders import (
    GPU_TOLERATION,
    REDACT_ENV,
    build_network_policy,
    build_pod,
    build_service,
    build_task_service,
    deep_merge,
)
from disttrain_operator.names import LABEL_INDEX, LABEL_JOB, LABEL_ROLE
from disttrain_operator.observe import observe_pod
from disttrain_operator.policy import TemplatePolicy

JOB, NS, UID = "mnist", "team-a", "3f1c0d5e-0000-4000-8000-000000000001"


def make_spec(**replica_specs: dict[str, Any]) -> DistTrainJobSpec:
    return parse_spec(JOB, {"replicaSpecs": replica_specs or {"worker": {"replicas": 2}}})


def make_spec_with_host_access(**replica_specs: dict[str, Any]) -> DistTrainJobSpec:
    """As installed with the chart's opt-in templatePolicy.allowHostAccess."""
    return parse_spec(JOB, {"replicaSpecs": replica_specs}, TemplatePolicy(allow_host_access=True))


def pod_for(spec: DistTrainJobSpec, role: str = "worker", index: int = 0) -> dict[str, Any]:
    return build_pod(JOB, NS, UID, spec, ReplicaType(role), index)


def container(pod: dict[str, Any], name: str = "tensorflow") -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


def env_of(pod: dict[str, Any], name: str = "tensorflow") -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(pod, name).get("env", [])}


# ---------------------------------------------------------------- service


def test_each_training_task_has_its_own_service_in_front_of_its_pod() -> None:
    spec = make_spec()
    service = build_task_service(JOB, NS, UID, spec, ReplicaType.WORKER, 1)
    assert service["metadata"]["name"] == "mnist-worker-1"
    assert service["metadata"]["ownerReferences"][0]["uid"] == UID
    assert "clusterIP" not in service["spec"], "a virtual IP that stays when the pod is recreated"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {LABEL_JOB: JOB, LABEL_ROLE: "worker", LABEL_INDEX: "1"}
    assert service["spec"]["ports"] == [{"name": "tf-port", "port": 2222, "targetPort": 2222, "protocol": "TCP"}]


def test_service_is_one_headless_service_publishing_not_ready_addresses() -> None:
    spec = parse_spec(JOB, {"port": 3333, "replicaSpecs": {"worker": {"replicas": 2}}})
    service = build_service(JOB, NS, UID, spec)
    assert service["metadata"]["name"] == JOB and service["metadata"]["namespace"] == NS
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {LABEL_JOB: JOB}
    assert service["spec"]["ports"] == [{"name": "tf-port", "port": 3333, "targetPort": 3333, "protocol": "TCP"}]
    (owner,) = service["metadata"]["ownerReferences"]
    assert owner["uid"] == UID and owner["controller"] is True and owner["kind"] == "DistTrainJob"


# ---------------------------------------------------------------- pod identity


def test_pod_identity_labels_owner_and_dns() -> None:
    pod = pod_for(make_spec(), "worker", 1)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "mnist-worker-1" and meta["namespace"] == NS
    assert spec["hostname"] == "mnist-worker-1" and spec["subdomain"] == JOB
    assert meta["labels"][LABEL_JOB] == JOB
    assert meta["labels"][LABEL_ROLE] == "worker" and meta["labels"][LABEL_INDEX] == "1"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "disttrain-operator"
    (owner,) = meta["ownerReferences"]
    assert owner == {
        "apiVersion": "disttrain.io/v1alpha1",
        "kind": "DistTrainJob",
        "name": JOB,
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert container(pod)["ports"] == [{"name": "tf-port", "containerPort": 2222, "protocol": "TCP"}]


def test_tf_config_in_env_and_annotation_is_parsed_by_tensorflow() -> None:
    import tensorflow as tf

    resolver_class = tf.distribute.cluster_resolver.TFConfigClusterResolver

    replicas = {"chief": {}, "ps": {"replicas": 2}, "worker": {"replicas": 3}, "evaluator": {"replicas": 1}}
    spec = parse_spec(JOB, {"replicaSpecs": replicas, "storage": {"claimName": "outputs"}})

    def address(role: str, index: int) -> str:
        return f"mnist-{role}-{index}.team-a.svc:2222"

    expected = {
        "chief": [address("chief", 0)],
        "ps": [address("ps", i) for i in range(2)],
        "worker": [address("worker", i) for i in range(3)],
    }
    for role, count in (("chief", 1), ("ps", 2), ("worker", 3), ("evaluator", 1)):
        for index in range(count):
            pod = pod_for(spec, role, index)
            config = env_of(pod)["TF_CONFIG"]
            assert "annotations" not in pod["metadata"]  # TF_CONFIG once per pod: pods grow with the job
            assert json.loads(config)["environment"] == "cloud"
            resolver = resolver_class()
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("TF_CONFIG", config)
                assert resolver.cluster_spec().as_dict() == expected  # evaluator is never in the cluster
                assert (resolver.task_type, resolver.task_id) == (role, index)


# ---------------------------------------------------------------- what runs


def test_image_args_command_env_precedence() -> None:
    spec = parse_spec(
        JOB,
        {
            "image": "trainer:1",
            "args": ["--epochs=3"],
            "env": [{"name": "A", "value": "job"}, {"name": "B", "value": "job"}],
            "replicaSpecs": {
                "chief": {
                    "image": "trainer:chief",
                    "args": ["--chief"],
                    "command": ["python", "-m", "x"],
                    "env": [{"name": "B", "value": "chief"}],
                },
                "worker": {"replicas": 1},
            },
        },
    )
    chief, worker = container(pod_for(spec, "chief")), container(pod_for(spec, "worker"))
    assert (chief["image"], chief["args"], chief["command"]) == ("trainer:chief", ["--chief"], ["python", "-m", "x"])
    assert (worker["image"], worker["args"]) == ("trainer:1", ["--epochs=3"])
    assert "command" not in worker
    assert env_of(pod_for(spec, "chief"))["B"] == "chief"
    assert env_of(pod_for(spec, "worker"))["B"] == "job"


@pytest.mark.parametrize(
    ("policy", "pod_policy"),
    [("Never", "Never"), ("ExitCode", "Never"), ("OnFailure", "OnFailure"), ("Always", "Always")],
)
def test_restart_policy(policy: str, pod_policy: str) -> None:
    # the chief decides success, so the workers may use any policy (Always included)
    pod = pod_for(make_spec(chief={}, worker={"replicas": 1, "restartPolicy": policy}))
    assert pod["spec"]["restartPolicy"] == pod_policy


def test_secure_defaults_without_template() -> None:
    pod = pod_for(make_spec())
    assert pod["spec"]["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container(pod)["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_trainer_pods_mount_no_service_account_token_unless_the_template_asks() -> None:
    # The trainer never calls the API; a mounted token is only a credential to steal (#11).
    assert pod_for(make_spec())["spec"]["automountServiceAccountToken"] is False
    asking = make_spec(worker={"replicas": 1, "template": {"spec": {"automountServiceAccountToken": True}}})
    assert pod_for(asking)["spec"]["automountServiceAccountToken"] is True


def test_template_merged_under_operator_settings() -> None:
    template = {
        "metadata": {"labels": {"team": "a", LABEL_JOB: "spoofed"}, "annotations": {"note": "x"}},
        "spec": {
            "nodeSelector": {"disttrain.io/pool": "cpu"},
            "securityContext": {"runAsNonRoot": False, "runAsUser": 0},
            "containers": [
                {"name": "sidecar", "image": "busybox"},
                {
                    "name": "tensorflow",
                    "env": [{"name": "KEEP", "value": "1"}],
                    "resources": {"requests": {"cpu": "1"}},
                    "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
                },
            ],
        },
    }
    spec = make_spec_with_host_access(
        worker={"replicas": 1, "image": "trainer:2", "template": template, "resources": {"limits": {"memory": "2Gi"}}}
    )
    pod = pod_for(spec)
    meta, pod_spec = pod["metadata"], pod["spec"]
    assert meta["labels"]["team"] == "a" and meta["labels"][LABEL_JOB] == JOB
    assert meta["annotations"] == {"note": "x"}
    assert pod_spec["nodeSelector"] == {"disttrain.io/pool": "cpu"}
    assert (pod_spec["restartPolicy"], pod_spec["hostname"]) == ("Never", "mnist-worker-0")
    assert [c["name"] for c in pod_spec["containers"]] == ["sidecar", "tensorflow"]
    trainer = container(pod)
    assert trainer["image"] == "trainer:2"
    assert env_of(pod)["KEEP"] == "1" and json.loads(env_of(pod)["TF_CONFIG"])["task"] == {"type": "worker", "index": 0}
    assert trainer["resources"] == {"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}}
    # The user's explicit security choices stay; only what they left unset gets the secure default.
    assert pod_spec["securityContext"] == {
        "runAsNonRoot": False,
        "runAsUser": 0,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert trainer["securityContext"]["capabilities"] == {"add": ["NET_ADMIN"], "drop": ["ALL"]}
    assert container(pod, "sidecar")["securityContext"]["allowPrivilegeEscalation"] is False
    assert "ports" not in container(pod, "sidecar") and "TF_CONFIG" not in env_of(pod, "sidecar")
    assert spec.replica_specs.worker.template == template  # the spec itself is never mutated


def test_the_trainer_is_the_container_named_tensorflow_never_the_first() -> None:
    # Tried as a new user would: a log shipper listed first got the trainer image, TF_CONFIG and the port (#11).
    logger = {"name": "logger", "image": "fluentbit", "args": ["-c", "/etc/fluent.conf"]}
    template = {"spec": {"containers": [logger, {"name": "tensorflow"}]}}
    pod = pod_for(make_spec(worker={"replicas": 1, "template": template}))
    first = pod["spec"]["containers"][0]
    assert first == {**logger, "securityContext": first["securityContext"]}  # as written, plus secure defaults
    assert "TF_CONFIG" in env_of(pod, "tensorflow")
    assert container(pod, "tensorflow")["ports"][0]["containerPort"] == 2222


def test_gpus_set_limit_and_toleration_once() -> None:
    template = {"spec": {"tolerations": [dict(GPU_TOLERATION)]}}
    pod = pod_for(make_spec(worker={"replicas": 1, "gpus": 2, "template": template}))
    assert container(pod)["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert pod["spec"]["tolerations"] == [GPU_TOLERATION]
    assert "tolerations" not in pod_for(make_spec())["spec"]


def test_storage_mounts_claim_and_sets_output_dir() -> None:
    spec = parse_spec(
        JOB, {"storage": {"claimName": "runs", "mountPath": "/data/"}, "replicaSpecs": {"worker": {"replicas": 1}}}
    )
    pod = pod_for(spec)
    assert pod["spec"]["volumes"] == [{"name": "disttrain-storage", "persistentVolumeClaim": {"claimName": "runs"}}]
    assert container(pod)["volumeMounts"] == [{"name": "disttrain-storage", "mountPath": "/data/"}]
    assert env_of(pod)["DISTTRAIN_OUTPUT_DIR"] == "/data/mnist"
    assert "DISTTRAIN_OUTPUT_DIR" not in env_of(pod_for(make_spec()))


def test_deep_merge_replaces_lists_and_keeps_inputs() -> None:
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    merged = deep_merge(base, {"a": {"c": [2], "e": 3}})
    assert merged == {"a": {"b": 1, "c": [2], "e": 3}, "d": 1}
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1}


# ---------------------------------------------------------------- observing pods


def pod_with_status(status: dict[str, Any], **meta: Any) -> dict[str, Any]:
    pod = pod_for(make_spec(), "worker", 1)
    pod["metadata"].update(uid="pod-uid", **meta)
    pod["status"] = status
    return pod


def trainer_status(state: dict[str, Any], restarts: int = 0, last: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": "tensorflow", "state": state, "lastState": last or {}, "restartCount": restarts}


def test_observe_pending_pod() -> None:
    seen = observe_pod(pod_with_status({}))
    assert (seen.role, seen.index, seen.phase, seen.uid) == (ReplicaType.WORKER, 1, "Pending", "pod-uid")
    assert (seen.ready, seen.exit_code, seen.restarts, seen.deleting) == (False, None, 0, False)


def test_observe_running_ready_pod_after_a_restart() -> None:
    status = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [
            trainer_status({"running": {}}, restarts=2, last={"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
        ],
    }
    seen = observe_pod(pod_with_status(status))
    assert (seen.phase, seen.ready, seen.restarts, seen.exit_code, seen.reason) == (
        "Running",
        True,
        2,
        137,
        "OOMKilled",
    )


@pytest.mark.parametrize(
    ("status", "exit_code", "reason"),
    [
        (
            {
                "phase": "Succeeded",
                "containerStatuses": [trainer_status({"terminated": {"exitCode": 0, "reason": "Completed"}})],
            },
            0,
            None,
        ),
        (
            {
                "phase": "Failed",
                "containerStatuses": [trainer_status({"terminated": {"exitCode": 1, "reason": "Error"}})],
            },
            1,
            None,
        ),
        (
            {
                "phase": "Failed",
                "containerStatuses": [trainer_status({"terminated": {"exitCode": 137, "reason": "OOMKilled"}})],
            },
            137,
            "OOMKilled",
        ),
        ({"phase": "Failed", "reason": "Evicted", "message": "low on memory"}, None, "Evicted"),
    ],
)
def test_observe_finished_pod(status: dict[str, Any], exit_code: int | None, reason: str | None) -> None:
    seen = observe_pod(pod_with_status(status))
    assert (seen.phase, seen.exit_code, seen.reason) == (status["phase"], exit_code, reason)


def test_trainer_reports_through_its_termination_message() -> None:
    trainer = container(pod_for(make_spec()))
    assert trainer["terminationMessagePolicy"] == "FallbackToLogsOnError"
    template = {"spec": {"containers": [{"name": "tensorflow", "terminationMessagePolicy": "File"}]}}
    chosen = container(pod_for(make_spec(worker={"replicas": 1, "template": template})))
    assert chosen["terminationMessagePolicy"] == "File"  # the user's choice stays
    metrics = '{"accuracy": 0.98}'
    terminated = {"terminated": {"exitCode": 0, "reason": "Completed", "message": metrics}}
    finished = {"phase": "Succeeded", "containerStatuses": [trainer_status(terminated)]}
    assert observe_pod(pod_with_status(finished)).message == metrics
    running = {"phase": "Running", "containerStatuses": [trainer_status({"running": {}})]}
    assert observe_pod(pod_with_status(running)).message is None


def test_observe_reads_the_trainer_container_not_a_sidecar() -> None:
    template = {"spec": {"containers": [{"name": "sidecar"}, {"name": "tensorflow"}]}}
    pod = pod_for(make_spec(worker={"replicas": 1, "template": template}))
    pod["status"] = {
        "phase": "Failed",
        "containerStatuses": [
            {"name": "sidecar", "state": {"terminated": {"exitCode": 2}}, "restartCount": 5},
            trainer_status({"terminated": {"exitCode": 143}}, restarts=1),
        ],
    }
    seen = observe_pod(pod)
    assert (seen.exit_code, seen.restarts) == (143, 1)


@pytest.mark.parametrize(
    ("policy", "code", "phase"),
    [
        ("Never", 0, "Succeeded"),
        ("Never", 3, "Failed"),
        ("OnFailure", 0, "Succeeded"),
        ("OnFailure", 3, "Running"),
        ("Always", 0, "Running"),
    ],  # OnFailure/Always: the kubelet starts the trainer again, the pod is still on
)
def test_a_running_sidecar_does_not_hide_the_trainers_end(policy: str, code: int, phase: str) -> None:
    pod = pod_with_status(
        {
            "phase": "Running",  # a plain sidecar keeps the pod Running after the trainer ended
            "containerStatuses": [
                {"name": "logger", "state": {"running": {}}},
                trainer_status({"terminated": {"exitCode": code}}),
            ],
        }
    )
    pod["spec"]["restartPolicy"] = policy
    seen = observe_pod(pod)
    assert seen.phase == phase and seen.sidecars_running == (phase != "Running")
    assert not seen.active or phase == "Running"


def test_a_trainer_that_ended_in_a_pod_without_sidecars_waits_for_the_kubelets_phase() -> None:
    # a real kubelet reports the container terminated a moment before the pod's phase: that is no sidecar
    pod = pod_with_status({"phase": "Running", "containerStatuses": [trainer_status({"terminated": {"exitCode": 0}})]})
    pod["spec"]["restartPolicy"] = "Never"
    seen = observe_pod(pod)
    assert seen.phase == "Running" and not seen.sidecars_running  # (make e2e caught the finished pods deleted)


def test_observe_deleting_and_unknown_phase() -> None:
    seen = observe_pod(pod_with_status({"phase": "Unknown"}, deletionTimestamp="2026-01-01T00:00:00Z"))
    assert seen.deleting and seen.phase == "Unknown" and not seen.active


def test_observe_rejects_pod_without_replica_labels() -> None:
    pod = pod_with_status({})
    del pod["metadata"]["labels"][LABEL_INDEX]
    with pytest.raises(ValueError, match="replica-index"):
        observe_pod(pod)


def test_network_policy_lets_only_the_jobs_pods_reach_the_tensorflow_port() -> None:
    spec = parse_spec(JOB, {"port": 2222, "replicaSpecs": {"worker": {"replicas": 2}}})
    policy = build_network_policy(JOB, NS, UID, spec)
    assert policy["metadata"]["ownerReferences"][0]["uid"] == UID
    own = {"matchLabels": {LABEL_JOB: JOB}}
    assert policy["spec"]["podSelector"] == own and policy["spec"]["policyTypes"] == ["Ingress"]
    tensorflow, others = policy["spec"]["ingress"]
    assert tensorflow == {"from": [{"podSelector": own}], "ports": [{"protocol": "TCP", "port": 2222}]}
    assert "from" not in others  # every other port stays as the cluster's other policies leave it
    tcp = [(p["port"], p["endPort"]) for p in others["ports"] if p["protocol"] == "TCP"]
    assert tcp == [(1, 2221), (2223, 65535)]
    assert {p["protocol"] for p in others["ports"]} == {"TCP", "UDP", "SCTP"}
    edge = build_network_policy(JOB, NS, UID, parse_spec(JOB, {"port": 65535, "replicaSpecs": {"worker": {}}}))
    assert [(p["port"], p["endPort"]) for p in edge["spec"]["ingress"][1]["ports"] if p["protocol"] == "TCP"] == [
        (1, 65534)
    ]


def test_secret_values_never_reach_the_termination_message() -> None:
    secret = {"secretKeyRef": {"name": "creds", "key": "token"}}
    env = [{"name": "TOKEN", "valueFrom": secret}, {"name": "A", "value": "1"}]
    spec = make_spec(worker={"replicas": 1, "env": env})
    trainer = container(pod_for(spec))
    assert trainer["terminationMessagePolicy"] == "File"  # the kubelet copies no log tail that could print it
    assert env_of(pod_for(spec))[REDACT_ENV] == "TOKEN"  # the trainer masks its value in its own message
    whole = make_spec(
        worker={
            "replicas": 1,
            "template": {
                "spec": {"containers": [{"name": "tensorflow", "envFrom": [{"secretRef": {"name": "creds"}}]}]}
            },
        }
    )
    assert container(pod_for(whole))["terminationMessagePolicy"] == "File"
    assert env_of(pod_for(whole))[REDACT_ENV] == "*"  # its keys are unknown here: the trainer hides every value
    plain = container(pod_for(make_spec(worker={"replicas": 1, "env": [{"name": "A", "value": "1"}]})))
    assert plain["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert REDACT_ENV not in {var["name"] for var in plain["env"]}
