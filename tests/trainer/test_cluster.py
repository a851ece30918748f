"""TF_CONFIG parsing, role and strategy selection, the startup barrier (no TensorFlow)."""

from __future__ import annotations

import json
import socket

import pytest

from disttrain_trainer.cluster import (
    ConfigError,
    Role,
    StartupTimeout,
    Strategy,
    choose_strategy,
    parse_tf_config,
    peers_to_wait_for,
    split_address,
    wait_for_peers,
)

CLUSTER = {
    "chief": ["c:1"],
    "ps": ["p0:2", "p1:2"],
    "worker": ["w0:3", "w1:3"],
    "evaluator": ["e:4"],
}


def tf_config(task_type: str, index: int = 0, cluster: dict | None = None) -> str:
    return json.dumps({"cluster": cluster or CLUSTER, "task": {"type": task_type, "index": index}})


def test_no_tf_config_means_single_process() -> None:
    assert parse_tf_config(None) is None
    assert parse_tf_config("  ") is None
    assert choose_strategy("auto", None) == "single"


def test_parse_roles_and_chief() -> None:
    worker = parse_tf_config(tf_config("worker", 1))
    assert worker is not None
    assert (worker.task_type, worker.task_index, worker.address) == ("worker", 1, "w1:3")
    assert not worker.is_chief
    chief = parse_tf_config(tf_config("chief"))
    assert chief is not None and chief.is_chief
    assert chief.chief_address == "c:1"


def test_evaluator_is_stripped_from_the_training_cluster() -> None:
    config = parse_tf_config(tf_config("evaluator"))
    assert config is not None
    assert "evaluator" not in config.training_cluster
    assert config.training_cluster["ps"] == ["p0:2", "p1:2"]


def test_worker_zero_is_chief_without_a_chief() -> None:
    cluster = {"worker": ["a:1", "b:1"]}
    config = parse_tf_config(tf_config("worker", 0, cluster))
    assert config is not None and config.is_chief
    assert choose_strategy("auto", config) == "multi-worker-mirrored"


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        (CLUSTER, "parameter-server"),
        ({"chief": ["c:1"], "worker": ["w:1"]}, "multi-worker-mirrored"),
        ({"chief": ["c:1"]}, "single"),
    ],
)
def test_auto_strategy_from_cluster_shape(cluster: dict, expected: str) -> None:
    config = parse_tf_config(tf_config("chief", 0, cluster))
    assert choose_strategy("auto", config) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"cluster": {"boss": ["a:1"]}, "task": {"type": "boss", "index": 0}}), "unknown job"),
        (tf_config("worker", 5), "out of range"),
        (tf_config("ps", 0, {"worker": ["a:1"]}), "not a job"),
        (json.dumps({"cluster": {"worker": ["nohostport"]}, "task": {"type": "worker"}}), "host:port"),
        (json.dumps({"cluster": {"chief": ["a:1", "b:1"]}, "task": {"type": "chief"}}), "at most one chief"),
    ],
)
def test_bad_tf_config_is_a_clear_error(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_tf_config(raw)


def test_impossible_strategy_requests() -> None:
    no_chief = parse_tf_config(tf_config("worker", 0, {"ps": ["p:1"], "worker": ["w:1"]}))
    with pytest.raises(ConfigError, match="needs a chief"):
        choose_strategy("auto", no_chief)
    with pytest.raises(ConfigError, match="cannot use ps"):
        choose_strategy("multi-worker-mirrored", parse_tf_config(tf_config("chief")))
    with pytest.raises(ConfigError, match="needs a cluster"):
        choose_strategy("parameter-server", None)


def test_peers_exclude_self_and_evaluator() -> None:
    config = parse_tf_config(tf_config("chief"))
    assert config is not None
    assert peers_to_wait_for(config, "parameter-server") == ["w0:3", "w1:3", "p0:2", "p1:2"]
    assert split_address("[::1]:2222") == ("::1", 2222)


def test_barrier_passes_when_peers_listen_and_times_out_naming_the_missing() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        up = f"127.0.0.1:{listener.getsockname()[1]}"
        assert wait_for_peers([up], timeout=5) < 5
    with pytest.raises(StartupTimeout, match=r"nonexistent\.invalid:1"):
        wait_for_peers([up, "nonexistent.invalid:1"], timeout=0.5, interval=0.1)


def test_roles_and_strategies_are_enums_equal_to_their_names() -> None:
    """StrEnums inside the trainer; the same strings on the command line, in TF_CONFIG and in the outputs."""
    config = parse_tf_config(tf_config("worker", 1))
    assert config is not None and config.task_type is Role.WORKER and config.task_type == "worker"
    chosen = choose_strategy("auto", config)
    assert chosen is Strategy.PARAMETER_SERVER and f"{chosen}" == json.loads(json.dumps(chosen)) == "parameter-server"
    assert choose_strategy("auto", None) is Strategy.SINGLE
