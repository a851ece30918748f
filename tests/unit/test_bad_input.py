"""Bad input (#11): every job of tests/bad_manifests.yaml is refused by pydantic and by `disttrain run`, naming its
field; and no spec dictionary whatsoever makes parse_spec raise anything but InvalidSpecError.

tests/integration/test_bad_input.py checks the same corpus against the API server, and loads the corpus and the
spec strategies from here.
"""

from __future__ import annotations

import copy
import io
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from disttrain_operator.api import API_VERSION, KIND, DistTrainJobSpec, InvalidSpecError, parse_manifest, parse_spec
from disttrain_operator.local import run_manifest

CORPUS_FILE = Path(__file__).resolve().parents[1] / "bad_manifests.yaml"
FAKE_TRAINER = f"{sys.executable} {Path(__file__).resolve().parents[1] / 'local' / 'fake_trainer.py'}"
DEFAULT_NAME = "bad-input"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what `kubectl patch --type=merge` does): null removes a key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def load_corpus() -> list[dict[str, Any]]:
    """The corpus entries, each with its whole `manifest` built."""
    data = yaml.safe_load(CORPUS_FILE.read_text())
    cases = []
    for case in data["cases"]:
        spec = case["spec"] if "spec" in case else merge_patch(data["base"], case.get("patch", {}))
        manifest = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": case.get("name", DEFAULT_NAME)},
            "spec": spec,
        }
        cases.append({**case, "manifest": manifest})
    return cases


CORPUS = load_corpus()


def test_corpus_is_large_unique_and_complete() -> None:
    ids = [case["id"] for case in CORPUS]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    for case in CORPUS:
        assert case["field"] and case["by"] in {"schema", "cel", "admission"}, case["id"]
        assert not ("spec" in case and "patch" in case), case["id"]


@pytest.mark.parametrize("case", CORPUS, ids=[case["id"] for case in CORPUS])
def test_pydantic_refuses_naming_the_field(case: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpecError) as refused:
        parse_manifest(copy.deepcopy(case["manifest"]))
    assert case["field"] in str(refused.value), str(refused.value)


@pytest.mark.parametrize("case", CORPUS, ids=[case["id"] for case in CORPUS])
def test_disttrain_run_refuses_and_starts_nothing(
    case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(case["manifest"]))
    output_dir = tmp_path / "out"
    out = io.StringIO()
    code = run_manifest(path, output_dir=output_dir, trainer=FAKE_TRAINER, out=out)
    printed = capsys.readouterr().err
    assert code == 2, printed + out.getvalue()
    assert f"invalid {KIND} in {path}" in printed and case["field"] in printed, printed
    assert not output_dir.exists()  # no process started: each writes its PID there
    assert out.getvalue() == ""


def test_the_corpus_is_bad_only_where_it_says() -> None:
    """The base job is valid: each entry is refused for its own change."""
    base = yaml.safe_load(CORPUS_FILE.read_text())["base"]
    parse_spec(DEFAULT_NAME, copy.deepcopy(base))


# ---------------------------------------------------------------- property: only InvalidSpecError, ever

FINITE = {"allow_nan": False, "allow_infinity": False}


