"""The operator reads what the trainer writes: the shared examples in tests/contract/ (docs/contract.md).

tests/trainer/test_contract.py checks that the trainer writes the same files; neither imports the other side.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from disttrain_operator import builders, local, local_console
from disttrain_operator.api import DistTrainJobStatus, ReplicaType, RestartPolicy, TrainingResults
from disttrain_operator.lifecycle import (
    ReplicaObservation,
    describe_failure,
    is_retryable,
    reconcile,
    reporting_replica,
    training_results,
)
from disttrain_operator.local_processes import FINAL_PREFIX, LocalReplica
from disttrain_operator.policy import OPERATOR_ENV, OUTPUT_DIR_ENV, REDACT_ENV
from disttrain_operator.restarts import PERMANENT_EXIT_CODES
from disttrain_operator.tfconfig import cluster_spec, service_address_of, tf_config_json

from .helpers import spec_from

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "tests" / "contract"
DOC = REPO / "docs" / "contract.md"
JOB, NAMESPACE, PORT = "mnist", "team-a", 2222  # the job the tf_config_*.json examples belong to
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def fixture(name: str) -> str:
    return (CONTRACT / name).read_text()


def fixture_json(name: str) -> Any:
    return json.loads(fixture(name))


def env_table() -> dict[str, dict[str, str]]:
    """docs/contract.md's environment-variable table: {name: {column: cell}}."""
    section = DOC.read_text().split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    table = {}
    for row in rows[2:]:
        cells = dict(zip(header, (cell.strip() for cell in row.strip("|").split("|")), strict=False))
        table[cells["variable"].strip("`")] = cells
    return table


def documented(column: str, who: str) -> set[str]:
    return {name for name, cells in env_table().items() if who in cells[column]}


def observation(role: str, index: int, phase: str, exit_code: int | None, message: str | None) -> ReplicaObservation:
    uid = f"{role}-{index}"
    return ReplicaObservation(ReplicaType(role), index, phase, uid=uid, exit_code=exit_code, message=message)


# ---------------------------------------------------------------- termination message on success


def test_final_metrics_fill_every_field_of_the_results() -> None:
    metrics = fixture_json("final_metrics.json")
    results = training_results(observation("chief", 0, "Succeeded", 0, fixture("final_metrics.json")))
    assert results is not None
    for name in TrainingResults.model_fields:
        assert name in metrics, name  # every key the operator keeps, the trainer writes
        assert getattr(results, name) == metrics[name], name
        assert getattr(results, name) is not None or name == "resumed_from_step", name  # null: a fresh run


def test_a_failure_message_is_no_results() -> None:
    assert training_results(observation("chief", 0, "Failed", 1, fixture("failure_message.txt"))) is None


def test_job_success_puts_the_reporting_replicas_metrics_into_status_results() -> None:
    spec = spec_from({"chief": {}, "worker": {"replicas": 2}, "ps": {}})
    observed = [
        observation("chief", 0, "Succeeded", 0, fixture("final_metrics.json")),
        observation("worker", 0, "Running", None, None),
        observation("worker", 1, "Running", None, None),
        observation("ps", 0, "Running", None, None),
    ]
    plan = reconcile(spec, observed, DistTrainJobStatus(), NOW)
    assert plan.status.is_true("Succeeded")
    assert plan.status.results == TrainingResults.model_validate(fixture_json("final_metrics.json"))


# ---------------------------------------------------------------- stdout lines (local mode)


def local_job(replica_specs: dict[str, Any]) -> tuple[local.LocalJob, io.StringIO]:
    out = io.StringIO()
    job = local.LocalJob(JOB, spec_from(replica_specs), Path("/nonexistent"), ["disttrain-trainer"], out, quiet=True)
    return job, out


def test_progress_lines_parse_to_the_documented_fields() -> None:
    lines = fixture("progress_lines.txt").splitlines()
    expected = fixture_json("progress_lines.json")
    assert len(lines) == len(expected) > 0
    for line, fields in zip(lines, expected, strict=True):
        assert local_console.parse_progress(line) == fields
        shown = local_console.format_progress(fields)
        assert shown.startswith(f"step {fields['step']} [")
        if not math.isnan(float(fields["loss"])):
            assert f"loss {float(fields['loss']):.4f}" in shown


def test_local_mode_turns_stdout_into_progress_and_results() -> None:
    """The reporting replica's stdout, as local mode reads it: progress lines are shown, the final line becomes the
    termination message and then status.results, as in a pod."""
    job, out = local_job({"chief": {}, "worker": {}, "ps": {}})
    chief = LocalReplica(ReplicaType.CHIEF, 0, [], {}, RestartPolicy.EXIT_CODE)
    stdout = fixture("progress_lines.txt") + "some log line\n" + fixture("final_line.txt")
    chief.pump(io.StringIO(stdout), job.console.replica_line)
    shown = out.getvalue().splitlines()
    assert len(shown) == len(fixture("progress_lines.txt").splitlines())  # quiet: progress only
    assert all(line.strip().startswith("chief-0 | step ") for line in shown)
    assert not fixture("final_line.txt").startswith("progress")
    chief.exit_code = 0
    results = training_results(chief.observe())
    assert results == TrainingResults.model_validate(fixture_json("final_metrics.json"))
    assert fixture("final_line.txt").startswith(FINAL_PREFIX)


