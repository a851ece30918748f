"""Staleness of updates and Adagrad's effective learning rates: the figures DistBelief's argument rests on."""

from __future__ import annotations

import numpy as np
import pytest

from disttrain_trainer.staleness import Staleness


def test_percentiles_are_nearest_rank_over_every_update() -> None:
    staleness = Staleness()
    staleness.add(np.array([0.0, 1.0, 1.0, 2.0]))
    staleness.add([3.0] * 95 + [40.0])  # one update in a hundred waited behind 40 others
    assert staleness.summary() == {"p50": 3, "p99": 3, "max": 40, "mean": 3.29, "updates": 100}
    staleness.add([40.0])
    assert staleness.percentile(99) == 40  # 2 of 101: the 99th percentile's rank (100) reaches them
    assert staleness.percentile(1) == 1  # rank 2 of 101: the first update was 0, the next two 1


def test_nothing_recorded_summarises_to_none() -> None:
    staleness = Staleness()
    staleness.add([])
    assert staleness.summary() is None
    with pytest.raises(ValueError, match="no updates"):
        staleness.percentile(50)


@pytest.fixture
def runner_for() -> object:
    """A single-process runner on a few synthetic images, with the given optimizer."""
    tf = pytest.importorskip("tensorflow")
    from disttrain_trainer import strategies
    from disttrain_trainer.data import Mnist

    images = np.random.default_rng(0).integers(0, 255, (64, 28, 28), dtype=np.uint8)
    labels = (np.arange(64) % 10).astype(np.uint8)
    data = Mnist(images, labels, images, labels, "synthetic")

    def build(optimizer: str) -> strategies.LocalRunner:
        hp = strategies.HParams(batch_size=16, learning_rate=0.05, optimizer=optimizer)
        return strategies.LocalRunner(tf.distribute.get_strategy(), data, hp)

    return build


def test_a_single_process_reads_fresh_parameters_for_every_update(runner_for: object) -> None:
    results = runner_for("adagrad").run(5)  # type: ignore[operator]
    assert results.staleness.tolist() == [0.0] * 5


def test_adagrad_reports_each_parameters_step_size_shrinking_as_gradients_add_up(runner_for: object) -> None:
    runner = runner_for("adagrad")  # type: ignore[operator]
    start = runner.optimizer.effective_learning_rates()
    parameters = sum(int(np.prod(v.shape)) for v in runner.variables)
    assert start.shape == (parameters,)
    np.testing.assert_allclose(start, 0.05 / (np.sqrt(0.1) + 1e-7), rtol=1e-6)  # the accumulators start at 0.1
    runner.run(3)
    after = runner.optimizer.effective_learning_rates()
    assert (after <= start + 1e-9).all() and (after < start).mean() > 0.5
    assert runner_for("sgd").optimizer.effective_learning_rates() is None  # type: ignore[operator]
