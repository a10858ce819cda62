"""The invalidator: grouping per shard in order, truncates as barriers, retries inside a
budget. Shards are connectors.valkey.testing.FakeShard, whose semantics are checked
against the real Valkey functions by tests/unit/connectors/valkey (same op sequences,
same results and end states)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.errors import ValkeyRejected, ValkeyUnavailable
from connectors.valkey.protocols import PendingApply
from connectors.valkey.testing import FakeShard
from reconciler.errors import FatalError, RetryBudgetExceeded
from reconciler.pipeline.hooks import NoHooks
from reconciler.pipeline.invalidator import Invalidator, segments
from reconciler.pipeline.planner import DELETE, TRUNCATE, UNVERSIONED, VERSIONED, Action


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


class SimTime:
    """Stands in for the invalidator's `time` module: a clock that moves only when the
    invalidator sleeps, so a test of its waits never depends on how busy the machine is
    (with real time, "no more than the budget" needed an upper bound on oversleeping)."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimTime:
    from reconciler.pipeline import invalidator

    sim = SimTime()
    monkeypatch.setattr(invalidator, "time", sim)
    return sim


class DownFor(FakeShard):
    """A shard that refuses every call until `clock` reaches `seconds`, then answers."""

    def __init__(self, clock: SimTime, seconds: float) -> None:
        super().__init__("a")
        self.clock, self.until = clock, seconds
        self.attempts: list[float] = []  # when each call came

    def apply(self, keys: Sequence[str], ops: Sequence[str],
              versions: Sequence[int]) -> list[str]:
        self.attempts.append(self.clock.now)
        if self.clock.now < self.until:
            raise ValkeyUnavailable("down", shard="a", command="FCALL")
        return super().apply(keys, ops, versions)


def test_a_shard_back_before_the_budget_runs_out_is_used(clock: SimTime) -> None:
    """Down for 0.8 s of a 1 s budget: the backoff (0.1, 0.2, 0.4, then 0.8) would next
    try at 1.5 s; the last wait is cut to the deadline instead of giving up at 0.7 s."""
    a = DownFor(clock, 0.8)
    invalidator = Invalidator(lambda: {"a": a}, retry_budget_seconds=1,
                              truncate_max_keys_per_second=1e9)
    outcome = invalidator.execute([Action("a", "post:1", VERSIONED, 1)])
    assert outcome.results["a", "absent"] == 1 and a.keys() == ["post:1"]
    assert a.attempts == pytest.approx([0, 0.1, 0.3, 0.7, 1.0])


def test_a_shard_down_for_good_gets_the_whole_budget_and_no_more(clock: SimTime) -> None:
    a = DownFor(clock, 3600)
    invalidator = Invalidator(lambda: {"a": a}, retry_budget_seconds=0.5,
                              truncate_max_keys_per_second=1e9)
    with pytest.raises(RetryBudgetExceeded, match=r"over 0\.5s \(valkey\.retry_budget"):
        invalidator.execute([Action("a", "post:1", VERSIONED, 1)])
    # The last wait cut to end at the deadline, one more attempt there, then no more.
    assert a.attempts == pytest.approx([0, 0.1, 0.3, 0.5])
    assert clock.now == pytest.approx(0.5)


def test_two_shards_are_called_and_counted_separately() -> None:
    a, b = FakeShard("a"), FakeShard("b")
    b.put("post:2", {b"v": b"1", b"d": b"x"})
    invalidator = Invalidator(lambda: {"a": a, "b": b}, retry_budget_seconds=1,
                              truncate_max_keys_per_second=1e9)
    outcome = invalidator.execute([Action("a", "post:1", VERSIONED, 1),
                                   Action("b", "post:2", VERSIONED, 2)])
    assert outcome.results == {("a", "absent"): 1, ("b", "repaired"): 1}


class Recording(FakeShard):
    """A FakeShard that notes when calls are sent, read and discarded."""

    def __init__(self, name: str, events: list[str]) -> None:
        super().__init__(name)
        self.events = events

    def send(self, keys: Sequence[str], ops: Sequence[str],
             versions: Sequence[int]) -> PendingApply:
        self.events.append(f"send {self.name}")
        pending = super().send(keys, ops, versions)
        shard = self

        class Noted:
            def result(self) -> list[str]:
                shard.events.append(f"read {shard.name}")
                return pending.result()

            def discard(self) -> None:
                shard.events.append(f"discard {shard.name}")
                pending.discard()

        return Noted()