# ---------------------------------------------------------------- termination message on failure


def test_failure_message_becomes_the_failed_condition() -> None:
    case = fixture_json("failure_condition.json")
    replica, expected = case["replica"], case["condition"]
    failed = observation(
        replica["role"], replica["index"], "Failed", replica["exit_code"], fixture("failure_message.txt")
    )
    assert describe_failure(failed, with_last_line=True) == expected["message"]
    spec = spec_from({"chief": {"restartPolicy": case["restart_policy"]}})
    plan = reconcile(spec, [failed], DistTrainJobStatus(), NOW)
    condition = plan.status.condition(expected["type"])
    assert condition is not None and condition.status == "True"
    assert (condition.reason, condition.message) == (expected["reason"], expected["message"])


def test_local_mode_failure_message_is_the_last_line_printed() -> None:
    case = fixture_json("failure_condition.json")
    job, _ = local_job({"chief": {}})
    chief = LocalReplica(ReplicaType.CHIEF, 0, [], {}, RestartPolicy.EXIT_CODE)
    chief.pump(io.StringIO("2026-01-01 INFO starting\n" + fixture("failure_message.txt")), job.console.replica_line)
    chief.exit_code = case["replica"]["exit_code"]
    assert describe_failure(chief.observe(), with_last_line=True) == case["condition"]["message"]


# ---------------------------------------------------------------- exit codes


def test_exit_codes() -> None:
    codes = fixture_json("exit_codes.json")
    low, high = codes["permanent_under_ExitCode"]
    assert (PERMANENT_EXIT_CODES.start, PERMANENT_EXIT_CODES.stop - 1) == (low, high)
    for name in ("error", "config_error", "chief_gone"):
        assert not is_retryable("ExitCode", observation("ps", 0, "Failed", codes[name], None)), name
    for code in codes["retryable_under_ExitCode"]:
        assert is_retryable("ExitCode", observation("ps", 0, "Failed", code, None)), code
    assert codes["success"] not in PERMANENT_EXIT_CODES


# ---------------------------------------------------------------- TF_CONFIG and the reporting rule


def spec_for(replicas: dict[str, int]) -> Any:
    storage = {"storage": {"claimName": "outputs"}} if replicas.get("evaluator") else {}  # the evaluator reads it
    return spec_from({role: {"replicas": count} for role, count in replicas.items()}, **storage)


@pytest.mark.parametrize("name", sorted(fixture_json("tf_config_expected.json")))
def test_tf_config_examples_are_what_the_operator_writes(name: str) -> None:
    expected = fixture_json("tf_config_expected.json")[name]
    example = fixture_json(name)
    spec = spec_for(expected["replicas"])
    role, index = example["task"]["type"], example["task"]["index"]
    written = tf_config_json(cluster_spec(spec, service_address_of(JOB, NAMESPACE, PORT)), role, index)
    assert json.loads(written) == example
    assert written == json.dumps(example, sort_keys=True, separators=(",", ":"))
    reports = reporting_replica(spec) == (ReplicaType(role), index)
    assert reports == expected["reports"]


def test_evaluator_is_left_out_of_the_cluster() -> None:
    assert "evaluator" not in fixture_json("tf_config_evaluator.json")["cluster"]


# ---------------------------------------------------------------- environment variables


def test_operator_env_vars_are_the_documented_ones() -> None:
    """Every variable the operator adds to the trainer container is in docs/contract.md, and the other way round."""
    env = [
        {"name": "USER_VAR", "value": "x"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ]
    spec = spec_from(
        {"chief": {"env": env}, "worker": {}, "ps": {}}, storage={"claimName": "runs", "mountPath": "/data"}
    )
    pod = builders.build_pod(JOB, NAMESPACE, "uid-1", spec, ReplicaType.CHIEF, 0)
    (container,) = pod["spec"]["containers"]
    added = {var["name"] for var in container["env"]} - {"USER_VAR", "TOKEN"}
    assert added == documented("set by", "operator")
    assert {OUTPUT_DIR_ENV, REDACT_ENV, *OPERATOR_ENV} <= added
    values = {var["name"]: var.get("value") for var in container["env"]}
    assert json.loads(values["TF_CONFIG"])["task"] == {"type": "chief", "index": 0}
    assert values[OUTPUT_DIR_ENV] == f"/data/{JOB}"
    assert values[REDACT_ENV] == "TOKEN"
    assert container["terminationMessagePolicy"] == "File"


def test_local_mode_env_vars_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local mode passes its own environment on (for PATH and the like) and adds the documented variables."""
    for name in list(os.environ):
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", "/home/someone")
    job, _ = local_job({"chief": {"env": [{"name": "USER_VAR", "value": "x"}]}})
    replica = job._replica(ReplicaType.CHIEF, 0)
    assert replica.env["HOME"] == "/home/someone"
    added = set(replica.env) - {"HOME", "USER_VAR"}
    assert added == documented("set by", "local mode")


def test_every_documented_variable_has_a_writer_and_a_reader() -> None:
    table = env_table()
    assert {"TF_CONFIG", "DISTTRAIN_OUTPUT_DIR", "DISTTRAIN_REDACT_ENV", "DISTTRAIN_TERMINATION_LOG"} <= set(table)
    for name, cells in table.items():
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), name
        assert cells["set by"] and cells["read by"], name
