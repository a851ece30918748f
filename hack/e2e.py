#!/usr/bin/env python3
"""End to end on real pods: the project's images on a real kubelet node, the operator installed by Helm.

    python hack/e2e.py prepare   # install what is missing (apt), build node binaries and images
    python hack/e2e.py up        # control plane + real node, images loaded, operator installed
    python hack/e2e.py down      # stop and remove everything `up` started (also after a crash)

`make e2e` runs prepare and then the tests in tests/e2e/ (marker e2e), which bring the cluster up and
down themselves. Everything lives in ``${DISTTRAIN_CACHE:-~/.cache/disttrain}/e2e``; the containerd image
store there is kept between runs, so images are loaded again only when they changed.

How a job is adapted to this one small node (``local_node_job``), documented in docs/e2e.md:
MNIST comes from the host folder MNIST_DIR mounted read-only (pods have no internet), CPU requests are
lowered so five replicas fit on two cores, and ``E2E_STEPS`` (when set) shortens training.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

HACK = Path(__file__).resolve().parent
sys.path.insert(0, str(HACK))

import controlplane  # noqa: E402
import node as realnode  # noqa: E402

REPO = HACK.parent
E2E_DIR = controlplane.cache_root() / "e2e"
JOB_ENDINGS = ("Succeeded", "Failed")  # a job that has reached one never reaches the other
APT_PACKAGES = {
    "docker.io": "dockerd",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "mmdebstrap": "mmdebstrap",
}
OPERATOR_NAMESPACE = "disttrain-system"
DATA_MOUNT = "/data/mnist"
E2E_STEPS = int(os.environ["E2E_STEPS"]) if os.environ.get("E2E_STEPS") else None  # None: the example's own
E2E_CPU_REQUEST = "100m"
# MNIST reaches the pods through a hostPath volume (no registry, no internet here), which the chart refuses by
# default (docs/security.md): these test clusters opt in; nothing else in the jobs needs host access.
HELM_FLAGS = (
    "--create-namespace",
    "--set",
    "image.pullPolicy=Never",
    "--set",
    "templatePolicy.allowHostAccess=true",
    "--wait",
    "--timeout",
    "5m",
)


def log(message: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sh(*cmd: str, env: dict | None = None, timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run a command, streaming its output; raise with its name on failure."""
    result = subprocess.run(cmd, env=env, timeout=timeout, check=False, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {result.returncode}")
    return result


# ------------------------------------------------------------------------------------ prepare


def missing_packages() -> list[str]:
    return [pkg for pkg, probe in APT_PACKAGES.items() if not (shutil.which(probe) or Path(probe).exists())]


def prepare() -> dict[str, float]:
    """Install missing Debian packages, build the node binaries and the images; seconds per step."""
    timings: dict[str, float] = {}
    start = time.monotonic()
    missing = missing_packages()
    if missing:
        log(f"installing {' '.join(missing)} (apt)")
        sh("apt-get", "update", "-q")
        sh(
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            *missing,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    timings["apt"] = time.monotonic() - start
    start = time.monotonic()
    sh("bash", "hack/build-control-plane.sh", "--node")
    timings["binaries"] = time.monotonic() - start
    start = time.monotonic()
    sh("bash", "hack/images.sh", "build")
    timings["images"] = time.monotonic() - start
    return timings


# ------------------------------------------------------------------------------------ the clusters


class Cluster:
    """What the e2e tests need of a cluster with the operator installed; subclasses bring one up and down.
    The steps after the cluster exists (install, run, check) are the same for every kind of cluster."""

    root: Path
    timings: dict[str, float]
    node_name: str  # the one node pods run on (for local volumes)

    def env(self) -> dict[str, str]:
        """Environment for kubectl and helm (KUBECONFIG, PATH)."""
        raise NotImplementedError

    def kill_trainer(self, container_id: str) -> None:
        """SIGKILL a container's main process through the node's containerd."""
        raise NotImplementedError

    def dns_queries(self) -> str | None:
        """What the cluster DNS logged, or None where it logs no queries."""
        return None

    def node_folder(self, path: Path) -> Path:
        """Create an empty folder on the node, writable by any user (for a local PersistentVolume): a run never
        resumes from a former run's checkpoints."""
        raise NotImplementedError

    def _timed(self, what: str, step) -> None:
        start = time.monotonic()
        log(f"{what} ...")
        step()
        self.timings[what] = round(time.monotonic() - start, 1)
        log(f"{what}: {self.timings[what]} s")

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120):
        return subprocess.run(
            ["kubectl", *args],
            env=self.env(),
            check=check,
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
        )

    def install_operator(self) -> None:
        """helm install the chart with the image built here (never pulled: it is already on the node)."""
        helm_home = str(self.root / "helm")
        chart = str(REPO / "charts" / "disttrain")
        subprocess.run(
            ["helm", "upgrade", "--install", "disttrain", chart, "--namespace", OPERATOR_NAMESPACE, *HELM_FLAGS],
            env={**self.env(), "HELM_CACHE_HOME": helm_home, "HELM_CONFIG_HOME": helm_home},
            check=True,
            capture_output=True,
            text=True,
            timeout=400,
        )

    def apply_job(self, manifest: list[dict]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifest))

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def wait_condition(self, job: str, condition: str, timeout: float) -> None:
        """Wait until the job's `condition` is True; fail as soon as it has ended otherwise (Failed while
        Succeeded is awaited, say), with the job and its pods in the message."""

        def outcome() -> str | None:
            result = self.kubectl("get", f"dtj/{job}", "-o", "json", check=False)
            if result.returncode != 0:
                return None
            conditions = json.loads(result.stdout).get("status", {}).get("conditions", [])
            true = {c["type"] for c in conditions if c.get("status") == "True"}
            if condition in true:
                return "reached"
            return ", ".join(sorted(true & set(JOB_ENDINGS) - {condition})) or None

        try:
            found = controlplane.wait_for(outcome, timeout=timeout, what=f"dtj/{job} {condition}", interval=2)
        except AssertionError:
            found = f"not after {timeout}s"
        if found != "reached":
            job_yaml = self.kubectl("get", f"dtj/{job}", "-o", "yaml", check=False).stdout
            pods = self.kubectl("get", "pods", "-o", "wide", check=False).stdout
            raise AssertionError(f"dtj/{job} not {condition} ({found}):\n{job_yaml}\n{pods}")

    def pods(self, job: str) -> list[dict]:
        return self.get("pods", "-l", f"disttrain.io/job-name={job}")["items"]

    def settled_pods(self, job: str, timeout: float = 60) -> list[dict]:
        """The job's pods once none is Pending or Running any more (servers end a moment after the chief)."""
        return controlplane.wait_for(
            lambda: (
                (pods := self.pods(job))
                and all(p["status"]["phase"] not in ("Pending", "Running") for p in pods)
                and pods
            ),
            timeout=timeout,
            what=f"the pods of {job} to end",
            interval=1,
        )


