#!/usr/bin/env python3
"""A real, local Kubernetes control plane for the tests (no Docker, no kubelet).

Started from the binaries that ``hack/build-control-plane.sh`` builds from the Go module proxy
(cached in ``${DISTTRAIN_CACHE:-~/.cache/disttrain}/k8s-<version>/bin``): etcd, kube-apiserver,
kube-controller-manager (garbage collector, namespace lifecycle, service accounts, node lifecycle,
...), kube-scheduler, and kwok, which plays the kubelet for a few fake nodes. Everything listens on
127.0.0.1 on free ports; certificates are generated per start; logs live in ``<workdir>/logs``.

Use it from Python::

    cp = ControlPlane()          # or ControlPlane(workdir=..., bin_dir=...)
    cp.start()                   # waits on /readyz, node readiness and the default ServiceAccount
    cp.kubeconfig                # admin kubeconfig (client cert in system:masters, data inlined)
    cp.log_tails()               # last lines of every component log
    cp.stop()                    # stops every process it started, by PID

or from the shell: ``python hack/controlplane.py up|down|status`` (``make cluster-up`` /
``make cluster-down``); ``up`` prints ``export KUBECONFIG=<path>`` as its last line.

Fake nodes (all Ready, amd64/linux, 32 cpu, 128Gi memory, 110 pods each):

* ``kwok-cpu-0``, ``kwok-cpu-1``  — label ``disttrain.io/pool=cpu``
* ``kwok-gpu-0``, ``kwok-gpu-1``  — label ``disttrain.io/pool=gpu``, ``nvidia.com/gpu: 4`` in
  capacity/allocatable, taint ``nvidia.com/gpu=present:NoSchedule`` (pods need the toleration
  ``{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}``).

Pod lifecycle (kwok stages, configured explicitly — see ``KWOK_STAGES``):

* A pod bound to a node becomes ``Running`` and ``Ready``, with a ``running`` containerStatus
  per container, a podIP and hostIP.
* Annotation ``kwok.disttrain.io/complete: "true"`` → once Running, the pod becomes
  ``Succeeded``; every container ``terminated`` with ``exitCode: 0``, reason ``Completed``.
* Annotation ``kwok.disttrain.io/fail-exit-code: "<n>"`` (an integer) → once Running, the pod
  becomes ``Failed``; every container ``terminated`` with ``exitCode: <n>``, reason ``Error``.
  It wins over ``complete`` when both are set.
* Annotation ``kwok.disttrain.io/termination-message: "<text>"`` → the terminated containers'
  ``message`` (what a trainer writes to /dev/termination-log), for either ending.
* Annotation ``kwok.disttrain.io/delay: "<Go duration>"`` (e.g. ``"2s"``) → wait that long in
  Running before applying ``complete`` / ``fail-exit-code`` (default: at once).
* The annotations can be set at creation or patched on later (kwok watches pods).
* A pod with a ``deletionTimestamp`` has its finalizers cleared and is deleted (what the kubelet
  would do after the containers stop).
* Pods owned by a Job are *not* completed automatically (kwok's default stage is not installed).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_DIR = REPO_ROOT / "hack" / "tools"

ANNOTATION_COMPLETE = "kwok.disttrain.io/complete"
ANNOTATION_FAIL_EXIT_CODE = "kwok.disttrain.io/fail-exit-code"
ANNOTATION_DELAY = "kwok.disttrain.io/delay"
ANNOTATION_TERMINATION_MESSAGE = "kwok.disttrain.io/termination-message"
SERVICE_CIDR = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"  # the first address of SERVICE_CIDR
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
GPUS_PER_NODE = 4
CPU_NODES = ("kwok-cpu-0", "kwok-cpu-1")
GPU_NODES = ("kwok-gpu-0", "kwok-gpu-1")

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl", "helm")
# What the control plane itself runs (kubectl and helm are for the tests).
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
FROM_KUBEBUILDER_ASSETS = ("etcd", "kube-apiserver")

_STATUS_RUNNING_FAILED_COMMON = """
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
"""  # noqa: E501


def _terminal_stage(
    name: str,
    selectors: tuple[str, ...],
    phase: str,
    condition_reason: str,
    exit_code: str,
    reason: str,
    preamble: str = "",
    message: str | None = None,
) -> str:
    """A kwok Stage that ends a Running pod (after the optional delay annotation): every container
    terminated with `exit_code`, the pod in `phase`. `selectors` pick the pods, by annotation."""
    extra = "".join(f"\n    {selector}" for selector in selectors)
    message_line = f"\n            message: {message}" if message else ""
    return f"""---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: {name}
