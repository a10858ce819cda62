"""`python -m bench planning`: the worst-case cost of planning one record.

`batch.plan_record` (size check, decode, plan — what the worker does per record) timed
on the recorded posts insert, on the largest records the caps accept, and on hostile
records of growing size: a key column declared a decimal (Connect `Decimal`, or
`VariableScaleDecimal`) holding megabytes of digits, a key column holding megabytes of
text or a huge JSON array, a tombstone whose key schema does the same, a tombstone key
of thousands of columns, and an embedded schema that grows and differs from the
topic's (so that it is parsed each time). Each record starts as the
line the real connector emitted (`tests/fixtures/debezium/schemas_true.jsonl`), changed
programmatically, and is planned by a decoder that has already seen the topic's
recorded schema, as a worker would.

Every case runs in a child process of its own, importing the code measured (the working
tree, or `--worker-ref REF` and the working tree side by side: before and after); a
measurement that outlasts `--limit` seconds kills the child and is reported as over
the limit, and the case's larger sizes are not tried. Nothing here needs the stack.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.env import ROOT, Code
from bench.report import machine, table, write_result

FIXTURE = ROOT / "tests" / "fixtures" / "debezium" / "schemas_true.jsonl"
POSTS_INSERT = 5  # the fixture line of the posts insert (id 19, a 20,000-character body)
MAX_EVENT_BYTES = 8 * 1024 * 1024  # the default max_event_bytes: the largest record planned
HEADROOM = 64 * 1024  # what the rest of a record holds beside the grown field
SIZES = (64 * 1024, 256 * 1024, 1024 * 1024, MAX_EVENT_BYTES - HEADROOM)  # grown bytes
DECIMAL = "org.apache.kafka.connect.data.Decimal"
VARIABLE_DECIMAL = "io.debezium.data.VariableScaleDecimal"
ACCEPTED_DECIMAL_CHARS = 532  # 399 bytes, ~960 digits: `post:<digits>` under a 1 KiB key
ACCEPTED_KEY_CHARS = 1000  # `post:<text>` stays under a 1 KiB key

Record = tuple[str, bytes | None, bytes | None]  # topic, key, value


def _recorded() -> dict[str, Any]:
    line = FIXTURE.read_text(encoding="utf-8").splitlines()[POSTS_INSERT - 1]
    item: dict[str, Any] = json.loads(line)
    return item


def _digits(size: int) -> str:
    """A positive two's-complement integer, base64 (as Debezium sends it), `size`
    characters long: `size` * 3 / 4 bytes."""
    return base64.b64encode(b"\x01" + os.urandom(max(0, size * 3 // 4 - 1))).decode()


def _typed(schema: dict[str, Any], column: str, name: str | None,
           parameters: dict[str, str] | None = None) -> None:
    """Declare `column` of the row images with logical type `name`."""
    for image in schema["fields"]:
        if image["field"] in ("before", "after"):
            for field in image["fields"]:
                if field["field"] == column:
                    field["type"] = "bytes" if name == DECIMAL else "string"
                    if name is None:
                        field.pop("name", None)
                    else:
                        field["name"] = name
                    if parameters is not None:
                        field["parameters"] = parameters


def _value(change: Callable[[dict[str, Any]], None]) -> Record:
    item = _recorded()
    value = json.loads(item["value"])
    change(value)
    return item["topic"], item["key"].encode(), json.dumps(value).encode()


def recorded(_size: int) -> Record:
    item = _recorded()
    return item["topic"], item["key"].encode(), item["value"].encode()


def large_body(size: int) -> Record:
    """A body (no key reads it) of `size` characters: accepted whatever the caps."""
    def change(value: dict[str, Any]) -> None:
        value["payload"]["after"]["body"] = "x" * size
    return _value(change)


def decimal_key(size: int) -> Record:
    """`id` declared a Connect Decimal, `size` characters of base64."""
    def change(value: dict[str, Any]) -> None:
        _typed(value["schema"], "id", DECIMAL, {"scale": "0"})
        value["payload"]["after"]["id"] = _digits(size)
    return _value(change)


def variable_decimal_key(size: int) -> Record:
    """`id` declared a VariableScaleDecimal, `size` characters of base64."""
    def change(value: dict[str, Any]) -> None:
        _typed(value["schema"], "id", VARIABLE_DECIMAL)
        value["payload"]["after"]["id"] = {"scale": 0, "value": _digits(size)}
    return _value(change)


def string_key(size: int) -> Record:
    """`id` declared a string, `size` characters long."""
    def change(value: dict[str, Any]) -> None:
        _typed(value["schema"], "id", None)
        value["payload"]["after"]["id"] = "7" * size
    return _value(change)


def wide_schema(size: int) -> Record:
    """An embedded schema grown by `size` bytes of extra columns: differs from the
    topic's, so it is parsed for this record."""
    def change(value: dict[str, Any]) -> None:
        extra: list[dict[str, Any]] = []
        grown = 0
        while grown < size:  # the extra columns are in both images
            extra.append({"type": "string", "optional": True, "field": f"c{len(extra)}",
                          "name": DECIMAL, "parameters": {"scale": "2"}})
            grown += 2 * (len(json.dumps(extra[-1])) + 2)
        for image in value["schema"]["fields"]:
            if image["field"] in ("before", "after"):
                image["fields"] = image["fields"] + extra
    return _value(change)