class LocalNodeCluster(Cluster):
    """The control plane of hack/controlplane + one real node of hack/node.py, on this machine."""

    def __init__(self, root: Path = E2E_DIR, detach: bool = False):
        """`detach`: the processes outlive this Python process (`e2e.py up`); `down` finds them by their state."""
        self.root = root
        self.cp = controlplane.ControlPlane(
            workdir=root / "cp", node_ip=realnode.NODE_IP, startup_timeout=120, detach=detach
        )
        self.node = realnode.RealNode(self.cp, root / "node", root / "containerd", detach=detach)
        self.timings = {}
        self.node_name = realnode.NODE_NAME

    @property
    def cp_state(self) -> Path:
        return self.root / "cp-state.json"

    def up(self) -> LocalNodeCluster:
        try:
            self.down()  # whatever a crashed run left behind
            self._timed("node network", self.node.prepare)
            shutil.rmtree(self.root / "cp", ignore_errors=True)
            self._timed("control plane", self.cp.start)
            self.cp_state.write_text(json.dumps(self.cp.state()))
            self._timed("containerd", self.node.start_runtime)
            self._timed("image load", lambda: sh("bash", "hack/images.sh", "load", str(self.node.socket)))
            self._timed("node Ready", self.node.start_node)
            self._timed("helm install", self.install_operator)
        except BaseException:
            log(f"start failed; logs:\n{self.cp.log_tails(20)}\n{self.node.log_tails(20)}")
            self.down()
            raise
        return self

    def down(self) -> None:
        """Stop the node, then the control plane (this object's, or the one recorded by an earlier `up`)."""
        self.node.stop()
        self.cp.stop()
        if self.cp_state.exists():
            state = json.loads(self.cp_state.read_text())
            controlplane.stop_pids(state.get("pids", {}), expect=state.get("binaries"))
            self.cp_state.unlink()

    def env(self) -> dict[str, str]:
        return self.cp.env()

    def kill_trainer(self, container_id: str) -> None:
        sh("ctr", "-a", str(self.node.socket), "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", container_id)

    def dns_queries(self) -> str | None:
        return (self.node.log_dir / "coredns.log").read_text(errors="replace")

    def node_folder(self, path: Path) -> Path:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # the trainer runs as 10001; fsGroup does not apply to local volumes
        return path


