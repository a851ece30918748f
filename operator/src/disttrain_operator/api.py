"""The DistTrainJob API (disttrain.io/v1alpha1): pydantic models of spec and status.

These models are the one source of truth: the CRD schema is generated from them (crd.py), the
operator validates every job with them, and local mode (`disttrain run`) reads manifests with them.
Field docstrings become the descriptions that `kubectl explain` shows.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from .policy import (
    DEFAULT_POLICY,
    OPERATOR_ENV,
    TRAINER_CONTAINER,
    TemplatePolicy,
    template_conflict_rules,
    template_violations,
)

GROUP = "disttrain.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DistTrainJob"
PLURAL = "disttrainjobs"
SINGULAR = "disttrainjob"
SHORT_NAMES = ["dtj"]

DEFAULT_IMAGE = "disttrain/trainer:0.1.0"
DEFAULT_PORT = 2222
DNS_LABEL_MAX = 63
JOB_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_TEMPLATE_CONTAINERS = 32
MAX_TEMPLATE_ENV = 256  # bounds (with the ones below) keep the CRD's CEL rules within the API server's cost budget
# Pods per role. TF_CONFIG names every training task, so each pod grows with the job and the operator's work per
# pass with it; beyond this a job is far more likely a typo (or `1e9`) than a plan. docs/api.md says so.
MAX_REPLICAS = 1000
# What a resource amount may look like (Kubernetes' resource.Quantity, without a sign: amounts are not negative).
QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
INT64_MAX = 2**63 - 1  # the API server's integers are int64

# The trainer container is found by name, never by position: a sidecar listed first must not get the trainer's
# image, TF_CONFIG and port. The same rule, with the same message, in pydantic (ReplicaSpec) and CEL (below).
TEMPLATE_TRAINER_MESSAGE = (
    f"template.spec.containers has no container named '{TRAINER_CONTAINER}': the trainer container must be named "
    f"{TRAINER_CONTAINER} (other containers keep their names and are left as written)"
)


def _typed(kind: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "description": description, **extra}


def _open_object(description: str, properties: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object whose undeclared fields are kept as written."""
    schema = {**_typed("object", description), "x-kubernetes-preserve-unknown-fields": True}
    return {**schema, "properties": properties} if properties else schema


