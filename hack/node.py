#!/usr/bin/env python3
"""A real Kubernetes node on this machine: containerd (CRI) + CNI bridge + kubelet + kube-proxy + CoreDNS.

The pattern of Kubernetes' own ``hack/local-up-cluster.sh``: node components as local processes, next to
the control plane of ``hack/controlplane`` started with ``node_ip=NODE_IP``. Every setting this machine
kind needs is written here, not discovered at run time (see docs/e2e.md):

* containerd is our own (config, root, state, sockets under the work folder), with
  ``restrict_oom_score_adj = true`` (root here lacks CAP_SYS_RESOURCE) and cgroupfs (cgroup v1);
* pods live on our own bridge ``dtbr0`` (POD_CIDR, gateway NODE_IP) through Debian's CNI plugins
  bridge + host-local + portmap + firewall (dockerd sets FORWARD to DROP, so bridged traffic needs the
  firewall plugin's accept rules);
* pods reach only this machine: no default route in pods, a FORWARD rule drops anything from the pod
  subnet to elsewhere, the Service range is unreachable from the host, and CoreDNS answers only
  ``cluster.local`` (it has no ``forward`` plugin);
* pods run under the cgroup ``/disttrain-node`` with a low CPU weight, so the rest of the machine is not
  starved while they train;
* the kubelet changes ``vm.overcommit_memory``, ``kernel.panic`` and ``kernel.panic_on_oops``; they are
  restored when the node stops.

``RealNode.stop()`` (also run first by ``start()`` to clean up after a crash) stops every process by PID,
kills what is left in the pods' cgroups, unmounts, and removes the bridge, routes, iptables chains and
cgroups it added. State (PIDs, saved sysctls) is in ``<workdir>/node-state.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import controlplane
from controlplane import ControlPlane, ControlPlaneError, stop_pids, wait_for

NODE_NAME = "disttrain-node"
BRIDGE = "dtbr0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"  # the bridge's address: API server, kubelet, CoreDNS and pods' gateway
CLUSTER_DOMAIN = "cluster.local"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
CGROUP_ROOT = "disttrain-node"
POD_CPU_SHARES = 128  # cgroup v1 weight of all pods together (a process outside has 1024)
GUARD_COMMENT = "disttrain-node: pods reach only this machine"
# Changed by the kubelet (the first three) and kube-proxy; restored when the node stops.
KERNEL_SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops", "net.ipv4.conf.all.route_localnet")
CHAIN_PREFIXES = ("KUBE-", "CNI-")
NODE_BINARIES = ("kubelet", "kube-proxy", "coredns")
SYSTEM_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "iptables-save", "ip")


class NodeError(RuntimeError):
    """The node cannot be started (missing tool, component crash, timeout)."""


def run(*cmd: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    """Run a system command; its output is captured (printed on failure)."""
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(cmd)} exited {result.returncode}: {(result.stderr or result.stdout).strip()}")
    if not quiet and result.returncode != 0:
        print(f"node: ({' '.join(cmd)}: {(result.stderr or result.stdout).strip()})", file=sys.stderr)
    return result


def missing_tools(bin_dir: Path) -> list[str]:
    """Tools the node needs that are not installed (Debian packages, or binaries not yet built)."""
    missing = [t for t in SYSTEM_TOOLS if not shutil.which(t)]
    missing += [b for b in (*NODE_BINARIES, "pause") if not (bin_dir / b).is_file()]
    missing += [
        f"{CNI_BIN_DIR}/{p}"
        for p in ("bridge", "host-local", "portmap", "firewall", "loopback")
        if not Path(CNI_BIN_DIR, p).is_file()
    ]
    return missing


# ------------------------------------------------------------------------------------ configuration


def containerd_config(work: Path, image_root: Path) -> str:
    """containerd 1.6 config (version 2): our own sockets and folders, CRI with the settings this machine needs.
    `image_root` (images, snapshots) outlives the node, so loaded images are kept from one run to the next."""
    return f"""version = 2
root = "{image_root}"
state = "{work}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{work}/containerd.sock"
[ttrpc]
  address = "{work}/containerd.sock.ttrpc"
[debug]
  address = "{work}/containerd-debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{work}/cni/net.d"
