"""`python -m tests.faults.report FIGURES.jsonl`: the fault suite's figures, summed per
scenario over every run, as Markdown tables (what docs/reliability.md quotes): the
scenarios, then the negative controls — each broken mode, the scenario it ran, and
what the oracle said."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

COLUMNS = ("runs", "passed", "repetitions", "faults", "changes", "records", "checked",
           "stale", "dlq expected", "dlq found", "unseen", "counted", "to count", "seconds")


def summarise(lines: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(COLUMNS, 0))
    for data in lines:
        if data.get("extra", {}).get("negative_control"):
            continue
        row = table[data["scenario"]]
        row["runs"] += 1
        row["passed"] += data.get("outcome") == "passed"
        row["repetitions"] += data.get("repeat", 1)
        row["faults"] += data["faults"]
        row["changes"] += data["changes"]
        row["records"] += data["records"]
        row["checked"] += data["entries_checked"]
        row["stale"] += data["stale"]
        row["dlq expected"] += data["dead_letters_expected"]
        row["dlq found"] += data["dead_letters_found"]
        row["unseen"] += data.get("unseen", 0)
        row["counted"] += data.get("counted", 0)
        row["to count"] += data.get("to_count", 0)
        row["seconds"] += data["seconds"]
    return table


def markdown(table: dict[str, dict[str, float]]) -> str:
    out = ["| scenario | " + " | ".join(COLUMNS) + " |",
           "|---|" + "---:|" * len(COLUMNS)]
    totals = dict.fromkeys(COLUMNS, 0.0)
    for scenario, row in table.items():
        out.append(f"| {scenario.removeprefix('test_')} | "
                   + " | ".join(f"{row[c]:g}" for c in COLUMNS) + " |")
        for column in COLUMNS:
            totals[column] += row[column]
    out.append("| **total** | " + " | ".join(f"{totals[c]:g}" for c in COLUMNS) + " |")
    return "\n".join(out)


def negative_controls(lines: list[dict[str, Any]]) -> str:
    """One row per negative-control run: the mode, the test, whether the oracle caught
    it (the test passed), the stale entries, and the first one the oracle named."""
    rows = [data for data in lines if data.get("extra", {}).get("negative_control")]
    if not rows:
        return ""
    out = ["| broken mode | test | caught | stale entries | the oracle said, first |",
           "|---|---|---|---:|---|"]
    for data in rows:
        said = data.get("extra", {}).get("oracle_said") or [""]
        first = said[1] if len(said) > 1 else said[0]
        out.append(f"| {data['extra'].get('negative_control', '?')} | "
                   f"{data['scenario'].removeprefix('test_')} | "
                   f"{'yes' if data.get('outcome') == 'passed' else 'NO'} | {data['stale']} | "
                   f"{first.replace('|', '/')} |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[0])
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        print(f"no figures in {path}", file=sys.stderr)
        return 1
    print(markdown(summarise(lines)))
    controls = negative_controls(lines)
    if controls:
        print("\nNegative controls:\n")
        print(controls)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