spec:
  resourceRef: {{apiGroup: v1, kind: Pod}}
  selector:
    matchExpressions:
    - {{key: '.metadata.deletionTimestamp', operator: DoesNotExist}}
    - {{key: '.status.phase', operator: In, values: [Running]}}{extra}
  delay:
    durationMilliseconds: 0
    durationFrom:
      expressionFrom: '.metadata.annotations["{ANNOTATION_DELAY}"]'
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      {preamble}conditions:
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "True", type: Initialized}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "False", type: Ready, reason: {condition_reason}}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "False", type: ContainersReady, reason: {condition_reason}}}
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        started: false
        restartCount: 0
        state:
          terminated:
            exitCode: {exit_code}
            reason: {reason}{message_line}
            startedAt: {{{{ or $.status.startTime $now | Quote }}}}
            finishedAt: {{{{ $now | Quote }}}}
      {{{{ end }}}}
      phase: {phase}
"""  # noqa: E501  (YAML lines; braces doubled for kwok's Go templates)


KWOK_STAGES = (
    """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: disttrain-pod-ready
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: DoesNotExist}
    - {key: '.status.podIP', operator: DoesNotExist}
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Ready}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: ContainersReady}
      {{ range .spec.readinessGates }}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: {{ .conditionType | Quote }}}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        started: true
        restartCount: 0
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      initContainerStatuses:
      {{ range .spec.initContainers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        state:
          terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}
      {{ end }}
"""
    + _STATUS_RUNNING_FAILED_COMMON
    + """\
      phase: Running
      startTime: {{ $now | Quote }}
"""
    + _terminal_stage(
        "disttrain-pod-complete",
        selectors=(
            f"""- {{key: '.metadata.annotations[\"{ANNOTATION_COMPLETE}\"]', operator: In, values: ['true']}}""",
            f"""- {{key: '.metadata.annotations[\"{ANNOTATION_FAIL_EXIT_CODE}\"]', operator: DoesNotExist}}""",
        ),
        phase="Succeeded",
        condition_reason="PodCompleted",
        exit_code="0",
        reason="Completed",
        message=f'{{{{ or (index $.metadata.annotations "{ANNOTATION_TERMINATION_MESSAGE}") "" | Quote }}}}',
    )
    + _terminal_stage(
        "disttrain-pod-fail",
        selectors=(f"""- {{key: '.metadata.annotations[\"{ANNOTATION_FAIL_EXIT_CODE}\"]', operator: Exists}}""",),
        phase="Failed",
        condition_reason="PodFailed",
        exit_code="{{ $code }}",
        reason="Error",
        preamble=f'{{{{ $code := index .metadata.annotations "{ANNOTATION_FAIL_EXIT_CODE}" }}}}\n      ',
        message=f'{{{{ or (index $.metadata.annotations "{ANNOTATION_TERMINATION_MESSAGE}") '
        f'(printf "exit code %v ({ANNOTATION_FAIL_EXIT_CODE})" $code) | Quote }}}}',
    )
    + """\
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: disttrain-pod-delete
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: Exists}
  next:
    finalizers:
      empty: true
    delete: true
