"""Chaos (#10): many jobs of mixed shapes driven to their end by kwok while operators are killed, doubled, paused
past their Lease and cut off by a kube-apiserver restart, while pods are lost (deleted as by a lost node or PodGC).
Afterwards every job must have the outcome its pods imply, restarts equal to the pods that failed retryably, no
replica with two pods or none, no job stuck, and no status that ever went back (a terminal condition that
vanished, restarts that decreased).

`make test-chaos`; DISTTRAIN_CHAOS_SEED replays a run (the seed is printed first), DISTTRAIN_CHAOS_JOBS and
DISTTRAIN_CHAOS_KILLS shrink it while developing.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaos_harness import Operators, compact_etcd, lease_holder, log, restart_apiserver
from chaos_scenarios import plan_jobs
from chaos_scene import Scene, judge, lose_pods
from controlplane import wait_for
from kubernetes import client

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

JOBS = int(os.environ.get("DISTTRAIN_CHAOS_JOBS", "50"))
KILLS = int(os.environ.get("DISTTRAIN_CHAOS_KILLS", "20"))
GAP_SECONDS = (3.0, 9.0)  # between two chaos actions
FINISH_SECONDS = 300.0  # after the last action, for every job to end
LEASE_TAKEOVER_SECONDS = 60.0  # a killed leader's Lease expires after 15 s; the standby then takes it
RECREATE_SECONDS = 30.0  # a pod lost during a watch gap is back this soon after the operator resumes (#10 item 1)


@pytest.fixture
def seed() -> int:
    """DISTTRAIN_CHAOS_SEED, else a fresh one; printed first."""
    value = int(os.environ.get("DISTTRAIN_CHAOS_SEED") or random.SystemRandom().randrange(1_000_000))
    log(f"seed {value} (replay: DISTTRAIN_CHAOS_SEED={value} make test-chaos)")
    return value


def open_scene(control_plane: Any, k8s_client: client.ApiClient, namespace: str, seed: int, tmp_path: Path,
               elect: bool) -> Scene:
    """A Scene whose operators log under `tmp_path` (with --leader-elect when `elect`)."""
    operators = Operators(control_plane.kubeconfig, namespace, tmp_path, elect=elect)
    return Scene.open(control_plane, k8s_client, namespace, random.Random(seed), operators)


@pytest.fixture
def scene(control_plane: Any, crd: None, k8s_client: client.ApiClient, namespace: str, seed: int,
          tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Scene]:
    """The run's Scene; parametrize indirectly with True for elected operators."""
    elect = bool(getattr(request, "param", False))
    opened = open_scene(control_plane, k8s_client, namespace, seed, tmp_path, elect)
    try:
        yield opened
    finally:
        opened.close()


def kill_and_restart(scene: Scene, name: str) -> None:
    """SIGKILL operator `name` at this moment, start it again after a random short pause."""
    scene.operators.kill(name)
    scene.pump(scene.rng.uniform(0.0, 1.5))
    scene.operators.start(name)


def watch_gap(scene: Scene, name: str) -> None:
    """Operator `name` stopped (SIGSTOP) while pods end and are lost, etcd is compacted and kube-apiserver
    restarts: its watches get 410 Gone and list again, and it goes on from the view it had (#10 item 1)."""
    scene.operators.pause(name)
    scene.pump(scene.rng.uniform(*GAP_SECONDS))
    lost = lose_pods(scene, 4)
    scene.pump(1.0)
    revision = compact_etcd(scene.cp)
    away = restart_apiserver(scene.cp)
    lost += lose_pods(scene, 3)
    scene.pump(1.0)
    scene.operators.resume(name)
    log(f"watch gap: {name} stopped while {len(lost)} pods were lost, etcd compacted at {revision} and "
        f"kube-apiserver restarted (away {away:.1f}s)")
    missing = scene.recreated(lost, within=RECREATE_SECONDS)  # the operator runs on, undisturbed meanwhile
    if not any(p.phase == "Running" for p in lost):  # the check above would be empty
        scene.problems.append("watch gap: no Running pod was lost during it, so none had to be recreated")
    scene.problems += [f"watch gap: {pod} lost, not recreated {RECREATE_SECONDS:.0f}s after the operator resumed"
                       for pod in missing]


