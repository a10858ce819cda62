"""Several measured consumers in one consumer group: a process each, one topic.

A member reads only its share of the topic, so it cannot tell on its own when the
topic is done. The bench process and its members agree through files (`Gate`):

- each member joins the group with its partitions paused (the worker as an operator
  pauses it: SIGUSR1) and writes how many it holds to `<its out>.assigned`; once
  every member holds some and they add up to the topic's, the group is stable and
  the bench process writes the group's `go`; each member resumes its partitions
  (SIGUSR2). So no member reads alone while the others are still joining, and no
  rebalance moves partitions during the measurement;
- each member notes the time and CPU of its last record so far (`Meter.lap`) and
  rewrites its progress file with the records it has done (`Progress`);
- once the progress files add up to the topic's records, the bench process writes the
  group's `stop`; each member stops and writes its result.

`combine()` adds the members' results up: records, CPU and counters summed, the span
from the first member's first record to the last member's last.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from bench.meter import span

GO, STOP = "go", "stop"  # the group's files: resume the partitions; stop
PROGRESS_EVERY = 0.25  # seconds between rewrites of a progress file
JOIN_POLL = 0.05  # seconds a paused member waits in consume() while the group forms
COUNTS = ("invalidations", "coalesced", "events", "skipped", "unresolved", "dead_letters",
          "retries")  # the worker's counters, summed over the members


class Gate:
    """The group's folder of agreement files."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    # -------------------------------------------------------------- a member's side

    @staticmethod
    def holding(out: str, partitions: int) -> None:
        """This member (whose result goes to `out`) holds `partitions` partitions."""
        Path(f"{out}.assigned").write_text(f"{partitions}\n")

    def is_open(self) -> bool:
        return (self.folder / GO).exists()

    def join_paused(self, consumer: Consumer, topic: str, out: str) -> None:
        """Join the group, every partition paused until the gate opens (for a plain
        consumer; the worker is paused as an operator pauses it)."""
        def on_assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            consumer.incremental_assign(partitions)
            if not self.is_open():
                consumer.pause(partitions)

        consumer.subscribe([topic], on_assign=on_assign)
        while not self.is_open():
            if consumer.consume(1, JOIN_POLL):  # serves the rebalances; paused, reads none
                raise RuntimeError(f"{topic}: a record arrived while paused")
            self.holding(out, len(consumer.assignment()))
        consumer.resume(consumer.assignment())
        wake(consumer, topic)

    def stopping(self) -> bool:
        return (self.folder / STOP).exists()

    # -------------------------------------------------------------- the bench's side

    @staticmethod
    def held(out: str) -> int:
        """The partitions the member writing to `out` said it holds."""
        return Progress.read(f"{out}.assigned")

    def open(self) -> None:
        (self.folder / GO).touch()

    def close(self) -> None:
        (self.folder / STOP).touch()


class Progress:
    """A progress file: the records done so far, rewritten when the count has changed
    and `PROGRESS_EVERY` has passed since the last rewrite."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._written: int | None = None
        self._due = 0.0

    def report(self, records: int) -> None:
        if self.path is None or records == self._written or time.monotonic() < self._due:
            return
        self.path.write_text(f"{records}\n")
        self._written, self._due = records, time.monotonic() + PROGRESS_EVERY

    @staticmethod
    def read(path: str) -> int:
        """The count in a progress file (0 while it is missing or being rewritten)."""
        try:
            return int(Path(path).read_text())
        except (OSError, ValueError):
            return 0


def combine(members: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One result for the group: its members' records, CPU and counters added up, over
    the span from the first record any of them received to the last one done."""
    active = [member for member in members if member["records"]]
    starts = [member["window"][0] for member in active]
    ends = [member["window"][1] for member in active]
    out: dict[str, Any] = {
        **span(sum(member["records"] for member in members),
               max(ends) - min(starts) if active else 0.0,
               sum(member["cpu_seconds"] for member in members)),
        "peak_rss_mb": max(member["peak_rss_mb"] for member in members),
        "join_skew_seconds": round(max(starts) - min(starts), 3) if active else None,
        "exit_code": max(member.get("exit_code", 0) for member in members),
        "members": list(members),
    }
    for name in COUNTS:
        if name in members[0]:
            out[name] = _add([member[name] for member in members])
    return out


def _add(values: Sequence[Any]) -> Any:
    """The sum of ints, or of (nested) dicts of ints key by key."""
    if isinstance(values[0], dict):
        keys = sorted({key for value in values for key in value})
        return {key: _add([value[key] for value in values if key in value]) for key in keys}
    return sum(values)


def wake(consumer: Consumer, topic: str) -> None:
    """Ask the broker for a partition's offsets. While every partition it fetches is
    paused, librdkafka's broker thread sleeps up to a second and notices a resume only
    when it wakes: the first records came 0.9-1.0 s after a resume, 0.01-0.03 s with
    this request after it. A worker (resumed by its own loop, the request sent from
    another thread) still starts about a second late in some runs: the sweep marks
    such a run disturbed."""
    consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5, cached=False)