def _list_of(description: str, item: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return _typed("array", description, items=item, **extra)


# A container as far as the rules read it (the trainer's, sidecars, init containers).
_CONTAINER_SCHEMA = _open_object(
    "A Container (kubectl explain pod.spec.containers).",
    {
        "name": _typed("string", "The container's name.", maxLength=63),
        "image": _typed("string", "Not for the trainer: see image."),
        "env": _list_of(
            "Environment variables (the trainer's TF_CONFIG is the operator's).",
            _open_object(
                "An EnvVar (kubectl explain pod.spec.containers.env).",
                {"name": _typed("string", "Its name.", maxLength=256)},
            ),
            maxItems=MAX_TEMPLATE_ENV,
        ),
        "ports": _list_of(
            "Ports (hostPort is refused: see docs/security.md).",
            _open_object("A ContainerPort.", {"hostPort": _typed("integer", "Refused unless 0.")}),
        ),
        "securityContext": _open_object(
            "A SecurityContext (privileged and added capabilities are refused: see docs/security.md).",
            {
                "privileged": _typed("boolean", "Refused when true."),
                "capabilities": _open_object(
                    "Capabilities to add and drop.",
                    {"add": _list_of("Only NET_BIND_SERVICE.", {"type": "string"})},
                ),
            },
        ),
    },
)

# The part of a PodTemplateSpec that the rules read, typed so that the API server and pydantic (conform_to_schema)
# refuse the same wrong types and drop the same nulls; everything else is kept as written.
TEMPLATE_SCHEMA: dict[str, Any] = {
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "metadata": {
            "type": "object",
            "description": "Labels and annotations for the pods; name and namespace are the operator's.",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {
                "name": {"type": "string", "description": "The operator's: <job>-<role>-<index>."},
                "namespace": {"type": "string", "description": "The operator's: the job's namespace."},
            },
        },
        "spec": {
            "type": "object",
            "description": "A PodSpec (kubectl explain pod.spec).",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {
                "restartPolicy": {"type": "string", "description": "The operator's: see the replica's restartPolicy."},
                "hostname": {"type": "string", "description": "The operator's: <job>-<role>-<index>."},
                "subdomain": {"type": "string", "description": "The operator's: the job's headless Service."},
                "containers": {
                    "type": "array",
                    "description": f"The pod's containers; the trainer is the one named {TRAINER_CONTAINER}.",
                    "maxItems": MAX_TEMPLATE_CONTAINERS,
                    "items": _CONTAINER_SCHEMA,
                },
                "initContainers": {
                    "type": "array",
                    "description": "Init containers (the same rules as containers).",
                    "maxItems": MAX_TEMPLATE_CONTAINERS,
                    "items": _CONTAINER_SCHEMA,
                },
                "hostNetwork": _typed("boolean", "Refused when true."),
                "hostPID": _typed("boolean", "Refused when true."),
                "hostIPC": _typed("boolean", "Refused when true."),
                "nodeName": _typed("string", "Refused: use nodeSelector."),
                "serviceAccountName": _typed("string", "Only the operator's allowed service accounts."),
                "serviceAccount": _typed("string", "Deprecated alias of serviceAccountName; the same rule."),
                "volumes": _list_of(
                    "Volumes (hostPath is refused).",
                    _open_object(
                        "A Volume (kubectl explain pod.spec.volumes).",
                        {"hostPath": _open_object("Refused: use a PersistentVolumeClaim.")},
                    ),
                ),
            },
        },
    },
    "x-kubernetes-validations": [
        {
            "rule": "!has(self.spec) || !has(self.spec.containers) || size(self.spec.containers) == 0 || "
            f"self.spec.containers.exists(c, has(c.name) && c.name == '{TRAINER_CONTAINER}')",
            "message": TEMPLATE_TRAINER_MESSAGE,
        },
        *template_conflict_rules(),
    ],
}

_JSON_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool}


def _is_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= INT64_MAX
    return isinstance(value, _JSON_TYPES[kind])


def conform_to_schema(value: Any, schema: dict[str, Any], path: str = "") -> tuple[Any, list[str]]:
    """What the API server does with `value` under a (structural) schema, for the keywords TEMPLATE_SCHEMA uses:
    nulls of declared fields dropped, then type, maxItems and maxLength checked. Returns (value, errors), each
    error `<path>: <problem>` with the path relative to `value` (`.spec.containers[0].name`)."""
    kind = schema.get("type")
    if kind == "integer":
        value = _api_integer(value) if not isinstance(value, int) else value
    if kind is not None and not _is_type(value, kind):
        return value, [f"{path}: must be of type {kind}"]
    errors: list[str] = []
    if isinstance(value, dict):
        declared = schema.get("properties", {})
        value = {key: item for key, item in value.items() if item is not None or key not in declared}
        for key, sub in declared.items():
            if key in value:
                value[key], found = conform_to_schema(value[key], sub, f"{path}.{key}")
                errors += found
    elif isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{path}: must have at most {schema['maxItems']} items")
        if "items" in schema:
            conformed = [conform_to_schema(item, schema["items"], f"{path}[{i}]") for i, item in enumerate(value)]
            value = [item for item, _ in conformed]
            errors += [error for _, found in conformed for error in found]
    elif isinstance(value, str) and len(value) > schema.get("maxLength", len(value)):
        errors.append(f"{path}: may not be longer than {schema['maxLength']} characters")
    return value, errors


class ReplicaType(StrEnum):
    """TensorFlow task types; they are also the keys of TF_CONFIG's cluster."""

    CHIEF = "chief"
    PS = "ps"
    WORKER = "worker"
    EVALUATOR = "evaluator"