class SendOrder(NoHooks):
    """Hooks that note each `between_shards` among the shards' events."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def between_shards(self) -> None:
        self.events.append("between_shards")


def test_the_between_shards_point_is_on_the_pipelined_path_between_two_sends() -> None:
    """`between_shards` arrives after a shard's call is sent and before the next
    shard's — on the path production runs (every call sent before any answer is read),
    never after the last shard: nothing is left unsent there."""
    events: list[str] = []
    a, b, c = Recording("a", events), Recording("b", events), Recording("c", events)
    invalidator = Invalidator(lambda: {"a": a, "b": b, "c": c}, retry_budget_seconds=1,
                              truncate_max_keys_per_second=1e9, hooks=SendOrder(events))
    invalidator.execute([Action("a", "post:1", VERSIONED, 1)])  # one shard: never between
    assert events == ["send a", "read a"]
    events.clear()
    invalidator.execute([Action("a", "post:1", VERSIONED, 2),
                         Action("b", "post:2", VERSIONED, 2),
                         Action("c", "post:3", VERSIONED, 2)])
    assert events == ["send a", "between_shards", "send b", "between_shards", "send c",
                      "read a", "read b", "read c"]


class OpsSeen(FakeShard):
    """A FakeShard that keeps the op codes of every call."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.ops: list[list[str]] = []

    def send(self, keys: Sequence[str], ops: Sequence[str],
             versions: Sequence[int]) -> PendingApply:
        self.ops.append(list(ops))
        return super().send(keys, ops, versions)


def test_without_fences_every_op_is_a_plain_delete() -> None:
    """The fault suite's broken worker (no_fences): what a naive invalidator does."""
    a = OpsSeen("a")
    invalidator = Invalidator(lambda: {"a": a}, retry_budget_seconds=1,
                              truncate_max_keys_per_second=1e9, fences=False)
    invalidator.execute([Action("a", "post:1", VERSIONED, 1), Action("a", "post:2", DELETE),
                         Action("a", "post:3", VERSIONED, 1, fence=False)])
    assert a.ops == [["u", "u", "u"]]
    fenced = OpsSeen("a")
    Invalidator(lambda: {"a": fenced}, retry_budget_seconds=1,
                truncate_max_keys_per_second=1e9).execute(
        [Action("a", "post:1", VERSIONED, 1), Action("a", "post:2", DELETE),
         Action("a", "post:3", VERSIONED, 1, fence=False)])
    assert fenced.ops == [["v", "d", "s"]]


def test_start_sends_every_shard_and_finish_reads_the_answers() -> None:
    events: list[str] = []
    a, b = Recording("a", events), Recording("b", events)
    invalidator = Invalidator(lambda: {"a": a, "b": b}, retry_budget_seconds=1,
                              truncate_max_keys_per_second=1e9)
    flight = invalidator.start([Action("a", "post:1", VERSIONED, 1),
                                Action("b", "post:2", VERSIONED, 1)])
    assert events == ["send a", "send b"], "both shards work while the caller goes on"
    events.append("caller plans the next batch")
    outcome = invalidator.finish(flight)
    assert events[-2:] == ["read a", "read b"]
    assert outcome.results == {("a", "absent"): 1, ("b", "absent"): 1}


def test_a_failed_answer_is_retried_with_the_whole_call() -> None:
    a = FakeShard("a")
    a.fail_next = [ValkeyUnavailable("reset", shard="a", command="FCALL")]
    invalidator = Invalidator(lambda: {"a": a}, retry_budget_seconds=5,
                              truncate_max_keys_per_second=1e9)
    flight = invalidator.start([Action("a", "post:1", VERSIONED, 3)])
    assert invalidator.finish(flight).results == {("a", "absent"): 1}
    assert a.applied == [("post:1", "v", 3, "absent")]


def test_a_batch_failing_on_one_shard_discards_the_others_answers() -> None:
    events: list[str] = []
    a, b = Recording("a", events), Recording("b", events)
    a.fail_next = [ValkeyRejected("NOPERM", shard="a", command="FCALL")]
    invalidator = Invalidator(lambda: {"a": a, "b": b}, retry_budget_seconds=1,
                              truncate_max_keys_per_second=1e9)
    flight = invalidator.start([Action("a", "post:1", VERSIONED, 1),
                                Action("b", "post:2", VERSIONED, 1)])
    with pytest.raises(FatalError, match="NOPERM"):
        invalidator.finish(flight)
    assert "discard b" in events and "read b" not in events


def test_an_abandoned_batch_discards_its_answers() -> None:
    events: list[str] = []
    a = Recording("a", events)
    invalidator = Invalidator(lambda: {"a": a}, retry_budget_seconds=1,
                              truncate_max_keys_per_second=1e9)
    invalidator.abandon(invalidator.start([Action("a", "post:1", VERSIONED, 1)]))
    assert events == ["send a", "discard a"] and a.keys() == []


