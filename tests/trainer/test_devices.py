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