def junk(finite: bool = False) -> st.SearchStrategy[Any]:
    """Any JSON-ish value of the wrong kind (NaN and infinities too unless `finite`)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(**FINITE) if finite else st.floats(),
        st.text(max_size=6),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=6,
    )


def specs(junk_weight: int = 1, finite: bool = False, borderline: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """Spec dictionaries shaped like a job. Values are good, borderline (out of range, refused by a rule; only when
    `borderline`) or, one in 1 + 4/junk_weight, junk of any type."""

    def v(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        if not junk_weight:
            return good
        return st.one_of(*([good] * 4), *([junk(finite)] * junk_weight))

    def optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries({}, optional={key: v(value) for key, value in fields.items()})

    def one(good: list[Any], bad: list[Any] | tuple[()] = ()) -> st.SearchStrategy[Any]:
        return st.sampled_from([*good, *(bad if borderline else [])])

    def integer(good: tuple[int, int], bad: tuple[int, int] | None = None) -> st.SearchStrategy[int]:
        return st.integers(*(bad if borderline and bad else good))

    env_name = {"name": v(one(["A", "DATA_DIR", "x.y-z"], ["TF_CONFIG", "DISTTRAIN_OUTPUT_DIR", "1X", "A=B", ""]))}
    field_ref = st.just({"fieldRef": {"fieldPath": "metadata.name"}})
    sources = {"value": v(one(["", "1", "value"])), "valueFrom": v(field_ref)}
    env_var = (
        st.fixed_dictionaries(env_name, optional=sources)  # none, one or both
        if borderline
        else st.one_of(*(st.fixed_dictionaries({**env_name, key: value}) for key, value in sources.items()))
    )
    envs = st.lists(v(env_var), max_size=3)
    quantity = st.one_of(
        one(["1", "500m", "2Gi", "1.5", ".5", "1e3", "1Mi"], ["2 cores", "-1", "1.5.5Gi", ""]),
        integer((0, 64), (-2, 64)),
        st.floats(min_value=-2, max_value=8, **FINITE) if borderline else st.integers(0, 8).map(float),  # 2.0 is 2
    )
    resources = optional(
        requests=st.dictionaries(one(["cpu", "memory", "nvidia.com/gpu"]), v(quantity), max_size=2),
        limits=st.dictionaries(one(["cpu", "memory"]), v(quantity), max_size=2),
    )
    container = st.fixed_dictionaries(
        {"name": v(one(["tensorflow", "tensorflow", "logger"], ["x" * 64]))},
        optional={
            key: v(value)
            for key, value in {
                **({"image": one(["busybox", ""])} if borderline else {}),  # not for the trainer
                "env": envs,
                "ports": st.lists(optional(containerPort=integer((1, 9000)), hostPort=one([0], [80])), max_size=2),
                "securityContext": optional(
                    privileged=one([False], [True]),
                    capabilities=optional(add=st.lists(one(["NET_BIND_SERVICE"], ["NET_ADMIN"]), max_size=2)),
                    runAsNonRoot=st.booleans(),
                ),
            }.items()
        },
    )
    pod_spec = optional(
        containers=st.lists(v(container), max_size=3),
        initContainers=st.lists(v(container), max_size=1),
        **({"restartPolicy": one(["Never", "Always"]), "hostname": one(["h"])} if borderline else {}),
        hostNetwork=one([False], [True]),
        hostPID=one([False], [True]),
        nodeName=one([""], ["node-1"]),
        serviceAccountName=one(["", "default"], ["admin"]),
        volumes=st.lists(
            st.fixed_dictionaries(
                {"name": one(["data"])},
                optional={"hostPath": v(st.just({"path": "/"}))} if borderline else {"emptyDir": st.just({})},
            ),
            max_size=2,
        ),
        nodeSelector=st.just({"disk": "ssd"}),
    )
    template = optional(metadata=optional(labels=st.just({"team": "ml"})), spec=pod_spec)

    def replica(most: int) -> st.SearchStrategy[dict[str, Any]]:
        return optional(
            replicas=st.one_of(integer((0, most), (0, 3)), integer((0, most), (-2, 1002))),
            image=one(["trainer:1"], [""]),
            command=st.lists(one(["python", "-m"]), max_size=2),
            args=st.lists(one(["--epochs=1"]), max_size=2),
            env=envs,
            resources=resources,
            gpus=st.one_of(integer((0, 2)), integer((0, 64), (-1, 66))),
            restartPolicy=one(["Never", "OnFailure", "ExitCode"], ["Always", "Sometimes"]),
            template=template,
        )
    roles = {"chief": replica(1), "ps": replica(3), "worker": replica(3), "evaluator": replica(1)}
    replica_specs = (
        optional(**roles)
        if borderline
        else st.fixed_dictionaries({"worker": roles.pop("worker")}, optional=roles)  # mostly a workable topology
    )
    run_policy = optional(
        cleanPodPolicy=one(["Running", "All", "None"], ["Finished"]),
        backoffLimit=integer((0, 10), (-1, 10)),
        activeDeadlineSeconds=integer((1, 100), (0, 100)),
        ttlSecondsAfterFinished=integer((0, 100), (-1, 100)),
        suspend=st.booleans(),
    )
    storage = st.fixed_dictionaries(
        {"claimName": v(one(["data"], [""]))}, optional={"mountPath": v(one(["/data", "/"], ["data"]))}
    )
    optional_fields = {
        "image": one(["disttrain/trainer:0.1.0"], [""]),
        "args": st.lists(one(["--steps=10", ""]), max_size=2),
        "env": envs,
        "port": integer((1, 65535), (-1, 70000)),
        "runPolicy": run_policy,
        "successPolicy": one(["ChiefOrWorker0", "AllWorkers"], ["Everyone"]),
        "storage": storage,
    }
    required = {"replicaSpecs": v(replica_specs)}
    if borderline:
        optional_fields["replicas"] = integer((1, 3))  # a field the API does not have
    else:  # mostly workable: an evaluator needs the shared storage it reads checkpoints from
        required["storage"] = v(optional_fields.pop("storage"))
    return st.fixed_dictionaries(required, optional={key: v(value) for key, value in optional_fields.items()})


NAMES = st.sampled_from(["mnist", "job-1", "a" * 54, "a" * 60, "Bad", "my.job", "job\n"])


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=NAMES, spec=st.one_of(specs(junk_weight=1), specs(junk_weight=0), junk()))
def test_parse_spec_raises_only_invalid_spec_error(name: str, spec: Any) -> None:
    try:
        parsed = parse_spec(name, spec)
    except InvalidSpecError as error:
        assert str(error)  # names what is wrong
        return
    assert isinstance(parsed, DistTrainJobSpec)
    wire = parsed.to_wire()  # what the operator writes back and reads again
    assert parse_spec(name, wire) == parsed


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(junk_weight=0, borderline=False))
def test_specs_without_borderline_values_are_mostly_valid(spec: dict[str, Any]) -> None:
    """The strategy the API server comparison leans on makes valid jobs (when the roles fit together)."""
    try:
        parse_spec("mnist", spec)
    except InvalidSpecError as error:
        assert "replicaSpecs" in str(error) or "restartPolicy" in str(error), str(error)
