"""The dashboard and the alert rules, checked without a stack: the plain rules file is
generated from the chart's, promtool accepts both the rules and their unit tests,
every alert carries what an on-call engineer needs, every panel is templated by
namespace and job, and every metric named exists in the worker's bundle.

(tests/e2e/test_observability.py evaluates all of it against a real Prometheus.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from reconciler.observe.metrics import Metrics
from tests import monitoring

REQUIRED_ALERTS = {
    "ReconcilerLagGrowing", "ReconcilerEndToEndP99High", "ReconcilerDeadLetters",
    "ReconcilerAuditFoundStale", "ReconcilerDown", "ReconcilerShardUnreachable",
    "ReconcilerShardMapReloadFailed", "ReconcilerNotReady",
    # Silent trouble: nothing fails, the cache just stops being reconciled.
    "ReconcilerFreshnessStalled", "ReconcilerUnknownTableSkips", "ReconcilerAuditStale",
}
REQUIRED_ROWS = ["Throughput", "Invalidations", "Consumer lag", "End-to-end delay",
                 "Freshness", "Dead letters", "Batches", "Shard map", "shards"]
# Series that do not come from the worker's bundle.
EXTERNAL = {"up"}  # Prometheus' own
AUDIT = {"reconciler_audit_entries", "reconciler_audit_last_run_timestamp_seconds",
         "reconciler_audit_repaired_entries"}  # `reconciler audit` (textfile/Pushgateway)
RUNBOOK_BASE = ("https://github.com/cache-reconciler/cache-reconciler/blob/main/"
                "docs/observability.md#")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: `apt-get install -y prometheus` "
                    "(scripts/setup --tests does)", pytrace=False)
    return found


# --------------------------------------------------------------------------- rules


def test_the_plain_rules_file_is_generated_from_the_charts() -> None:
    wanted = monitoring.generator().render(monitoring.CHART_RULES.read_text())
    assert monitoring.PLAIN_RULES.read_text() == wanted, (
        "deploy/prometheus/reconciler.rules.yml is out of date: run "
        "`python deploy/prometheus/generate.py`")


def test_the_generator_refuses_helm_it_does_not_know() -> None:
    generator = monitoring.generator()
    rendered = generator.render(
        'groups:\n  - expr: x{ {{ include "cache-reconciler.metricsSelector" . }}, '
        'result="error" }\n    summary: "{{`{{ $labels.shard }}`}}"\n')
    assert 'x{job="cache-reconciler", result="error"}' in rendered
    assert '"{{ $labels.shard }}"' in rendered
    with pytest.raises(generator.RenderError, match="line 2"):
        generator.render("groups:\n  - expr: x{ namespace=\"{{ .Release.Namespace }}\" }\n")


def test_promtool_accepts_the_rules() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(monitoring.PLAIN_RULES)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(monitoring.alerts())} rules found" in out.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    out = subprocess.run([promtool(), "test", "rules", monitoring.RULES_TESTS.name],
                         capture_output=True, text=True, check=False,
                         cwd=monitoring.RULES_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    tested = set(re.findall(r"alertname: (\w+)", monitoring.RULES_TESTS.read_text()))
    assert {"ReconcilerShardUnreachable", "ReconcilerDeadLetters", "ReconcilerFreshnessStalled",
            "ReconcilerUnknownTableSkips", "ReconcilerAuditStale"} <= tested


def test_every_alert_says_what_happened_and_where_its_runbook_is() -> None:
    alerts = monitoring.alerts()
    assert {a.name for a in alerts} >= REQUIRED_ALERTS
    anchors = monitoring.github_anchors(monitoring.RUNBOOK.read_text())
    for alert in alerts:
        assert alert.labels.get("severity") in ("critical", "warning"), alert.name
        assert alert.annotations.get("summary") and alert.annotations.get("description")
        url = alert.annotations.get("runbook_url", "")
        assert url.startswith(RUNBOOK_BASE), f"{alert.name}: {url}"
        anchor = url.removeprefix(RUNBOOK_BASE)
        assert anchor == alert.name.lower() and anchor in anchors, (
            f"{alert.name}: docs/observability.md has no section #{anchor}")


def test_alerts_select_the_release_series() -> None:
    """The plain file selects job="cache-reconciler" (the chart: its own namespace and
    Service); only the audit's gauges, written by another job, are not filtered."""
    for alert in monitoring.alerts():
        for selector in monitoring.selectors(alert.expr):
            if monitoring.metric_name(selector) in AUDIT:
                continue
            assert monitoring.matchers(selector).get("job") == '="cache-reconciler"', (
                f"{alert.name}: {selector}")
    source = monitoring.CHART_RULES.read_text()
    body = source[source.index("groups:"):]
    selected = [s for a in monitoring.alerts() for s in monitoring.selectors(a.expr)
                if monitoring.metric_name(s) not in AUDIT]
    assert body.count('{ {{ include "cache-reconciler.metricsSelector" . }}') == len(selected)


