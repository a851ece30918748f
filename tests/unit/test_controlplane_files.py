"""The test control plane's kwok stages file and the annotation names the tests drive pods with agree."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))
import controlplane
from controlplane import nodes


def test_every_annotation_the_tests_use_is_one_the_stages_select_on():
    stages = controlplane.kwok_stages()
    for annotation in nodes.ANNOTATIONS:
        assert f'"{annotation}"' in stages, annotation


def test_the_stages_file_is_kwok_stages_one_per_pod_transition():
    documents = list(yaml.safe_load_all(controlplane.kwok_stages()))
    assert [d["kind"] for d in documents] == ["Stage"] * 4
    assert [d["metadata"]["name"] for d in documents] == [
        "disttrain-pod-ready",
        "disttrain-pod-complete",
        "disttrain-pod-fail",
        "disttrain-pod-delete",
    ]


def test_gpu_nodes_are_tainted_and_offer_gpus_cpu_nodes_do_not():
    by_name = {n["metadata"]["name"]: n for n in controlplane.node_manifests("v1.34.12")}
    assert set(by_name) == set(controlplane.CPU_NODES + controlplane.GPU_NODES)
    for name in controlplane.GPU_NODES:
        assert by_name[name]["spec"]["taints"] == [controlplane.GPU_TAINT]
        assert by_name[name]["status"]["allocatable"][controlplane.GPU_RESOURCE] == str(controlplane.GPUS_PER_NODE)
    for name in controlplane.CPU_NODES:
        assert controlplane.GPU_RESOURCE not in by_name[name]["status"]["allocatable"]
