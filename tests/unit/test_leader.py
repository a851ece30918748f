"""Leader election's decision, on a fake clock: when a candidate creates, renews, takes over or waits."""

from __future__ import annotations

from disttrain_operator.leader import Observation, decide

LEASE = 15.0


def lease(holder: str, renewed: str = "t0") -> dict:
    return {"metadata": {"resourceVersion": "1"}, "spec": {"holderIdentity": holder, "renewTime": renewed}}


def test_a_missing_lease_is_created_and_ones_own_is_renewed() -> None:
    assert decide(None, "me", Observation(), now=0.0, lease_seconds=LEASE) == "create"
    assert decide(lease("me"), "me", Observation(), now=0.0, lease_seconds=LEASE) == "renew"


def test_a_live_holder_is_waited_for_and_a_silent_one_replaced_after_the_lease_duration() -> None:
    seen = Observation()
    assert decide(lease("other", "t0"), "me", seen, now=100.0, lease_seconds=LEASE) == "wait"
    assert decide(lease("other", "t1"), "me", seen, now=110.0, lease_seconds=LEASE) == "wait"  # it renewed
    assert decide(lease("other", "t1"), "me", seen, now=124.0, lease_seconds=LEASE) == "wait"  # 14 s of silence
    # measured on the candidate's own clock from the last change it saw, never by comparing the two clocks
    assert decide(lease("other", "t1"), "me", seen, now=125.0, lease_seconds=LEASE) == "take"


def test_a_released_lease_is_taken_at_once() -> None:
    assert decide(lease(""), "me", Observation(), now=0.0, lease_seconds=LEASE) == "take"