def nested_key(size: int) -> Record:
    """`id` a JSON array of `size` / 5 one-character strings: no key, but built whole."""
    def change(value: dict[str, Any]) -> None:
        value["payload"]["after"]["id"] = ["x"] * (size // 5)
    return _value(change)


def wide_key(size: int) -> Record:
    """A tombstone whose key (schema and payload) holds `size` bytes of extra columns."""
    item = _recorded()
    key = json.loads(item["key"])
    grown = 0
    while grown < size:
        column = f"c{len(key['payload'])}"
        field = {"type": "string", "optional": False, "field": column}
        key["schema"]["fields"].append(field)
        key["payload"][column] = "x"
        grown += len(json.dumps(field)) + len(column) + 11
    return item["topic"], json.dumps(key).encode(), None


def tombstone_decimal_key(size: int) -> Record:
    """A tombstone whose key schema declares `id` a Decimal, `size` characters of base64."""
    item = _recorded()
    key = json.loads(item["key"])
    key["schema"]["fields"][0].update(type="bytes", name=DECIMAL, parameters={"scale": "0"})
    key["payload"]["id"] = _digits(size)
    return item["topic"], json.dumps(key).encode(), None


def largest_accepted(_size: int) -> Record:
    """A record of max_event_bytes whose key columns are as large as the caps accept:
    `id` a decimal of ACCEPTED_DECIMAL_CHARS, the body filling the rest."""
    def change(value: dict[str, Any]) -> None:
        _typed(value["schema"], "id", DECIMAL, {"scale": "0"})
        after = value["payload"]["after"]
        after["id"] = _digits(ACCEPTED_DECIMAL_CHARS)
        after["body"] = ""
        after["body"] = "x" * (MAX_EVENT_BYTES - len(json.dumps(value)) - 1024)
    return _value(change)


def largest_accepted_string(_size: int) -> Record:
    """max_event_bytes, `id` a string of ACCEPTED_KEY_CHARS, the body filling the rest."""
    def change(value: dict[str, Any]) -> None:
        _typed(value["schema"], "id", None)
        after = value["payload"]["after"]
        after["id"] = "7" * ACCEPTED_KEY_CHARS
        after["body"] = ""
        after["body"] = "x" * (MAX_EVENT_BYTES - len(json.dumps(value)) - 1024)
    return _value(change)


def largest_accepted_schema(_size: int) -> Record:
    """An embedded schema just under the schema cap (1 MiB), differing from the topic's."""
    return wide_schema(1_000_000)


def largest_accepted_key(_size: int) -> Record:
    """A tombstone whose key is just under the record-key cap (256 KiB)."""
    return wide_key(250_000)


@dataclass(frozen=True)
class Case:
    build: Callable[[int], Record]
    sizes: tuple[int, ...]  # grown bytes; (0,) for a record of fixed size


CASES = {
    "recorded": Case(recorded, (0,)),
    "largest_accepted": Case(largest_accepted, (0,)),
    "largest_accepted_string": Case(largest_accepted_string, (0,)),
    "largest_accepted_schema": Case(largest_accepted_schema, (0,)),
    "largest_accepted_key": Case(largest_accepted_key, (0,)),
    "large_body": Case(large_body, SIZES),
    "decimal_key": Case(decimal_key, SIZES),
    "variable_decimal_key": Case(variable_decimal_key, SIZES),
    "string_key": Case(string_key, SIZES),
    "tombstone_decimal_key": Case(tombstone_decimal_key, SIZES),
    "wide_schema": Case(wide_schema, SIZES),
    "wide_key": Case(wide_key, SIZES),
    "nested_key": Case(nested_key, SIZES),
}


# --------------------------------------------------------------------------- child


def child(case: str, repeat: int) -> None:
    """Measure one case at each of its sizes with the code on sys.path; a JSON line per
    size on stdout."""
    from connectors.debezium.decode import Decoder
    from reconciler.pipeline.batch import plan_record
    from reconciler.pipeline.planner import Planner
    from reconciler.settings import load_settings
    from shard_map import load_shard_map

    settings = load_settings(Path.cwd() / "config" / "local" / "reconciler.yaml")
    assert settings.shard_map is not None
    planner = Planner.for_settings(settings, load_shard_map(settings.shard_map))
    warm = recorded(0)
    spec = CASES[case]
    for size in spec.sizes:
        topic, key, value = spec.build(size)
        size_bytes = len(key or b"") + len(value or b"")
        print(json.dumps({"size": size, "bytes": size_bytes}), flush=True)  # built
        times, outcome = [], ""
        for _ in range(repeat):
            decoder = Decoder(columns=planner.columns)
            decoder.decode(warm[0], 0, 0, warm[1], warm[2])  # the topic's schema is known
            started = time.perf_counter()
            result = plan_record(decoder, planner, MAX_EVENT_BYTES, topic, 0, 1, key, value)
            times.append(time.perf_counter() - started)
            outcome = _outcome(result)
            if times[-1] > 1.0:
                break  # one slow run says enough
        print(json.dumps({"size": size, "bytes": size_bytes, "outcome": outcome,
                          "min_ms": min(times) * 1000,
                          "median_ms": statistics.median(times) * 1000, "runs": len(times)}),
              flush=True)


def _outcome(result: Any) -> str:
    reason = getattr(result, "reason", None)
    if reason is not None:
        return f"dead letter: {reason}"
    actions = getattr(result, "actions", ())
    longest = max((len(action.key) for action in actions), default=0)
    return f"{len(actions)} actions, key <= {longest} chars"


# --------------------------------------------------------------------------- parent


def measure(code: Code, case: str, *, repeat: int, limit: float) -> list[dict[str, Any]]:
    """One case's figures with `code`; a size over `limit` seconds ends the case."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.planning", "--child", case, "--repeat", str(repeat)],
        cwd=code.directory, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(code.directory)})
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    out: list[dict[str, Any]] = []
    sizes = iter(CASES[case].sizes)
    for size in sizes:
        built = lines.get(timeout=120)  # building an 8 MiB record takes a second or two
        if built is None:
            out.append({"size": size, "outcome": f"child exited {process.wait()}"})
            break
        try:
            line = lines.get(timeout=limit + repeat + 5)  # runs past 1 s: one
        except queue.Empty:
            line = None
            process.kill()
        if line is None:
            out.append({**json.loads(built), "outcome": f"over {limit:.0f} s: stopped"})
            out.extend({"size": rest, "outcome": "not tried"} for rest in sizes)
            break
        figures: dict[str, Any] = json.loads(line)
        out.append(figures)
        if figures["min_ms"] > limit * 1000:
            process.kill()
            out.extend({"size": rest, "outcome": "not tried"} for rest in sizes)
            break
    process.wait()
    return out


def _rows(results: dict[str, dict[str, list[dict[str, Any]]]]) -> Iterator[list[Any]]:
    labels = list(results)
    for case in CASES:
        columns = [results[label][case] for label in labels]
        for index in range(max(len(c) for c in columns)):
            items = [figures[index] if index < len(figures) else {} for figures in columns]
            row: list[Any] = [case, _size(next((i["bytes"] for i in items if "bytes" in i),
                                               None))]
            for item in items:
                row += [f"{item['min_ms']:.2f}" if "min_ms" in item else "-",
                        item.get("outcome", "")]
            yield row


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KiB"


def run_planning(*, worker_ref: str | None, repeat: int, limit: float, out_dir: Path,
                 cases: list[str] | None = None) -> dict[str, Any]:
    codes = {"after (working tree)": Code.resolve(None)}
    if worker_ref is not None:
        codes = {f"before ({worker_ref})": Code.resolve(worker_ref), **codes}
    chosen = cases or list(CASES)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for label, code in codes.items():
        results[label] = {}
        for case in CASES:
            figures = (measure(code, case, repeat=repeat, limit=limit) if case in chosen
                       else [])
            results[label][case] = figures
            for item in figures:
                print(f"  {label}: {case} {_size(item.get('bytes'))}: "
                      f"{item.get('min_ms', float('nan')):.2f} ms, {item['outcome']}",
                      file=sys.stderr, flush=True)
    headers = ["case", "record"]
    for label in results:
        headers += [f"{label} ms", "outcome"]
    print(table(headers, list(_rows(results))))
    worst = {label: max((item.get("min_ms", float("inf")) for figures in per.values()
                         for item in figures if item.get("outcome") != "not tried"),
                        default=0.0)
             for label, per in results.items()}
    for label, ms in worst.items():
        print(f"worst case, {label}: " + (f"{ms:.2f} ms" if ms != float("inf")
                                          else f"over {limit:.0f} s (stopped)"))
    data = {"machine": machine(), "repeat": repeat, "limit_seconds": limit,
            "codes": {label: code.as_json() for label, code in codes.items()},
            "results": results}
    path = write_result("planning", data, out_dir)
    print(f"results: {path}")
    return data


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[4]))
    else:
        sys.exit("run it as `python -m bench planning` (see --help)")
