"""Refused creates at the issue's size (#10 item 7): a ResourceQuota of 50 pods and five 111-pod jobs (1 chief +
10 ps + 100 workers). Pod POSTs over the first 60 s are counted by the API server itself (its
apiserver_request_total metric); the operator runs as the image runs it. The old code POSTed every missing pod of
every job on every pass (every 5 s and on every pod event): some 500 refused POSTs per pass."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from chaos_harness import Operators, log
from chaos_scenarios import IMAGE
from controlplane import wait_for
from kubernetes import client

from disttrain_operator.api import GROUP, PLURAL, VERSION

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

QUOTA, JOBS, WINDOW_SECONDS = 50, 5, 60.0
SHAPE = {"chief": {"replicas": 1}, "ps": {"replicas": 10}, "worker": {"replicas": 100}}
CREATES = re.compile(r'^apiserver_request_total\{(?=.*subresource="")(?=.*verb="POST")'
                     r'.*code="(\d+)".*resource="(\w+)".*\} (\S+)$')


def posts(control_plane: Any, resource: str = "pods") -> Counter[str]:
    """Creations of `resource` the API server has answered so far, by HTTP status."""
    counts: Counter[str] = Counter()
    for line in control_plane.kubectl("get", "--raw", "/metrics", timeout=60).stdout.splitlines():
        found = CREATES.match(line)
        if found and found.group(2) == resource:
            counts[found.group(1)] += int(float(found.group(3)))
    return counts


def more_service_ips(api: client.ApiClient) -> str:
    """A ServiceCIDR beside the control plane's /24: each training task has a Service with a ClusterIP of its own, and
    555 of them do not fit in 254 addresses. Returns its name."""
    networking = client.NetworkingV1Api(api)
    name = f"chaos-quota-{time.monotonic_ns() % 100_000}"
    networking.create_service_cidr({"metadata": {"name": name}, "spec": {"cidrs": ["10.0.16.0/20"]}})

    def ready() -> bool:
        found = networking.read_service_cidr(name).status
        return any(c.type == "Ready" and c.status == "True" for c in (found and found.conditions) or [])

    wait_for(ready, timeout=60, what=f"ServiceCIDR {name} Ready")
    return name


def why_it_waits(custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str, name: str,
                 why: str = "exceeded quota") -> bool:
    """The job's ReplicaFailure condition and a FailedCreate Warning both quote the API server's refusal."""
    job = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    condition = next((c for c in (job.get("status") or {}).get("conditions", []) if c["type"] == "ReplicaFailure"), {})
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name},reason=FailedCreate")
    return (condition.get("status") == "True" and condition.get("reason") == "FailedCreate"
            and why in condition.get("message", "")
            and any(e.type == "Warning" and why in (e.message or "") for e in events.items))


def test_task_services_without_cluster_ips_back_off_and_the_job_says_why(
    control_plane: Any, crd: None, k8s_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """Each training task's Service takes a ClusterIP: 300 workers do not fit in the control plane's /24 (254
    addresses), and the API server answers 500 'range is full' for the rest."""
    core, custom = client.CoreV1Api(k8s_client), client.CustomObjectsApi(k8s_client)
    operators = Operators(control_plane.kubeconfig, namespace, tmp_path)
    operators.start("ips")
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DistTrainJob", "metadata": {"name": "wide"},
            "spec": {"image": IMAGE, "replicaSpecs": {"worker": {"replicas": 300}}, "networkPolicy": False}})
        # before: a failed pass every 5 s, no event, no condition, every Service POSTed again each time
        wait_for(lambda: why_it_waits(custom, core, namespace, "wide", why="range is full"), timeout=90,
                 what="the job saying why it waits (ReplicaFailure condition and FailedCreate event)", interval=1)
        before, started = posts(control_plane, "services"), time.monotonic()
        wait_for(lambda: time.monotonic() - started >= 30, timeout=35, what="a 30 s window", interval=1)
        services = posts(control_plane, "services") - before
    finally:
        operators.stop_all()
    log(f"Service POSTs in 30 s once the range was full: {dict(services)}")
    # backing off (5, 10, 20 s +-20%): at most 3 tries of its 300 Services in 30 s; before: a try every 5 s (1,800)
    assert sum(services.values()) <= 3 * 300 + 10, services


def test_a_full_quota_under_five_111_pod_jobs_costs_few_posts_and_every_job_says_why(
    control_plane: Any, crd: None, k8s_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core, custom = client.CoreV1Api(k8s_client), client.CustomObjectsApi(k8s_client)
    core.create_namespaced_resource_quota(namespace, {"metadata": {"name": "pods"},
                                                      "spec": {"hard": {"pods": str(QUOTA)}}})
    wait_for(lambda: core.read_namespaced_resource_quota("pods", namespace).status.hard, timeout=60,
             what="the quota in force")
    service_cidr = more_service_ips(k8s_client)
    operators = Operators(control_plane.kubeconfig, namespace, tmp_path)
    operators.start("quota")
    try:
        before, started = posts(control_plane), time.monotonic()
        services_before = posts(control_plane, "services")
        for i in range(JOBS):
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "DistTrainJob", "metadata": {"name": f"big{i}"},
                "spec": {"image": IMAGE, "replicaSpecs": SHAPE, "networkPolicy": False}})
        names = [f"big{i}" for i in range(JOBS)]
        wait_for(lambda: all(why_it_waits(custom, core, namespace, n) for n in names), timeout=WINDOW_SECONDS,
                 what="every job saying why it waits (ReplicaFailure condition and FailedCreate event)", interval=1)
        wait_for(lambda: time.monotonic() - started >= WINDOW_SECONDS, timeout=WINDOW_SECONDS + 5,
                 what="the end of the window", interval=1)
        pods = posts(control_plane) - before
        services = posts(control_plane, "services") - services_before
        live = len(core.list_namespaced_pod(namespace).items)
    finally:
        operators.stop_all()
        client.NetworkingV1Api(k8s_client).delete_service_cidr(service_cidr)  # gone once its Services are
    log(f"POSTs in {WINDOW_SECONDS:.0f}s: pods {dict(pods)}, Services {dict(services)}; pods: {live}")
    assert pods["201"] == live == QUOTA
    # slow start stops each job at its first refused batch, then one POST per backoff (5, 10, 20 s, +-20%)
    assert pods["403"] <= JOBS * 20, pods  # before: ~505 refused POSTs every 5 s
    # each batch's task Services go just before its pods: paced by the same slow start and backoff
    assert sum(services.values()) <= 2 * QUOTA + JOBS * 20, services  # before: 399-1,256 POSTs a minute, mostly 409s