"""
)


class ControlPlaneError(RuntimeError):
    """The control plane cannot be started (missing binary, component crash, timeout)."""


# ---------------------------------------------------------------------------------------------
# Locating the binaries
# ---------------------------------------------------------------------------------------------


def _module_version(gomod: Path, module: str) -> str:
    for line in gomod.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == module and parts[1].startswith("v"):
            return parts[1]
        if len(parts) >= 3 and parts[0] == "require" and parts[1] == module:
            return parts[2]
    raise ControlPlaneError(f"{module} is not required in {gomod}")


def kube_version() -> str:
    """The Kubernetes version pinned in hack/tools/kubernetes/go.mod, e.g. ``v1.34.12``."""
    return _module_version(TOOLS_DIR / "kubernetes" / "go.mod", "k8s.io/kubernetes")


def cache_root() -> Path:
    return Path(os.environ.get("DISTTRAIN_CACHE") or Path.home() / ".cache" / "disttrain")


def default_bin_dir() -> Path:
    """Where hack/build-control-plane.sh puts the binaries."""
    return cache_root() / f"k8s-{kube_version().lstrip('v')}" / "bin"


def find_binaries(bin_dir: Path | None = None) -> dict[str, Path]:
    """Path of every binary; raises ControlPlaneError naming what is missing and how to get it."""
    bin_dir = Path(bin_dir) if bin_dir else default_bin_dir()
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    found: dict[str, Path] = {}
    missing = []
    for name in BINARIES:
        candidates = [bin_dir / name]
        if assets and name in FROM_KUBEBUILDER_ASSETS:
            candidates.insert(0, Path(assets) / name)
        path = next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        where = f"{bin_dir}" + (f" or KUBEBUILDER_ASSETS={assets}" if assets else "")
        raise ControlPlaneError(
            f"control plane binaries missing: {', '.join(missing)} (looked in {where}). "
            "Build them with `make control-plane` (hack/build-control-plane.sh; needs Go >= 1.26 and the "
            "Go module proxy). KUBEBUILDER_ASSETS may point at a folder with prebuilt kube-apiserver and etcd "
            "(e.g. from `setup-envtest use 1.34.x -p path`); the other binaries are always built by "
            "`make control-plane`."
        )
    return found


# ---------------------------------------------------------------------------------------------
# Certificates and kubeconfig
# ---------------------------------------------------------------------------------------------


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _x509_name(cn: str, org: str | None = None):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    return now, now + dt.timedelta(days=days)


def issue_cert(
    pki: Path, fname: str, cn: str, org: str | None = None, server: bool = False, ips=(), dns=(), days: int = 30
) -> None:
    """Write ``<fname>.crt``/``<fname>.key`` signed by the CA in ``pki``: a client certificate for
    ``cn``/``org`` (user/group), or with ``server`` a serving one for those IP addresses and DNS names."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    start, until = _validity(days)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_x509_name(cn, org))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    sans = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips] + [x509.DNSName(d) for d in dns]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    (pki / f"{fname}.crt").write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    (pki / f"{fname}.key").write_bytes(_pem_key(key))
    (pki / f"{fname}.key").chmod(0o600)


def _write_ca(pki: Path, days: int) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _x509_name("disttrain-test-ca")
    start, until = _validity(days)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (pki / "ca.key").write_bytes(_pem_key(ca_key))
    (pki / "ca.key").chmod(0o600)


