"""The DistTrainJob CustomResourceDefinition, generated from the pydantic models in api.py.

pydantic's JSON Schema is close to what Kubernetes wants; the fix-ups below make it a structural
schema: `$ref`s inlined, `anyOf [X, null]` collapsed, int-or-string marked, titles dropped, and the
CEL rules that the API server can check cheaply added, so bad jobs are refused at `kubectl apply`.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml

from . import api, policy

Schema = dict[str, Any]

VALUE_CONSTRAINTS = ("pattern", "minimum", "maximum")
ROLE_NAME_EXTRA = {role: len(role.value) + 2 for role in api.REPLICA_TYPES}  # "-<role>-"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "State", "type": "string", "jsonPath": ".status.state", "description": "Latest condition"},
    {
        "name": "Chief",
        "type": "string",
        "jsonPath": ".status.replicaStatuses.chief.summary",
        "description": "ready/desired",
    },
    {"name": "PS", "type": "string", "jsonPath": ".status.replicaStatuses.ps.summary", "description": "ready/desired"},
    {
        "name": "Workers",
        "type": "string",
        "jsonPath": ".status.replicaStatuses.worker.summary",
        "description": "ready/desired",
    },
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "description": "Restarts and recreations"},
    {
        "name": "Accuracy",
        "type": "number",
        "jsonPath": ".status.results.accuracy",
        "description": "Held-out accuracy of a succeeded job",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _name_rules() -> list[dict[str, str]]:
    rules = [
        {
            "rule": f"self.metadata.name.matches('{api.JOB_NAME_PATTERN}')",
            "message": "metadata.name must be a DNS label (lower-case letters, digits and '-', starting with a "
            "letter): it names the job's headless Service",
        }
    ]
    for role, extra in ROLE_NAME_EXTRA.items():
        field = f"self.spec.replicaSpecs.{role.value}"
        rules.append(
            {
                "rule": f"!has({field}) || {field}.replicas == 0 || size(self.metadata.name) + {extra} "
                f"+ size(string({field}.replicas - 1)) <= {api.DNS_LABEL_MAX}",
                "message": f"metadata.name is too long: pod names <name>-{role.value}-<index> must fit the "
                f"{api.DNS_LABEL_MAX}-character DNS label limit",
            }
        )
    return rules


# Each rule's fieldPath names the field its pydantic twin in api.py names, so both messages point at the same field.
REPLICA_SPECS_RULES: list[dict[str, str]] = [
    {
        "rule": "!has(self.chief) || self.chief.replicas <= 1",
        "message": "chief.replicas must be 0 or 1",
        "fieldPath": ".chief.replicas",
    },
    {
        "rule": "!has(self.evaluator) || self.evaluator.replicas <= 1",
        "message": "evaluator.replicas must be 0 or 1",
        "fieldPath": ".evaluator.replicas",
    },
    {
        "rule": "(has(self.chief) && self.chief.replicas > 0) || (has(self.worker) && self.worker.replicas > 0)",
        "message": "replicaSpecs needs a chief or at least one worker",
    },
    {
        "rule": "!has(self.ps) || self.ps.replicas == 0 || (has(self.chief) && self.chief.replicas == 1)",
        "message": "ps replicas need exactly one chief: TensorFlow's parameter-server training runs its "
        "coordinator as the task named chief",
        "fieldPath": ".chief.replicas",
    },
    {
        "rule": "!has(self.ps) || self.ps.replicas == 0 || (has(self.worker) && self.worker.replicas > 0)",
        "message": "ps replicas need at least one worker",
        "fieldPath": ".worker.replicas",
    },
]

# restartPolicy Always where an exit 0 must end the job (DistTrainJobSpec.success_deciders): on the spec, because
# whether the workers decide depends on successPolicy (AllWorkers) as well as on the chief.
_CHIEF = "(has(self.replicaSpecs.chief) && self.replicaSpecs.chief.replicas > 0)"
SPEC_RULES: list[dict[str, str]] = [
    {
        "rule": f"!{_CHIEF} || self.replicaSpecs.chief.restartPolicy != 'Always'",
        "message": api.always_message(api.ReplicaType.CHIEF),
        "fieldPath": ".replicaSpecs.chief.restartPolicy",
    },
    {
        "rule": "!has(self.replicaSpecs.worker) || self.replicaSpecs.worker.restartPolicy != 'Always' "
        f"|| ({_CHIEF} && (self.successPolicy != 'AllWorkers' || self.replicaSpecs.worker.replicas == 0))",
        "message": api.always_message(api.ReplicaType.WORKER),
        "fieldPath": ".replicaSpecs.worker.restartPolicy",
    },
    {
        # a transition rule (updates only): running pods would keep their old TF_CONFIG and template
        "rule": "self.runPolicy.suspend || oldSelf.runPolicy.suspend || ("
        + " && ".join(
            f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})"
            for f in api.RUNNING_TOPOLOGY
        )
        + ")",
        "message": api.TOPOLOGY_FROZEN_MESSAGE,
    },
    {
        "rule": "!has(self.replicaSpecs.evaluator) || self.replicaSpecs.evaluator.replicas == 0 || has(self.storage)",
        "message": api.EVALUATOR_STORAGE_MESSAGE,
        "fieldPath": ".replicaSpecs.evaluator.replicas",
    },
]


def _resolve(node: Any, defs: dict[str, Schema]) -> Any:
    """Inlines `$ref`s and applies the structural-schema fix-ups, recursively."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "anyOf" in node:
        options = [option for option in node.pop("anyOf") if option.get("type") != "null"]
        kinds = sorted(option.get("type", "") for option in options)
        if kinds == ["integer", "string"]:
            node["x-kubernetes-int-or-string"] = True
            for option in options:  # each type's constraints (pattern, minimum) apply to values of that type only
                node.update({key: value for key, value in option.items() if key in VALUE_CONSTRAINTS})
        elif len(options) == 1:
            node = {**options[0], **node}
        else:
            raise ValueError(f"cannot express anyOf {options} in a structural schema")
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        node = {**target, **node}
    node.pop("title", None)
    if node.get("default", ...) is None:
        del node["default"]
    if "description" in node:
        node["description"] = " ".join(node["description"].split())
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("additionalProperties", None)
    elif node.get("additionalProperties") is False:
        del node["additionalProperties"]
    return {key: _resolve(value, defs) for key, value in node.items() if key != "$defs"}