def test_operators_killed_doubled_and_cut_off_lose_and_duplicate_nothing(scene: Scene, seed: int) -> None:
    rng = scene.rng
    gaps = [rng.uniform(*GAP_SECONDS) for _ in range(KILLS)]
    gap_at = rng.randrange(KILLS // 5, max(2 * KILLS // 5, KILLS // 5 + 1))  # while most jobs run
    second_from = min(KILLS - 1, gap_at + 2 + rng.randrange(max(KILLS // 5, 1)))  # beside it for 3 kills
    scene.schedule(plan_jobs(rng, JOBS), over_seconds=0.7 * sum(gaps))
    scene.operators.start("main")
    for kill, gap in enumerate(gaps):
        scene.pump(gap)
        if kill == gap_at:
            watch_gap(scene, "main")
            scene.pump(rng.uniform(*GAP_SECONDS))
        kill_and_restart(scene, "main")
        if rng.random() < 0.5:
            lose_pods(scene, rng.randint(1, 2))
        if kill == second_from:
            log("a second operator starts beside the first (both act: no leader election)")
            scene.operators.start("second")
        elif kill == second_from + 3:
            scene.operators.kill("second")
            log("the second operator is killed")
    log(f"{scene.operators.kills} SIGKILLs done; {len(scene.driver.unfinished())} jobs unfinished")
    scene.finish(FINISH_SECONDS)
    verdict = judge(scene, seed)
    assert not verdict.problems, f"seed {seed}: {len(verdict.problems)} problems, first: {verdict.problems[:10]}"


def leader(scene: Scene) -> str:
    """The Lease holder's identity (`<operator name>_<random>`)."""
    return wait_for(lambda: lease_holder(scene.api, scene.namespace), timeout=LEASE_TAKEOVER_SECONDS,
                    what="a leader", interval=0.5)


def take_over(scene: Scene, old: str) -> str:
    """Drives on until the Lease has a holder other than `old` (an identity); returns it."""
    for _ in range(int(LEASE_TAKEOVER_SECONDS)):
        holder = lease_holder(scene.api, scene.namespace)
        if holder and holder != old:
            return holder
        scene.pump(1.0)
    raise AssertionError(f"nobody took the Lease over from {old} in {LEASE_TAKEOVER_SECONDS:.0f}s")


def pause_past_lease(scene: Scene, holder: str) -> None:
    """SIGSTOPs the leader until the standby has taken its Lease, then lets it run on: it must notice and stop
    (exit 1) before it does harm; it is then started again as a candidate."""
    name = holder.rsplit("_", 1)[0]
    scene.operators.pause(name)
    log(f"{name} paused; taken over by {take_over(scene, holder)}")
    scene.operators.resume(name)
    for _ in range(60):
        code = scene.operators.exited(name)
        if code is not None:
            assert code == 1, f"{name}, no longer leading, exited {code}"
            break
        scene.pump(0.5)
    else:
        raise AssertionError(f"{name} kept running after losing its Lease")
    scene.operators.start(name)


@pytest.mark.parametrize("scene", [True], indirect=True, ids=["leader-elect"])
def test_two_elected_operators_with_churn_never_lose_a_terminal_condition(scene: Scene, seed: int) -> None:
    rng = scene.rng
    scene.schedule(plan_jobs(rng, JOBS, prefix="e"), over_seconds=90)
    scene.operators.start("a")
    scene.operators.start("b")
    scene.pump(rng.uniform(*GAP_SECONDS))
    for action in rng.sample(["kill", "kill", "pause"], 3):
        holder = leader(scene)
        log(f"{action} the leader {holder}")
        if action == "kill":
            kill_and_restart(scene, holder.rsplit("_", 1)[0])
            log(f"taken over by {take_over(scene, holder)}")
        else:
            pause_past_lease(scene, holder)
        lose_pods(scene, rng.randint(1, 3))
        scene.pump(rng.uniform(*GAP_SECONDS))
    scene.finish(FINISH_SECONDS)
    verdict = judge(scene, seed)
    assert not verdict.problems, f"seed {seed}: {len(verdict.problems)} problems, first: {verdict.problems[:10]}"
