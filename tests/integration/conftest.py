"""Fixtures for tests against the real local control plane (hack/controlplane/).

Mark such tests ``@pytest.mark.cluster``. Fixtures:

* ``control_plane`` (session): a started ``controlplane.ControlPlane``. ``.kubeconfig`` (Path),
  ``.bin_dir`` (kubectl, helm), ``.server``, ``.log_dir``, ``.kubectl(*args)``, ``.env()``,
  ``.log_tails()``. While it is up, ``KUBECONFIG`` points at it and ``bin_dir`` is first on ``PATH``.
  Fails (never skips) when the binaries are missing: run ``make control-plane`` or set
  ``KUBEBUILDER_ASSETS``.
* ``k8s_client`` (session): a ``kubernetes.client.ApiClient`` for it.
* ``namespace`` (function): a fresh namespace name (default ServiceAccount present), deleted after.

Helpers and constants (``wait_for``, ``GPU_TOLERATION``, ``ANNOTATION_COMPLETE``,
``ANNOTATION_FAIL_EXIT_CODE``, ``ANNOTATION_DELAY``, ...) come from ``import controlplane``
(hack/ is put on sys.path here). When a test that uses the control plane fails, the last lines
of every component log are attached to its report.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

HACK_DIR = Path(__file__).resolve().parents[2] / "hack"
if str(HACK_DIR) not in sys.path:
    sys.path.insert(0, str(HACK_DIR))

import controlplane  # noqa: E402

_STATE: dict = {"active": None, "failed": False}


@pytest.fixture(scope="session")
def control_plane():
    """Start the control plane once per session; stop every process at the end, pass or fail."""
    cp = controlplane.ControlPlane(startup_timeout=float(os.environ.get("DISTTRAIN_CP_TIMEOUT", "120")))
    error = None
    try:
        cp.start()
    except controlplane.ControlPlaneError as e:
        error = str(e)
    if error:
        pytest.fail(f"local Kubernetes control plane did not start: {error}", pytrace=False)
    _STATE["active"] = cp
    saved = {k: os.environ.get(k) for k in ("KUBECONFIG", "PATH")}
    os.environ["KUBECONFIG"] = str(cp.kubeconfig)
    os.environ["PATH"] = f"{cp.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        yield cp
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _STATE["active"] = None
        keep = _STATE["failed"]
        cp.stop(remove_workdir=not keep)
        if keep:
            sys.stderr.write(f"\ncontrol plane logs kept in {cp.log_dir}\n")


CRD_FILE = HACK_DIR.parent / "deploy" / "crd" / "disttrain.io_disttrainjobs.yaml"


@pytest.fixture(scope="session")
def crd(control_plane) -> None:
    """The shipped DistTrainJob CRD, applied as a user would (server-side) and Established."""
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))

    def established() -> str | None:
        found = control_plane.kubectl(
            "get", "crd/disttrainjobs.disttrain.io", "-o",
            "jsonpath={.status.conditions[?(@.type=='Established')].status}", check=False,
        )
        return found.stdout if found.stdout == "True" else None

    # generous: compiling the CRD's CEL rules competes for the CPU with everything else the tests run
    controlplane.wait_for(established, timeout=120, what="the DistTrainJob CRD Established")


@pytest.fixture(scope="session")
def k8s_client(control_plane):
    """kubernetes.client.ApiClient authenticated as the cluster admin."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    yield client
    client.close()


@pytest.fixture
def namespace(k8s_client, request):
    """A fresh, uniquely named namespace (its default ServiceAccount exists); deleted afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(k8s_client)
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"t-{base}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"disttrain.io/test": "true"}))
    )

    def has_default_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
            return True
        except client.ApiException as e:
            if e.status == 404:
                return False
            raise

    controlplane.wait_for(has_default_sa, timeout=30, what=f"default ServiceAccount in {name}")
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except client.ApiException as e:
        if e.status != 404:
            raise


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        _STATE["failed"] = True
        cp = _STATE["active"]
        if cp is not None and "control_plane" in getattr(item, "fixturenames", ()):
            report.sections.append(("control plane logs", f"logs in {cp.log_dir}\n{cp.log_tails(lines=25)}"))
