"""Doctor's reading of what a sentinel shard's Sentinels say (`doctor.sentinel.judge`):
one line per concern, FAIL for what stops the worker finding the primary (none
answers, a refusal, an unknown service, disagreement, the primary down), WARN for
what weakens a failover (a Sentinel missing, no usable replica, no quorum). The
healthy case, an unreachable Sentinel, a refusal and an unknown service against the
real Sentinels: tests/e2e/test_sentinel_ops.py; disagreement cannot be produced there
on demand, so it is here."""

from __future__ import annotations

from dataclasses import replace

import pytest

from connectors.valkey.sentinel import SentinelView
from reconciler.ops.doctor.checklist import FAIL, OK, WARN, Check
from reconciler.ops.doctor.sentinel import judge

RANK = {OK: 0, WARN: 1, FAIL: 2}
REPLICA = ("10.0.0.2:6379", "slave")
HEALTHY = [SentinelView(f"valkey://s{i}:26379", primary="10.0.0.1:6379", flags="master",
                        quorum=2, other_sentinels=2, replicas=(REPLICA,)) for i in range(3)]


def checks(views: list[SentinelView]) -> dict[str, Check]:
    """The worst line of each check (sentinels, primary, replicas)."""
    worst: dict[str, Check] = {}
    for check in judge("c", "cache-c", views):
        name = check.name.removeprefix("shard c ")
        if name not in worst or RANK[check.status] > RANK[worst[name].status]:
            worst[name] = check
    return worst


def statuses(views: list[SentinelView]) -> dict[str, str]:
    return {name: check.status for name, check in checks(views).items()}


def test_agreeing_sentinels_with_a_replica_pass() -> None:
    found = checks(HEALTHY)
    assert statuses(HEALTHY) == {"sentinels": OK, "primary": OK, "replicas": OK}
    assert found["primary"].detail == "the Sentinels agree on 10.0.0.1:6379"
    assert found["replicas"].detail == "1 replica(s): 10.0.0.2:6379"


def test_a_sentinel_missing_is_a_warning_naming_it() -> None:
    views = [*HEALTHY[:2], SentinelView("valkey://s2:26379", "unreachable: refused")]
    found = checks(views)
    assert statuses(views) == {"sentinels": WARN, "primary": OK, "replicas": OK}
    assert "2 of 3 Sentinels answer; valkey://s2:26379 unreachable" in found["sentinels"].detail


@pytest.mark.parametrize(("view", "fix"), [
    (SentinelView("valkey://s0:26379", "refused us: WRONGPASS", refused=True),
     "user information of its URL"),
    (SentinelView("valkey://s0:26379", "does not monitor 'cache-c'", unknown=True),
     "shards.c.service"),
])
def test_a_refusal_or_an_unknown_service_fails_with_the_fix(view: SentinelView,
                                                            fix: str) -> None:
    found = list(judge("c", "cache-c", [view, *HEALTHY[1:]]))
    failed = [check for check in found if check.status == FAIL]
    assert len(failed) == 1 and fix in failed[0].fix
    assert failed[0].detail.startswith("valkey://s0:26379 ")


def test_no_sentinel_answering_fails() -> None:
    views = [SentinelView(view.url, "unreachable: timed out") for view in HEALTHY]
    assert [check.status for check in judge("c", "cache-c", views)] == [FAIL]


def test_disagreeing_sentinels_fail_naming_what_each_says() -> None:
    views = [*HEALTHY[:2], replace(HEALTHY[2], primary="10.0.0.2:6379")]
    found = checks(views)
    assert found["primary"].status == FAIL
    assert "valkey://s2:26379 names 10.0.0.2:6379" in found["primary"].detail


def test_a_primary_seen_down_fails() -> None:
    views = [replace(view, flags="s_down,master") for view in HEALTHY]
    assert checks(views)["primary"].status == FAIL


def test_no_usable_replica_and_no_quorum_are_warnings() -> None:
    views = [replace(view, replicas=(("10.0.0.2:6379", "s_down,slave,disconnected"),),
                     other_sentinels=0) for view in HEALTHY]
    found = checks(views)
    assert found["replicas"].status == WARN
    assert "10.0.0.2:6379 (s_down,slave,disconnected)" in found["replicas"].detail
    assert found["sentinels"].status == WARN
    assert "fewer than the quorum 2" in found["sentinels"].detail