def _write_pki(pki: Path, extra_ips: Iterable[str] = (), days: int = 30) -> None:
    """CA, API server serving cert (also for ``extra_ips``), admin client cert (system:masters), the API
    server's client cert for kubelets, service-account key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pki.mkdir(parents=True, exist_ok=True)
    _write_ca(pki, days)
    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    ips = ["127.0.0.1", KUBERNETES_SERVICE_IP, *extra_ips]
    issue_cert(pki, "apiserver", "kube-apiserver", server=True, ips=ips, dns=dns, days=days)
    issue_cert(pki, "admin", "disttrain-admin", "system:masters", days=days)
    issue_cert(pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters", days=days)
    sa_key = ec.generate_private_key(ec.SECP256R1())
    (pki / "sa.key").write_bytes(_pem_key(sa_key))
    (pki / "sa.key").chmod(0o600)
    public = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (pki / "sa.pub").write_bytes(public)


def _kubeconfig_yaml(server: str, pki: Path, identity: str = "admin") -> str:
    """A kubeconfig for the client certificate ``<identity>.crt`` (data inlined)."""

    def b64(fname: str) -> str:
        return base64.b64encode((pki / fname).read_bytes()).decode()

    # JSON is YAML; no dependency on pyyaml here.
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "disttrain", "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")}}],
        "users": [
            {
                "name": "disttrain-admin",
                "user": {"client-certificate-data": b64(f"{identity}.crt"), "client-key-data": b64(f"{identity}.key")},
            }
        ],
        "contexts": [
            {
                "name": "disttrain",
                "context": {"cluster": "disttrain", "user": "disttrain-admin", "namespace": "default"},
            }
        ],
        "current-context": "disttrain",
        "preferences": {},
    }
    return json.dumps(config, indent=2) + "\n"


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


def _pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn_logged(log_dir: Path, name: str, cmd: list[str], cwd: Path, detach: bool) -> subprocess.Popen:
    """Start `cmd` in its own session, output to `<log_dir>/<name>.log` and its command line in `<name>.cmd`;
    unless `detach`, it gets SIGTERM when this process dies."""
    log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 (kept open by the child)
    (log_dir / f"{name}.cmd").write_text(" ".join(cmd) + "\n")
    try:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=None if detach else _set_pdeathsig,
        )
    finally:
        log.close()


def stop_pids(pids: dict[str, int], expect: dict[str, str] | None = None, timeout: float = 15.0) -> list[str]:
    """SIGTERM every live PID (only if its command line still contains ``expect[name]``), then
    SIGKILL what is left after ``timeout``. Returns the names that were signalled."""
    signalled = []
    for name, pid in pids.items():
        if not pid or not _pid_alive(pid):
            continue
        if expect and expect.get(name) and expect[name] not in _pid_cmdline(pid):
            continue  # the PID was reused by an unrelated process
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            signalled.append(name)
    deadline = time.monotonic() + timeout
    for name in signalled:
        pid = pids[name]
        while _pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            time.sleep(0.05)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return signalled


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on 127.0.0.1.

    Attributes once started: ``kubeconfig`` (Path), ``server`` (https URL), ``bin_dir`` (where
    kubectl and helm live), ``workdir``, ``log_dir``, ``pids`` ({component: pid}),
    ``startup_seconds``.
    """

    def __init__(
        self,
        workdir: str | Path | None = None,
        bin_dir: str | Path | None = None,
        detach: bool = False,
        startup_timeout: float = 90.0,
        node_ip: str | None = None,
    ):
        """``node_ip``: serve a real node instead of kwok's fake ones. The API server then listens on that
        address (one of this machine's, routable from the node's pods), publishes it as the endpoint of the
        ``kubernetes`` Service, and authorizes kubelets with the Node authorizer and NodeRestriction; no kwok
        runs and no fake node is registered (hack/node.py starts the node)."""
        self.bin_dir = Path(bin_dir) if bin_dir else default_bin_dir()
        self._workdir_given = workdir is not None
        self.workdir = Path(workdir) if workdir else None
        self.detach = detach  # True: processes survive this Python process (make cluster-up)
        self.startup_timeout = startup_timeout
        self.node_ip = node_ip
        self.host = node_ip or "127.0.0.1"
        self.binaries: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.pids: dict[str, int] = {}
        self.ports: dict[str, int] = {}
        self.server = ""
        self.kubeconfig: Path | None = None
        self.log_dir: Path | None = None
        self.startup_seconds: float | None = None
        self._ssl: ssl.SSLContext | None = None

    # -- public API ---------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        t0 = time.monotonic()
        self.binaries = find_binaries(self.bin_dir)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="disttrain-cp-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(exist_ok=True)
        pki = self.workdir / "pki"
        try:
            _write_pki(pki, extra_ips=[self.node_ip] if self.node_ip else [])
            self.ports = {k: _free_port() for k in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "kwok")}
            self.server = f"https://{self.host}:{self.ports['apiserver']}"
            self.kubeconfig = self.workdir / "kubeconfig"
            self.kubeconfig.write_text(_kubeconfig_yaml(self.server, pki))
            self.kubeconfig.chmod(0o600)
            (self.workdir / "kwok-stages.yaml").write_text(KWOK_STAGES)
            self._ssl = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            self._ssl.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

            self._spawn("etcd", self._etcd_args())
            self._spawn("kube-apiserver", self._apiserver_args(pki))
            self._wait(
                "kube-apiserver /readyz",
                lambda: self._http_ok(f"{self.server}/readyz"),
                components=("etcd", "kube-apiserver"),
            )
            self._spawn("kube-controller-manager", self._kcm_args(pki))
            self._spawn("kube-scheduler", self._scheduler_args())
            if not self.node_ip:
                self._spawn("kwok", self._kwok_args())
                for node in self._node_manifests():
                    self.api("POST", "/api/v1/nodes", node)
                self._wait("fake nodes Ready", self._nodes_ready)
            self._wait(
                "kube-scheduler /healthz",
                lambda: self._http_ok(f"https://127.0.0.1:{self.ports['scheduler']}/healthz", verify=False),
            )
            self._wait(
                "kube-controller-manager (default ServiceAccount)",
                lambda: (
                    self.api("GET", "/api/v1/namespaces/default/serviceaccounts/default", missing_ok=True) is not None
                ),
            )
        except BaseException:
            self.stop(remove_workdir=False)
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, remove_workdir: bool = False) -> None:
        """Stop every process started here (by PID), reverse order; optionally delete the workdir."""
        order = list(reversed(list(self.pids)))
        stop_pids({n: self.pids[n] for n in order}, expect={n: str(self.binaries.get(n, n)) for n in order})
        for proc in self.procs.values():
            with contextlib.suppress(Exception):
                proc.wait(timeout=1)
        self.procs.clear()
        self.pids.clear()
        if remove_workdir and self.workdir and not self._workdir_given:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tails(self, lines: int = 30, components: Iterable[str] = COMPONENTS) -> str:
        """The last ``lines`` lines of each component log, as one printable string."""
        if not self.log_dir:
            return "(control plane not started)"
        out = []
        for name in components:
            path = self.log_dir / f"{name}.log"
            if path.exists():
                out.append(f"----- {path} (last {lines} lines) -----")
                out.extend(_tail(path, lines))
        return "\n".join(out)

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG and bin_dir first on PATH (kubectl, helm)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run the built kubectl against this control plane; returns the CompletedProcess (text)."""
        return subprocess.run(
            [str(self.binaries.get("kubectl", self.bin_dir / "kubectl")), *args],
            env=self.env(),
            check=check,
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
        )

    def api(self, method: str, path: str, body: dict | None = None, missing_ok: bool = False) -> dict | None:
        """Minimal JSON call against the API server with the admin identity."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.server + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=10) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            if missing_ok and e.code == 404:
                return None
            raise ControlPlaneError(f"{method} {path}: HTTP {e.code}: {e.read().decode(errors='replace')}") from e

    def state(self) -> dict:
        return {
            "workdir": str(self.workdir),
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "bin_dir": str(self.bin_dir),
            "pids": self.pids,
            "ports": self.ports,
            "binaries": {k: str(v) for k, v in self.binaries.items()},
        }

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(remove_workdir=exc[0] is None)

    # -- internals ----------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        assert self.log_dir is not None and self.workdir is not None
        proc = spawn_logged(self.log_dir, name, [str(self.binaries[name]), *args], self.workdir, self.detach)
        self.procs[name] = proc
        self.pids[name] = proc.pid

    def _check_alive(self, components: Iterable[str]) -> None:
        for name in components:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                log = self.log_dir / f"{name}.log" if self.log_dir else None
                tail = "\n".join(_tail(log, 15)) if log else ""
                raise ControlPlaneError(f"{name} exited with code {proc.returncode} during startup; log: {log}\n{tail}")

    def _wait(self, what: str, ready, components: Iterable[str] = COMPONENTS) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive(components)
            try:
                if ready():
                    return
            except (OSError, ControlPlaneError) as e:
                last_error = e
            time.sleep(0.1)
        raise ControlPlaneError(
            f"timed out after {self.startup_timeout:.0f}s waiting for {what} (last error: {last_error}); "
            f"logs in {self.log_dir}\n{self.log_tails(15)}"
        )

    def _http_ok(self, url: str, verify: bool = True) -> bool:
        ctx = self._ssl if verify else ssl._create_unverified_context()
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
                return resp.status == 200
        except urllib.error.HTTPError:
            return False

    def _nodes_ready(self) -> bool:
        nodes = (self.api("GET", "/api/v1/nodes") or {}).get("items", [])
        names = {
            n["metadata"]["name"]
            for n in nodes
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        }
        return set(CPU_NODES + GPU_NODES) <= names

    def _etcd_args(self) -> list[str]:
        assert self.workdir is not None
        client, peer = f"http://127.0.0.1:{self.ports['etcd']}", f"http://127.0.0.1:{self.ports['etcd-peer']}"
        return [
            "--name=default",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
            "--quota-backend-bytes=4294967296",
        ]

    def _admission_plugins(self) -> list[str]:
        """Admission plugins enabled on top of kube-apiserver's default set."""
        return ["OwnerReferencesPermissionEnforcement", *(["NodeRestriction"] if self.node_ip else [])]

    def _apiserver_args(self, pki: Path) -> list[str]:
        assert self.workdir is not None
        return [
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            f"--bind-address={self.host}",
            f"--secure-port={self.ports['apiserver']}",
            f"--advertise-address={self.host}",
            # With a real node, pods reach the API server through the `kubernetes` Service.
            f"--endpoint-reconciler-type={'lease' if self.node_ip else 'none'}",
            f"--cert-dir={self.workdir / 'apiserver'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--authorization-mode={'Node,RBAC' if self.node_ip else 'RBAC'}",
            # As hardened clusters (and OpenShift) run it: setting blockOwnerDeletion needs `update` on the owner's
            # finalizers, so a chart that lacks that right fails here as it would there (PodSecurity, the
            # ValidatingAdmissionPolicy plugin and the rest of the default set stay on).
            f"--enable-admission-plugins={','.join(self._admission_plugins())}",
            # kubelets by their InternalIP: never a DNS lookup of a node name on the host's resolver
            *(["--kubelet-preferred-address-types=InternalIP"] if self.node_ip else []),
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            "--allow-privileged=true",
            "--profiling=false",
            # Front-proxy (request header) auth configured like kubeadm, so that the delegated
            # authentication of kube-controller-manager/kube-scheduler finds its CA bundle.
            f"--requestheader-client-ca-file={pki / 'ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        ]

    def _kcm_args(self, pki: Path) -> list[str]:
        kc = str(self.kubeconfig)
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['kcm']}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=false",
            "--controllers=*",
            "--profiling=false",
        ]

    def _scheduler_args(self) -> list[str]:
        kc = str(self.kubeconfig)
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['scheduler']}",
            "--profiling=false",
        ]

    def _kwok_args(self) -> list[str]:
        assert self.workdir is not None
        return [
            f"--kubeconfig={self.kubeconfig}",
            f"--config={self.workdir / 'kwok-stages.yaml'}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds=40",
            "--cidr=10.244.0.0/16",
            "--node-ip=10.1.0.1",
            f"--server-address=127.0.0.1:{self.ports['kwok']}",
        ]

    def _node_manifests(self) -> list[dict]:
        nodes = []
        for i, name in enumerate(CPU_NODES + GPU_NODES):
            gpu = name in GPU_NODES
            resources = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "500Gi"}
            if gpu:
                resources[GPU_RESOURCE] = str(GPUS_PER_NODE)
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                        "labels": {
                            "kubernetes.io/hostname": name,
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            "type": "kwok",
                            "disttrain.io/pool": "gpu" if gpu else "cpu",
                            **({"nvidia.com/gpu.present": "true"} if gpu else {}),
                        },
                    },
                    "spec": {"taints": [GPU_TAINT]} if gpu else {},
                    "status": {
                        "capacity": resources,
                        "allocatable": resources,
                        "addresses": [
                            {"type": "InternalIP", "address": f"10.1.0.{10 + i}"},
                            {"type": "Hostname", "address": name},
                        ],
                        "nodeInfo": {
                            "kubeletVersion": kube_version(),
                            "architecture": "amd64",
                            "operatingSystem": "linux",
                            "containerRuntimeVersion": "kwok",
                            "kernelVersion": "kwok",
                            "osImage": "kwok",
                            "kubeProxyVersion": "",
                            "machineID": "",
                            "systemUUID": "",
                            "bootID": "",
                        },
                    },
                }
            )
        return nodes


