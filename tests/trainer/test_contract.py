"""The trainer writes what the operator reads: the shared examples in tests/contract/ (docs/contract.md).

tests/unit/test_contract.py checks that the operator reads the same files; neither imports the other side. The
first tests need no TensorFlow; the rest import it (the trainer's reporting and training modules do).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from disttrain_trainer import cluster, failure
from disttrain_trainer.cli import build_parser
from disttrain_trainer.cluster import choose_strategy, parse_tf_config

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "tests" / "contract"
DOC = REPO / "docs" / "contract.md"
PROGRESS = re.compile(r"^progress step=\d+/\d+ loss=(\d+\.\d{4}|nan|inf) accuracy=\d\.\d{4} examples_per_sec=\d+\.\d$")
FAILURE = re.compile(r"^disttrain-trainer: error: (?P<type>[A-Za-z_][A-Za-z0-9_]*): (?P<message>.+)$")


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


# ---------------------------------------------------------------- no TensorFlow


def test_failure_line_has_the_documented_format() -> None:
    line = fixture("failure_message.txt").strip()
    match = FAILURE.match(line)
    assert match is not None
    error_type = getattr(cluster, match["type"])  # a real trainer exception
    assert failure.failure_line(error_type(match["message"]), environ={}) == line
    multi_line = failure.failure_line(RuntimeError("x\n  y " * 3), environ={})
    assert multi_line == "disttrain-trainer: error: RuntimeError: x y x y x y"  # one line
    long = failure.failure_line(RuntimeError("x" * 2000), environ={})
    assert long == "disttrain-trainer: error: RuntimeError: " + "x" * failure.MAX_MESSAGE_CHARS


def test_failure_message_goes_to_the_termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "termination-log"
    log.touch()
    monkeypatch.setenv(failure.TERMINATION_LOG_ENV, str(log))
    line = fixture("failure_message.txt").strip()
    assert failure.write_failure_message(line) == log
    assert log.read_text() == line


# The evaluator example failed before the trainer accepted an evaluator left out of the cluster (as the operator
# and TensorFlow leave it): every operator-made evaluator exited 2 at start.
@pytest.mark.parametrize("name", sorted(fixture_json("tf_config_expected.json")))
def test_tf_config_examples_give_role_reporter_and_strategy(name: str) -> None:
    expected = fixture_json("tf_config_expected.json")[name]
    example = fixture_json(name)
    config = parse_tf_config(json.dumps(example))
    assert config is not None
    assert (config.task_type, config.task_index) == (example["task"]["type"], example["task"]["index"])
    assert config.is_chief == expected["reports"]  # the chief, else worker 0
    assert "evaluator" not in config.training_cluster
    if expected["strategy"] is not None:
        assert choose_strategy("auto", config) == expected["strategy"]


def test_env_vars_the_trainer_reads_are_the_documented_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each variable docs/contract.md says the trainer reads does what it says, and no other is documented."""
    honoured = set()

    monkeypatch.setenv("DISTTRAIN_OUTPUT_DIR", str(tmp_path / "out"))
    assert build_parser().parse_args([]).output_dir == str(tmp_path / "out")
    honoured.add("DISTTRAIN_OUTPUT_DIR")

    secret = "s3cr3t-value"
    environ = {failure.REDACT_ENV: "API_TOKEN", "API_TOKEN": secret}
    assert secret not in failure.failure_line(RuntimeError(f"bad token {secret}"), environ=environ)
    honoured.add(failure.REDACT_ENV)

    monkeypatch.setenv(failure.TERMINATION_LOG_ENV, str(tmp_path / "log"))
    assert failure.termination_log_path() == tmp_path / "log"
    monkeypatch.delenv(failure.TERMINATION_LOG_ENV)
    assert str(failure.termination_log_path()) == failure.DEFAULT_TERMINATION_LOG == "/dev/termination-log"
    honoured.add(failure.TERMINATION_LOG_ENV)

    honoured.add("TF_CONFIG")  # read by cli.main: see test_exit_codes

    assert cluster.slow_replica_for_tests() is None  # a deliberately slow replica: tests/trainer/test_downpour.py
    monkeypatch.setenv(cluster.SLOW_REPLICA_ENV, "1:0.5")
    assert cluster.slow_replica_for_tests() == (1, 0.5)
    monkeypatch.setenv(cluster.SLOW_REPLICA_ENV, "not a delay")
    with pytest.raises(cluster.ConfigError, match=cluster.SLOW_REPLICA_ENV):
        cluster.slow_replica_for_tests()
    honoured.add(cluster.SLOW_REPLICA_ENV)

    documented = {name for name, cells in env_table().items() if "trainer" in cells["read by"]}
    assert honoured == documented


# ---------------------------------------------------------------- TensorFlow


