"""Small builders of specs for the unit tests."""

from __future__ import annotations

from typing import Any

from disttrain_operator.api import DistTrainJobSpec, parse_spec


def ps_spec(workers: int = 2, ps: int = 2, **extra: Any) -> DistTrainJobSpec:
    """chief + ps + workers, with optional extra spec fields (camelCase, as in a manifest)."""
    body: dict[str, Any] = {
        "replicaSpecs": {"chief": {"replicas": 1}, "ps": {"replicas": ps}, "worker": {"replicas": workers}},
        **extra,
    }
    return parse_spec("mnist", body)


def spec_from(replica_specs: dict[str, Any], **extra: Any) -> DistTrainJobSpec:
    """A spec from a replicaSpecs dict and extra fields."""
    return parse_spec("mnist", {"replicaSpecs": replica_specs, **extra})