class KindCluster(Cluster):
    """A kind cluster (docker, kind, kubectl and helm on PATH, images pulled from a registry): `make kind-e2e`."""

    def __init__(self, name: str = "disttrain", root: Path = E2E_DIR / "kind"):
        self.name, self.root, self.timings = name, root, {}
        self.kubeconfig = root / "kubeconfig"
        self.node_container = self.node_name = f"{name}-control-plane"

    def up(self) -> KindCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        clusters = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True, check=True).stdout
        if self.name not in clusters.split():
            config = {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "nodes": [{"role": "control-plane"}]}
            mnist = os.environ.get("MNIST_DIR")
            if mnist:  # the job override mounts MNIST_DIR from the node at the same path
                config["nodes"][0]["extraMounts"] = [{"hostPath": mnist, "containerPath": mnist, "readOnly": True}]
            (self.root / "kind.yaml").write_text(yaml.safe_dump(config))
            self._timed("kind create", self._create)
        kubeconfig = subprocess.run(
            ["kind", "get", "kubeconfig", "--name", self.name], capture_output=True, text=True, check=True
        ).stdout
        self.kubeconfig.write_text(kubeconfig)
        images = [
            os.environ.get("OPERATOR_IMAGE", "disttrain/operator:0.1.0"),
            os.environ.get("TRAINER_IMAGE", "disttrain/trainer:0.1.0"),
        ]
        build_env = {**os.environ, "PYTHON_IMAGE": os.environ.get("PYTHON_IMAGE", "python:3.11.13-slim-bookworm")}
        self._timed("images", lambda: sh("bash", "hack/images.sh", "build", "operator", "trainer", env=build_env))
        self._timed("kind load", lambda: sh("kind", "load", "docker-image", "--name", self.name, *images))
        self._timed("helm install", self.install_operator)
        return self

    def _create(self) -> None:
        config = str(self.root / "kind.yaml")
        sh("kind", "create", "cluster", "--name", self.name, "--config", config, "--wait", "180s")

    def down(self) -> None:
        """The kind cluster stays for inspection; `hack/kind-e2e.sh down` (or TEARDOWN=1) deletes it."""

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kill_trainer(self, container_id: str) -> None:
        sh("docker", "exec", self.node_container, "ctr", "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", container_id)

    def node_folder(self, path: Path) -> Path:
        script = f"rm -rf '{path}' && mkdir -p '{path}' && chmod 777 '{path}'"
        sh("docker", "exec", self.node_container, "sh", "-c", script)
        return path


def make_cluster() -> Cluster:
    """The cluster the e2e tests run on: DISTTRAIN_E2E_CLUSTER=local (default: a real node here) or kind."""
    kind = os.environ.get("DISTTRAIN_E2E_CLUSTER", "local")
    if kind == "kind":
        return KindCluster(os.environ.get("CLUSTER", "disttrain"))
    if kind != "local":
        raise ValueError(f"DISTTRAIN_E2E_CLUSTER={kind!r}: use local or kind")
    return LocalNodeCluster()


# ------------------------------------------------------------------------------------ jobs


def load_example(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((REPO / "examples" / name).read_text()) if doc]


def local_node_job(manifest: list[dict], mnist_dir: Path, steps: int | None = E2E_STEPS) -> list[dict]:
    """The example as this one two-core node can run it: MNIST mounted read-only from the host (pods have no
    internet), CPU requests of E2E_CPU_REQUEST per replica (limits stay), and `steps` training steps when
    given (E2E_STEPS)."""
    docs = copy.deepcopy(manifest)
    for doc in docs:
        if doc.get("kind") != "DistTrainJob":
            continue
        spec = doc["spec"]
        steps_arg = [f"--max-steps={steps}"] if steps else []
        spec["args"] = [*spec.get("args", []), *steps_arg, f"--data-dir={DATA_MOUNT}"]
        for replica in spec["replicaSpecs"].values():
            replica.setdefault("resources", {}).setdefault("requests", {})["cpu"] = E2E_CPU_REQUEST
            pod = replica.setdefault("template", {}).setdefault("spec", {})
            pod.setdefault("volumes", []).append(
                {"name": "mnist", "hostPath": {"path": str(mnist_dir), "type": "Directory"}}
            )
            pod.setdefault("containers", []).append(
                {"name": "tensorflow", "volumeMounts": [{"name": "mnist", "mountPath": DATA_MOUNT, "readOnly": True}]}
            )
    return docs


def local_volume(name: str, node: str, path: Path, size: str = "1Gi") -> dict:
    """A `local` PersistentVolume on `node` (at `path`, which must exist there) for a claim without a
    storage class."""
    selector = {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "local": {"path": str(path)},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [selector]}]}},
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    command = args[0] if args else ""
    if command == "prepare":
        for step, seconds in prepare().items():
            log(f"{step}: {seconds:.0f} s")
        return 0
    cluster = LocalNodeCluster(detach=command == "up")
    if command == "up":
        cluster.up()
        log(f"up: {cluster.timings}; export KUBECONFIG={cluster.cp.kubeconfig}")
        return 0
    if command == "down":
        cluster.down()
        log("down: every process stopped, host network and cgroups restored")
        return 0
    print("usage: e2e.py prepare|up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
