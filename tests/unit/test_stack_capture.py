"""The capture's analysis (`stack.capture`) over the events it recorded: which records
a run caused, in which order, and the checks of every event shape — without a stack.

The workload's transaction ids and seeded keys are read back from the fixtures'
README (the capture wrote them there); what the workload wrote (its facts) from the
events themselves.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from stack.capture.checks import Checker
from stack.capture.order import select
from stack.capture.records import FIXTURE_DIR, PREFIXES, CaptureError, Record
from stack.capture.workload import Step, Workload

README = (FIXTURE_DIR / "README.md").read_text()


def workload() -> Workload:
    work = Workload()
    work.steps = [Step(label, int(txid), (), what) for label, txid, what in
                  re.findall(r"^\| (\w+) \| (\d+) \| (.*) \|$", README, re.MULTILINE)]
    for table, keys in re.findall(r"overrides\.public\.(\w+)`: `\(unset\)` → `SELECT .* "
                                  r"IN \(([^)]*)\)`", README):
        work.seeds[table] = [key.strip("'") for key in keys.split(", ")]
    return work


def recorded(name: str) -> list[Record]:
    records = []
    for line in (FIXTURE_DIR / name).read_text().splitlines():
        data = json.loads(line)
        records.append(Record(data["topic"], data["partition"], data["offset"],
                              data["timestamp"], data["key"], data["value"],
                              [(k, v) for k, v in data["headers"]]))
    return records


def learn_facts(work: Workload, records: list[Record]) -> None:
    """What the workload wrote, as the capture keeps it while it runs."""
    def row(step: str, op: str, part: str) -> Any:
        return next(r.payload[part] for r in records if r.step == step and
                    r.value is not None and r.payload.get("op") == op)

    created = row("posts_insert", "c", "after")
    work.facts.update(big_body=created["body"], post=created["id"],
                      metadata=json.loads(created["metadata"]),
                      pk_post=row("posts_pk_change", "d", "before")["id"],
                      pk_post_new=row("posts_pk_change", "c", "after")["id"],
                      user=row("profiles_insert", "c", "after")["user_id"])


def analysed(prefix: str) -> tuple[Workload, list[Record], list[Record]]:
    schemas, name = PREFIXES[prefix]
    work, fixture = workload(), recorded(name)
    by_partition: dict[tuple[str, int], list[Record]] = {}
    for rec in sorted(fixture, key=lambda r: r.offset):
        by_partition.setdefault((rec.topic, rec.partition), []).append(rec)
    ordered = select(prefix, schemas, work, by_partition)
    learn_facts(work, ordered)
    return work, fixture, ordered


@pytest.mark.parametrize("prefix", list(PREFIXES))
def test_the_recorded_events_are_selected_in_order_and_pass_every_check(prefix: str) -> None:
    work, fixture, ordered = analysed(prefix)
    assert [(r.topic, r.partition, r.offset) for r in ordered] == [
        (r.topic, r.partition, r.offset) for r in fixture]
    Checker(prefix, PREFIXES[prefix][0], work, ordered).run()
    section = README.split(f"## `{PREFIXES[prefix][1]}`")[1].split("\n## ")[0]
    descriptions = re.findall(r"^\| \d+ \| `[^`]*` \| [\d/]+ \| \w+ \| (.*) \|$", section,
                              re.MULTILINE)
    assert [r.description.replace("|", "/") for r in ordered] == descriptions


def test_a_missing_shape_fails_the_capture_naming_it() -> None:
    work, _, ordered = analysed("capjson")
    work.facts["pk_post"] = -1  # as if the primary-key change had deleted another row
    without_tombstone = [r for r in ordered if not (r.value is None and r.step == "posts_delete")]
    with pytest.raises(CaptureError) as failure:
        Checker("capjson", True, work, without_tombstone).run()
    message = str(failure.value)
    assert "'posts:pk_change_delete'" in message and "pk change delete: old id" in message
    assert "'posts_delete:tombstone'" in message
    assert "posts delete not followed by its tombstone" in message