REPLICA_TYPES: tuple[ReplicaType, ...] = tuple(ReplicaType)


class RestartPolicy(StrEnum):
    """What happens when a replica's trainer exits (restarts.py says how each is carried out)."""

    NEVER = "Never"
    ON_FAILURE = "OnFailure"
    ALWAYS = "Always"
    EXIT_CODE = "ExitCode"


class CleanPodPolicy(StrEnum):
    """Which pods are deleted when the job finishes."""

    RUNNING = "Running"
    ALL = "All"
    NONE = "None"


class SuccessPolicy(StrEnum):
    """Which replicas' success makes the job's."""

    CHIEF_OR_WORKER0 = "ChiefOrWorker0"
    ALL_WORKERS = "AllWorkers"


def _enum_member(enum_type: type[StrEnum]) -> BeforeValidator:
    """Reads a StrEnum field from its plain string value (the API is parsed strictly, and strict parsing wants a
    member), refusing any other value in the schema's own words."""
    values = [repr(member.value) for member in enum_type]
    expected = f"{', '.join(values[:-1])} or {values[-1]}"

    def to_member(value: Any) -> Any:
        if isinstance(value, str) and value in enum_type._value2member_map_:
            return enum_type(value)
        raise PydanticCustomError("enum", "Input should be {expected}", {"expected": expected})

    return BeforeValidator(to_member)


RestartPolicyValue = Annotated[RestartPolicy, _enum_member(RestartPolicy)]
CleanPodPolicyValue = Annotated[CleanPodPolicy, _enum_member(CleanPodPolicy)]
SuccessPolicyValue = Annotated[SuccessPolicy, _enum_member(SuccessPolicy)]


class Model(BaseModel):
    """Base: camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON form used in Kubernetes objects (camelCase, no unset optional fields)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        """A declared field set to null counts as unset (then defaulted), as the API server prunes it."""
        if not isinstance(data, dict):
            return data
        declared = {name for key, field in cls.model_fields.items() for name in (key, field.alias)}
        return {key: value for key, value in data.items() if value is not None or key not in declared}


def _api_integer(value: Any) -> Any:
    """An integer as the API server reads JSON numbers: 2.0 is 2 (it stores 2), 2.5 stays wrong, and it must fit
    int64 (a larger one is "not an integer" there; not a schema maximum: the API server reads those as float64)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= INT64_MAX:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
        raise ValueError("must be an integer of at most 64 bits")
    return value


# replicas stays a plain int: the CEL rules read it, and the API server's CEL refuses a number written as 2.0 there.
Int = Annotated[int, BeforeValidator(_api_integer)]
NonNegativeInt64 = Annotated[int, Field(ge=0), BeforeValidator(_api_integer)]
PositiveInt64 = Annotated[int, Field(ge=1), BeforeValidator(_api_integer)]


def _drop_null_values(value: Any) -> Any:
    """A map's null values are pruned by the API server."""
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


ENV_VALUE_MESSAGE = 'needs exactly one of value and valueFrom (value: "" for an empty variable)'
ENV_OPERATOR_MESSAGE = f"is the operator's to set ({', '.join(OPERATOR_ENV)})"


