"""The recorded Debezium 3.3 events of tests/fixtures/debezium, and variants of them.

Every test event starts as a line the real connector emitted. A variant is that line
with its JSON changed programmatically (`Recorded.with_payload` and friends): nothing
here writes an envelope from scratch.

Both files record the same workload in the same order, so one line number names the
same workload step in each (`test_decode` pins that down).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.debezium import Decoder, Event

FIXTURES = Path(__file__).resolve().parents[4] / "tests" / "fixtures" / "debezium"
SCHEMAS_TRUE = "schemas_true.jsonl"  # JsonConverter, schemas.enable=true, prefix capjson
SCHEMAS_FALSE = "schemas_false.jsonl"  # JsonConverter, schemas.enable=false, prefix capbare
FILES = (SCHEMAS_TRUE, SCHEMAS_FALSE)

# Line numbers (1-based) of the workload steps, the same in both files (see README.md).
POSTS_SNAPSHOT = 1  # r, posts id 18, neighbourhood 7, version 1
COMMENTS_SNAPSHOT = 2  # r, comments id 13, post 18
PROFILES_SNAPSHOT = 3  # r, profiles bee40a0a-…
POSTS_INSERT = 5  # c, posts id 19, 20,000-char body, score 12.50
POSTS_UPDATE_TITLE = 8  # u, before null, body is the TOAST placeholder, version 2
POSTS_UPDATE_NEIGHBORHOOD = 11  # u, before null, neighbourhood 7 -> 8, version 3
POSTS_DELETE = 14  # d, DEFAULT identity: before holds the real id 19 and fake defaults
POSTS_DELETE_TOMBSTONE = 15
POSTS_INSERT_FOR_PK_CHANGE = 18  # c, posts id 20, neighbourhood 9
POSTS_PK_DELETE = 21  # d of id 20, header __debezium.newkey={"id":1000020}
POSTS_PK_TOMBSTONE = 22
POSTS_PK_CREATE = 23  # c of id 1000020, header __debezium.oldkey={"id":20}, version 2
COMMENTS_INSERT = 26  # c, comments id 14, post 1000020, neighbourhood 7
COMMENTS_UPDATE_BODY = 29  # u, FULL identity: the true before, version 2
COMMENTS_MOVE = 32  # u, FULL identity, neighbourhood 7 -> 8, version 3
COMMENTS_DELETE = 35  # d, FULL identity: before is the true row (neighbourhood 8)
COMMENTS_TOMBSTONE = 36
COMMENTS_TRUNCATE = 39  # t, null key, table only in source
PROFILES_INSERT = 42  # c, uuid 712feb77-…, karma 3.25, birthday 1990-02-28
PROFILES_UPDATE = 45  # u, before null, version 2
PROFILES_DELETE = 48  # d, DEFAULT identity
PROFILES_TOMBSTONE = 49
MULTI_POST_INSERT = 52  # c, posts id 21, inside a multi-table transaction
MULTI_COMMENT_INSERT = 53  # c, comments id 15, post 21
MULTI_PROFILE_INSERT = 54  # c, profiles c226143b-…
MULTI_POST_UPDATE = 55  # u, posts id 21, version 2
MESSAGE = 58  # op m on <prefix>.message
HEARTBEATS = (60, 61)  # __debezium-heartbeat.<prefix>

CHANGES = (
    POSTS_SNAPSHOT, COMMENTS_SNAPSHOT, PROFILES_SNAPSHOT, POSTS_INSERT, POSTS_UPDATE_TITLE,
    POSTS_UPDATE_NEIGHBORHOOD, POSTS_DELETE, POSTS_INSERT_FOR_PK_CHANGE, POSTS_PK_DELETE,
    POSTS_PK_CREATE, COMMENTS_INSERT, COMMENTS_UPDATE_BODY, COMMENTS_MOVE, COMMENTS_DELETE,
    PROFILES_INSERT, PROFILES_UPDATE, PROFILES_DELETE, MULTI_POST_INSERT,
    MULTI_COMMENT_INSERT, MULTI_PROFILE_INSERT, MULTI_POST_UPDATE,
)  # every line with op c, u, d or r
TOMBSTONES = (POSTS_DELETE_TOMBSTONE, POSTS_PK_TOMBSTONE, COMMENTS_TOMBSTONE, PROFILES_TOMBSTONE)
LINE_COUNT = 61


@dataclass(frozen=True)
class Recorded:
    """One recorded Kafka record (a line of a fixture file)."""

    file: str
    line: int
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str | None
    headers: tuple[tuple[str, str | None], ...]

    @property
    def embeds_schema(self) -> bool:
        return self.file == SCHEMAS_TRUE

    def key_bytes(self) -> bytes | None:
        return None if self.key is None else self.key.encode()

    def value_bytes(self) -> bytes | None:
        return None if self.value is None else self.value.encode()

    def text(self) -> str:
        """The raw value text (the record must not be a tombstone)."""
        assert self.value is not None, f"{self.file}:{self.line} is a tombstone"
        return self.value

    def value_json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.text())
        return value

    def payload(self) -> dict[str, Any]:
        """The envelope: `payload` with schemas.enable=true, the whole value without."""
        value = self.value_json()
        payload: dict[str, Any] = value["payload"] if self.embeds_schema else value
        return payload

    def header(self, name: str) -> str | None:
        return dict(self.headers).get(name)

    # -- variants ---------------------------------------------------------------------

    def with_value(self, change: Callable[[dict[str, Any]], None]) -> Recorded:
        """A copy whose value JSON (schema and all) was passed through `change`."""
        value = copy.deepcopy(self.value_json())
        change(value)
        return dataclasses.replace(self, value=json.dumps(value))

    def with_payload(self, change: Callable[[dict[str, Any]], None]) -> Recorded:
        """A copy whose envelope (before, after, source, op…) was passed through `change`."""

        def on_value(value: dict[str, Any]) -> None:
            change(value["payload"] if self.embeds_schema else value)

        return self.with_value(on_value)

    def with_key(self, change: Callable[[dict[str, Any]], None]) -> Recorded:
        """A copy whose key columns were passed through `change`."""
        assert self.key is not None
        key = json.loads(self.key)
        change(key["payload"] if self.embeds_schema else key)
        return dataclasses.replace(self, key=json.dumps(key))

    def with_raw(self, **changes: str | None) -> Recorded:
        """A copy with the raw `key` and/or `value` text, or the `topic`, replaced."""
        assert set(changes) <= {"key", "value", "topic"}, changes
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def decode(self, decoder: Decoder | None = None) -> Event:
        return (decoder or Decoder()).decode(self.topic, self.partition, self.offset,
                                             self.key_bytes(), self.value_bytes())

    def as_input_line(self) -> str:
        """This record as a line of `reconciler plan --input` (SPEC §5)."""
        return json.dumps({"topic": self.topic, "partition": self.partition,
                           "offset": self.offset, "key": self.key, "value": self.value,
                           "headers": [list(h) for h in self.headers]})


@functools.cache
def records(file: str) -> tuple[Recorded, ...]:
    """Every record of a fixture file, in file order."""
    out = []
    with (FIXTURES / file).open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            item = json.loads(text)
            out.append(Recorded(
                file=file, line=number, topic=item["topic"], partition=item["partition"],
                offset=item["offset"], key=item["key"], value=item["value"],
                headers=tuple((name, value) for name, value in item["headers"]),
            ))
    return tuple(out)


def record(file: str, line: int) -> Recorded:
    """The record on 1-based `line` of `file`."""
    return records(file)[line - 1]


def decode(file: str, line: int) -> Event:
    return record(file, line).decode()
