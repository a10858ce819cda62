"""The input of `reconciler plan`: JSON lines of recorded Kafka records.

Each line is an object with a string `topic`, the raw `key` and `value` as text (or
null), or `key_b64`/`value_b64` for binary records (Avro); `partition` and `offset` are
optional. A line that is not a record becomes an error string naming the line and what
is wrong, so the command reports it and goes on with the next.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from typing import IO, Any

Record = tuple[str, bytes | None, bytes | None, int, int]


def read_records(lines: IO[str]) -> Iterator[tuple[int, Record | str]]:
    """(line number, input record), or an error string for a line that is not one."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield number, f"input line {number} is not JSON: {exc}"
            continue
        if not isinstance(item, dict) or not isinstance(item.get("topic"), str):
            yield number, f"input line {number}: expected an object with a string `topic`"
            continue
        fields = []
        for name in ("key", "value"):
            if f"{name}_b64" in item:  # a binary record (Avro): its bytes in base64
                if item.get(name) is not None:
                    yield number, (f"input line {number}: give `{name}` or `{name}_b64`, "
                                   "not both")
                    break
                data = decode_base64(item[f"{name}_b64"])
                if isinstance(data, str):
                    yield number, f"input line {number}: `{name}_b64` {data}"
                    break
                fields.append(data)
                continue
            text = item.get(name)
            if text is not None and not isinstance(text, str):
                yield number, (f"input line {number}: `{name}` must be a string (the raw "
                               "record) or null")
                break
            try:
                fields.append(None if text is None else text.encode("utf-8", "surrogateescape"))
            except UnicodeEncodeError as exc:  # a lone surrogate no raw byte escapes to
                yield number, f"input line {number}: `{name}` cannot be encoded: {exc.reason}"
                break
        else:
            partition = item.get("partition", 0)
            offset = item.get("offset", number - 1)
            yield number, (item["topic"], fields[0], fields[1],
                           partition if isinstance(partition, int) else 0,
                           offset if isinstance(offset, int) else number - 1)


def decode_base64(text: Any) -> bytes | str | None:
    """`text` decoded from base64 (None stays None), or what is wrong with it."""
    if text is None:
        return None
    if not isinstance(text, str):
        return "must be a base64 string or null"
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        return f"is not base64: {exc}"
