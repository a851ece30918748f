"""Bad input (#11) at the API server: every job of tests/bad_manifests.yaml is refused at apply time (server-side
dry run, strict field validation) with a message naming its field, and the API server accepts exactly the specs
pydantic accepts (hypothesis). The template policies of deploy/template-policy.yaml are installed for this.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import controlplane
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from disttrain_operator.api import API_VERSION, GROUP, KIND, PLURAL, VERSION, InvalidSpecError, parse_spec

pytestmark = pytest.mark.cluster

TESTS = Path(__file__).resolve().parents[1]
POLICY_FILE = TESTS.parent / "deploy" / "template-policy.yaml"
NAMESPACE = "default"  # dry runs only: nothing is stored


def _load_unit_module() -> Any:
    """The corpus loader and spec strategies live beside the unit tests (tests/unit/test_bad_input.py)."""
    spec = importlib.util.spec_from_file_location("_bad_input_unit", TESTS / "unit" / "test_bad_input.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


UNIT = _load_unit_module()
CORPUS: list[dict[str, Any]] = UNIT.CORPUS


def job(name: str, spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}


def server_verdict(k8s_client: Any, manifest: dict[str, Any]) -> str | None:
    """None when the API server would create the job (dry run, unknown fields refused); else its message."""
    from kubernetes import client

    try:
        client.CustomObjectsApi(k8s_client).create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, manifest, dry_run="All", field_validation="Strict"
        )
    except client.ApiException as error:
        assert error.status in (400, 403, 422), f"{error.status}: {error.body}"
        try:
            return json.loads(error.body)["message"]
        except (TypeError, ValueError, KeyError):
            return str(error.body)
    return None


def pydantic_verdict(name: str, spec: Any) -> str | None:
    try:
        parse_spec(name, copy.deepcopy(spec))
    except InvalidSpecError as error:
        return str(error)
    return None


@pytest.fixture(scope="module")
def template_policies(control_plane: Any, crd: None, k8s_client: Any) -> None:
    """deploy/template-policy.yaml applied, and in force: the API server loads new policies asynchronously."""
    control_plane.kubectl("apply", "-f", str(POLICY_FILE))
    known_bad = job("policy-probe", {"replicaSpecs": {"worker": {"template": {"spec": {"hostNetwork": True}}}}})
    controlplane.wait_for(
        lambda: "disttrain-host-access" in (server_verdict(k8s_client, known_bad) or ""),
        timeout=60,
        what="the template ValidatingAdmissionPolicies to be enforced",
    )
    known_bad = job("policy-probe", {"replicaSpecs": {"worker": {"template": {"spec": {"serviceAccountName": "x"}}}}})
    controlplane.wait_for(
        lambda: "disttrain-service-accounts" in (server_verdict(k8s_client, known_bad) or ""),
        timeout=60,
        what="the service-account ValidatingAdmissionPolicy to be enforced",
    )


def test_the_base_job_is_accepted(template_policies: None, k8s_client: Any) -> None:
    base = CORPUS[0]["manifest"] | {"spec": UNIT.yaml.safe_load(UNIT.CORPUS_FILE.read_text())["base"]}
    assert server_verdict(k8s_client, base) is None


@pytest.mark.parametrize("case", CORPUS, ids=[case["id"] for case in CORPUS])
def test_api_server_refuses_naming_the_field(template_policies: None, k8s_client: Any, case: dict[str, Any]) -> None:
    message = server_verdict(k8s_client, case["manifest"])
    assert message is not None, f"{case['id']}: accepted"
    assert case["field"] in message, message
    expected = {"admission": "ValidatingAdmissionPolicy", "schema": "", "cel": 'Invalid value: "object"'}[case["by"]]
    assert expected in message, f"{case['id']} should be refused by {case['by']}: {message}"


SAME_VERDICT = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))


def compare(k8s_client: Any, name: str, spec: Any, verdicts: list[bool]) -> None:
    pydantic = pydantic_verdict(name, spec)
    server = server_verdict(k8s_client, job(name, spec))
    verdicts.append(pydantic is None)
    assert (pydantic is None) == (server is None), (
        f"pydantic and the API server disagree on {name!r} {json.dumps(spec)}:\npydantic: {pydantic}\nserver: {server}"
    )


def test_api_server_accepts_what_pydantic_accepts(template_policies: None, k8s_client: Any) -> None:
    """Jobs built from good values (most of them valid): the same verdict from both."""
    verdicts: list[bool] = []

    @settings(SAME_VERDICT, max_examples=40)
    @given(name=st.sampled_from(["mnist", "a" * 54]), spec=UNIT.specs(junk_weight=0, borderline=False))
    def same_verdict(name: str, spec: dict[str, Any]) -> None:
        compare(k8s_client, name, spec, verdicts)

    same_verdict()
    assert sum(verdicts) >= 10, f"only {sum(verdicts)} of {len(verdicts)} accepted: too few to compare"


def test_api_server_refuses_what_pydantic_refuses(template_policies: None, k8s_client: Any) -> None:
    """Jobs with out-of-range values, broken rules and wrong types: the same verdict from both."""
    verdicts: list[bool] = []

    @settings(SAME_VERDICT, max_examples=40)
    @given(
        name=st.sampled_from(["mnist", "a" * 54, "job.x"]),
        spec=st.one_of(UNIT.specs(junk_weight=0), UNIT.specs(junk_weight=1, finite=True)),
    )
    def same_verdict(name: str, spec: dict[str, Any]) -> None:
        compare(k8s_client, name, spec, verdicts)

    same_verdict()
    assert len(verdicts) - sum(verdicts) >= 10, f"only {len(verdicts) - sum(verdicts)} refused: too few to compare"