@pytest.fixture(scope="module")
def tf() -> Any:
    return pytest.importorskip("tensorflow")


def test_progress_lines_have_the_documented_format(tf: Any) -> None:
    from disttrain_trainer.reporting import progress_line

    lines = fixture("progress_lines.txt").splitlines()
    parsed = fixture_json("progress_lines.json")
    assert len(lines) == len(parsed) > 0
    for line, fields in zip(lines, parsed, strict=True):
        step, max_steps = (int(part) for part in fields["step"].split("/"))
        loss, accuracy, speed = (float(fields[key]) for key in ("loss", "accuracy", "examples_per_sec"))
        assert progress_line(step, max_steps, loss, accuracy, speed) == line
        assert PROGRESS.match(line), line
    assert PROGRESS.match(progress_line(7, 10, 0.123456, 0.5, 1234.56))
    assert PROGRESS.match(progress_line(7, 10, math.nan, 0.0, 0.0))


def test_finished_run_reports_exactly_the_documented_metrics(
    tf: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """training._finish (the real metrics of a finished run, minus the SavedModel export) has the keys and value
    types of final_metrics.json, and write_termination_message writes them as the fixture is written."""
    from disttrain_trainer import training
    from disttrain_trainer.data import Mnist
    from disttrain_trainer.model import build_model
    from disttrain_trainer.reporting import OutputPaths, Summaries, write_termination_message

    exported = []
    monkeypatch.setattr(training, "export_model", lambda model, path: exported.append(path))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 28, 28), dtype=np.uint8)
    labels = (np.arange(40) % 10).astype(np.uint8)
    data = Mnist(images, labels, images[:20], labels[:20], source="synthetic")
    runner = SimpleNamespace(model=build_model(), hp=SimpleNamespace(batch_size=64), examples_per_step=128)
    clock = training.Throughput()
    clock.add(50 * 128, 2.0, staleness=np.zeros(50))
    clock.add(50 * 128, 1.0, staleness=np.ones(50))
    paths = OutputPaths.resolve(str(tmp_path / "out"), None, None, None)

    metrics = training._finish(runner, "single", data, paths, Summaries(None), 100, clock, (0.3, 0.9))  # type: ignore[arg-type]

    expected = fixture_json("final_metrics.json")
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert type(metrics[key]) is type(value), key
    assert json.loads(paths.metrics.read_text()) == metrics  # metrics.json: the same document
    assert exported == [paths.model]

    log = tmp_path / "termination-log"
    log.touch()
    monkeypatch.setenv("DISTTRAIN_TERMINATION_LOG", str(log))
    assert write_termination_message(metrics) == log
    assert json.loads(log.read_text()) == metrics
    assert write_termination_message(expected) == log
    assert log.read_text() == fixture("final_metrics.json").rstrip("\n")  # compact, keys sorted, one line


def test_chief_prints_the_final_line_and_writes_the_termination_message(
    tf: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """cli._train, with training itself replaced by the fixture's metrics: the `final` line on stdout and the
    termination message are the fixtures, byte for byte."""
    from disttrain_trainer import cli, training

    metrics = fixture_json("final_metrics.json")
    monkeypatch.setattr(training, "train", lambda *args: dict(metrics))
    log = tmp_path / "termination-log"
    log.touch()
    monkeypatch.setenv("DISTTRAIN_TERMINATION_LOG", str(log))
    args = build_parser().parse_args(["--output-dir", str(tmp_path / "out")])
    data = SimpleNamespace(x_train=np.zeros((8, 28, 28), np.uint8))
    assert cli._train(args, None, "single", data) == 0  # type: ignore[arg-type]
    assert capsys.readouterr().out == fixture("final_line.txt")
    assert log.read_text() == fixture("final_metrics.json").rstrip("\n")


def test_exit_codes(tf: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from disttrain_trainer import cli, servers

    codes = fixture_json("exit_codes.json")
    assert codes["chief_gone"] == servers.CHIEF_GONE_EXIT_CODE
    monkeypatch.setattr(servers, "exit_now", lambda code: None)  # main() would os._exit
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)  # and reset pytest's SIGINT handler
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("DISTTRAIN_TERMINATION_LOG", "/nonexistent/termination-log")

    monkeypatch.setenv("TF_CONFIG", "{not json")
    assert cli.main([]) == codes["config_error"]
    assert FAILURE.match(capsys.readouterr().err.splitlines()[-1])

    monkeypatch.delenv("TF_CONFIG")

    def fails(*args: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "run", fails)
    assert cli.main([]) == codes["error"]
    assert capsys.readouterr().err.splitlines()[-1] == "disttrain-trainer: error: RuntimeError: boom"

    monkeypatch.setattr(cli, "run", lambda *args: 0)
    assert cli.main([]) == codes["success"]