class EnvVar(Model):
    """An environment variable for the trainer container."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.value) != has(self.valueFrom)", "message": ENV_VALUE_MESSAGE},
                {"rule": f"!(self.name in {list(OPERATOR_ENV)})", "message": ENV_OPERATOR_MESSAGE},
            ]
        }
    )

    name: str = Field(min_length=1, max_length=256, pattern=ENV_NAME_PATTERN)
    """Name of the variable."""
    value: str | None = None
    """Literal value."""
    value_from: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """A Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef)."""

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if (self.value is None) == (self.value_from is None):
            raise ValueError(ENV_VALUE_MESSAGE)
        if self.name in OPERATOR_ENV:
            raise ValueError(ENV_OPERATOR_MESSAGE)
        return self


Quantity = NonNegativeInt64 | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)]
"""An amount: a non-negative integer or a Kubernetes quantity string such as 500m, 2Gi or 1.5."""


class Resources(Model):
    """Compute resources for each pod of a role (as in a container's `resources`)."""

    requests: dict[str, Quantity] | None = None
    """Minimum resources, e.g. {cpu: "1", memory: 2Gi}."""
    limits: dict[str, Quantity] | None = None
    """Maximum resources. The trainer sizes its thread pools from the CPU limit."""

    _nulls = field_validator("requests", "limits", mode="before")(_drop_null_values)


class ReplicaSpec(Model):
    """How to run the pods of one TensorFlow role."""

    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS)
    """Number of pods of this role (at most 1000). chief and evaluator take at most 1."""
    image: str | None = Field(default=None, min_length=1)
    """Container image for this role; defaults to spec.image."""
    command: list[str] | None = None
    """Container command; defaults to the image's entrypoint (disttrain-trainer)."""
    args: list[str] | None = None
    """Trainer arguments for this role; when set, they replace spec.args."""
    env: list[EnvVar] = Field(default_factory=list)
    """Extra environment variables, added after spec.env."""
    resources: Resources | None = None
    """CPU and memory requests and limits. GPUs go in `gpus`."""
    gpus: Int = Field(default=0, ge=0, le=64)
    """NVIDIA GPUs per pod: sets the nvidia.com/gpu limit and tolerates the nvidia.com/gpu taint."""
    restart_policy: RestartPolicyValue = RestartPolicy.EXIT_CODE
    """What happens when a pod of this role fails. Never: the job fails. OnFailure/Always: the kubelet
    restarts the container in place (Always even after exit 0, so not for the replicas whose success
    ends the job). ExitCode: exit codes 1-127 are permanent (the job fails); 128 and above (signals, OOM
    kill) and evictions recreate the pod. Every restart counts against backoffLimit."""
    template: dict[str, Any] | None = Field(default=None, json_schema_extra=TEMPLATE_SCHEMA)
    """A full PodTemplateSpec merged under the operator's settings (name, labels, TF_CONFIG, ports and
    restart policy are always the operator's). Use it for nodeSelector, volumes, sidecars, securityContext.
    The trainer container is the one named `tensorflow` (added when the template lists none); a template
    whose containers include none of that name is refused."""

    @field_validator("template")
    @classmethod
    def _template_as_the_api_server_reads_it(cls, template: dict[str, Any] | None) -> dict[str, Any] | None:
        """TEMPLATE_SCHEMA's types and bounds (nulls dropped), and the trainer container found by name."""
        if template is None:
            return None
        template, errors = conform_to_schema(template, TEMPLATE_SCHEMA)
        if errors:
            raise ValueError("; ".join(errors))  # each starts with '.': under template (format_validation_error)
        containers = (template.get("spec") or {}).get("containers") or []
        if containers and not any(c.get("name") == TRAINER_CONTAINER for c in containers):
            raise ValueError(TEMPLATE_TRAINER_MESSAGE)
        return template


class RunPolicy(Model):
    """Job-wide lifecycle settings."""

    clean_pod_policy: CleanPodPolicyValue = CleanPodPolicy.RUNNING
    """Which pods to delete when the job finishes. Running (default): pods still running, such as
    parameter servers, so nothing keeps holding resources; All: every pod; None: keep all. After a
    failure, pods still running are stopped whatever the policy: nothing would end them."""
    backoff_limit: NonNegativeInt64 = 6
    """Restarts and recreations of pods allowed, in total, before the job fails (BackoffLimitExceeded)."""
    active_deadline_seconds: PositiveInt64 | None = None
    """Seconds the job may run, counted from its start (or resumption); then it fails (DeadlineExceeded)."""
    ttl_seconds_after_finished: NonNegativeInt64 | None = None
    """Delete the finished job (and so its pods) this many seconds after it succeeded or failed."""
    suspend: bool = False
    """true deletes the job's pods and keeps the job; false (again) recreates them."""


