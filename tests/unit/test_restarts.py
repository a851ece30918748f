"""The restart-policy table and the success rule: one home each, read by builders, lifecycle and local mode."""

from __future__ import annotations

import pytest

from disttrain_operator import builders
from disttrain_operator.api import RestartPolicy, SuccessPolicy
from disttrain_operator.lifecycle import success_rule
from disttrain_operator.restarts import RESTART_RULES

from .helpers import spec_from


def test_every_restart_policy_has_a_rule():
    assert set(RESTART_RULES) == set(RestartPolicy)


CODES = (None, 0, 1, 2, 3, 127, 128, 137, 143, 255)
FAILED = {code for code in CODES if code != 0}  # None: a pod with no exit code (evicted, node lost)
SIGNALS = {None, 128, 137, 143, 255}  # not the program's own verdict: worth another pod under ExitCode


@pytest.mark.parametrize(
    ("policy", "pod_policy", "in_place_after", "recreated_after"),
    [
        (RestartPolicy.NEVER, "Never", set(), set()),
        (RestartPolicy.EXIT_CODE, "Never", set(), SIGNALS | {0}),
        (RestartPolicy.ON_FAILURE, "OnFailure", FAILED - {None}, set(CODES)),
        (RestartPolicy.ALWAYS, "Always", set(CODES) - {None}, set(CODES)),
    ],
)
def test_what_each_policy_does(policy, pod_policy, in_place_after, recreated_after):
    rule = RESTART_RULES[policy]
    assert rule.pod_restart_policy == pod_policy
    assert {code for code in CODES if code is not None and rule.restart_in_place(code)} == in_place_after
    assert {code for code in CODES if rule.recreate_failed_pod(code)} == recreated_after


@pytest.mark.parametrize("policy", list(RestartPolicy))
def test_the_pod_builder_takes_the_pod_restart_policy_from_the_table(policy):
    spec = spec_from({"chief": {"replicas": 1}, "worker": {"replicas": 1}, "ps": {"restartPolicy": policy.value}})
    pod = builders.build_pod("mnist", "ns", "uid", spec, "ps", 0)
    assert pod["spec"]["restartPolicy"] == RESTART_RULES[policy].pod_restart_policy


def test_success_rule_chief_or_worker0():
    with_chief = success_rule(spec_from({"chief": {"replicas": 1}, "worker": {"replicas": 2}}))
    assert (with_chief.must_succeed, with_chief.who, with_chief.reporter) == ([("chief", 0)], "the chief", ("chief", 0))
    workers_only = success_rule(spec_from({"worker": {"replicas": 2}}))
    assert (workers_only.must_succeed, workers_only.who) == ([("worker", 0)], "worker 0")


def test_success_rule_all_workers():
    spec = spec_from(
        {"chief": {"replicas": 1}, "worker": {"replicas": 3}}, successPolicy=SuccessPolicy.ALL_WORKERS.value
    )
    rule = success_rule(spec)
    assert rule.must_succeed == [("chief", 0), ("worker", 0), ("worker", 1), ("worker", 2)]
    assert (rule.who, rule.reporter) == ("every worker", ("chief", 0))
