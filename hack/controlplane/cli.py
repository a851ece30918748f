"""``python -m controlplane up|down|status`` (``make cluster-up`` / ``make cluster-down``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import ssl
import sys
import urllib.request
from pathlib import Path

from .binaries import COMPONENTS, cache_root, default_bin_dir
from .components import ControlPlane, ControlPlaneError
from .nodes import CPU_NODES, GPU_NODES, GPU_RESOURCE, GPU_TAINT, GPUS_PER_NODE
from .processes import pid_alive, pid_cmdline, stop_pids


def _cli_dir() -> Path:
    return cache_root() / "cluster"


def _load_state() -> dict | None:
    path = _cli_dir() / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def _alive_pids(state: dict) -> dict[str, int]:
    binaries = state.get("binaries", {})
    return {n: p for n, p in state.get("pids", {}).items() if pid_alive(p) and binaries.get(n, n) in pid_cmdline(p)}


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
    hack = Path(__file__).resolve().parents[1]
    print(f"  stop with: make cluster-down   (or PYTHONPATH={hack} {sys.executable} -m controlplane down)")
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