class Storage(Model):
    """A PersistentVolumeClaim shared by every pod, for TensorBoard logs, checkpoints and the model."""

    claim_name: str = Field(min_length=1)
    """Name of an existing PersistentVolumeClaim in the job's namespace (ReadWriteMany for several nodes)."""
    mount_path: str = Field(default="/var/lib/disttrain", pattern=r"^/")
    """Where the claim is mounted. The trainer writes under <mountPath>/<job name>/."""


class ReplicaSpecs(Model):
    """Replica specs keyed by TensorFlow task type."""

    chief: ReplicaSpec | None = None
    """The coordinator: runs the training loop in parameter-server mode, writes checkpoints."""
    ps: ReplicaSpec | None = None
    """Parameter servers: hold the sharded model variables (Downpour SGD's parameter server)."""
    worker: ReplicaSpec | None = None
    """Workers: compute gradients (model replicas)."""
    evaluator: ReplicaSpec | None = None
    """Side-car evaluator: evaluates checkpoints as they appear; not part of the training cluster."""

    def items(self) -> list[tuple[ReplicaType, ReplicaSpec]]:
        """The roles that are set, in TensorFlow's order (chief, ps, worker, evaluator)."""
        return [(role, spec) for role in REPLICA_TYPES if (spec := getattr(self, role.value)) is not None]

    def count(self, role: ReplicaType) -> int:
        """Number of replicas of a role (0 when the role is absent)."""
        spec = getattr(self, role.value)
        return spec.replicas if spec is not None else 0

    @model_validator(mode="after")
    def _check_templates(self, info: ValidationInfo) -> ReplicaSpecs:
        """What policy.py refuses in a template, under the operator's TemplatePolicy (the validation context)."""
        policy = (info.context or {}).get("policy", DEFAULT_POLICY)
        violations = [
            f"spec.replicaSpecs.{role.value}.template.{violation}"
            for role, spec in self.items()
            for violation in template_violations(spec.template, policy)
        ]
        if violations:
            raise ValueError("; ".join(violations))
        return self

    @model_validator(mode="after")
    def _check_topology(self) -> ReplicaSpecs:
        for single in (ReplicaType.CHIEF, ReplicaType.EVALUATOR):
            if self.count(single) > 1:
                raise ValueError(f"spec.replicaSpecs.{single.value}.replicas must be 0 or 1")
        if self.count(ReplicaType.CHIEF) + self.count(ReplicaType.WORKER) == 0:
            raise ValueError("spec.replicaSpecs needs a chief or at least one worker")
        if self.count(ReplicaType.PS) > 0:
            if self.count(ReplicaType.CHIEF) != 1:
                raise ValueError(
                    "spec.replicaSpecs.chief.replicas must be 1 when ps replicas are set: "
                    "TensorFlow's parameter-server training runs its coordinator as the task named chief"
                )
            if self.count(ReplicaType.WORKER) == 0:
                raise ValueError("spec.replicaSpecs.worker.replicas must be at least 1 when ps replicas are set")
        return self


def always_message(role: ReplicaType) -> str:
    """Why restartPolicy Always is refused for a role whose exit 0 ends the job (pydantic and the CRD's CEL)."""
    return (
        f"Always restarts the {role.value} even after it exits 0, so the job could never succeed; "
        "use OnFailure or ExitCode"
    )


# What the job's pods are made of: it cannot change while they run (the CRD's transition rule in crd.py; there
# is no old object for pydantic to compare with). Suspending the job first lets it change.
RUNNING_TOPOLOGY = ("replicaSpecs", "image", "args", "env", "port", "successPolicy", "storage", "networkPolicy")
TOPOLOGY_FROZEN_MESSAGE = (
    "only spec.runPolicy may change while the job runs: its pods would keep their old TF_CONFIG and template; "
    "suspend it first (runPolicy.suspend: true, in the same or an earlier edit) or create a new job"
)

