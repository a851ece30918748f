"""The chaos tests use the integration tests' control plane fixtures (``control_plane``, ``crd``, ``k8s_client``,
``namespace`` and the log tails on failure), loaded from tests/integration/conftest.py under a name of their own."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "integration" / "conftest.py"
_SPEC = importlib.util.spec_from_file_location("disttrain_integration_fixtures", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
_FIXTURES = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_FIXTURES)

control_plane = _FIXTURES.control_plane
crd = _FIXTURES.crd
k8s_client = _FIXTURES.k8s_client
namespace = _FIXTURES.namespace
pytest_runtest_makereport = _FIXTURES.pytest_runtest_makereport