"""


def cni_config(work: Path) -> dict:
    """bridge (no masquerade, no default route) + host-local + portmap + firewall."""
    ipam = {
        "type": "host-local",
        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
        "routes": [{"dst": controlplane.SERVICE_CIDR}],  # Services only; the pod subnet is on-link
        "dataDir": str(work / "cni" / "ipam"),
    }
    bridge = {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True, "ipam": ipam}
    plugins = [bridge, {"type": "portmap", "capabilities": {"portMappings": True}}, {"type": "firewall"}]
    return {"cniVersion": "1.0.0", "name": "disttrain", "plugins": plugins}


def kubelet_config(work: Path, healthz_port: int) -> dict:
    """KubeletConfiguration: cgroupfs under our cgroup root, our DNS, no image GC (images cannot be pulled)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(work / "pki" / "ca.crt")},
        },
        "authorization": {"mode": "AlwaysAllow"},  # only the API server holds a client certificate of our CA
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{CGROUP_ROOT}",
        "clusterDNS": [NODE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "containerRuntimeEndpoint": f"unix://{work}/containerd.sock",
        "failSwapOn": False,
        "podLogsDir": str(work / "pod-logs"),
        "resolvConf": str(work / "resolv.conf"),
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "serializeImagePulls": False,
        "registerNode": True,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
    }


def corefile(kubeconfig: Path, health_port: int) -> str:
    """CoreDNS answers cluster.local from the API and nothing else: there is no forward plugin."""
    return f"""{CLUSTER_DOMAIN}:53 {{
    bind {NODE_IP}
    errors
    log
    health 127.0.0.1:{health_port}
    kubernetes {CLUSTER_DOMAIN} {{
        kubeconfig {kubeconfig}
        pods insecure
    }}
    cache 5
}}
.:53 {{
    bind {NODE_IP}
    errors
}}
"""


# ------------------------------------------------------------------------------------ host changes


def bridge_up() -> None:
    """Our bridge with the node address, before the API server binds to it; guard rules and routes."""
    if run("ip", "link", "show", BRIDGE, check=False, quiet=True).returncode != 0:
        run("ip", "link", "add", BRIDGE, "type", "bridge")
    addresses = run("ip", "-4", "-o", "addr", "show", "dev", BRIDGE).stdout
    if f"{NODE_IP}/" not in addresses:
        run("ip", "addr", "add", f"{NODE_IP}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    guard = ["-s", POD_CIDR, "!", "-d", POD_CIDR, "-m", "comment", "--comment", GUARD_COMMENT, "-j", "DROP"]
    if run("iptables", "-C", "FORWARD", *guard, check=False, quiet=True).returncode != 0:
        run("iptables", "-I", "FORWARD", "1", *guard)
    run("ip", "route", "replace", "unreachable", controlplane.SERVICE_CIDR)


def bridge_down() -> None:
    run("ip", "route", "del", "unreachable", controlplane.SERVICE_CIDR, check=False, quiet=True)
    run("ip", "link", "del", BRIDGE, check=False, quiet=True)
    for veth in run("ip", "-o", "link", "show", "type", "veth", check=False, quiet=True).stdout.splitlines():
        if f"master {BRIDGE}" in veth:  # normally gone with their namespaces
            run("ip", "link", "del", veth.split(":")[1].strip().split("@")[0], check=False, quiet=True)


def remove_iptables_rules(binary: str) -> None:
    """Delete every rule that jumps to a KUBE-/CNI- chain or carries our guard comment, then those chains."""
    if not shutil.which(binary):
        return
    for table in ("filter", "nat", "mangle"):
        dump = run(f"{binary}-save", "-t", table, check=False, quiet=True).stdout.splitlines()
        ours = [line[1:].split()[0] for line in dump if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES)]
        for line in dump:
            if not line.startswith("-A "):
                continue
            words = line.split()
            target = words[words.index("-j") + 1] if "-j" in words else ""
            if not words[1].startswith(CHAIN_PREFIXES) and (target in ours or GUARD_COMMENT in line):
                run("sh", "-c", f"{binary} -t {table} -D {line[3:]}", check=False, quiet=True)
        for chain in ours:
            run(binary, "-t", table, "-F", chain, check=False, quiet=True)
        for chain in ours:
            run(binary, "-t", table, "-X", chain, check=False, quiet=True)


def cgroup_dirs() -> list[Path]:
    """Our cgroup root in every v1 hierarchy (cpu, memory, pids, ...)."""
    base = Path("/sys/fs/cgroup")
    return [d / CGROUP_ROOT for d in base.iterdir() if d.is_dir() and not d.is_symlink() and d.name != "unified"]


def cgroups_up() -> None:
    """Create the pods' cgroup root (the kubelet refuses a missing one) with a low CPU weight."""
    for path in cgroup_dirs():
        path.mkdir(exist_ok=True)
        if path.parent.name == "cpuset":
            for name in ("cpuset.cpus", "cpuset.mems"):
                (path / name).write_text((path.parent / name).read_text())
        if path.parent.name == "cpu":
            (path / "cpu.shares").write_text(str(POD_CPU_SHARES))