# The evaluator reads the checkpoints the chief writes; without a shared volume it would evaluate nothing, silently.
EVALUATOR_STORAGE_MESSAGE = (
    "an evaluator evaluates the checkpoints the chief writes, which it can only read from shared storage: "
    "set spec.storage (a ReadWriteMany PersistentVolumeClaim) or remove the evaluator"
)


class DistTrainJobSpec(Model):
    """The desired TensorFlow cluster and how to run it. Only runPolicy may change while the job runs; suspend
    the job (runPolicy.suspend) to change the rest."""

    @model_validator(mode="after")
    def _check_deciders_can_finish(self) -> DistTrainJobSpec:
        for role in self.success_deciders():
            if getattr(self.replica_specs, role.value).restart_policy == RestartPolicy.ALWAYS:
                raise ValueError(f"spec.replicaSpecs.{role.value}.restartPolicy: {always_message(role)}")
        return self

    @model_validator(mode="after")
    def _check_evaluator_has_storage(self) -> DistTrainJobSpec:
        if self.replica_specs.count(ReplicaType.EVALUATOR) and self.storage is None:
            raise ValueError(f"spec.replicaSpecs.evaluator.replicas: {EVALUATOR_STORAGE_MESSAGE}")
        return self

    def success_deciders(self) -> list[ReplicaType]:
        """The roles whose exit 0 ends the job under its success policy."""
        has_chief = self.replica_specs.count(ReplicaType.CHIEF) > 0
        if self.success_policy == SuccessPolicy.ALL_WORKERS:
            workers = [ReplicaType.WORKER] if self.replica_specs.count(ReplicaType.WORKER) else []
            return [ReplicaType.CHIEF, *workers] if has_chief else workers
        return [ReplicaType.CHIEF if has_chief else ReplicaType.WORKER]

    image: str = Field(default=DEFAULT_IMAGE, min_length=1)
    """Default container image for every role."""
    args: list[str] = Field(default_factory=list)
    """Trainer arguments given to every role (each role takes what applies to it)."""
    env: list[EnvVar] = Field(default_factory=list)
    """Environment variables for every role."""
    port: Int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    """The TensorFlow gRPC port of every task."""
    replica_specs: ReplicaSpecs
    """The pods per TensorFlow role: chief, ps, worker, evaluator."""
    run_policy: RunPolicy = Field(default_factory=RunPolicy, json_schema_extra={"default": {}})
    """Clean-up, backoff, deadline, TTL and suspension."""
    success_policy: SuccessPolicyValue = SuccessPolicy.CHIEF_OR_WORKER0
    """When the job has succeeded. ChiefOrWorker0: the chief exits 0 (or worker 0 when there is no chief).
    AllWorkers: the chief (if any) and every worker exit 0."""
    storage: Storage | None = None
    """Optional shared PersistentVolumeClaim for outputs."""
    network_policy: bool | None = None
    """Create a NetworkPolicy that lets only this job's own pods reach its TensorFlow port (other ports of its
    pods stay open, e.g. a TensorBoard sidecar). Unset: the operator's default, on (chart value
    networkPolicy.enabled). It takes effect where the cluster's network plugin enforces NetworkPolicies."""


def max_pod_name_length(job_name: str, replica_specs: ReplicaSpecs) -> int:
    """Length of the longest generated pod name `<job>-<role>-<index>`."""
    lengths = [
        len(f"{job_name}-{role.value}-{spec.replicas - 1}") for role, spec in replica_specs.items() if spec.replicas
    ]
    return max(lengths, default=len(job_name))


