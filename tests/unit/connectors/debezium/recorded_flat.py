"""The recorded flattened events of tests/fixtures/debezium/flattened: the rows of
Debezium's ExtractNewRecordState SMT from the real connector, and the twin the same run
wrote as change-event envelopes.

- `REWRITE` (``rewrite.jsonl``): deletes rewritten as ``__deleted: "true"`` rows, no
  tombstones, ``__op``, ``__table`` and ``__source_ts_ms`` on every row; JSON with its
  schema (schemas.enable=true);
- `TOMBSTONES` (``tombstones.jsonl``): the SMT's defaults: a delete is only the SMT's
  tombstone (the JSON text ``null``), no field added; JSON without schemas;
- `TWIN` (``twin.jsonl``): the envelope, the same lines as ``schemas_true.jsonl``, so
  `recorded`'s line numbers name its workload steps.

``lines.json`` pairs every flattened line with the twin line it records (`twin_line`,
`flat_line`); the SMT drops TRUNCATE, and each mode drops either the delete or its
tombstone, so some twin lines have none.
"""

from __future__ import annotations

import functools
import json

from connectors.debezium import Decoder, Event
from connectors.debezium.flattened import FlattenedDecoder
from tests.unit.connectors.debezium.recorded import FIXTURES, Recorded

FLAT_DIR = FIXTURES / "flattened"
REWRITE, TOMBSTONES, TWIN = "rewrite.jsonl", "tombstones.jsonl", "twin.jsonl"
FLAT_FILES = (REWRITE, TOMBSTONES)
PREFIXES = {REWRITE: "capflat", TOMBSTONES: "capups", TWIN: "capftwin"}


@functools.cache
def records(file: str) -> tuple[Recorded, ...]:
    out = []
    for number, text in enumerate((FLAT_DIR / file).read_text().splitlines(), start=1):
        item = json.loads(text)
        out.append(Recorded(file=file, line=number, topic=item["topic"],
                            partition=item["partition"], offset=item["offset"],
                            key=item["key"], value=item["value"],
                            headers=tuple((name, value) for name, value in item["headers"])))
    return tuple(out)


def record(file: str, number: int) -> Recorded:
    return records(file)[number - 1]


@functools.cache
def _pairs() -> dict[str, list[int]]:
    pairs: dict[str, list[int]] = json.loads((FLAT_DIR / "lines.json").read_text())
    return pairs


def twin_line(file: str, number: int) -> int:
    """The twin line that flattened line `number` of `file` records."""
    return _pairs()[file][number - 1]


def flat_line(file: str, twin: int) -> int | None:
    """The line of `file` recording twin line `twin`, or None (dropped by the SMT)."""
    try:
        return _pairs()[file].index(twin) + 1
    except ValueError:
        return None


def flat_decoder(columns: frozenset[str] | None = None) -> FlattenedDecoder:
    """Every topic flattened, as `kafka.format: flattened` reads them."""
    return FlattenedDecoder(flattened_topics=lambda topic: True, columns=columns)


def decode(file: str, number: int, columns: frozenset[str] | None = None) -> Event:
    rec = record(file, number)
    decoder = Decoder(columns=columns) if file == TWIN else flat_decoder(columns)
    return rec.decode(decoder)