def kill_cgroup_processes() -> int:
    """SIGKILL every process in our cgroup tree (the containers); returns how many were signalled."""
    pids: set[int] = set()
    for root in cgroup_dirs():
        if root.is_dir():
            for procs in root.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def cgroups_down() -> None:
    for root in cgroup_dirs():
        if root.is_dir():
            for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    path.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()


def unmount_under(*prefixes: Path) -> None:
    """Unmount everything mounted below these folders, deepest first (lazily if busy)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == str(p) or point.startswith(f"{p}/") for p in prefixes):
            points.append(point)
    for point in sorted(set(points), key=lambda p: -p.count("/")):
        if run("umount", point, check=False, quiet=True).returncode != 0:
            run("umount", "-l", point, check=False)


def read_sysctls() -> dict[str, str]:
    return {name: run("sysctl", "-n", name).stdout.strip() for name in KERNEL_SYSCTLS}


def processes_matching(text: str) -> dict[str, int]:
    """PIDs whose command line contains `text` (e.g. containerd shims of our socket)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and text in controlplane.pid_cmdline(int(proc.name)):
            found[f"pid-{proc.name}"] = int(proc.name)
    return found


# ------------------------------------------------------------------------------------ the node


class RealNode:
    """One real node registered with `cp` (a ControlPlane started with node_ip=NODE_IP)."""

    def __init__(
        self,
        cp: ControlPlane,
        workdir: Path,
        image_root: Path,
        bin_dir: Path | None = None,
        timeout: float = 120.0,
        detach: bool = False,
    ):
        self.cp = cp
        self.workdir = Path(workdir)
        self.image_root = Path(image_root)
        self.detach = detach  # True: the processes outlive this Python process
        self.bin_dir = Path(bin_dir) if bin_dir else controlplane.default_bin_dir()
        self.timeout = timeout
        self.log_dir = self.workdir / "logs"
        self.pids: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.sysctls: dict[str, str] = {}

    @property
    def socket(self) -> Path:
        """containerd's CRI socket (for `ctr -a` and image loading)."""
        return self.workdir / "containerd.sock"

    @property
    def state_file(self) -> Path:
        return self.workdir / "node-state.json"

    # -- start -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Before the control plane: clean up a crashed run, check the tools, bring up the bridge."""
        missing = missing_tools(self.bin_dir)
        if missing:
            raise NodeError(
                f"missing for a real node: {', '.join(missing)}. Install Debian's docker.io and "
                "containernetworking-plugins, and build the node binaries with `make node-binaries`."
            )
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)  # stale pod IP allocations, sockets, configs
        self.workdir.mkdir(parents=True)
        self.log_dir.mkdir(exist_ok=True)
        bridge_up()

    def start_runtime(self) -> None:
        """containerd alone (images can then be loaded before the kubelet registers the node)."""
        self.sysctls = read_sysctls()
        self._save_state()
        cni = self.workdir / "cni" / "net.d"
        cni.mkdir(parents=True, exist_ok=True)
        (cni / "10-disttrain.conflist").write_text(json.dumps(cni_config(self.workdir), indent=2))
        (self.workdir / "containerd.toml").write_text(containerd_config(self.workdir, self.image_root))
        self._spawn(
            "containerd",
            [shutil.which("containerd") or "containerd", "--config", str(self.workdir / "containerd.toml")],
        )
        self._wait(
            "containerd", lambda: run("ctr", "-a", str(self.socket), "version", check=False, quiet=True).returncode == 0
        )

    def start_node(self) -> None:
        """kubelet, kube-proxy and CoreDNS; waits until the node is Ready and DNS answers."""
        pki = self.workdir / "pki"
        shutil.copytree(self.cp.workdir / "pki", pki, dirs_exist_ok=True)
        controlplane.issue_cert(pki, "kubelet", f"system:node:{NODE_NAME}", "system:nodes")
        controlplane.issue_cert(pki, "kube-proxy", "system:kube-proxy")
        for identity in ("kubelet", "kube-proxy", "admin"):
            (self.workdir / f"{identity}.kubeconfig").write_text(
                controlplane.kubeconfig_yaml(self.cp.server, pki, identity)
            )
        cgroups_up()
        (self.workdir / "resolv.conf").write_text(f"nameserver {NODE_IP}\n")  # pods' DNS; nothing upstream
        ports = {name: controlplane.free_port() for name in ("kubelet", "proxy-health", "proxy-metrics", "dns-health")}
        (self.workdir / "kubelet.yaml").write_text(json.dumps(kubelet_config(self.workdir, ports["kubelet"]), indent=2))
        self._spawn("kubelet", self._kubelet_args())
        self._spawn("kube-proxy", self._proxy_args(ports))
        (self.workdir / "Corefile").write_text(corefile(self.workdir / "admin.kubeconfig", ports["dns-health"]))
        self._spawn("coredns", [str(self.bin_dir / "coredns"), "-conf", str(self.workdir / "Corefile")])
        self._wait("node Ready", self._node_ready)
        self._wait("CoreDNS", lambda: self.cp._http_ok(f"http://127.0.0.1:{ports['dns-health']}/health"))

    def _kubelet_args(self) -> list[str]:
        return [
            str(self.bin_dir / "kubelet"),
            f"--config={self.workdir / 'kubelet.yaml'}",
            f"--kubeconfig={self.workdir / 'kubelet.kubeconfig'}",
            f"--root-dir={self.workdir / 'kubelet'}",
            f"--cert-dir={self.workdir / 'kubelet-pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            "--node-labels=disttrain.io/pool=cpu,disttrain.io/e2e=true",
            "--v=1",
        ]

    def _proxy_args(self, ports: dict[str, int]) -> list[str]:
        return [
            str(self.bin_dir / "kube-proxy"),
            f"--kubeconfig={self.workdir / 'kube-proxy.kubeconfig'}",
            f"--hostname-override={NODE_NAME}",
            f"--cluster-cidr={POD_CIDR}",
            "--proxy-mode=iptables",
            # leave the host's conntrack settings alone
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            f"--healthz-bind-address=127.0.0.1:{ports['proxy-health']}",
            f"--metrics-bind-address=127.0.0.1:{ports['proxy-metrics']}",
            "--v=1",
        ]

    # -- stop --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything this node (or a crashed earlier run in the same folder) started; idempotent."""
        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        pids = {**state.get("pids", {}), **self.pids}
        expect = {name: name for name in pids}  # each component's binary name is in its command line
        stop_pids({n: pids[n] for n in ("kubelet", "kube-proxy", "coredns") if n in pids}, expect, timeout=20)
        kill_cgroup_processes()
        stop_pids({n: pids[n] for n in ("containerd",) if n in pids}, expect, timeout=20)
        stop_pids(processes_matching(f"-address {self.socket}"), timeout=10)  # runc shims of our containerd
        kill_cgroup_processes()
        unmount_under(self.workdir, self.image_root)
        if (self.bin_dir / "kube-proxy").is_file():
            run(str(self.bin_dir / "kube-proxy"), "--cleanup", check=False, quiet=True)
        remove_iptables_rules("iptables")
        remove_iptables_rules("ip6tables")
        bridge_down()
        cgroups_down()
        for name, value in (state.get("sysctls") or self.sysctls).items():
            run("sysctl", "-w", f"{name}={value}", check=False, quiet=True)
        self.state_file.unlink(missing_ok=True)
        self.pids.clear()
        self.procs.clear()

    # -- helpers -----------------------------------------------------------------------------

    def _save_state(self) -> None:
        self.state_file.write_text(json.dumps({"pids": self.pids, "sysctls": self.sysctls}, indent=2))

    def _spawn(self, name: str, cmd: list[str]) -> None:
        proc = controlplane.spawn_logged(self.log_dir, name, cmd, self.workdir, self.detach)
        self.procs[name], self.pids[name] = proc, proc.pid
        self._save_state()

    def _wait(self, what: str, ready) -> None:
        def check() -> bool:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = "\n".join(controlplane.tail(self.log_dir / f"{name}.log", 20))
                    raise NodeError(f"{name} exited with code {proc.returncode} while waiting for {what}:\n{tail}")
            with contextlib.suppress(OSError, ControlPlaneError):
                return bool(ready())
            return False

        try:
            wait_for(check, timeout=self.timeout, what=what, interval=0.5)
        except AssertionError as error:
            raise NodeError(f"{error}; logs in {self.log_dir}") from None

    def _node_ready(self) -> bool:
        node = self.cp.api("GET", f"/api/v1/nodes/{NODE_NAME}", missing_ok=True) or {}
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for name in ("containerd", "kubelet", "kube-proxy", "coredns"):
            path = self.log_dir / f"{name}.log"
            if path.exists():
                out += [f"----- {path} (last {lines} lines) -----", *controlplane.tail(path, lines)]
        return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """`node.py down [E2E_DIR]`: clean up a node left behind (what `make e2e` does first anyway)."""
    args = argv if argv is not None else sys.argv[1:]
    if not args or args[0] != "down":
        print("usage: node.py down [E2E_DIR]", file=sys.stderr)
        return 2
    root = Path(args[1]) if len(args) > 1 else controlplane.cache_root() / "e2e"
    workdir = root / "node"
    RealNode(ControlPlane(), workdir, root / "containerd").stop()
    print(f"node: stopped and cleaned up ({workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
