"""The two ends of a replay's range: ``--from`` and ``--to``.

``earliest`` (each partition's log start), ``now`` (each partition's end offset when
the replay starts), an ISO 8601 time (UTC unless an offset is given; looked up per
partition by record timestamp), or explicit ``topic:partition:offset`` pairs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

TP = tuple[str, int]
EARLIEST = "earliest"  # --from: each partition's log start
NOW = "now"  # --to: each partition's end offset when the replay starts
PAIR = re.compile(r"(?P<topic>[A-Za-z0-9._-]+):(?P<partition>[0-9]+):(?P<offset>[0-9]+)")
TIME_LIKE = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d")  # a date and time, maybe not valid


@dataclass(frozen=True, slots=True)
class Bound:
    """One end of the range: `earliest`/`now`, a time (epoch ms), or offsets."""

    kind: str  # EARLIEST, NOW, "time" or "offsets"
    time_ms: int | None = None
    offsets: Mapping[TP, int] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.kind == "time":
            assert self.time_ms is not None
            return datetime.fromtimestamp(self.time_ms / 1000, UTC).isoformat()
        if self.kind == "offsets":
            return format_offsets(self.offsets)
        return self.kind


def parse_bound(text: str, *, start: bool) -> Bound:
    """`--from` (start=True) or `--to`; ValueError naming the option and what it accepts.

    A time without an offset is UTC (never the machine's local time)."""
    option = "--from" if start else "--to"
    text = text.strip()
    word = EARLIEST if start else NOW
    if text == word:
        return Bound(word)
    try:  # a time first: "2025-06-01T12:00:00" would also read as topic:partition:offset
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        if TIME_LIKE.match(text):  # "2025-06-31T12:00:00" is a bad time, not a topic
            raise ValueError(f"{option} {text!r}: not a valid ISO 8601 time ({exc})") from None
        return Bound("offsets", offsets=_parse_pairs(text, option, word))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return Bound("time", time_ms=int(moment.timestamp() * 1000))


def _parse_pairs(text: str, option: str, word: str) -> dict[TP, int]:
    """`topic:partition:offset[,…]` (commas or spaces between pairs)."""
    items = [item for item in re.split(r"[,\s]+", text) if item]
    matches = [PAIR.fullmatch(item) for item in items]
    if not items or None in matches:
        raise ValueError(
            f"{option} {text!r}: expected {word}, an ISO 8601 time (e.g. "
            "2025-06-01T12:00:00Z; UTC when no offset is given) or "
            "topic:partition:offset[,…]")
    offsets: dict[TP, int] = {}
    for m in matches:
        assert m is not None
        tp, offset = (m["topic"], int(m["partition"])), int(m["offset"])
        if offsets.setdefault(tp, offset) != offset:
            raise ValueError(f"{option} {text!r}: {tp[0]}:{tp[1]} is given two offsets "
                             f"({offsets[tp]} and {offset})")
    return offsets


def format_offsets(offsets: Mapping[TP, int]) -> str:
    return ",".join(f"{topic}:{partition}:{offset}"
                    for (topic, partition), offset in sorted(offsets.items()))