# --------------------------------------------------------------------------- coalescing


def test_deletes_of_a_derived_key_are_coalesced_into_the_last_one_per_shard() -> None:
    (segment,) = segments([
        Action("a", "feed:7", UNVERSIONED),
        Action("a", "post:1", VERSIONED, 2),
        Action("b", "feed:7", UNVERSIONED),  # another shard: its own delete
        Action("a", "feed:8", UNVERSIONED),
        Action("a", "feed:7", UNVERSIONED),  # supersedes the first
        Action("a", "post:1", VERSIONED, 3),  # versioned: never coalesced
    ])
    a, b = segment.shards["a"], segment.shards["b"]
    assert a.keys == ["post:1", "feed:8", "feed:7", "post:1"]
    assert a.ops == ["v", "u", "u", "v"]
    assert a.versions == [2, 0, 0, 3]
    assert a.coalesced == 1
    assert b.keys == ["feed:7"] and b.coalesced == 0


def test_coalescing_never_crosses_a_truncate() -> None:
    first, _truncate, last = segments([
        Action("a", "feed:7", UNVERSIONED),
        Action("a", "feed:*", TRUNCATE),
        Action("a", "feed:7", UNVERSIONED),
    ])
    assert first.shards["a"].keys == ["feed:7"] and last.shards["a"].keys == ["feed:7"]
    assert first.shards["a"].coalesced == last.shards["a"].coalesced == 0


def test_coalesced_deletes_are_counted_and_not_sent() -> None:
    a = FakeShard("a")
    a.put("feed:7", {b"v": b"1", b"d": b"x"})
    sent: list[list[str]] = []
    apply = a.apply

    def recording(keys: list[str], ops: list[str], versions: list[int]) -> list[str]:
        sent.append(list(keys))
        return apply(keys, ops, versions)

    a.apply = recording  # type: ignore[method-assign]
    invalidator = Invalidator(lambda: {"a": a}, retry_budget_seconds=1,
                              truncate_max_keys_per_second=1e9)
    outcome = invalidator.execute([Action("a", "feed:7", UNVERSIONED)] * 5
                                  + [Action("a", "post:1", VERSIONED, 4)])
    assert sent == [["feed:7", "post:1"]]
    assert outcome.coalesced == {"a": 4}
    assert outcome.results == {("a", "repaired"): 1, ("a", "absent"): 1}
    assert a.keys() == ["post:1"]


KEYS = ("feed:1", "feed:2", "post:1", "post:2")
ACTIONS = st.lists(st.one_of(
    st.builds(Action, st.sampled_from(("a", "b")), st.sampled_from(KEYS), st.just(UNVERSIONED)),
    st.builds(Action, st.sampled_from(("a", "b")), st.sampled_from(KEYS), st.just(VERSIONED),
              st.integers(1, 6), st.booleans()),
    st.builds(Action, st.sampled_from(("a", "b")), st.sampled_from(KEYS), st.just(DELETE)),
), max_size=40)
ENTRIES = st.dictionaries(st.sampled_from(KEYS), st.one_of(
    st.builds(lambda v: {b"v": str(v).encode(), b"d": b"x"}, st.integers(0, 7)),
    st.builds(lambda v: {b"v": str(v).encode()}, st.integers(0, 7))))


@given(actions=ACTIONS, before_a=ENTRIES, before_b=ENTRIES)
@settings(max_examples=300, deadline=None)
def test_coalesced_execution_ends_as_one_by_one_execution(
        actions: list[Action], before_a: dict[str, dict[bytes, bytes]],
        before_b: dict[str, dict[bytes, bytes]]) -> None:
    """Whatever the mix of derived deletes, versioned changes and deletes (even on the
    same key), one coalesced execution leaves each shard exactly as applying every
    action alone, in order, does."""
    def shards() -> dict[str, FakeShard]:
        out = {"a": FakeShard("a"), "b": FakeShard("b")}
        for name, before in (("a", before_a), ("b", before_b)):
            for key, entry in before.items():
                out[name].put(key, dict(entry))
        return out

    coalesced, one_by_one = shards(), shards()
    Invalidator(lambda: coalesced, retry_budget_seconds=1,
                truncate_max_keys_per_second=1e9).execute(actions)
    alone = Invalidator(lambda: one_by_one, retry_budget_seconds=1,
                        truncate_max_keys_per_second=1e9)
    for action in actions:
        alone.execute([action])
    for name in ("a", "b"):
        assert state(coalesced[name]) == state(one_by_one[name])


def state(shard: FakeShard) -> dict[str, object]:
    """Every key the shard holds, with its entry."""
    held = shard.keys()
    return {key: shard.entry(key) for key in held}
