"""What a replica's pod `template` may not do (docs/security.md), each rule written once.

The operator creates pods with its own rights, so a template must not become a way around the cluster's rules.
Two kinds of rule:

* **host access** (privileged containers, added capabilities, host namespaces, hostPath volumes, hostPort,
  nodeName) and a **serviceAccountName** outside the allowed list: refused unless the operator is installed with
  the opt-in (chart values `templatePolicy.*`). At `kubectl apply` a ValidatingAdmissionPolicy says no (a CRD rule
  could not be switched per install); the operator and local mode refuse the same with the same message.
* **conflicts** with what the operator always sets itself (restart policy, hostname, subdomain, pod name): refused
  always, by the CRD's own CEL rules (`template_conflict_rules`).

Every rule is a CEL expression over a template (the `{t}` placeholder), a Python check of the same, and one
message. The Python checks never raise on strange input: the API's types are checked elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ANY_SERVICE_ACCOUNT = "*"
DEFAULT_SERVICE_ACCOUNTS = ("default",)
ALLOWED_CAPABILITY = "NET_BIND_SERVICE"  # the one capability the "restricted" Pod Security Standard allows to add
OPT_IN = "the operator's opt-in (chart value templatePolicy.allowHostAccess) allows it"
CONTAINER_LISTS = ("initContainers", "containers")
TRAINER_CONTAINER = "tensorflow"  # the container that runs TensorFlow, found by this name
# set by the operator in the trainer container, by no one else (docs/contract.md)
TF_CONFIG_ENV = "TF_CONFIG"
OUTPUT_DIR_ENV = "DISTTRAIN_OUTPUT_DIR"
REDACT_ENV = "DISTTRAIN_REDACT_ENV"
OPERATOR_ENV = (TF_CONFIG_ENV, OUTPUT_DIR_ENV, REDACT_ENV)


@dataclass(frozen=True)
class TemplatePolicy:
    """The operator's settings for templates: host access allowed or not, and the service accounts allowed."""

    allow_host_access: bool = False
    allowed_service_accounts: tuple[str, ...] = DEFAULT_SERVICE_ACCOUNTS

    def allows_service_account(self, name: str) -> bool:
        return ANY_SERVICE_ACCOUNT in self.allowed_service_accounts or name in self.allowed_service_accounts


DEFAULT_POLICY = TemplatePolicy()


@dataclass(frozen=True)
class TemplateRule:
    """One rule: `field` (under the template) names what it reads; `cel` is true when the template `{t}` obeys."""

    field: str
    cel: str
    obeys: Callable[[dict[str, Any], TemplatePolicy], bool]
    message: str
    kind: str = "host"  # host | serviceAccount | conflict

    def cel_for(self, template: str) -> str:
        return self.cel.replace("{t}", template)


def _get(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]... or None wherever a level is missing or not an object."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _containers(template: dict[str, Any]) -> list[Any]:
    return [c for name in CONTAINER_LISTS for c in _items(_get(template, "spec", name))]


def _each_container(cel_condition: str) -> str:
    """CEL: every container and init container `c` satisfies the condition."""
    return " && ".join(
        f"(!has({{t}}.spec) || !has({{t}}.spec.{name}) || {{t}}.spec.{name}.all(c, {cel_condition}))"
        for name in CONTAINER_LISTS
    )


def _not_true(pod_field: str) -> TemplateRule:
    return TemplateRule(
        field=f"spec.{pod_field}",
        cel=f"!has({{t}}.spec) || !has({{t}}.spec.{pod_field}) || {{t}}.spec.{pod_field} != true",
        obeys=lambda t, _: _get(t, "spec", pod_field) is not True,
        message=f"host namespaces are refused: {pod_field} would share the node's; {OPT_IN}",
    )


def _no_added_capabilities(template: dict[str, Any], _: TemplatePolicy) -> bool:
    added = [a for c in _containers(template) for a in _items(_get(c, "securityContext", "capabilities", "add"))]
    return all(a == ALLOWED_CAPABILITY for a in added)


