"""Model shapes, the sharded-variable optimizers, input pipelines, reporting helpers, the chief watcher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from disttrain_trainer.model import build_model  # noqa: E402
from disttrain_trainer.optimizers import make_optimizer, variable_shards  # noqa: E402
from disttrain_trainer.pipeline import train_dataset  # noqa: E402
from disttrain_trainer.reporting import (  # noqa: E402
    OutputPaths,
    hparams_markdown,
    prediction_grid,
    progress_line,
    write_metrics,
    write_termination_message,
)
from disttrain_trainer.servers import ChiefWatcher  # noqa: E402
from disttrain_trainer.training import Budget  # noqa: E402


def test_model_shapes() -> None:
    model = build_model()
    probs = model(np.zeros((3, 28, 28, 1), np.float32), training=False)
    assert probs.shape == (3, 10)
    assert np.allclose(probs.numpy().sum(axis=1), 1.0, atol=1e-5)
    assert [layer.name for layer in model.layers][:4] == ["conv1", "pool1", "conv2", "pool2"]
    assert len(variable_shards(model)) == len(model.trainable_weights) == 8


def test_adagrad_matches_the_formula() -> None:
    var = tf.Variable([1.0, 2.0])
    opt = make_optimizer("adagrad", 0.5, [var])
    grad = tf.constant([0.2, -0.4])
    step = opt.apply([grad], [var])
    accum = 0.1 + grad.numpy() ** 2
    expected = np.array([1.0, 2.0]) - 0.5 * grad.numpy() / (np.sqrt(accum) + 1e-7)
    assert np.allclose(var.numpy(), expected, atol=1e-6)
    assert int(step) == 1 and int(opt.iterations.numpy()) == 1


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_other_optimizers_descend(name: str) -> None:
    var = tf.Variable([3.0])
    opt = make_optimizer(name, 0.1, [var])
    for _ in range(20):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(var**2)
        opt.apply(tape.gradient(loss, [var]), [var])
    assert abs(var.numpy()[0]) < 3.0 - 0.5
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("rmsprop", 0.1, [var])


def test_pipeline_shards_are_disjoint() -> None:
    images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1).repeat(28, 1).repeat(28, 2)
    labels = np.arange(40, dtype=np.uint8) % 10
    seen = []
    for shard in range(2):
        batch_images, batch_labels = next(iter(train_dataset(images, labels, 20, shard, 2, seed=0)))
        assert batch_images.shape == (20, 28, 28, 1) and batch_labels.dtype == tf.int32
        seen.append(set(np.round(batch_images.numpy()[:, 0, 0, 0] * 255).astype(int)))
    assert seen[0].isdisjoint(seen[1]) and len(seen[0] | seen[1]) == 40


def test_progress_line_format() -> None:
    assert progress_line(120, 600, 0.231, 0.934, 812.51) == (
        "progress step=120/600 loss=0.2310 accuracy=0.9340 examples_per_sec=812.5"
    )


def test_output_paths_and_metrics(tmp_path: Path) -> None:
    paths = OutputPaths.resolve(str(tmp_path), None, str(tmp_path / "ck"), None)
    assert paths.logs == tmp_path / "logs" and paths.checkpoints == tmp_path / "ck"
    assert paths.model == tmp_path / "model" and paths.metrics == tmp_path / "metrics.json"
    write_metrics(paths.metrics, {"accuracy": 0.99})
    assert json.loads(paths.metrics.read_text()) == {"accuracy": 0.99}
    assert "| lr | 0.1 |" in hparams_markdown({"lr": 0.1})


def test_termination_message_is_written_only_where_the_kubelet_made_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_file = tmp_path / "termination-log"
    monkeypatch.setenv("DISTTRAIN_TERMINATION_LOG", str(log_file))
    assert write_termination_message({"accuracy": 0.99}) is None and not log_file.exists()
    log_file.touch()
    assert write_termination_message({"accuracy": 0.99, "steps": 5}) == log_file
    assert json.loads(log_file.read_text()) == {"accuracy": 0.99, "steps": 5}


def test_prediction_grid_marks_mistakes() -> None:
    images = np.zeros((10, 28, 28), np.uint8)
    grid = prediction_grid(images, np.array([1] * 10), np.array([1] * 9 + [2]))
    assert grid.shape == (1, 2 * 32, 8 * 32, 3)
    assert tuple(grid[0, 0, 0]) == (0, 200, 0)  # right: green frame
    assert tuple(grid[0, 32, 32]) == (220, 0, 0)  # tenth image (row 1, col 1) wrong: red frame


def test_budget_steps_from_epochs() -> None:
    assert Budget(None, 2, 50, 0).total_steps(8000, 64) == 250
    assert Budget(100, 2, 50, 0).total_steps(8000, 64) == 100
    with pytest.raises(ValueError):
        Budget(None, None, 50, 0).total_steps(8000, 64)


def test_chief_watcher() -> None:
    now = [0.0]
    up = [False]
    watcher = ChiefWatcher("c:1", grace=10, never_seen_timeout=100, probe=lambda _: up[0], clock=lambda: now[0])
    assert watcher.status() == "running"  # not seen yet, still starting
    up[0] = True
    assert watcher.status() == "running"
    up[0], now[0] = False, 50.0
    assert watcher.status() == "running"  # away, within grace (a restarting chief)
    now[0] = 61.0
    assert watcher.status() == "gone"
    never = ChiefWatcher("c:1", grace=1, never_seen_timeout=5, probe=lambda _: False, clock=lambda: now[0])
    now[0] = 70.0
    assert never.status() == "never-started"
