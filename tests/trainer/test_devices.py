"""Which devices each replica computes on, and in which precision (no GPU needed: device lists are faked)."""

from __future__ import annotations

import pytest

tf = pytest.importorskip("tensorflow")

from disttrain_trainer import strategies  # noqa: E402
from disttrain_trainer.cluster import parse_tf_config  # noqa: E402
from disttrain_trainer.launch import tf_config  # noqa: E402

MIRRORED = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}


class Stop(Exception):
    """Raised by the fake strategy once it has seen its resolver."""


def fake_local_devices(monkeypatch: pytest.MonkeyPatch, gpus: int) -> None:
    """This process sees one CPU and `gpus` GPUs."""
    devices = [tf.config.PhysicalDevice("/physical_device:CPU:0", "CPU")]
    devices += [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(gpus)]

    def listed(device_type: str | None = None) -> list:
        return [d for d in devices if device_type in (None, d.device_type)]

    monkeypatch.setattr(tf.config, "list_physical_devices", listed)


@pytest.mark.parametrize(("gpus", "expected"), [(2, {"GPU": 2}), (0, {})])
def test_mirrored_worker_resolver_counts_its_visible_gpus(
    monkeypatch: pytest.MonkeyPatch, gpus: int, expected: dict[str, int]
) -> None:
    """MultiWorkerMirroredStrategy takes its local devices from the resolver's num_accelerators: without it, a
    worker with GPUs trains on CPU:0 (the old code passed none)."""
    seen = {}

    def strategy(cluster_resolver: object) -> None:
        seen["resolver"] = cluster_resolver
        raise Stop

    fake_local_devices(monkeypatch, gpus)
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", strategy)
    config = parse_tf_config(tf_config(MIRRORED, "worker", 1))
    with pytest.raises(Stop):
        strategies.make_runner("multi-worker-mirrored", config, None, None)  # type: ignore[arg-type]
    assert seen["resolver"].num_accelerators() == expected


WORKER_GPU = "/job:worker/replica:0/task:{}/device:GPU:0"
WORKER_CPU = "/job:worker/replica:0/task:{}/device:CPU:0"
CHIEF_CPU = "/job:chief/replica:0/task:0/device:CPU:0"
PS_CPU = "/job:ps/replica:0/task:0/device:CPU:0"


def test_parameter_server_precision_comes_from_the_workers_devices_not_the_chiefs() -> None:
    """A CPU chief with GPU workers (the documented GPU example): the workers run every step, so float16; the
    old code looked at the chief's own devices and gave the GPU workers bfloat16 without loss scaling."""
    gpu_workers = [CHIEF_CPU, PS_CPU, *(d.format(i) for i in (0, 1) for d in (WORKER_CPU, WORKER_GPU))]
    by_task = strategies.device_types_by_task(gpu_workers, "worker")
    assert by_task == {0: {"CPU", "GPU"}, 1: {"CPU", "GPU"}}
    assert strategies.mixed_precision_policy(by_task.values()) == "mixed_float16"
    cpu_workers = [CHIEF_CPU, PS_CPU, WORKER_CPU.format(0), WORKER_CPU.format(1)]
    assert strategies.mixed_precision_policy(strategies.device_types_by_task(cpu_workers, "worker").values()) == (
        "mixed_bfloat16"
    )
    # one traced step serves every worker: a fleet of GPU and CPU workers gets the precision both handle
    mixed = [WORKER_CPU.format(0), WORKER_GPU.format(0), WORKER_CPU.format(1)]
    assert strategies.mixed_precision_policy(strategies.device_types_by_task(mixed, "worker").values()) == "float32"


@pytest.fixture
def restore_policy() -> object:
    """Runners set Keras' global policy: put float32 back after the test."""
    import keras

    yield
    keras.mixed_precision.set_global_policy("float32")


def test_float16_skips_a_non_finite_step_and_keeps_the_adagrad_accumulators(
    monkeypatch: pytest.MonkeyPatch, restore_policy: object
) -> None:
    """A process with a GPU chooses float16 from its own devices; one step with inf gradients then changes no
    weight and no Adagrad accumulator (the old static loss scale applied it: the accumulators became NaN for
    good) and halves the dynamic loss scale; the next finite step trains."""
    import numpy as np

    from disttrain_trainer.data import Mnist

    fake_local_devices(monkeypatch, gpus=1)
    images = np.zeros((16, 28, 28), np.uint8)
    labels = (np.arange(16) % 10).astype(np.uint8)
    hp = strategies.HParams(batch_size=8, learning_rate=0.05, optimizer="adagrad", mixed_precision=True)
    runner = strategies.LocalRunner(tf.distribute.get_strategy(), Mnist(images, labels, images, labels, "t"), hp)
    assert runner.precision == "mixed_float16" and runner.loss_scale is not None

    def state() -> list[np.ndarray]:
        return [v.numpy().copy() for v in (*runner.variables, *runner.optimizer.slots["accumulator"])]

    before, scale = state(), float(runner.loss_scale.scale.numpy())
    bad = tf.constant(np.full((8, 28, 28, 1), np.inf, np.float32))
    runner.replica_step(bad, tf.constant(labels[:8].astype(np.int32)))
    after = state()
    assert all(np.isfinite(a).all() for a in after)
    assert all(np.array_equal(b, a) for b, a in zip(before, after, strict=True))
    assert float(runner.loss_scale.scale.numpy()) == scale / 2
    assert runner.step() == 1  # the skipped step still counts against the budget

    good = tf.constant(np.random.default_rng(0).random((8, 28, 28, 1), np.float32))
    runner.replica_step(good, tf.constant(labels[:8].astype(np.int32)))
    assert not all(np.array_equal(b, a) for b, a in zip(before, state(), strict=True))
    assert all(np.isfinite(a).all() for a in state())
