"""What a replay did (or, with ``--dry-run``, would do), and the command to resume it.

``ReplayReport`` is printed as JSON (``--json``) or as text; ``resume_command`` is the
``reconciler replay`` that replays exactly what an interrupted run did not.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from reconciler.ops.replay.bounds import TP, format_offsets
from reconciler.ops.texttable import text_table
from reconciler.pipeline.batch import BatchResult


@dataclass
class ReplayReport:
    """What a replay did (or, with dry_run, would do)."""

    group: str
    dry_run: bool
    starts: dict[TP, int] = field(default_factory=dict)
    ends: dict[TP, int] = field(default_factory=dict)
    reached: dict[TP, int] = field(default_factory=dict)  # next offset per partition
    records: int = 0
    totals: BatchResult = field(default_factory=BatchResult)
    elapsed: float = 0.0  # seconds spent consuming and processing
    interrupted: bool = False
    error: str | None = None

    @property
    def total(self) -> int:
        return sum(self.ends[tp] - self.starts[tp] for tp in self.ends)

    def remaining(self) -> dict[TP, int]:
        """Where each unfinished partition should resume."""
        return {tp: self.reached[tp] for tp in self.ends if self.reached[tp] < self.ends[tp]}

    def add(self, result: BatchResult) -> None:
        self.totals.merge(result)

    def as_json(self) -> dict[str, Any]:
        t = self.totals
        return {
            "group": self.group, "dry_run": self.dry_run, "records": self.records,
            "total": self.total, "elapsed_seconds": round(self.elapsed, 3),
            "rate": round(self.records / self.elapsed, 1) if self.elapsed else None,
            "interrupted": self.interrupted, "error": self.error,
            "partitions": [{"topic": tp[0], "partition": tp[1], "from": self.starts[tp],
                            "to": self.ends[tp], "reached": self.reached[tp]}
                           for tp in sorted(self.ends)],
            "events": [{"table": table, "op": op, "count": n}
                       for (table, op), n in sorted(t.events.items())],
            "actions": [{"table": table, "shard": shard, "kind": kind, "count": n}
                        for (table, shard, kind), n in sorted(t.actions.items())],
            "invalidations": [{"shard": shard, "result": result, "count": n}
                              for (shard, result), n in sorted(t.invalidations.items())],
            # derived-key deletes not sent: a later delete of the key in the batch did it
            "coalesced": dict(sorted(t.coalesced.items())),
            "skipped": dict(sorted(t.skipped.items())),
            "dead_letters": dict(sorted(t.dead_letters.items())),
            "unresolved": [{"table": table, "template": template, "cause": cause, "count": n}
                           for (table, template, cause), n in sorted(t.unresolved.items())],
        }

    def text(self) -> str:
        """The summary `reconciler replay` prints: records and rate, actions by table,
        shard and kind, invalidation results, what was coalesced, skipped, dead-lettered
        or left unresolved."""
        data = self.as_json()
        rate = f", {data['rate']:.0f}/s" if data["rate"] else ""
        state = "stopped" if self.interrupted else "done"
        kind = "dry run" if self.dry_run else "replay"
        lines = [f"{kind} {state}: {self.records} of {self.total} records in "
                 f"{self.elapsed:.1f}s{rate} (group {self.group})"]
        rows = [(a["table"], a["shard"], a["kind"], a["count"]) for a in data["actions"]]
        if rows:
            lines.append(text_table(("table", "shard", "action", "count"), rows))
        if data["invalidations"]:
            lines.append(text_table(("shard", "result", "count"),
                                    [(i["shard"], i["result"], i["count"])
                                     for i in data["invalidations"]]))
        if data["coalesced"]:
            lines.append("coalesced deletes (a later delete of the same derived key in the "
                         "batch did it): " + ", ".join(f"{shard} {n}" for shard, n
                                                       in data["coalesced"].items()))
        for name in ("skipped", "dead_letters"):
            if data[name]:
                lines.append(f"{name.replace('_', ' ')}: " + ", ".join(
                    f"{key} {count}" for key, count in data[name].items()))
        if data["unresolved"]:
            lines.append("unresolved key templates: " + ", ".join(
                f"{u['table']} {u['template']} ({u['cause']}) {u['count']}"
                for u in data["unresolved"]))
        return "\n".join(lines)


def resume_command(config: str | None, report: ReplayReport, *, rate: float | None,
                   dry_run: bool) -> str:
    """The command that replays exactly what this (interrupted) run did not."""
    remaining = report.remaining()
    argv = ["reconciler", "replay"]
    if config:
        argv += ["-c", config]
    argv += ["--from", format_offsets(remaining),
             "--to", format_offsets({tp: report.ends[tp] for tp in remaining}),
             "--group", report.group]
    if rate:
        argv += ["--rate", f"{rate:g}"]
    if dry_run:
        argv.append("--dry-run")
    return shlex.join(argv)
