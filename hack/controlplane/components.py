"""The control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, with
their command lines, started and stopped as one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from .binaries import COMPONENTS, ControlPlaneError, default_bin_dir, find_binaries, kube_version
from .nodes import CPU_NODES, GPU_NODES, kwok_stages, node_manifests
from .pki import kubeconfig_yaml, write_pki
from .processes import free_port, spawn_logged, stop_pids, tail

SERVICE_CIDR = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"  # the first address of SERVICE_CIDR


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
            write_pki(pki, ips=["127.0.0.1", KUBERNETES_SERVICE_IP, *([self.node_ip] if self.node_ip else [])])
            self.ports = {k: free_port() for k in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "kwok")}
            self.server = f"https://{self.host}:{self.ports['apiserver']}"
            self.kubeconfig = self.workdir / "kubeconfig"
            self.kubeconfig.write_text(kubeconfig_yaml(self.server, pki))
            self.kubeconfig.chmod(0o600)
            (self.workdir / "kwok-stages.yaml").write_text(kwok_stages())
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
                for node in node_manifests(kube_version()):
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
                out.extend(tail(path, lines))
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
                last_lines = "\n".join(tail(log, 15)) if log else ""
                raise ControlPlaneError(
                    f"{name} exited with code {proc.returncode} during startup; log: {log}\n{last_lines}"
                )

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
