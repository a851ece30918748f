"""Secrets stay secret: the trainer's failure line, on stderr and in the termination message, hides the values
of the variables named in DISTTRAIN_REDACT_ENV (the operator names those that come from Secrets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from disttrain_trainer.failure import MASK, failure_line, redact, write_failure_message

SECRET = "s3cr3t-value-123"
# a job name TF_CONFIG does not know: the trainer's error quotes it
LEAKY_TF_CONFIG = json.dumps({"cluster": {SECRET: ["127.0.0.1:1"]}, "task": {"type": "chief", "index": 0}})


def run_trainer(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Runs the trainer with a termination message file (as the kubelet creates it); returns what it wrote."""
    termination_log = tmp_path / "termination-log"
    termination_log.touch()
    base = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "MNIST_DIR", "DISTTRAIN_REDACT_ENV")}
    result = subprocess.run(
        [sys.executable, "-m", "disttrain_trainer", "--output-dir", str(tmp_path / "out")],
        env={**base, "TF_CONFIG": LEAKY_TF_CONFIG, "DISTTRAIN_TERMINATION_LOG": str(termination_log), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, termination_log.read_text()


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("disttrain-trainer: error:")]
    return line


def test_without_redaction_the_message_is_written_unchanged(tmp_path: Path) -> None:
    result, message = run_trainer(tmp_path, TOKEN=SECRET)
    assert result.returncode == 2
    line = error_line(result)
    assert line.startswith("disttrain-trainer: error: ConfigError: TF_CONFIG has unknown job")
    assert SECRET in line  # the error really quotes it: the test below is meaningful
    assert message == line


def test_secret_values_are_hidden_on_stderr_and_in_the_termination_message(tmp_path: Path) -> None:
    result, message = run_trainer(tmp_path, TOKEN=SECRET, EMPTY="", DISTTRAIN_REDACT_ENV="TOKEN, EMPTY,UNSET")
    assert result.returncode == 2
    line = error_line(result)
    assert line.startswith("disttrain-trainer: error: ConfigError: TF_CONFIG has unknown job '***'; expected")
    assert message == line
    assert SECRET not in result.stderr and SECRET not in result.stdout


def test_redaction_rules() -> None:
    env = {
        "DISTTRAIN_REDACT_ENV": "TOKEN,PIN,EMPTY,KEY,LONGER",
        "TOKEN": "abcd1234",
        "LONGER": "abcd1234-and-more",
        "PIN": "123",  # shorter than 4 characters: left alone, or every "123" would be masked
        "EMPTY": "",
        "KEY": "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\n-----END KEY-----",
    }
    assert redact("token abcd1234, longer abcd1234-and-more, pin 123", env) == "token ***, longer ***, pin 123"
    assert redact("key line MIIEvQIBADANBgkq", env) == "key line ***"
    assert redact("key 'abcd1234\\n'", {**env, "TOKEN": "abcd1234\n"}) == "key '***'"  # as repr() quotes it
    assert redact("nothing named", {"TOKEN": "abcd1234"}) == "nothing named"
    # the cut at 500 characters comes after redaction: no partial secret at the end
    line = failure_line(ValueError("x" * 495 + " abcd1234"), env)
    assert line.endswith(": " + "x" * 495 + " " + MASK) and "abcd" not in line


def test_a_whole_secret_from_env_from_hides_every_value_but_the_known_ones() -> None:
    env = {
        "DISTTRAIN_REDACT_ENV": "*",
        "DB_PASSWORD": "hunter2-xyz",
        "API_KEY": "k-7781234",
        "HOME": "/home/trainer",
        "TF_CONFIG": '{"cluster": {}}',
        "DISTTRAIN_OUTPUT_DIR": "/var/lib/out",
    }
    text = "failed with hunter2-xyz and k-7781234 under /home/trainer writing /var/lib/out"
    assert redact(text, env) == "failed with *** and *** under /home/trainer writing /var/lib/out"


def test_the_failure_message_is_written_only_where_the_kubelet_created_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing"
    monkeypatch.setenv("DISTTRAIN_TERMINATION_LOG", str(missing))
    assert write_failure_message("boom") is None and not missing.exists()
    existing = tmp_path / "termination-log"
    existing.touch()
    monkeypatch.setenv("DISTTRAIN_TERMINATION_LOG", str(existing))
    assert write_failure_message("boom") == existing and existing.read_text() == "boom"