def _service_account_allowed(template: dict[str, Any], policy: TemplatePolicy) -> bool:
    names = [_get(template, "spec", key) for key in ("serviceAccountName", "serviceAccount")]
    return all(not isinstance(n, str) or not n or policy.allows_service_account(n) for n in names)


HOST_ACCESS_RULES: tuple[TemplateRule, ...] = (
    TemplateRule(
        field="spec.containers[].securityContext.privileged",
        cel=_each_container(
            "!has(c.securityContext) || !has(c.securityContext.privileged) || c.securityContext.privileged != true"
        ),
        obeys=lambda t, _: all(_get(c, "securityContext", "privileged") is not True for c in _containers(t)),
        message=f"privileged containers are refused (also in initContainers); {OPT_IN}",
    ),
    TemplateRule(
        field="spec.containers[].securityContext.capabilities.add",
        cel=_each_container(
            "!has(c.securityContext) || !has(c.securityContext.capabilities) "
            "|| !has(c.securityContext.capabilities.add) "
            f"|| c.securityContext.capabilities.add.all(a, a == '{ALLOWED_CAPABILITY}')"
        ),
        obeys=_no_added_capabilities,
        message=f"added capabilities are refused, except {ALLOWED_CAPABILITY} (also in initContainers); {OPT_IN}",
    ),
    _not_true("hostNetwork"),
    _not_true("hostPID"),
    _not_true("hostIPC"),
    TemplateRule(
        field="spec.volumes[].hostPath",
        cel="!has({t}.spec) || !has({t}.spec.volumes) || {t}.spec.volumes.all(v, !has(v.hostPath))",
        obeys=lambda t, _: all(_get(v, "hostPath") is None for v in _items(_get(t, "spec", "volumes"))),
        message=f"hostPath volumes are refused: they expose the node's files; use a PersistentVolumeClaim; {OPT_IN}",
    ),
    TemplateRule(
        field="spec.containers[].ports[].hostPort",
        cel=_each_container("!has(c.ports) || c.ports.all(p, !has(p.hostPort) || p.hostPort == 0)"),
        obeys=lambda t, _: all(not _get(p, "hostPort") for c in _containers(t) for p in _items(_get(c, "ports"))),
        message=f"hostPort is refused: it opens a port on the node; {OPT_IN}",
    ),
    TemplateRule(
        field="spec.nodeName",
        cel="!has({t}.spec) || !has({t}.spec.nodeName) || {t}.spec.nodeName == ''",
        obeys=lambda t, _: not _get(t, "spec", "nodeName"),
        message=f"nodeName is refused: it bypasses the scheduler and its checks; use nodeSelector; {OPT_IN}",
    ),
)

SERVICE_ACCOUNT_RULE = TemplateRule(
    field="spec.serviceAccountName",
    cel=" && ".join(
        f"(!has({{t}}.spec) || !has({{t}}.spec.{key}) || {{t}}.spec.{key} == '' "
        f"|| {{t}}.spec.{key} in variables.allowedServiceAccounts)"
        for key in ("serviceAccountName", "serviceAccount")
    ),
    obeys=_service_account_allowed,
    message="this service account is not in the operator's allowed list (chart value "
    "templatePolicy.allowedServiceAccounts; default: only 'default'): a job must not run with another identity",
    kind="serviceAccount",
)


def _operator_owns(path: tuple[str, ...], setting: str) -> TemplateRule:
    where = ".".join(path)
    parent, leaf = ".".join(("{t}", *path[:-1])), path[-1]
    guards = " || ".join(f"!has({'.'.join(('{t}', *path[: i + 1]))})" for i in range(len(path) - 1))
    return TemplateRule(
        field=where,
        cel=f"{guards} || !has({parent}.{leaf})",
        obeys=lambda t, _: _get(t, *path[:-1]) is None or _get(_get(t, *path[:-1]), leaf) is None,
        message=f"the operator sets it: {setting}",
        kind="conflict",
    )


