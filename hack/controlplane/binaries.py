"""Where the control plane's binaries are, and the version they were built from."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / "hack" / "tools"

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl", "helm")
# What the control plane itself runs (kubectl and helm are for the tests).
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
FROM_KUBEBUILDER_ASSETS = ("etcd", "kube-apiserver")


class ControlPlaneError(RuntimeError):
    """The control plane cannot be started (missing binary, component crash, timeout)."""


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