def validate_job_name(name: str, spec: DistTrainJobSpec) -> None:
    """Checks that the job name can be a Service name and every pod name a DNS label."""
    if not re.fullmatch(JOB_NAME_PATTERN.strip("^$"), name) or len(name) > DNS_LABEL_MAX:  # no "$\n" loophole
        raise ValueError(
            f"metadata.name {name!r} must be a DNS label (lower-case letters, digits and '-', starting "
            f"with a letter, at most {DNS_LABEL_MAX} characters): it names the job's Service"
        )
    longest = max_pod_name_length(name, spec.replica_specs)
    if longest > DNS_LABEL_MAX:
        raise ValueError(
            f"metadata.name {name!r} is too long: pod names <job>-<role>-<index> would have {longest} "
            f"characters, over the {DNS_LABEL_MAX}-character DNS label limit"
        )


class InvalidSpecError(ValueError):
    """A manifest that does not describe a valid DistTrainJob; the message names the field."""


# pydantic names the member of a union (Quantity: integer or string) that an error is about; not a field
_UNION_MEMBER = re.compile(r"^(function-(before|after|wrap|plain)\[.*\]|constrained-\w+)$")


def format_validation_error(error: ValidationError, prefix: str = "spec") -> str:
    """One readable line per problem, naming each field by its wire path (spec.replicaSpecs...)."""
    lines = []
    for item in error.errors():
        loc = [part for part in item["loc"] if not (isinstance(part, str) and _UNION_MEMBER.match(part))]
        path = prefix + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
        message = item["msg"].removeprefix("Value error, ")
        if message.startswith("."):  # a validator's `.sub.field: problem` (one or more, `; `-separated)
            lines.append("; ".join(path + part for part in message.split("; ")))
        else:
            lines.append(message if message.startswith(f"{path}.") else f"{path}: {message}")  # names its own field
    return "; ".join(lines)


def parse_spec(name: str, spec: dict[str, Any], policy: TemplatePolicy = DEFAULT_POLICY) -> DistTrainJobSpec:
    """Validates a job's spec (as found in the object) and its name, templates under `policy`; raises
    InvalidSpecError."""
    try:
        # strict: no "3" for 3 or "true" for true, as the API server's schema refuses them
        parsed = DistTrainJobSpec.model_validate(spec, strict=True, by_alias=True, context={"policy": policy})
    except ValidationError as error:
        raise InvalidSpecError(format_validation_error(error)) from None
    try:
        validate_job_name(name, parsed)
    except ValueError as error:
        raise InvalidSpecError(str(error)) from None
    return parsed


def readable_ttl(spec: Any) -> int | None:
    """ttlSecondsAfterFinished of a spec that may be invalid otherwise: an invalid job still expires."""
    run_policy = spec.get("runPolicy") if isinstance(spec, dict) else None
    ttl = run_policy.get("ttlSecondsAfterFinished") if isinstance(run_policy, dict) else None
    return ttl if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl >= 0 else None


def parse_manifest(manifest: dict[str, Any]) -> tuple[str, str, DistTrainJobSpec]:
    """Validates a whole DistTrainJob manifest; returns (namespace, name, spec)."""
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != KIND:
        raise InvalidSpecError(
            f"expected apiVersion {API_VERSION} and kind {KIND}, got "
            f"{manifest.get('apiVersion')!r} and {manifest.get('kind')!r}"
        )
    metadata = manifest.get("metadata") or {}
    name = metadata.get("name")
    if not name:
        raise InvalidSpecError("metadata.name is required")
    if not isinstance(manifest.get("spec"), dict):
        raise InvalidSpecError("spec is required")
    return metadata.get("namespace", "default"), name, parse_spec(name, manifest["spec"])


# ---------------------------------------------------------------- status

ConditionType = Literal["Created", "Running", "Restarting", "Suspended", "ReplicaFailure", "Succeeded", "Failed"]
JobState = Literal["Pending", "Created", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]