def model_schema(model: type[api.Model]) -> Schema:
    """The structural OpenAPI v3 schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True)
    return _resolve(raw, raw.get("$defs", {}))


def openapi_schema() -> Schema:
    """The whole object's schema: spec and status from the models, CEL rules added."""
    spec = model_schema(api.DistTrainJobSpec)
    spec["properties"]["replicaSpecs"]["x-kubernetes-validations"] = REPLICA_SPECS_RULES
    spec["x-kubernetes-validations"] = SPEC_RULES
    return {
        "type": "object",
        "description": "A distributed TensorFlow training job: parameter servers, a chief, workers and an "
        "optional evaluator, run as pods with a generated TF_CONFIG.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "disttrain.io/v1alpha1"},
            "kind": {"type": "string", "description": "DistTrainJob"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": model_schema(api.DistTrainJobStatus),
        },
        "x-kubernetes-validations": _name_rules(),
    }


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object for DistTrainJob."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "disttrain", "app.kubernetes.io/part-of": "disttrain"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": ["disttrain"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as YAML, with a header saying where it comes from."""
    header = "# Generated by `disttrain crd` from operator/src/disttrain_operator/api.py. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


# ---------------------------------------------------------------- what templates may not do, at `kubectl apply`

# A CRD is shared by every install and its rules cannot be switched off, so the switchable rules of policy.py
# are ValidatingAdmissionPolicies (admissionregistration.k8s.io/v1): the chart renders the ones its values keep.
TEMPLATE_POLICIES: dict[str, tuple[policy.TemplateRule, ...]] = {
    "host-access": policy.HOST_ACCESS_RULES,
    "service-accounts": (policy.SERVICE_ACCOUNT_RULE,),
}
ROLE_NAMES = tuple(role.value for role in api.REPLICA_TYPES)
# The chart's labels for release "disttrain" (less Helm's own): deploy/ equals `helm template` (test_packaging).
POLICY_LABELS = {
    "app.kubernetes.io/name": "disttrain",
    "app.kubernetes.io/instance": "disttrain",
    "app.kubernetes.io/component": "operator",
    "app.kubernetes.io/version": "0.1.0",
    "app.kubernetes.io/part-of": "disttrain",
}


def policy_validations(kind: str) -> list[dict[str, str]]:
    """The validations of one template policy (the chart's files/<kind>.yaml)."""
    return policy.admission_validations(TEMPLATE_POLICIES[kind], ROLE_NAMES)


def admission_policy(
    kind: str, prefix: str = "disttrain", accounts: tuple[str, ...] = policy.DEFAULT_SERVICE_ACCOUNTS
) -> dict[str, Any]:
    """The ValidatingAdmissionPolicy of one kind, as the chart renders it with default values."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": f"{prefix}-{kind}", "labels": POLICY_LABELS},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [api.GROUP],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": [api.PLURAL],
                    }
                ]
            },
            # a job admitted before the policy existed may still get its metadata and status updated
            "matchConditions": [
                {
                    "name": "spec-created-or-changed",
                    "expression": "request.operation == 'CREATE' || object.spec != oldObject.spec",
                }
            ],
            **(
                {"variables": [{"name": "allowedServiceAccounts", "expression": json.dumps(list(accounts))}]}
                if kind == "service-accounts"
                else {}
            ),
            "validations": policy_validations(kind),
        },
    }


def admission_policy_binding(kind: str, prefix: str = "disttrain") -> dict[str, Any]:
    """Its binding: every namespace (the chart limits it to watchNamespaces when they are set)."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": f"{prefix}-{kind}", "labels": POLICY_LABELS},
        "spec": {"policyName": f"{prefix}-{kind}", "validationActions": ["Deny"]},
    }


def template_policy_yaml() -> str:
    """deploy/template-policy.yaml: both policies and their bindings, as the chart's defaults."""
    header = "# Generated by `disttrain template-policy` from operator/src/disttrain_operator/policy.py. Do not edit.\n"
    objects = [obj for kind in TEMPLATE_POLICIES for obj in (admission_policy(kind), admission_policy_binding(kind))]
    return header + yaml.safe_dump_all(objects, sort_keys=False, width=120)


def policy_validations_yaml(kind: str) -> str:
    """charts/disttrain/files/<kind>.yaml."""
    header = "# Generated by `make crd-files` from operator/src/disttrain_operator/policy.py. Do not edit.\n"
    return header + yaml.safe_dump(policy_validations(kind), sort_keys=False, width=120)
