"""A Markdown API reference generated from the CRD schema (so it cannot drift from the models)."""

from __future__ import annotations

from typing import Any

from .crd import openapi_schema


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = node.get("type", "object")
    if kind == "array":
        return f"[]{_type_of(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type_of(node['additionalProperties'])}"
    if "enum" in node:
        return " \\| ".join(f"`{value}`" for value in node["enum"])
    return kind


INTERNAL = "Internal bookkeeping"  # how api.py begins the description of status fields users need not read


def _rows(node: dict[str, Any], path: str, required: set[str]) -> list[str]:
    rows = []
    for name, child in node.get("properties", {}).items():
        if child.get("description", "").startswith(INTERNAL):
            continue  # the operator's own memory: in the object, not in the reference
        field = f"{path}.{name}"
        default = f"`{child['default']}`" if "default" in child else ("required" if name in required else "")
        description = child.get("description", "").replace("|", "\\|")
        rows.append(f"| `{field}` | {_type_of(child)} | {default} | {description} |")
        target = child.get("items", child) if child.get("type") == "array" else child
        if isinstance(target.get("additionalProperties"), dict):
            target = target["additionalProperties"]
        if target.get("properties"):
            rows.extend(
                _rows(target, field + ("[]" if child.get("type") == "array" else ""), set(target.get("required", [])))
            )
    return rows


def _collapse_roles(rows: list[str]) -> list[str]:
    """The four roles share one ReplicaSpec: document it once, under `<role>`."""
    kept = []
    for row in rows:
        for role in ("chief", "ps", "evaluator"):
            if f".replicaSpecs.{role}." in row:
                break
        else:
            kept.append(row.replace(".replicaSpecs.worker.", ".replicaSpecs.<role>."))
    return kept


def api_reference() -> str:
    """The whole reference: spec fields, status fields and the CEL rules the API server enforces."""
    schema = openapi_schema()
    header = ["| field | type | default | description |", "|---|---|---|---|"]
    spec = schema["properties"]["spec"]
    status = schema["properties"]["status"]
    rules = [
        *schema["x-kubernetes-validations"],
        *spec["x-kubernetes-validations"],
        *spec["properties"]["replicaSpecs"]["x-kubernetes-validations"],
    ]
    lines = [
        "# DistTrainJob API reference (`disttrain.io/v1alpha1`)",
        "",
        "Generated from `operator/src/disttrain_operator/api.py` by `make api-docs`; a test keeps it current.",
        "`kubectl explain dtj.spec --recursive` shows the same text from a cluster.",
        "",
        "## spec",
        "",
        "`<role>` is one of `chief`, `ps`, `worker`, `evaluator`: each takes the same fields.",
        "",
        *header,
        *_collapse_roles(_rows(spec, "spec", set(spec.get("required", [])))),
        "",
        "## status",
        "",
        *header,
        *_rows(status, "status", set()),
        "",
        "The status also keeps the operator's own bookkeeping (restarts of pods gone, pod UIDs already counted);",
        "it is not part of the API and may change.",
        "",
        "## Checked by the API server at `kubectl apply` (CEL)",
        "",
        *[f"- {rule['message']}" for rule in rules],
        "",
    ]
    return "\n".join(lines)
