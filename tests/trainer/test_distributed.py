"""Real multi-process TensorFlow clusters on 127.0.0.1: parameter server, multi-worker mirrored, exits."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from disttrain_trainer.launch import LocalCluster, local_cluster, start_cluster, start_task
from disttrain_trainer.servers import CHIEF_GONE_EXIT_CODE

pytestmark = pytest.mark.slow

PS_STEPS = 500


def final_metrics(output: str) -> dict:
    """The chief's `final {json}` line."""
    lines = [line for line in output.splitlines() if line.startswith("final ")]
    assert len(lines) == 1, output[-2000:]
    return json.loads(lines[0].removeprefix("final "))


def wait_for_line(path: Path, prefix: str, timeout: float) -> str:
    """Poll a task's stdout file until a line starts with `prefix`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line
        time.sleep(0.2)
    raise AssertionError(f"no line starting with {prefix!r} in {path} after {timeout}s")


def event_steps(log_dir: Path, tag: str) -> list[int]:
    """The steps at which a tag was written, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    return [event.step for event in accumulator.Tensors(tag)]


def event_tags(log_dir: Path) -> set[str]:
    """Every TF2 summary tag in a TensorBoard run folder, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    return set(accumulator.Tags()["tensors"])


@pytest.fixture(scope="module")
def ps_run(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Iterator[tuple[LocalCluster, Path, dict]]:
    """One chief + 2 ps + 2 workers + evaluator run on real MNIST; worker 1 is killed and restarted mid-run."""
    root = tmp_path_factory.mktemp("ps")
    cluster = local_cluster(chief=1, ps=2, worker=2, evaluator=1)
    args = [
        "--max-steps",
        str(PS_STEPS),
        "--output-dir",
        str(root / "out"),
        "--data-dir",
        str(mnist_dir),
        "--checkpoint-every",
        "200",
        "--log-every",
        "50",
        "--startup-timeout",
        "120",
    ]
    running = start_cluster(cluster, args, root / "logs")
    info: dict = {}
    try:
        wait_for_line(running.task("chief").stdout, "progress step=", timeout=150)
        victim = running.task("worker", 1)
        victim.process.kill()
        info["killed_code"] = victim.process.wait()
        running.tasks.append(start_task(cluster, "worker", 1, args, root / "logs" / "restarted"))
        info["codes"] = running.wait(timeout=240)
        yield running, root, info
    finally:
        running.stop()


def test_ps_reaches_97_percent_despite_a_killed_worker(ps_run: tuple[LocalCluster, Path, dict]) -> None:
    running, root, info = ps_run
    chief = running.task("chief")
    assert info["codes"]["chief-0"] == 0, chief.stderr.read_text()[-3000:]
    assert info["killed_code"] != 0
    metrics = final_metrics(chief.output())
    assert metrics["strategy"] == "parameter-server"
    assert metrics["accuracy"] >= 0.97
    assert metrics["steps"] >= PS_STEPS
    on_disk = json.loads((root / "out" / "metrics.json").read_text())
    for key in ("accuracy", "loss", "train_seconds", "examples_per_second", "inference_ms_per_example", "steps"):
        assert key in on_disk
    progress = [line for line in chief.output().splitlines() if line.startswith("progress ")]
    assert len(progress) == PS_STEPS // 50
    # progress counts completed steps; the global step may be a step or two further (the killed worker's closure
    # had pushed updates before it was retried: at-least-once)
    assert progress[-1].startswith(f"progress step={PS_STEPS}/{PS_STEPS} loss=")
    assert PS_STEPS <= metrics["steps"] <= PS_STEPS + 5


def test_ps_and_workers_exit_zero_by_themselves(ps_run: tuple[LocalCluster, Path, dict]) -> None:
    running, _, info = ps_run
    # "worker-1" is the restarted replacement of the killed worker
    assert info["codes"] == {"ps-0": 0, "ps-1": 0, "worker-0": 0, "worker-1": 0, "evaluator-0": 0, "chief-0": 0}, (
        running.tasks[-1].stderr.read_text()[-2000:]
    )
    # ended by the chief's shutdown token, not by noticing the chief gone (that takes --chief-grace)
    latest = {f"{t.task_type}-{t.index}": t for t in running.tasks}  # the restarted worker-1 comes last
    for name in ("ps-0", "ps-1", "worker-0", "worker-1"):
        assert "shutdown token received" in latest[name].stderr.read_text(), name


def test_outputs_event_tags_checkpoints_export(ps_run: tuple[LocalCluster, Path, dict]) -> None:
    _, root, _ = ps_run
    out = root / "out"
    train_tags = event_tags(out / "logs" / "train")
    expected = {"loss", "accuracy", "learning_rate", "examples_per_sec", "heldout_accuracy", "predictions", "hparams"}
    assert expected <= train_tags
    # DistBelief's figures: each worker's step rate, the updates' staleness and Adagrad's adapted step sizes
    per_worker = {"steps_per_sec/worker-0", "steps_per_sec/worker-1"}
    staleness = {"staleness", "staleness/mean", "staleness/max"}
    assert per_worker | staleness | {"effective_learning_rate", "effective_learning_rate/median"} <= train_tags
    # the held-out curve has a point at each checkpoint, not only at the end (README: "at each checkpoint")
    saved = sorted(int(p.name.split("-")[1].split(".")[0]) for p in (out / "checkpoints").glob("ckpt-*.index"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert saved == [200, 400, metrics["steps"]]  # every 200 steps completed, and at the end (the global step)
    assert event_steps(out / "logs" / "train", "heldout_accuracy") == saved
    assert {"heldout_accuracy", "heldout_loss"} <= event_tags(out / "logs" / "eval")
    assert (out / "checkpoints" / "checkpoint").is_file()
    assert (out / "model" / "saved_model" / "saved_model.pb").is_file()
    assert (out / "model" / "mnist_cnn.keras").is_file()


def test_multi_worker_mirrored_learns(tmp_path: Path, mnist_dir: Path) -> None:
    cluster = local_cluster(chief=0, worker=2)
    args = [
        "--max-steps",
        "120",
        "--output-dir",
        str(tmp_path / "out"),
        "--data-dir",
        str(mnist_dir),
        "--log-every",
        "40",
        "--checkpoint-every",
        "0",
        "--startup-timeout",
        "60",
    ]
    running = start_cluster(cluster, args, tmp_path / "logs")
    try:
        codes = running.wait(timeout=180)
    finally:
        running.stop()
    chief = running.task("worker", 0)
    assert codes == {"worker-0": 0, "worker-1": 0}, chief.stderr.read_text()[-3000:]
    metrics = final_metrics(chief.output())
    assert metrics["strategy"] == "multi-worker-mirrored"
    assert metrics["global_batch_size"] == 2 * metrics["batch_size"]
    assert metrics["accuracy"] > 0.85
    assert "final " not in running.task("worker", 1).output()  # only the chief reports


def test_servers_exit_on_sigterm_and_when_the_chief_is_gone(tmp_path: Path) -> None:
    with socket.socket() as fake_chief:
        fake_chief.bind(("127.0.0.1", 0))
        fake_chief.listen()
        cluster = local_cluster(chief=0, ps=2, worker=1)
        cluster["chief"] = [f"127.0.0.1:{fake_chief.getsockname()[1]}"]
        args = ["--chief-grace", "2"]
        terminated = start_task(cluster, "ps", 0, args, tmp_path)
        orphan = start_task(cluster, "ps", 1, args, tmp_path)
        try:
            for task in (terminated, orphan):
                wait_for_line(task.stdout, "serving ", timeout=60)
            time.sleep(1.5)  # let the orphan see the chief up
            start = time.monotonic()
            terminated.process.send_signal(signal.SIGTERM)
            terminated.process.wait(10)
            assert time.monotonic() - start < 5
        finally:
            fake_chief.close()
        try:
            # not 0: a server whose chief vanished must not look successful after a failed job
            assert orphan.process.wait(30) == CHIEF_GONE_EXIT_CODE, orphan.stderr.read_text()[-2000:]
            assert "error: the chief at" in orphan.stderr.read_text()
        finally:
            for task in (terminated, orphan):
                if task.process.poll() is None:
                    task.process.kill()


def test_an_evaluator_whose_chief_vanished_does_not_look_successful(tmp_path: Path) -> None:
    """The side-car evaluator ends with its chief too: exit 3 and why, as the ps and workers (it exited 0)."""
    with socket.socket() as fake_chief:
        fake_chief.bind(("127.0.0.1", 0))
        fake_chief.listen()
        fake_chief.settimeout(120)
        cluster = local_cluster(chief=0, ps=1, worker=1)
        cluster["chief"] = [f"127.0.0.1:{fake_chief.getsockname()[1]}"]
        args = ["--synthetic", "--chief-grace", "2", "--startup-timeout", "60", "--output-dir", str(tmp_path / "out")]
        evaluator = start_task(cluster, "evaluator", 0, args, tmp_path)
        try:
            fake_chief.accept()[0].close()  # the evaluator has seen its chief up
        finally:
            fake_chief.close()
    try:
        assert evaluator.process.wait(120) == CHIEF_GONE_EXIT_CODE, evaluator.stderr.read_text()[-2000:]
        assert "error: the chief at" in evaluator.stderr.read_text()
    finally:
        if evaluator.process.poll() is None:
            evaluator.process.kill()


def test_every_live_server_gets_its_token_though_a_peer_is_gone(tmp_path: Path) -> None:
    """Tokens must not wait on other tasks: servers exit as theirs arrive, and a chief may be half gone."""
    from disttrain_trainer.cluster import ClusterConfig
    from disttrain_trainer.servers import send_shutdown

    with socket.socket() as fake_chief:  # an open port, not a TensorFlow server
        fake_chief.bind(("127.0.0.1", 0))
        fake_chief.listen()
        cluster = local_cluster(chief=0, ps=2, worker=1)
        cluster["chief"] = [f"127.0.0.1:{fake_chief.getsockname()[1]}"]
        tasks = [start_task(cluster, job, index, [], tmp_path) for job, index in (("ps", 0), ("ps", 1), ("worker", 0))]
        try:
            for task in tasks:
                wait_for_line(task.stdout, "serving ", timeout=60)
            gone, *alive = tasks
            gone.process.kill()
            gone.process.wait(10)
            send_shutdown(ClusterConfig(cluster, "chief", 0))
            for task in alive:
                assert task.process.wait(15) == 0, task.stderr.read_text()[-2000:]
                assert "shutdown token received" in task.stderr.read_text()
        finally:
            for task in tasks:
                if task.process.poll() is None:
                    task.process.kill()


def test_restarted_chief_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    args = ["--synthetic", "--output-dir", str(tmp_path / "out"), "--log-every", "10", "--batch-size", "32"]
    outputs = []
    for steps in (20, 40):
        task = start_task({}, None, 0, ["--max-steps", str(steps), *args], tmp_path / f"logs{steps}")
        assert task.process.wait(120) == 0, task.stderr.read_text()[-2000:]
        outputs.append(task.output())
    resumed = [line for line in outputs[1].splitlines() if line.startswith("progress ")]
    assert resumed[0].startswith("progress step=30/40 ")  # continued after step 20, not from 0
    assert final_metrics(outputs[1])["steps"] == 40


@pytest.mark.slow
def test_steps_per_dispatch_runs_exactly_the_step_budget(tmp_path: Path) -> None:
    """23 steps in logging chunks of 10 and closures of up to 5: 5+5, 5+5, 3."""
    cluster = local_cluster(chief=1, ps=1, worker=1)
    args = ["--synthetic", "--max-steps", "23", "--log-every", "10", "--steps-per-dispatch", "5"]
    running = start_cluster(cluster, [*args, "--output-dir", str(tmp_path / "out")], tmp_path / "logs")
    try:
        codes = running.wait(240)
    finally:
        running.stop()
    chief = running.task("chief")
    assert codes["chief-0"] == 0, chief.stderr.read_text()[-2000:]
    assert final_metrics(chief.output())["steps"] == 23
    progress = [line.split()[1] for line in chief.output().splitlines() if line.startswith("progress ")]
    assert progress == ["step=10/23", "step=20/23", "step=23/23"]


@pytest.mark.slow
def test_chief_started_first_waits_for_its_peers_then_trains(tmp_path: Path) -> None:
    """Pods start in any order: a chief alone logs who is missing, then trains once they come up."""
    cluster = local_cluster(chief=1, ps=1, worker=1)
    args = ["--synthetic", "--max-steps", "20", "--log-every", "10", "--output-dir", str(tmp_path / "out")]
    chief = start_task(cluster, "chief", 0, args, tmp_path / "logs")
    servers = []
    try:
        deadline = time.monotonic() + 60
        while "waiting for 2 peer(s)" not in chief.stderr.read_text(errors="replace"):
            assert chief.process.poll() is None and time.monotonic() < deadline, chief.stderr.read_text()[-2000:]
            time.sleep(0.2)
        servers = [start_task(cluster, job, 0, args, tmp_path / "logs") for job in ("ps", "worker")]
        assert chief.process.wait(180) == 0, chief.stderr.read_text()[-2000:]
        assert final_metrics(chief.output())["steps"] == 20
        assert [server.process.wait(60) for server in servers] == [0, 0]
    finally:
        for task in (chief, *servers):
            if task.process.poll() is None:
                task.process.kill()


@pytest.mark.slow
def test_one_thread_per_process_still_trains(tmp_path: Path) -> None:
    """--threads 1 (one core per replica, the benchmark's fixed CPU budget) once hung a parameter-server worker:
    with a single inter-op thread, a blocking op (a Recv, the input pipeline) held the only thread the step needed."""
    cluster = local_cluster(chief=1, ps=1, worker=1)
    args = ["--synthetic", "--max-steps", "12", "--log-every", "4", "--threads", "1", "--startup-timeout", "60"]
    running = start_cluster(cluster, [*args, "--output-dir", str(tmp_path / "out")], tmp_path / "logs")
    try:
        codes = running.wait(180)
    finally:
        running.stop()
    chief = running.task("chief")
    assert codes["chief-0"] == 0, chief.stderr.read_text()[-2000:]
    assert final_metrics(chief.output())["steps"] >= 12
