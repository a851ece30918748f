"""Resuming from a checkpoint: only into the run that wrote it, and reported as a resumed run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from disttrain_trainer.launch import local_cluster, start_cluster, start_task
from disttrain_trainer.resume import RUN_FILE, IncompatibleCheckpoint, Layout, RunRecord, check_resume

from .test_distributed import final_metrics

CONFIG_ERROR = json.loads((Path(__file__).resolve().parents[1] / "contract" / "exit_codes.json").read_text())[
    "config_error"
]
SINGLE = ["--synthetic", "--batch-size", "32", "--log-every", "10", "--checkpoint-every", "10"]


def run_single(out: Path, *args: str) -> tuple[int, str, str]:
    """One single-process run into `out`: exit code, stdout, stderr."""
    logs = out.parent / f"logs-{len(list(out.parent.glob('logs-*')))}"
    task = start_task({}, None, 0, [*SINGLE, "--output-dir", str(out), *args], logs)
    code = task.process.wait(300)
    return code, task.output(), task.stderr.read_text()


@pytest.mark.slow
def test_a_resumed_run_reports_itself_as_resumed_and_a_finished_one_trains_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = run_single(out, "--max-steps", "20")
    assert code == 0, stderr[-2000:]
    fresh = final_metrics(stdout)
    assert (fresh["steps"], fresh["run_steps"], fresh["resumed_from_step"]) == (20, 20, None)
    assert fresh["train_seconds"] > 0

    code, stdout, stderr = run_single(out, "--max-steps", "20")  # already finished: nothing to train
    assert code == 0, stderr[-2000:]
    again = final_metrics(stdout)
    assert (again["steps"], again["run_steps"], again["resumed_from_step"]) == (20, 0, 20)
    assert again["train_seconds"] == fresh["train_seconds"]  # the time it took, not 0 as if it were free
    assert again["examples_per_second"] is None  # this run measured no throughput

    code, stdout, stderr = run_single(out, "--max-steps", "30")
    assert code == 0, stderr[-2000:]
    longer = final_metrics(stdout)
    assert (longer["steps"], longer["run_steps"], longer["resumed_from_step"]) == (30, 10, 20)
    assert longer["train_seconds"] > fresh["train_seconds"]  # the first 20 steps' time plus this run's


@pytest.mark.slow
def test_a_checkpoint_of_another_optimizer_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, stderr = run_single(out, "--max-steps", "10")
    assert code == 0, stderr[-2000:]
    code, stdout, stderr = run_single(out, "--max-steps", "20", "--optimizer", "sgd")
    assert code == CONFIG_ERROR, stderr[-2000:]
    assert "final " not in stdout
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("disttrain-trainer: error: IncompatibleCheckpoint: ")
    assert "optimizer adagrad" in error and "sgd" in error, error


@pytest.mark.slow
def test_a_parameter_server_checkpoint_is_refused_by_a_single_process(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [*SINGLE, "--max-steps", "10", "--output-dir", str(out), "--startup-timeout", "120"]
    running = start_cluster(local_cluster(chief=1, ps=1, worker=1), args, tmp_path / "logs")
    try:
        codes = running.wait(300)
    finally:
        running.stop()
    assert codes["chief-0"] == 0, running.task("chief").stderr.read_text()[-2000:]
    code, _, stderr = run_single(out, "--max-steps", "20")
    assert code == CONFIG_ERROR, stderr[-2000:]
    error = stderr.strip().splitlines()[-1]
    assert "strategy parameter-server" in error and "single" in error, error
    assert "num_ps 1" in error, error


PS2 = Layout("parameter-server", "adagrad", 2)


def test_another_number_of_parameter_servers_is_named(tmp_path: Path) -> None:
    """Slots are keyed by shard index: 2 ps shards cannot go into 3."""
    RunRecord(PS2, {400: 31.5}).write(tmp_path)
    with pytest.raises(IncompatibleCheckpoint, match=r"num_ps 2 \(checkpoint\) vs 3 \(this run\)") as error:
        check_resume(tmp_path, str(tmp_path / "ckpt-400"), Layout("parameter-server", "adagrad", 3))
    assert "strategy" not in str(error.value) and "optimizer" not in str(error.value)  # only what differs
    record, seconds = check_resume(tmp_path, str(tmp_path / "ckpt-400"), PS2)
    assert (record.layout, seconds) == (PS2, 31.5)


def test_the_record_follows_the_checkpoints_kept(tmp_path: Path) -> None:
    record, seconds = check_resume(tmp_path, None, PS2)  # a fresh run
    assert seconds == 0.0
    for step, total in ((200, 10.0), (400, 20.0), (600, 30.0), (800, 40.0)):
        record.saved(step, total, kept=[s for s in (200, 400, 600, 800) if step - 400 <= s <= step], folder=tmp_path)
    assert RunRecord.read(tmp_path) == RunRecord(PS2, {400: 20.0, 600: 30.0, 800: 40.0})


def test_an_unverifiable_checkpoint_resumes_with_unknown_time_and_a_bad_record_is_refused(tmp_path: Path) -> None:
    record, seconds = check_resume(tmp_path, str(tmp_path / "ckpt-200"), PS2)  # an older trainer's: no run.json
    assert (record.layout, seconds) == (PS2, None)
    (tmp_path / RUN_FILE).write_text("{not json")
    with pytest.raises(IncompatibleCheckpoint, match="unreadable"):
        check_resume(tmp_path, str(tmp_path / "ckpt-200"), PS2)
