"""`disttrain run`: the job's semantics with local processes (a fake trainer keeps these fast)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from disttrain_operator import api, local
from disttrain_operator.api import InvalidSpecError, ReplicaType, parse_spec
from disttrain_operator.local import run_manifest
from disttrain_operator.local_console import format_progress, parse_progress

FAKE_TRAINER = f"{sys.executable} {Path(__file__).with_name('fake_trainer.py')}"


def write_job(tmp_path: Path, replica_specs: dict[str, Any], **spec: Any) -> Path:
    manifest = {
        "apiVersion": "disttrain.io/v1alpha1",
        "kind": "DistTrainJob",
        "metadata": {"name": "fake"},
        "spec": {"replicaSpecs": replica_specs, **spec},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


PS_JOB = {"chief": {"replicas": 1}, "ps": {"replicas": 2}, "worker": {"replicas": 2}}
# a failure must be seen before the chief finishes: a finished chief decides the job first (success policy)
SLOW_CHIEF = {"chief-0": {"slow": 30}}


def run(tmp_path: Path, job: Path, plan: dict[str, Any] | None = None, quiet: bool = False) -> tuple[int, str]:
    os.environ["FAKE_PLAN"] = json.dumps(plan or {})
    out = io.StringIO()
    try:
        code = run_manifest(job, output_dir=tmp_path / "out", trainer=FAKE_TRAINER, out=out, quiet=quiet)
    finally:
        del os.environ["FAKE_PLAN"]
    return code, out.getvalue()


def pids_of(output: Path) -> list[int]:
    folder = output / "pids"
    # the fake trainer writes each file under a dot name first, then renames it
    return [int(p.read_text()) for p in folder.iterdir() if not p.name.startswith(".")] if folder.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is dead for our purpose
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def test_parameter_server_job_succeeds_and_every_server_exits(tmp_path: Path) -> None:
    # ps-1 is slow to notice the chief is done: the outcome must not cut it short
    code, output = run(tmp_path, write_job(tmp_path, PS_JOB), {"ps-1": {"linger": 2}})
    assert code == 0, output
    assert "job fake: Succeeded" in output
    assert "accuracy:    98.00% (held out)" in output
    assert "step 20/20 [" in output
    for name in ("ps-0", "ps-1", "worker-0", "worker-1"):
        assert f"{name} exiting: the chief is done" in output
    assert "still running after the job finished" not in output
    assert len(pids_of(tmp_path / "out")) == 5
    assert not [pid for pid in pids_of(tmp_path / "out") if alive(pid)]


def test_a_server_still_running_after_success_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "SELF_EXIT_GRACE_SECONDS", 5.0)  # time enough for the others, under load too
    code, output = run(tmp_path, write_job(tmp_path, PS_JOB), {"ps-0": {"hang": True}})  # ignores SIGTERM too
    assert code == 0, output
    assert "job fake: Succeeded" in output
    assert "stopping ps-0: still running after the job finished" in output
    assert "ps-1 exiting: the chief is done" in output
    assert not [pid for pid in pids_of(tmp_path / "out") if alive(pid)]


def test_tf_config_points_every_replica_at_loopback_ports(tmp_path: Path) -> None:
    code, _ = run(
        tmp_path,
        write_job(
            tmp_path,
            {
                "worker": {
                    "replicas": 1,
                    "command": [
                        sys.executable,
                        "-c",
                        "import json, os, pathlib; c = json.loads(os.environ['TF_CONFIG']); "
                        "pathlib.Path(os.environ['DISTTRAIN_OUTPUT_DIR'], 'tf_config.json').write_text(json.dumps(c))",
                    ],
                }
            },
        ),
    )
    assert code == 0
    config = json.loads((tmp_path / "out" / "tf_config.json").read_text())
    assert config["task"] == {"type": "worker", "index": 0}
    (address,) = config["cluster"]["worker"]
    assert address.startswith("127.0.0.1:") and int(address.split(":")[1]) > 0


def test_never_policy_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    job = write_job(tmp_path, {**PS_JOB, "worker": {"replicas": 2, "restartPolicy": "Never"}})
    code, output = run(tmp_path, job, {"worker-1": {"exit": 3}, **SLOW_CHIEF})
    assert code == 1
    assert "reason:      PodFailed: worker-1 exited with code 3: worker-1 failing with 3" in output  # its last line
    assert not [pid for pid in pids_of(tmp_path / "out") if alive(pid)]


def test_quiet_mode_still_shows_why_a_replica_failed(tmp_path: Path) -> None:
    job = write_job(tmp_path, {**PS_JOB, "worker": {"replicas": 2, "restartPolicy": "Never"}})
    code, output = run(tmp_path, job, {"worker-1": {"exit": 3}, **SLOW_CHIEF}, quiet=True)
    assert code == 1
    assert "   worker-1 | worker-1 failing with 3" in output
    assert "ps-0 exiting" not in output  # other replicas' lines stay hidden


def test_on_failure_restarts_until_the_backoff_limit(tmp_path: Path) -> None:
    job = write_job(
        tmp_path, {**PS_JOB, "worker": {"replicas": 2, "restartPolicy": "OnFailure"}}, runPolicy={"backoffLimit": 2}
    )
    code, output = run(tmp_path, job, {"worker-1": {"exit": 3}, **SLOW_CHIEF})
    assert code == 1
    assert "BackoffLimitExceeded: 3 restarts exceed backoffLimit 2" in output
    # three restarts happened; the fourth process may be stopped before it records its attempt
    assert int((tmp_path / "out" / "worker-1.attempts").read_text()) in (3, 4)
    assert "restarting worker-1 (restartPolicy OnFailure)" in output


def test_on_failure_recovers_from_a_transient_failure(tmp_path: Path) -> None:
    job = write_job(tmp_path, {**PS_JOB, "worker": {"replicas": 2, "restartPolicy": "OnFailure"}})
    code, output = run(tmp_path, job, {"worker-1": {"exit": 3, "fail_times": 1}, "chief-0": {"slow": 3}})
    assert code == 0, output
    assert "restarting worker-1 (restartPolicy OnFailure)" in output
    assert "restarts: 1" in output


def test_exit_code_policy_recreates_a_killed_replica(tmp_path: Path) -> None:
    code, output = run(
        tmp_path, write_job(tmp_path, PS_JOB), {"ps-1": {"exit": 137, "fail_times": 1}, "chief-0": {"slow": 3}}
    )
    assert code == 0, output
    assert "ps-1 exited with code 137; recreating the pod (restartPolicy ExitCode)" in output


def test_exit_code_policy_stops_recreating_at_the_backoff_limit(tmp_path: Path) -> None:
    job = write_job(tmp_path, PS_JOB, runPolicy={"backoffLimit": 1})
    code, output = run(tmp_path, job, {"worker-0": {"exit": 137}, **SLOW_CHIEF})
    assert code == 1, output
    assert "BackoffLimitExceeded: 2 restarts exceed backoffLimit 1" in output
    # the first failure is recreated; the second exceeds the limit and is not (before, both said "recreating")
    assert output.count("worker-0 exited with code 137; recreating the pod") == 1


def test_suspended_job_runs_nothing(tmp_path: Path) -> None:
    code, output = run(tmp_path, write_job(tmp_path, PS_JOB, runPolicy={"suspend": True}))
    assert code == 0
    assert "is suspended" in output and not (tmp_path / "out").exists()


def test_invalid_manifest_fails_before_any_process_with_the_operators_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {"chief": {"replicas": 2}, "worker": {"replicas": 1}}
    code, _ = run(tmp_path, write_job(tmp_path, bad))
    assert code == 2
    with pytest.raises(InvalidSpecError) as operator_error:
        parse_spec("fake", {"replicaSpecs": bad})
    assert str(operator_error.value) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_leaves_no_process_alive(tmp_path: Path, signum: int) -> None:
    job = write_job(tmp_path, PS_JOB)
    env = {**os.environ, "FAKE_PLAN": json.dumps({"chief-0": {"hang": True, "child": True}, "ps-0": {"hang": True}})}
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "disttrain_operator.cli",
            "run",
            str(job),
            "--output-dir",
            str(tmp_path / "out"),
            "--trainer",
            FAKE_TRAINER,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(pids_of(tmp_path / "out")) < 6 and time.monotonic() < deadline:  # 5 replicas + the chief's child
        time.sleep(0.1)
    pids = pids_of(tmp_path / "out")
    assert len(pids) == 6
    runner.send_signal(signum)
    output, _ = runner.communicate(timeout=30)
    assert runner.returncode == 128 + signum, output
    assert f"{signal.Signals(signum).name}: stopping every replica" in output
    assert [pid for pid in pids if alive(pid)] == []


def test_progress_lines_are_parsed_and_drawn() -> None:
    fields = parse_progress("progress step=120/600 loss=0.2310 accuracy=0.9340 examples_per_sec=812.5")
    assert fields == {"step": "120/600", "loss": "0.2310", "accuracy": "0.9340", "examples_per_sec": "812.5"}
    assert format_progress(fields, width=10) == "step 120/600 [##........]  20%  loss 0.2310  acc 93.40%  812 ex/s"
    assert parse_progress("INFO something else") is None


def write_raw_job(tmp_path: Path, replica_specs: str, extra: str = "") -> Path:
    """A manifest written by hand, so that its scalars are typed by the loader, not by yaml.safe_dump's quoting."""
    path = tmp_path / "job.yaml"
    path.write_text(
        "apiVersion: disttrain.io/v1alpha1\nkind: DistTrainJob\nmetadata:\n  name: fake\nspec:\n"
        f"  replicaSpecs:\n{replica_specs}{extra}"
    )
    return path