def wait_for(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.2):
    """Poll ``predicate()`` until it returns something truthy (returned); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last value: {last!r})")
        time.sleep(interval)


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200 * lines))
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError as e:
        return [f"({e})"]


# ---------------------------------------------------------------------------------------------
# CLI: up / down / status (make cluster-up / cluster-down)
# ---------------------------------------------------------------------------------------------


def _cli_dir() -> Path:
    return cache_root() / "cluster"


def _load_state() -> dict | None:
    path = _cli_dir() / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def _alive_pids(state: dict) -> dict[str, int]:
    binaries = state.get("binaries", {})
    return {n: p for n, p in state.get("pids", {}).items() if _pid_alive(p) and binaries.get(n, n) in _pid_cmdline(p)}


def cmd_up(args: argparse.Namespace) -> int:
    state = _load_state()
    if state and _alive_pids(state):
        print(f"control plane already running ({state['server']}); `make cluster-down` stops it")
        print(f"export KUBECONFIG={state['kubeconfig']}")
        return 0
    workdir = _cli_dir()
    shutil.rmtree(workdir, ignore_errors=True)
    cp = ControlPlane(workdir=workdir, bin_dir=args.bin_dir, detach=True)
    try:
        cp.start()
    except ControlPlaneError as e:
        print(f"controlplane: error: {e}", file=sys.stderr)
        return 1
    (workdir / "state.json").write_text(json.dumps(cp.state(), indent=2))
    print(f"control plane ready in {cp.startup_seconds:.1f}s at {cp.server}")
    print(
        f"  nodes: {', '.join(CPU_NODES + GPU_NODES)} (GPU nodes: {GPUS_PER_NODE} x {GPU_RESOURCE}, "
        f"taint {GPU_TAINT['key']}={GPU_TAINT['value']}:{GPU_TAINT['effect']})"
    )
    print(f"  logs: {cp.log_dir}   kubectl/helm: {cp.bin_dir}")
    print(f"  stop with: make cluster-down   (or {sys.executable} {Path(__file__).resolve()} down)")
    print(f"export KUBECONFIG={cp.kubeconfig}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state = _load_state()
    if not state:
        print("controlplane: nothing to stop (no state file)")
        return 0
    pids = state.get("pids", {})
    order = [n for n in reversed(COMPONENTS) if n in pids]
    stopped = stop_pids({n: pids[n] for n in order}, expect=state.get("binaries"))
    left = _alive_pids(state)
    if left:
        print(f"controlplane: error: still running: {left}", file=sys.stderr)
        return 1
    if not args.keep:
        shutil.rmtree(state["workdir"], ignore_errors=True)
    else:
        (Path(state["workdir"]) / "state.json").unlink(missing_ok=True)
    print(f"control plane stopped ({', '.join(stopped) or 'no live processes'})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = _load_state()
    if not state:
        print("control plane: not running (no state file)")
        return 1
    alive = _alive_pids(state)
    for name, pid in state["pids"].items():
        print(f"  {name:<24} pid {pid:<8} {'running' if name in alive else 'NOT running'}")
    ready = False
    with contextlib.suppress(Exception):
        ctx = ssl.create_default_context(cafile=str(Path(state["workdir"]) / "pki" / "ca.crt"))
        with urllib.request.urlopen(state["server"] + "/readyz", context=ctx, timeout=3) as resp:
            ready = resp.status == 200
    print(f"  {state['server']}/readyz: {'ok' if ready else 'not ready'}")
    print(f"export KUBECONFIG={state['kubeconfig']}")
    return 0 if ready and len(alive) == len(state["pids"]) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local Kubernetes control plane for disttrain tests.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start in the background; prints `export KUBECONFIG=...` last")
    up.add_argument("--bin-dir", type=Path, default=None, help=f"binaries (default {default_bin_dir()})")
    down = sub.add_parser("down", help="stop every process `up` started")
    down.add_argument("--keep", action="store_true", help="keep the work folder (logs, etcd data)")
    sub.add_parser("status", help="show the processes and /readyz")
    args = parser.parse_args(argv)
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
