"""The generated CRD: structural, documented, and identical to the copies we ship."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from disttrain_operator import api
from disttrain_operator.crd import build_crd, crd_yaml, openapi_schema

SHIPPED_COPIES = ["deploy/crd/disttrain.io_disttrainjobs.yaml", "charts/disttrain/crds/disttrain.io_disttrainjobs.yaml"]
FORBIDDEN_KEYS = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title"}


def walk(schema: dict[str, Any], path: str = ""):
    """Yields (path, node) for every schema node."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural() -> None:
    for path, node in walk(openapi_schema()):
        assert not FORBIDDEN_KEYS & node.keys(), f"{path} has {FORBIDDEN_KEYS & node.keys()}"
        typed = (
            "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        )
        assert typed, f"{path} has no type"


def test_every_spec_and_status_field_is_documented_for_kubectl_explain() -> None:
    schema = openapi_schema()
    for root in ("spec", "status"):
        for path, node in walk(schema["properties"][root], root):
            scalar_item = path.endswith(("[]", "}")) and node.get("type") != "object"
            assert scalar_item or node.get("description"), f"{path} has no description"


def test_schema_follows_the_models() -> None:
    spec = openapi_schema()["properties"]["spec"]
    assert set(spec["properties"]) == {f.alias for f in api.DistTrainJobSpec.model_fields.values()}
    worker = spec["properties"]["replicaSpecs"]["properties"]["worker"]
    assert worker["properties"]["restartPolicy"]["enum"] == ["Never", "OnFailure", "Always", "ExitCode"]
    assert worker["properties"]["replicas"] == {
        "default": 1,
        "description": worker["properties"]["replicas"]["description"],
        "minimum": 0,
        "maximum": api.MAX_REPLICAS,
        "type": "integer",
    }
    assert worker["properties"]["template"]["x-kubernetes-preserve-unknown-fields"] is True
    quantity = worker["properties"]["resources"]["properties"]["limits"]["additionalProperties"]
    assert quantity["x-kubernetes-int-or-string"] is True
    assert quantity["pattern"] == api.QUANTITY_PATTERN and quantity["minimum"] == 0
    assert spec["properties"]["runPolicy"]["default"] == {}
    assert spec["required"] == ["replicaSpecs"]


def test_cel_rules_cover_topology_and_name_length() -> None:
    schema = openapi_schema()
    root_rules = [rule["rule"] for rule in schema["x-kubernetes-validations"]]
    assert any("self.spec.replicaSpecs.worker" in rule and "<= 63" in rule for rule in root_rules)
    messages = [
        r["message"] for r in schema["properties"]["spec"]["properties"]["replicaSpecs"]["x-kubernetes-validations"]
    ]
    assert any("exactly one chief" in message for message in messages)


def test_status_subresource_printer_columns_and_names() -> None:
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "State",
        "Chief",
        "PS",
        "Workers",
        "Restarts",
        "Accuracy",
        "Age",
    ]
    assert crd["spec"]["names"]["shortNames"] == ["dtj"]
    assert crd["metadata"]["name"] == "disttrainjobs.disttrain.io"
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


@pytest.mark.parametrize("relative", SHIPPED_COPIES)
def test_shipped_copies_equal_the_generator(repo_root: Path, relative: str) -> None:
    shipped = repo_root / relative
    assert shipped.exists(), f"{relative} is missing: run `make crd-files`"
    assert shipped.read_text() == crd_yaml(), f"{relative} is stale: run `make crd-files`"
    assert yaml.safe_load(shipped.read_text()) == build_crd()


def test_api_reference_is_current(repo_root: Path) -> None:
    from disttrain_operator.apidoc import api_reference

    reference = api_reference()
    assert "| `spec.runPolicy.cleanPodPolicy` | `Running` \\| `All` \\| `None` | `Running` |" in reference
    assert "`spec.replicaSpecs.<role>.gpus`" in reference and ".replicaSpecs.ps.gpus" not in reference
    assert (repo_root / "docs" / "api.md").read_text() == reference, "docs/api.md is stale: run `make api-docs`"
