"""A real, local Kubernetes control plane for the tests (no Docker, no kubelet).

Started from the binaries that ``hack/build-control-plane.sh`` builds from the Go module proxy
(cached in ``${DISTTRAIN_CACHE:-~/.cache/disttrain}/k8s-<version>/bin``): etcd, kube-apiserver,
kube-controller-manager (garbage collector, namespace lifecycle, service accounts, node lifecycle,
...), kube-scheduler, and kwok, which plays the kubelet for a few fake nodes. Everything listens on
127.0.0.1 on free ports; certificates are generated per start; logs live in ``<workdir>/logs``.

Modules: ``binaries`` (where they are), ``pki`` (certificates, kubeconfig), ``processes`` (start, stop,
wait), ``nodes`` (the fake nodes and kwok's stages), ``components`` (``ControlPlane``), ``cli``.

Use it from Python::

    cp = ControlPlane()          # or ControlPlane(workdir=..., bin_dir=...)
    cp.start()                   # waits on /readyz, node readiness and the default ServiceAccount
    cp.kubeconfig                # admin kubeconfig (client cert in system:masters, data inlined)
    cp.log_tails()               # last lines of every component log
    cp.stop()                    # stops every process it started, by PID

or from the shell: ``PYTHONPATH=hack python -m controlplane up|down|status`` (``make cluster-up`` /
``make cluster-down``); ``up`` prints ``export KUBECONFIG=<path>`` as its last line.

Fake nodes (all Ready, amd64/linux, 32 cpu, 128Gi memory, 110 pods each):

* ``kwok-cpu-0``, ``kwok-cpu-1``  — label ``disttrain.io/pool=cpu``
* ``kwok-gpu-0``, ``kwok-gpu-1``  — label ``disttrain.io/pool=gpu``, ``nvidia.com/gpu: 4`` in
  capacity/allocatable, taint ``nvidia.com/gpu=present:NoSchedule`` (pods need the toleration
  ``{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}``).

Pod lifecycle (kwok stages, configured explicitly in ``kwok-stages.yaml``):

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

from .binaries import (
    BINARIES,
    COMPONENTS,
    TOOLS_DIR,
    ControlPlaneError,
    cache_root,
    default_bin_dir,
    find_binaries,
    kube_version,
)
from .components import KUBERNETES_SERVICE_IP, SERVICE_CIDR, ControlPlane
from .nodes import (
    ANNOTATION_COMPLETE,
    ANNOTATION_DELAY,
    ANNOTATION_FAIL_EXIT_CODE,
    ANNOTATION_TERMINATION_MESSAGE,
    CPU_NODES,
    GPU_NODES,
    GPU_RESOURCE,
    GPU_TAINT,
    GPU_TOLERATION,
    GPUS_PER_NODE,
    kwok_stages,
    node_manifests,
)
from .pki import issue_cert, kubeconfig_yaml
from .processes import free_port, pid_alive, pid_cmdline, spawn_logged, stop_pids, tail, wait_for

__all__ = [
    "ANNOTATION_COMPLETE",
    "ANNOTATION_DELAY",
    "ANNOTATION_FAIL_EXIT_CODE",
    "ANNOTATION_TERMINATION_MESSAGE",
    "BINARIES",
    "COMPONENTS",
    "CPU_NODES",
    "GPUS_PER_NODE",
    "GPU_NODES",
    "GPU_RESOURCE",
    "GPU_TAINT",
    "GPU_TOLERATION",
    "KUBERNETES_SERVICE_IP",
    "SERVICE_CIDR",
    "TOOLS_DIR",
    "ControlPlane",
    "ControlPlaneError",
    "cache_root",
    "default_bin_dir",
    "find_binaries",
    "free_port",
    "issue_cert",
    "kube_version",
    "kubeconfig_yaml",
    "kwok_stages",
    "node_manifests",
    "pid_alive",
    "pid_cmdline",
    "spawn_logged",
    "stop_pids",
    "tail",
    "wait_for",
]
