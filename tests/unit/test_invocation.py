"""One container_invocation for the pod builder and local mode: the same command, args and env precedence."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

from disttrain_operator import builders, local
from disttrain_operator.api import DistTrainJobStatus, ReplicaType
from disttrain_operator.invocation import container_invocation
from disttrain_operator.lifecycle import ReplicaObservation, reconcile
from disttrain_operator.policy import OUTPUT_DIR_ENV, TF_CONFIG_ENV

from .helpers import spec_from

SPEC = {
    "chief": {"replicas": 1, "env": [{"name": "LEVEL", "value": "chief"}]},
    "worker": {"replicas": 2, "args": ["--steps", "5"], "command": ["python", "-m", "mytrainer"]},
    "ps": {"replicas": 1, "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
}
JOB_LEVEL = {"env": [{"name": "LEVEL", "value": "job"}, {"name": "SHARED", "value": "1"}], "args": ["--epochs", "1"]}


def env_values(env: list[dict]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for var in env:  # later wins, as merge_named and the kubelet resolve duplicates
        values[var["name"]] = var.get("value")
    return values


def test_role_env_wins_over_job_env_and_the_operator_over_both():
    spec = spec_from(SPEC, **JOB_LEVEL)
    invocation = container_invocation(spec, ReplicaType.CHIEF, '{"task": 1}', "/out")
    values = env_values(invocation.env)
    assert values["LEVEL"] == "chief" and values["SHARED"] == "1"
    assert [var["name"] for var in invocation.env][-2:] == [TF_CONFIG_ENV, OUTPUT_DIR_ENV]
    assert (invocation.command, invocation.args) == (None, ["--epochs", "1"])
    worker = container_invocation(spec, ReplicaType.WORKER, "{}", None)
    assert (worker.command, worker.args) == (["python", "-m", "mytrainer"], ["--steps", "5"])
    assert OUTPUT_DIR_ENV not in env_values(worker.env)


def test_the_pod_and_the_local_process_run_the_same_invocation(tmp_path: Path):
    spec = spec_from(SPEC, **JOB_LEVEL)
    job = local.LocalJob("mnist", spec, tmp_path, ["disttrain-trainer"], io.StringIO(), quiet=True)
    for role, trainer_argv in ((ReplicaType.CHIEF, ["disttrain-trainer"]), (ReplicaType.WORKER, [])):
        pod = builders.build_pod("mnist", "ns", "uid", spec, role, 0)
        container = next(c for c in pod["spec"]["containers"] if c["name"] == "tensorflow")
        process = job._replica(role, 0)
        assert process.argv == [*(container.get("command") or trainer_argv), *container.get("args", [])]
        pod_env = env_values(container["env"])
        assert process.env["LEVEL"] == pod_env["LEVEL"]
        assert json.loads(process.env[TF_CONFIG_ENV])["task"] == json.loads(pod_env[TF_CONFIG_ENV])["task"]
        assert process.env[OUTPUT_DIR_ENV] == str(tmp_path)
    assert "TOKEN" not in job._replica(ReplicaType.PS, 0).env  # valueFrom is Kubernetes' to resolve


def test_a_failure_event_names_its_replica():
    spec = spec_from({"worker": {"replicas": 2}})
    failed = ReplicaObservation(ReplicaType.WORKER, 1, "Failed", uid="u1", exit_code=137)
    running = ReplicaObservation(ReplicaType.WORKER, 0, "Running", uid="u0", ready=True)
    plan = reconcile(spec, [running, failed], DistTrainJobStatus(), datetime(2026, 1, 1, tzinfo=UTC))
    assert [(e.reason, e.replica) for e in plan.events if e.reason == "PodFailed"] == [("PodFailed", ("worker", 1))]