# --------------------------------------------------------------------------- dashboard


@pytest.mark.parametrize("path", monitoring.DASHBOARDS, ids=lambda p: p.name)
def test_the_dashboard_is_templated_by_datasource_namespace_and_job(path: Path) -> None:
    dashboard = monitoring.load_dashboard(path)
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    by_name = {v.name: v for v in monitoring.variables(path)}
    assert monitoring.label_values(by_name["namespace"].query)[1] == "namespace"
    assert monitoring.label_values(by_name["job"].query)[1] == "job"
    panels = list(monitoring.panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel.get("description"), f"{panel['title']}: say what it shows"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]
    rows = [p["title"] for p in panels if p["type"] == "row"]
    for wanted in REQUIRED_ROWS:
        assert any(wanted in title for title in rows), f"no row about {wanted}: {rows}"
    queries = monitoring.panel_queries(path)
    assert len(queries) >= 25
    for query in queries:
        found = monitoring.selectors(query.expr)
        assert found, query.name
        for selector in found:
            labels = monitoring.matchers(selector)
            assert labels.get("namespace") == '=~"$namespace"', f"{query.name}: {selector}"
            assert labels.get("job") == '=~"$job"', f"{query.name}: {selector}"


def test_the_dashboard_parser_sees_collapsed_rows() -> None:
    dashboard = {"panels": [{"type": "row", "panels": [
        {"type": "timeseries", "title": "inner", "targets": [{"refId": "A", "expr": "up"}]}]}]}
    assert [p.get("title") for p in monitoring.panels(dashboard)] == [None, "inner"]


def test_every_metric_named_in_the_dashboard_and_rules_exists() -> None:
    registry = CollectorRegistry()
    Metrics.create(registry)
    exported = set()
    for family in registry.collect():  # families without samples yet count too
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        exported |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    exprs = [q.expr for path in monitoring.DASHBOARDS for q in monitoring.panel_queries(path)]
    exprs += [monitoring.label_values(v.query)[0]
              for path in monitoring.DASHBOARDS for v in monitoring.variables(path)]
    exprs += [a.expr for a in monitoring.alerts()]
    unknown = {monitoring.metric_name(s) for e in exprs for s in monitoring.selectors(e)}
    unknown -= exported | EXTERNAL | AUDIT
    assert not unknown, f"not exported by reconciler.observe.metrics: {sorted(unknown)}"


# --------------------------------------------------------------------------- PromQL helpers


def test_selectors_and_stripped_conditions() -> None:
    expr = ('sum by (topic) (rate(a_total{job="x", le=~"1|2"}[5m])) > 10 and on (topic) '
            'histogram_quantile(0.99, b_bucket) unless absent(c{state!="0"}) == 1')
    assert monitoring.selectors(expr) == ['a_total{job="x", le=~"1|2"}', "b_bucket",
                                          'c{state!="0"}']
    assert monitoring.strip_conditions(expr) == (
        'sum by (topic) (rate(a_total{job="x", le=~"1|2"}[5m])) and on (topic) '
        'histogram_quantile(0.99, b_bucket) unless (c{state!="0"})')
    assert monitoring.substitute('x{a=~"$namespace", b="${job}"}[$__rate_interval]',
                                 {"namespace": "n", "job": "j"}) == 'x{a=~"n", b="j"}[1m]'
    with pytest.raises(KeyError):
        monitoring.substitute("x{a=~\"$nope\"}", {})
