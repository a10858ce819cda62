"""What an audit found: counts per table, template, shard and state; as JSON, as the
text `reconciler audit` prints, and as Prometheus gauges (for the node-exporter
textfile collector or a Pushgateway).

States (see `reconciler.ops.audit`): fresh, stale, orphan, ahead, fence, unparsed. Stale,
orphan and ahead entries are findings: they make the audit fail and `--repair` fixes
them. An entry *ahead* of Postgres means the row's versions went back (a delete and
re-insert restarted the version column) or the DSN is a lagging replica; either way
the reconciler would take it for fresh (SPEC §2, "Versions never go back").

With several sources, a key whose row exists in more than one source database is
*ambiguous*: a finding (the rows share one cache key, so no version says which row is
cached), removed by ``--repair``. The state, and the ``sources`` audited, appear in the
report only when it covered several sources (a single source's report is unchanged).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from reconciler.ops.texttable import text_table

FRESH, STALE, ORPHAN, AHEAD, FENCE, UNPARSED = (
    "fresh", "stale", "orphan", "ahead", "fence", "unparsed")
AMBIGUOUS = "ambiguous"  # a row under the key in more than one source (several sources only)
STATES = (FRESH, STALE, ORPHAN, AHEAD, FENCE, UNPARSED)  # every state, in report order
PROBLEMS = (STALE, ORPHAN, AHEAD, AMBIGUOUS)  # what makes the audit fail, --repair fixes
LABELS = {STALE: "stale", ORPHAN: "orphaned", AMBIGUOUS: "ambiguous"}  # adjectives
# What each finding means (and for `ahead`, what to do), for the report's closing lines.
ADVICE = {
    STALE: "data older than its row",
    ORPHAN: "data of rows that no longer exist",
    AHEAD: "data newer than its row: the row's versions went back (a delete and re-insert "
           "restarted the version column: `reconciler doctor` prints the fix, a sequence) "
           "or postgres.dsn is a lagging replica (point it at the primary); the reconciler "
           "takes such an entry for fresh and never replaces it",
    AMBIGUOUS: "keys naming a row in more than one source: those rows share one cache key "
               "and their versions come from different databases, so no audit (and no "
               "reconciler) can tell which is cached; make the key template tell the "
               "sources apart, or the primary keys unique across them",
}


@dataclass
class Finding:
    """The entries found under one template on one shard."""

    table: str
    template: str
    shard: str
    counts: Counter[str] = field(default_factory=Counter)
    repaired: Counter[str] = field(default_factory=Counter)
    # Candidates to repair: key → (state, the row's version or None for an orphan).
    problems: dict[str, tuple[str, int | None]] = field(default_factory=dict)


@dataclass
class AuditReport:
    findings: list[Finding] = field(default_factory=list)
    not_auditable: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    sample: int | None = None
    repair: bool = False
    sources: list[str] = field(default_factory=list)  # the source databases audited
    started: float = field(default_factory=time.time)
    elapsed: float = 0.0

    def totals(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for finding in self.findings:
            out.setdefault(finding.table, Counter()).update(finding.counts)
        return out

    @property
    def states(self) -> tuple[str, ...]:
        """The states reported: `STATES`, and `AMBIGUOUS` with several sources."""
        return (*STATES, AMBIGUOUS) if len(self.sources) > 1 else STATES

    @property
    def problems(self) -> tuple[str, ...]:
        return PROBLEMS if len(self.sources) > 1 else PROBLEMS[:-1]

    def remaining(self) -> Counter[str]:
        """Findings (stale, orphan, ahead, ambiguous entries) found and not repaired."""
        left: Counter[str] = Counter()
        for finding in self.findings:
            for state in self.problems:
                left[state] += finding.counts[state] - finding.repaired[state]
        return left

    def as_json(self) -> dict[str, Any]:
        states, problems = self.states, self.problems
        tables: dict[str, Any] = {}
        for finding in self.findings:
            entry = tables.setdefault(finding.table, {
                **dict.fromkeys(states, 0), "repaired": dict.fromkeys(problems, 0),
                "templates": [], "shards": {}})
            for state in states:
                entry[state] += finding.counts[state]
            for state in problems:
                entry["repaired"][state] += finding.repaired[state]
            if finding.template not in entry["templates"]:
                entry["templates"].append(finding.template)
            shard = entry["shards"].setdefault(finding.shard, dict.fromkeys(states, 0))
            for state in states:
                shard[state] += finding.counts[state]
        totals = dict.fromkeys(states, 0)
        for entry in tables.values():
            for state in states:
                totals[state] += entry[state]
        return {"tables": tables, "totals": totals, "not_auditable": self.not_auditable,
                "remaining": dict(self.remaining()), "sample": self.sample,
                "repair": self.repair, "started_at": round(self.started, 3),
                "elapsed_seconds": round(self.elapsed, 3),
                **({"sources": self.sources} if len(self.sources) > 1 else {})}

    def text(self) -> str:
        """The summary `reconciler audit` prints: entries per table and shard by state,
        what was repaired, what was not auditable, the totals."""
        data = self.as_json()
        states = self.states
        rows = []
        for table, entry in data["tables"].items():
            for shard, counts in sorted(entry["shards"].items()):
                rows.append((table, shard, *(counts[state] for state in states)))
        lines = [text_table(("table", "shard", *states), rows) if rows else
                 "no cache entries found for the audited templates"]
        for table, entry in data["tables"].items():
            repaired = entry["repaired"]
            if any(repaired.values()):
                lines.append(f"{table}: repaired {repaired['stale']} stale, "
                             f"{repaired['orphan']} orphaned and {repaired['ahead']} ahead "
                             "entries" + (f", {repaired[AMBIGUOUS]} ambiguous"
                                          if repaired.get(AMBIGUOUS) else ""))
        for table, skipped in data["not_auditable"].items():
            for item in skipped:
                lines.append(f"{table}: {item['template']} not audited: {item['reason']}")
        totals = data["totals"]
        lines.append(f"total: {totals['fresh']} fresh, {totals['stale']} stale, "
                     f"{totals['orphan']} orphan, {totals['ahead']} ahead, {totals['fence']} "
                     f"fences, {totals['unparsed']} unparsed"
                     + (f", {totals[AMBIGUOUS]} ambiguous" if AMBIGUOUS in totals else "")
                     + f" ({data['elapsed_seconds']:.1f}s"
                     + (f", sample of {data['sample']}" if data["sample"] else "") + ")"
                     + (f"; sources {', '.join(self.sources)}" if "sources" in data else ""))
        return "\n".join(lines)

    def registry(self) -> CollectorRegistry:
        """The result as Prometheus gauges (textfile collector, Pushgateway)."""
        registry = CollectorRegistry()
        entries = Gauge("reconciler_audit_entries",
                        "Cache entries found by the last audit, by table and state "
                        "(fresh, stale, orphan, ahead, fence, unparsed).",
                        ("table", "state"), registry=registry)
        repaired = Gauge("reconciler_audit_repaired_entries",
                         "Stale, orphan and ahead entries the last audit repaired "
                         "(--repair).",
                         ("table", "state"), registry=registry)
        for table, counts in self.totals().items():
            for state in self.states:
                entries.labels(table, state).set(counts[state])
        for finding in self.findings:
            for state in self.problems:
                repaired.labels(finding.table, state).inc(finding.repaired[state])
        Gauge("reconciler_audit_last_run_timestamp_seconds",
              "When the last audit finished (Unix time).",
              registry=registry).set(self.started + self.elapsed)
        return registry

    def verdict(self) -> list[str]:
        """What remains wrong, one line per kind of finding with what it means and what
        to do; empty when nothing does (the audit passes)."""
        left = self.remaining()
        then = "" if self.repair else "; run again with --repair to remove them"
        lines = []
        for state in self.problems:
            count = left[state]
            if count:
                entries = "entry" if count == 1 else "entries"
                what = (f"{count} {entries} ahead of Postgres" if state == AHEAD else
                        f"{count} {LABELS[state]} {entries}")
                lines.append(f"{what} ({ADVICE[state]}){then}")
        return lines