def test_replicas_written_as_1e9_are_refused_quickly_as_kubectl_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # kubectl (go-yaml v2) reads 1e9 as the number 1000000000; PyYAML's YAML 1.1 resolver read it as a string
    job = write_raw_job(tmp_path, "    chief:\n      replicas: 1\n    worker:\n      replicas: 1e9\n")
    started = time.monotonic()
    code, _ = run(tmp_path, job)
    assert time.monotonic() - started < 5  # refused by validation, no billion-replica plan built first
    assert code == 2
    err = capsys.readouterr().err
    assert "spec.replicaSpecs.worker.replicas" in err
    assert f"less than or equal to {api.MAX_REPLICAS}" in err
    assert not (tmp_path / "out").exists()


def test_numbers_in_exponent_form_are_numbers_as_in_kubectl(tmp_path: Path) -> None:
    job = write_raw_job(tmp_path, "    chief:\n      replicas: 1\n    worker:\n      replicas: 2e0\n")
    _, _, spec = api.parse_manifest(local.load_manifest(job))
    assert spec.replica_specs.count(ReplicaType.WORKER) == 2


@pytest.mark.parametrize(
    ("scalar", "kubectl_value"),
    [
        ("1e9", 1_000_000_000),  # a whole float reaches the API server as an integer (kubectl sends JSON)
        ("1E9", 1_000_000_000),
        ("2.0", 2),
        ("-2.5e-3", -2.5e-3),
        (".5", 0.5),
        ("1.5", 1.5),
        ("12", 12),
        ("0x1F", 31),
        ("0o17", 15),
        ("1_000", 1000),
        (".inf", float("inf")),
        ("'1e9'", "1e9"),  # quoted: a string, as everywhere
        ("yes", True),  # go-yaml v2 keeps the YAML 1.1 booleans...
        ("off", False),
        ("y", True),  # ...including y and n, which PyYAML reads as strings
        ("n", False),
        ("~", None),
        ("1:30", "1:30"),  # base 60 is YAML 1.1 only: go-yaml v2 reads a string (PyYAML read 90)
        ("2024-01-02", "2024-01-02"),  # go-yaml v2 keeps timestamps as strings in an untyped value
        ("1e999", "1e999"),  # Go's ParseFloat overflows: a string
        ("10Gi", "10Gi"),
        ("127.0.0.1", "127.0.0.1"),
    ],
)
def test_scalars_are_typed_as_kubectl_types_them(tmp_path: Path, scalar: str, kubectl_value: object) -> None:
    path = write_raw_job(tmp_path, "    chief:\n      replicas: 1\n", f"  value: {scalar}\n")
    value = local.load_manifest(path)["spec"]["value"]
    assert value == kubectl_value and type(value) is type(kubectl_value)


def test_a_learning_rate_in_args_stays_a_string(tmp_path: Path) -> None:
    args = '  args:\n  - --learning-rate\n  - "1e-3"\n  - --learning-rate=2.5e-3\n  - "0.05"\n'
    job = write_raw_job(tmp_path, "    chief:\n      replicas: 1\n", args)
    _, _, spec = api.parse_manifest(local.load_manifest(job))
    assert spec.args == ["--learning-rate", "1e-3", "--learning-rate=2.5e-3", "0.05"]
