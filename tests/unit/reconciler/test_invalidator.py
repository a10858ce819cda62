"""The invalidator: grouping per shard in order, truncates as barriers, retries inside a
budget. Shards are connectors.valkey.testing.FakeShard, whose semantics are checked
against the real Valkey functions by tests/unit/connectors/valkey (same op sequences,
same results and end states)."""

from __future__ import annotations

import pytest

from connectors.errors import ValkeyRejected, ValkeyUnavailable
from connectors.valkey.testing import FakeShard
from reconciler.errors import FatalError, RetryBudgetExceeded
from reconciler.invalidator import Invalidator, segments
from reconciler.planner import DELETE, TRUNCATE, UNVERSIONED, VERSIONED, Action


def test_actions_are_grouped_per_shard_in_order_and_cut_at_truncates() -> None:
    actions = [
        Action("a", "post:1", VERSIONED, 2),
        Action("b", "post:2", VERSIONED, 3, fence=False),
        Action("a", "feed:7", UNVERSIONED),
        Action("a", "comment:*", TRUNCATE),
        Action("b", "comment:*", TRUNCATE),
        Action("a", "post:1", DELETE),
    ]
    first, truncate, last = segments(actions)
    assert first.shards["a"].keys == ["post:1", "feed:7"]
    assert first.shards["a"].ops == ["v", "u"]
    assert first.shards["a"].versions == [2, 0]
    assert first.shards["b"].ops == ["s"]
    assert [(t.shard, t.key) for t in truncate.truncates] == [("a", "comment:*"),
                                                               ("b", "comment:*")]
    assert last.shards["a"].keys == ["post:1"] and last.shards["a"].ops == ["d"]


def test_a_truncate_runs_between_the_actions_around_it() -> None:
    a = FakeShard("a")
    invalidator = Invalidator(lambda: {"a": a}, retry_budget_seconds=1,
                              truncate_max_keys_per_second=1e9)
    outcome = invalidator.execute([
        Action("a", "comment:1", VERSIONED, 5),  # fences comment:1
        Action("a", "comment:*", TRUNCATE),  # removes it
        Action("a", "comment:2", VERSIONED, 1),  # a row inserted after the truncate
    ])
    assert a.keys() == ["comment:2"], "the fence written after the truncate survives"
    assert outcome.truncated["a"] == 1
    assert outcome.results["a", "absent"] == 2


def test_transient_errors_are_retried_and_rejections_are_fatal() -> None:
    a = FakeShard("a")
    a.fail_next = [ValkeyUnavailable("down", shard="a", command="FCALL")] * 2
    states: list[bool] = []
    retries: list[int] = []
    invalidator = Invalidator(lambda: {"a": a}, retry_budget_seconds=5,
                              truncate_max_keys_per_second=1e9,
                              on_shard_state=lambda shard, up: states.append(up),
                              on_retry=lambda: retries.append(1))
    outcome = invalidator.execute([Action("a", "post:1", VERSIONED, 1)])
    assert outcome.results["a", "absent"] == 1
    assert states == [False, False, True] and len(retries) == 2

    a.fail_next = [ValkeyRejected("NOPERM", shard="a", command="FCALL")]
    with pytest.raises(FatalError, match="NOPERM"):
        invalidator.execute([Action("a", "post:1", VERSIONED, 2)])


def test_a_shard_down_past_the_budget_fails_the_batch() -> None:
    a = FakeShard("a")
    a.fail_next = [ValkeyUnavailable("down", shard="a", command="FCALL")] * 50
    invalidator = Invalidator(lambda: {"a": a}, retry_budget_seconds=0.5,
                              truncate_max_keys_per_second=1e9)
    with pytest.raises(RetryBudgetExceeded, match="shard a still unavailable"):
        invalidator.execute([Action("a", "post:1", VERSIONED, 1)])
    assert a.keys() == []


def test_two_shards_are_called_and_counted_separately() -> None:
    a, b = FakeShard("a"), FakeShard("b")
    b.put("post:2", {b"v": b"1", b"d": b"x"})
    invalidator = Invalidator(lambda: {"a": a, "b": b}, retry_budget_seconds=1,
                              truncate_max_keys_per_second=1e9)
    outcome = invalidator.execute([Action("a", "post:1", VERSIONED, 1),
                                   Action("b", "post:2", VERSIONED, 2)])
    invalidator.close()
    assert outcome.results == {("a", "absent"): 1, ("b", "repaired"): 1}
