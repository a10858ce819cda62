"""What an audit found: counts per table, template, shard and state; as JSON and as
Prometheus gauges (for the node-exporter textfile collector or a Pushgateway).

States (see `reconciler.audit`): fresh, stale, orphan, ahead, fence, unparsed.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

FRESH, STALE, ORPHAN, AHEAD, FENCE, UNPARSED = (
    "fresh", "stale", "orphan", "ahead", "fence", "unparsed")
STATES = (FRESH, STALE, ORPHAN, AHEAD, FENCE, UNPARSED)  # every state, in report order
PROBLEMS = (STALE, ORPHAN)  # what makes the audit fail, and what --repair fixes


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
    started: float = field(default_factory=time.time)
    elapsed: float = 0.0

    def totals(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for finding in self.findings:
            out.setdefault(finding.table, Counter()).update(finding.counts)
        return out

    def remaining(self) -> Counter[str]:
        """Stale and orphan entries found and not repaired."""
        left: Counter[str] = Counter()
        for finding in self.findings:
            for state in PROBLEMS:
                left[state] += finding.counts[state] - finding.repaired[state]
        return left

    def as_json(self) -> dict[str, Any]:
        tables: dict[str, Any] = {}
        for finding in self.findings:
            entry = tables.setdefault(finding.table, {
                **dict.fromkeys(STATES, 0), "repaired": dict.fromkeys(PROBLEMS, 0),
                "templates": [], "shards": {}})
            for state in STATES:
                entry[state] += finding.counts[state]
            for state in PROBLEMS:
                entry["repaired"][state] += finding.repaired[state]
            if finding.template not in entry["templates"]:
                entry["templates"].append(finding.template)
            shard = entry["shards"].setdefault(finding.shard, dict.fromkeys(STATES, 0))
            for state in STATES:
                shard[state] += finding.counts[state]
        totals = dict.fromkeys(STATES, 0)
        for entry in tables.values():
            for state in STATES:
                totals[state] += entry[state]
        return {"tables": tables, "totals": totals, "not_auditable": self.not_auditable,
                "remaining": dict(self.remaining()), "sample": self.sample,
                "repair": self.repair, "started_at": round(self.started, 3),
                "elapsed_seconds": round(self.elapsed, 3)}

    def registry(self) -> CollectorRegistry:
        """The result as Prometheus gauges (textfile collector, Pushgateway)."""
        registry = CollectorRegistry()
        entries = Gauge("reconciler_audit_entries",
                        "Cache entries found by the last audit, by table and state "
                        "(fresh, stale, orphan, ahead, fence, unparsed).",
                        ("table", "state"), registry=registry)
        repaired = Gauge("reconciler_audit_repaired_entries",
                         "Stale and orphan entries the last audit repaired (--repair).",
                         ("table", "state"), registry=registry)
        for table, counts in self.totals().items():
            for state in STATES:
                entries.labels(table, state).set(counts[state])
        for finding in self.findings:
            for state in PROBLEMS:
                repaired.labels(finding.table, state).inc(finding.repaired[state])
        Gauge("reconciler_audit_last_run_timestamp_seconds",
              "When the last audit finished (Unix time).",
              registry=registry).set(self.started + self.elapsed)
        return registry