class Condition(Model):
    """One observed aspect of the job, as in every Kubernetes workload."""

    model_config = ConfigDict(extra="ignore")

    type: ConditionType
    """Created, Running, Restarting, Suspended, ReplicaFailure (pods cannot be created now: the API server's
    reason, e.g. an exceeded quota), Succeeded or Failed."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str
    """CamelCase reason, e.g. PodFailed, BackoffLimitExceeded, DeadlineExceeded, InvalidSpec."""
    message: str = ""
    """Human-readable detail."""
    last_transition_time: str
    """When status last changed (RFC 3339)."""


class ReplicaStatus(Model):
    """Pod counts of one role."""

    model_config = ConfigDict(extra="ignore")

    desired: int = 0
    """Replicas asked for."""
    active: int = 0
    """Pods pending or running."""
    ready: int = 0
    """Pods running and ready."""
    succeeded: int = 0
    """Pods that exited 0."""
    failed: int = 0
    """Pods that failed and were not (yet) recreated."""
    restarts: int = 0
    """Container restarts plus pod recreations of this role, in total; they count against backoffLimit."""
    retired_restarts: int = 0
    """Internal bookkeeping: restarts of pods that have since been recreated or deleted."""
    summary: str = "0/0"
    """ready/desired, for `kubectl get`."""


class TrainingResults(Model):
    """What the replica that decides success reported when it finished (its container's termination message)."""

    model_config = ConfigDict(extra="ignore")

    accuracy: float | None = None
    """Held-out accuracy, 0 to 1."""
    loss: float | None = None
    """Held-out loss."""
    steps: int | None = None
    """Training steps run."""
    train_seconds: float | None = None
    """Training time, seconds, over every run of the job (unknown after resuming an old trainer's checkpoint)."""
    resumed_from_step: int | None = None
    """The checkpoint's step this run resumed from; unset for a run that started fresh."""
    examples_per_second: float | None = None
    """Training throughput of the whole job, steady state."""
    inference_ms_per_example: float | None = None
    """Inference time of the exported model, milliseconds per example (batched)."""
    strategy: str | None = None
    """The distribution strategy that ran: parameter-server, multi-worker-mirrored or single."""


class DistTrainJobStatus(Model):
    """What the operator observed."""

    model_config = ConfigDict(extra="ignore")

    state: JobState = "Pending"
    """The latest condition that holds: Created, Running, Restarting, Suspended, Succeeded or Failed."""
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Conditions; `kubectl wait --for=condition=Succeeded` reads them."""
    replica_statuses: dict[str, ReplicaStatus] = Field(default_factory=dict)
    """Counts per role (chief, ps, worker, evaluator)."""
    restarts: int = 0
    """Restarts of all roles together."""
    start_time: str | None = None
    """When the job (last) started running its pods (RFC 3339); activeDeadlineSeconds counts from here."""
    completion_time: str | None = None
    """When the job succeeded or failed (RFC 3339)."""
    observed_generation: int | None = None
    """The metadata.generation this status describes."""
    results: TrainingResults | None = None
    """Final metrics of a succeeded job (`kubectl get` shows the accuracy)."""
    completed_replicas: dict[str, list[int]] = Field(default_factory=dict)
    """Indices of the replicas, by role, that exited 0: they never run again, even once their pods are gone
    (garbage-collected, deleted with their node)."""
    counted_failures: list[str] = Field(default_factory=list)
    """Internal bookkeeping: UIDs of pods whose restarts are already counted (a stale view never counts twice)."""

    def condition(self, kind: ConditionType) -> Condition | None:
        """The condition of this type, if present."""
        return next((c for c in self.conditions if c.type == kind), None)

    def is_true(self, kind: ConditionType) -> bool:
        """Whether the condition of this type is present and True."""
        found = self.condition(kind)
        return found is not None and found.status == "True"

    @property
    def finished(self) -> bool:
        """The job has succeeded or failed for good."""
        return self.is_true("Succeeded") or self.is_true("Failed")