def _trainer(template: dict[str, Any]) -> list[dict[str, Any]]:
    containers = _items(_get(template, "spec", "containers"))
    return [c for c in containers if isinstance(c, dict) and c.get("name") == TRAINER_CONTAINER]


def _trainer_rule(
    field: str, cel_condition: str, obeys: Callable[[dict[str, Any]], bool], setting: str
) -> TemplateRule:
    return TemplateRule(
        field=f"spec.containers[{TRAINER_CONTAINER}].{field}",
        cel=f"!has({{t}}.spec) || !has({{t}}.spec.containers) || {{t}}.spec.containers.all(c, !has(c.name) "
        f"|| c.name != '{TRAINER_CONTAINER}' || {cel_condition})",
        obeys=lambda t, _: all(obeys(c) for c in _trainer(t)),
        message=f"the operator sets it: {setting}",
        kind="conflict",
    )


CONFLICT_RULES: tuple[TemplateRule, ...] = (
    _trainer_rule("image", "!has(c.image)", lambda c: "image" not in c, "use the replica's image or spec.image"),
    _trainer_rule(
        "env",
        f"!has(c.env) || c.env.all(e, !has(e.name) || !(e.name in {list(OPERATOR_ENV)}))",
        lambda c: all(_get(e, "name") not in OPERATOR_ENV for e in _items(c.get("env"))),
        f"{' and '.join(OPERATOR_ENV)} come from the operator",
    ),
    _operator_owns(("spec", "restartPolicy"), "use the replica's restartPolicy"),
    _operator_owns(("spec", "hostname"), "every pod is named <job>-<role>-<index>"),
    _operator_owns(("spec", "subdomain"), "it is the job's headless Service"),
    _operator_owns(("metadata", "name"), "every pod is named <job>-<role>-<index>"),
    _operator_owns(("metadata", "namespace"), "pods run in the job's namespace"),
)


def policy_rules(policy: TemplatePolicy) -> list[TemplateRule]:
    """The rules the policy switches on (conflict rules hold always)."""
    rules = [] if policy.allow_host_access else list(HOST_ACCESS_RULES)
    if ANY_SERVICE_ACCOUNT not in policy.allowed_service_accounts:
        rules.append(SERVICE_ACCOUNT_RULE)
    return [*CONFLICT_RULES, *rules]


def template_violations(template: Any, policy: TemplatePolicy = DEFAULT_POLICY) -> list[str]:
    """`<field>: <message>` for each rule the template breaks (field relative to the template)."""
    if not isinstance(template, dict):
        return []
    return [f"{rule.field}: {rule.message}" for rule in policy_rules(policy) if not rule.obeys(template, policy)]


def template_conflict_rules() -> list[dict[str, str]]:
    """The conflict rules as the CRD's x-kubernetes-validations on `template` (self is the template)."""
    return [
        {
            "rule": rule.cel_for("self"),
            "message": f"{rule.field}: {rule.message}",
            # the API server reports the error at this field (the nearest one its schema declares)
            "fieldPath": "." + rule.field.split("[")[0],
        }
        for rule in CONFLICT_RULES
    ]


def admission_validations(rules: tuple[TemplateRule, ...], roles: tuple[str, ...]) -> list[dict[str, str]]:
    """The rules as ValidatingAdmissionPolicy validations, one per role's template, each naming its field."""
    validations = []
    for role in roles:
        replica = f"object.spec.replicaSpecs.{role}"
        for rule in rules:
            obeys = rule.cel_for(f"{replica}.template")
            validations.append(
                {
                    "expression": f"!has({replica}) || !has({replica}.template) || ({obeys})",
                    "message": f"spec.replicaSpecs.{role}.template.{rule.field}: {rule.message}",
                    "reason": "Forbidden",
                }
            )
    return validations
