"""The audit report's verdict: which findings fail the audit and what it tells the user."""

from __future__ import annotations

from collections import Counter

from reconciler.ops.audit.findings import AHEAD, FRESH, ORPHAN, STALE, AuditReport, Finding


def report(counts: dict[str, int], *, repair: bool = False,
           repaired: dict[str, int] | None = None) -> AuditReport:
    finding = Finding("public.posts", "post:{id}", "a", Counter(counts),
                      Counter(repaired or {}))
    return AuditReport(findings=[finding], repair=repair)


def test_fresh_entries_alone_pass() -> None:
    assert report({FRESH: 10}).verdict() == []


def test_an_entry_ahead_of_postgres_fails_the_audit_saying_why_and_what_to_do() -> None:
    found = report({FRESH: 10, AHEAD: 1})
    assert found.remaining()[AHEAD] == 1
    [line] = found.verdict()
    assert line.startswith("1 entry ahead of Postgres (data newer than its row: the row's "
                           "versions went back")
    assert "lagging replica" in line and "reconciler doctor" in line
    assert line.endswith("; run again with --repair to remove them")


def test_every_kind_of_finding_has_its_line_and_a_repair_clears_them() -> None:
    found = report({STALE: 3, ORPHAN: 2, AHEAD: 4})
    assert [line.split(" (")[0] for line in found.verdict()] == [
        "3 stale entries", "2 orphaned entries", "4 entries ahead of Postgres"]
    assert report({STALE: 3, AHEAD: 4}, repair=True,
                  repaired={STALE: 3, AHEAD: 4}).verdict() == []
    assert "--repair" not in report({AHEAD: 1}, repair=True).verdict()[0]
