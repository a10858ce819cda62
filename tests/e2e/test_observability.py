"""What operators see is true: metrics, health, freshness, logs, and the dashboard and
alert rules evaluated by a real Prometheus scraping a real worker under a workload.

A module-scoped worker (`reconciler run`, JSON logs, secrets in its environment) is
driven through Postgres → Debezium → Kafka with a small workload and one poison
record; a Prometheus of its own (Debian's package) scrapes it every second with the
plain rules file loaded. Every dashboard panel query and every alert expression is
then evaluated through Prometheus' HTTP API. The lag test runs its own worker on a
fresh topic, where it controls every record.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from stack import services
from tests import monitoring
from tests.conftest import ROOT, Stack
from tests.e2e.support import (
    COMMENTS,
    POSTS,
    PROFILES,
    Rows,
    WorkerProcess,
    create_topic,
    end_offsets,
    start_group_at_end,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
TOPICS = [POSTS, COMMENTS, PROFILES]
JOB = monitoring.PLAIN_JOB  # the scrape job name: the plain rules select it
AUDIT_JOB = "cache-reconciler-audit"  # where `reconciler audit`'s gauges are scraped from
FIXTURES = ROOT / "tests" / "fixtures" / "debezium"


# --------------------------------------------------------------------------- Prometheus


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """Debian's Prometheus on a free loopback port, scraping `targets` every second
    with the plain rules file loaded; data in `directory`."""

    def __init__(self, directory: Path, targets: Mapping[str, tuple[str, Mapping[str, str]]],
                 rules: Path = monitoring.PLAIN_RULES) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: `apt-get install -y prometheus` "
                        "(scripts/setup --tests does)", pytrace=False)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "900ms"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": job, "honor_labels": job == AUDIT_JOB,
                 "static_configs": [{"targets": [address], "labels": dict(labels)}]}
                for job, (address, labels) in targets.items()
            ],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT)
        wait_until(self._ready, 60, "prometheus to be ready")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}",
                                        timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        return data["result"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def audit_exporter(stale: int) -> tuple[Any, int]:
    """`reconciler audit`'s gauges (same names and labels as `AuditReport.registry()`),
    served as a textfile collector or Pushgateway would present them."""
    registry = CollectorRegistry()
    entries = Gauge("reconciler_audit_entries", "Cache entries found by the last audit.",
                    ("table", "state"), registry=registry)
    for state, value in {"fresh": 40, "stale": stale, "orphan": 0}.items():
        entries.labels("public.posts", state).set(value)
    Gauge("reconciler_audit_last_run_timestamp_seconds", "When the last audit finished.",
          registry=registry).set(time.time())
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    return server, int(server.server_port)


# --------------------------------------------------------------------------- the worker


def json_records(log_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]


def json_metrics_port(log_path: Path, proc: subprocess.Popen[bytes]) -> int | None:
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            message = json.loads(line).get("message", "")
            if "/freshness on " in message:
                return int(message.rsplit(":", 1)[1])
    assert proc.poll() is None, f"worker exited:\n{log_path.read_text()[-3000:]}"
    return None


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


@dataclass
class Observed:
    stack: Stack
    worker: WorkerProcess
    prometheus: Prometheus
    namespace: str
    secrets: list[str]
    poison_topic: str

    def metrics(self) -> str:
        return str(self.worker.get("/metrics")[1])


@pytest.fixture(scope="module")
def observed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    uid = uuid.uuid4().hex[:10]
    directory = tmp_path_factory.mktemp("observed")
    group = f"test-obs-{uid}"
    poison_topic = create_topic(stack, f"obs-{uid}.poison", partitions=1)
    start_group_at_end(stack, group, TOPICS)
    config = write_config(directory, stack, group=group, topics=[*TOPICS, poison_topic],
                          overrides={"logging": {"level": "INFO", "format": "json"}})
    secrets = [f"kafka-secret-{uid}", f"valkey-secret-{uid}", f"pg-secret-{uid}",
               f"connect-secret-{uid}"]
    env = {
        "RECONCILER_KAFKA__SECURITY__SASL_PASSWORD": secrets[0],
        "RECONCILER_VALKEY__USERNAME": "default",  # the stack's default user: nopass
        "RECONCILER_VALKEY__PASSWORD": secrets[1],
        "RECONCILER_POSTGRES__DSN": f"postgresql://reconciler:{secrets[2]}@127.0.0.1:1/nd",
        "RECONCILER_CONNECT__URL": stack.connect_url,
        "RECONCILER_CONNECT__PASSWORD": secrets[3],
    }
    worker = WorkerProcess(config, directory / "worker.log", env=env)
    namespace = f"e2e-{uid}"
    audit_server, audit_port = audit_exporter(stale=2)
    prometheus: Prometheus | None = None
    try:
        worker.port = wait_until(lambda: json_metrics_port(worker.log_path, worker.proc), 60,
                                 "the worker's metrics port")
        wait_until(lambda: worker.get("/readyz")[0] == 200, 60, "the worker to be ready")
        prometheus = Prometheus(directory / "prometheus", {
            JOB: (f"127.0.0.1:{worker.port}", {"namespace": namespace}),
            AUDIT_JOB: (f"127.0.0.1:{audit_port}", {"namespace": namespace}),
        })
        # A baseline first: a counter whose first scrape already holds the workload
        # shows no increase, and rate() panels would read 0.
        wait_until(lambda: prometheus.query(f'count_over_time(up{{job="{JOB}"}}[1m]) >= 2'),
                   30, "two scrapes of the worker before the workload")
        observed = Observed(stack, worker, prometheus, namespace, secrets, poison_topic)
        run_workload(observed)
        yield observed
    finally:
        if prometheus is not None:
            prometheus.stop()
        audit_server.shutdown()
        code = worker.stop()
    assert code == 0, worker.log_path.read_text()[-3000:]


def run_workload(observed: Observed) -> None:
    """Creates, updates and deletes on both shards, comments, one poison record; waits
    until the worker has processed them and Prometheus has scraped the result."""
    with contextlib.closing(Rows(observed.stack.postgres_dsn)) as db:
        posts = [db.insert_post(n)[0] for n in (7, 42, 700, 420)]
        for post_id in posts:
            db.update_post(post_id)
        comment, _ = db.insert_comment(posts[0], 7)
        db.update_comment(comment, body="edited")
        db.delete_post(posts[1])  # DEFAULT identity: feed:{neighborhood_id} unresolved
    producer = Producer({"bootstrap.servers": observed.stack.kafka_bootstrap})
    producer.produce(observed.poison_topic, key=b"k", value=b"{not json")
    assert producer.flush(30) == 0
    prometheus = observed.prometheus

    def processed() -> bool:
        events = prometheus.query(f'sum(reconciler_events_total{{job="{JOB}"}})')
        dead = prometheus.query(f'sum(reconciler_dead_letters_total{{job="{JOB}"}})')
        unresolved = prometheus.query(f'sum(reconciler_unresolved_keys_total{{job="{JOB}"}})')
        return (bool(events) and float(events[0]["value"][1]) >= 11 and bool(dead)
                and float(dead[0]["value"][1]) >= 1 and bool(unresolved))

    wait_until(processed, 90, "Prometheus to see the workload processed", interval=0.5)
    time.sleep(5)  # a few more scrapes: every rate() window holds several samples


# --------------------------------------------------------------------------- dashboard


def test_every_dashboard_query_returns_series_in_prometheus(observed: Observed) -> None:
    prometheus = observed.prometheus
    values = {"namespace": observed.namespace, "job": JOB}
    failures: list[str] = []
    checked = 0
    for path in monitoring.DASHBOARDS:
        for variable in monitoring.variables(path):
            selector, label = monitoring.label_values(variable.query)
            found = {series["metric"].get(label)
                     for series in prometheus.query(monitoring.substitute(selector, values))}
            if values[variable.name] not in found:
                failures.append(f"variable ${variable.name}: {variable.query} gives {found}")
        for query in monitoring.panel_queries(path):
            checked += 1
            expr = monitoring.substitute(query.expr, values)
            result = prometheus.query(expr)
            if not result:
                failures.append(f"{query.name}: no series for {expr}")
                continue
            for selector in monitoring.selectors(expr):
                if not prometheus.query(selector):
                    failures.append(f"{query.name}: selector {selector} has no series")
            wanted = monitoring.legend_labels(query.legend)
            for series in result:
                missing = wanted - series["metric"].keys()
                if missing:
                    failures.append(f"{query.name}: legend labels {sorted(missing)} missing "
                                    f"from {series['metric']}")
                    break
    assert checked >= 25, f"only {checked} panel queries found: is the parser broken?"
    assert not failures, "\n".join(failures)


def test_the_delay_panels_show_real_numbers(observed: Observed) -> None:
    """No NaN: the percentiles are computed from observations, not empty buckets."""
    values = {"namespace": observed.namespace, "job": JOB}
    for query in monitoring.panel_queries(monitoring.DASHBOARDS[0]):
        if query.panel not in ("End-to-end delay percentiles", "Batch time"):
            continue
        for series in observed.prometheus.query(monitoring.substitute(query.expr, values)):
            value = float(series["value"][1])
            assert math.isfinite(value) and value > 0, (query.name, series)


# --------------------------------------------------------------------------- alerts


def test_every_alert_expression_is_evaluated_and_its_signal_has_series(
        observed: Observed) -> None:
    prometheus = observed.prometheus
    alerts = monitoring.alerts()
    assert {a.name for a in alerts} >= {
        "ReconcilerLagGrowing", "ReconcilerEndToEndP99High", "ReconcilerDeadLetters",
        "ReconcilerAuditFoundStale", "ReconcilerDown", "ReconcilerShardUnreachable",
        "ReconcilerShardMapReloadFailed", "ReconcilerNotReady", "ReconcilerFreshnessStalled",
        "ReconcilerUnknownTableSkips", "ReconcilerAuditStale"}
    failures = []
    for alert in alerts:
        prometheus.query(alert.expr)  # valid PromQL, evaluated (an error fails here)
        stripped = monitoring.strip_conditions(alert.expr)
        if not prometheus.query(stripped):
            failures.append(f"{alert.name}: no series for {' '.join(stripped.split())}")
        for selector in monitoring.selectors(alert.expr):
            if not prometheus.query(selector):
                failures.append(f"{alert.name}: selector {selector} has no series")
    assert not failures, "\n".join(failures)
    # Every rule loaded and evaluates without error.
    rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
    assert {r["name"] for r in rules} == {a.name for a in alerts}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError"))
                                                      for r in rules]


def test_alert_conditions_the_workload_created_are_true(observed: Observed) -> None:
    """The poison record fires ReconcilerDeadLetters; the audit's stale entries fire
    ReconcilerAuditFoundStale; a healthy worker fires neither Down nor NotReady."""
    by_name = {a.name: a for a in monitoring.alerts()}
    prometheus = observed.prometheus
    dead = prometheus.query(by_name["ReconcilerDeadLetters"].expr)
    assert [s["metric"]["reason"] for s in dead] == ["invalid_json"]
    stale = prometheus.query(by_name["ReconcilerAuditFoundStale"].expr)
    assert [(s["metric"]["table"], s["metric"]["state"]) for s in stale] == [
        ("public.posts", "stale")]
    for quiet in ("ReconcilerDown", "ReconcilerNotReady", "ReconcilerShardUnreachable",
                  "ReconcilerShardMapReloadFailed", "ReconcilerLagGrowing",
                  "ReconcilerFreshnessStalled", "ReconcilerUnknownTableSkips",
                  "ReconcilerAuditStale"):
        assert prometheus.query(by_name[quiet].expr) == [], quiet


def test_heartbeats_keep_the_freshness_stalled_alert_quiet(observed: Observed) -> None:
    """ReconcilerFreshnessStalled fires on a watermark that stops moving: in this
    pipeline, idle between the workload's bursts, Debezium's heartbeats move the
    watermark of every partition the worker owns, so its `changes()` side is never 0."""
    prometheus = observed.prometheus
    owned = {(s["metric"]["topic"], s["metric"]["partition"]) for s in prometheus.query(
        f'reconciler_freshness_watermark_seconds{{job="{JOB}"}}')}
    assert owned, "no freshness watermark series"

    def all_moved() -> bool:
        moved = prometheus.query(
            f'max by (topic, partition) (changes(reconciler_freshness_watermark_seconds'
            f'{{job="{JOB}"}}[10m])) > 0')
        return {(s["metric"]["topic"], s["metric"]["partition"]) for s in moved} >= owned

    wait_until(all_moved, 90, f"heartbeats to move the watermark of every partition {owned}")
    expr = {a.name: a for a in monitoring.alerts()}["ReconcilerFreshnessStalled"].expr
    assert prometheus.query(expr) == []


# --------------------------------------------------------------------------- logs


def test_logs_are_json_lines_and_secrets_appear_nowhere(observed: Observed) -> None:
    text = observed.worker.log_path.read_text()
    records = json_records(observed.worker.log_path)  # every line parses
    assert records and all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    configs = [r for r in records if r["message"].startswith("effective configuration")]
    assert len(configs) == 1, "the effective config is logged exactly once"
    assert configs[0]["message"].count("**********") >= 4  # sasl, valkey, postgres, connect
    metrics = observed.metrics()
    for secret in observed.secrets:
        assert secret not in text, f"{secret} leaked into the log"
        assert secret not in metrics, f"{secret} leaked into /metrics"
    # A record about a message names it: the poison record's dead letter.
    dead = [r for r in records if "dead-lettered" in r["message"]]
    assert dead and dead[0]["message"].startswith(f"{observed.poison_topic}[0]@0: "), dead


# --------------------------------------------------------------------------- freshness


def test_a_quiet_partitions_watermark_advances_with_heartbeats(observed: Observed) -> None:
    stack, worker = observed.stack, observed.worker
    started_ms = int(time.time() * 1000)
    ends = end_offsets(stack, TOPICS)

    def quiet_and_advanced() -> list[tuple[str, int]]:
        now_ends = end_offsets(stack, TOPICS)
        marks = {(p["topic"], p["partition"]): p["watermark_ms"]
                 for p in worker.get("/freshness")[1]["partitions"]}
        return [tp for tp, end in now_ends.items()
                if end == ends[tp] and (marks.get(tp) or 0) >= started_ms]

    advanced = wait_until(quiet_and_advanced, 30,
                          "a partition without new records to pass the start time")
    # No record reached those partitions meanwhile: heartbeats moved them.
    still_quiet = end_offsets(stack, TOPICS)
    advanced = [tp for tp in advanced if still_quiet[tp] == ends[tp]]
    assert advanced
    gauge = samples(observed.metrics(), "reconciler_freshness_watermark_seconds")
    topic, partition = advanced[0]
    value = gauge[(("partition", str(partition)), ("topic", topic))]
    assert value * 1000 >= started_ms - 1000  # the gauge trails /freshness by a refresh


def test_a_committed_write_is_eventually_below_its_tables_watermark(
        observed: Observed) -> None:
    worker = observed.worker
    with contextlib.closing(Rows(observed.stack.postgres_dsn)) as db:
        db.insert_post(7)
        committed_ms = int(time.time() * 1000)  # the commit happened before this

    def table_mark() -> int | None:
        body = worker.get("/freshness")[1]
        mark = body["tables"].get("public.posts")
        return mark if mark is not None and mark >= committed_ms else None

    mark = wait_until(table_mark, 30, "public.posts' watermark to reach the commit time")
    body = worker.get("/freshness")[1]
    assert body["watermark_ms"] is not None and body["now_ms"] >= mark
    posts = [p for p in body["partitions"] if p["topic"] == POSTS]
    assert posts and all(p["table"] == "public.posts" for p in posts)


# --------------------------------------------------------------------------- a dead shard


def test_a_dead_shard_turns_readyz_and_its_alert_and_both_clear(observed: Observed) -> None:
    worker, prometheus = observed.worker, observed.prometheus
    by_name = {a.name: a for a in monitoring.alerts()}
    unreachable = by_name["ReconcilerShardUnreachable"].expr
    not_ready = by_name["ReconcilerNotReady"].expr
    valkey_b = services.SERVICES["valkey-b"]
    try:
        valkey_b.stop()
        _, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(
            worker.get("/readyz")), 30, "/readyz to turn 503")
        assert body["ok"] is False and body["shards"] == {"a": "up", "b": "unreachable"}
        firing = wait_until(lambda: prometheus.query(unreachable), 30,
                            "the shard-unreachable expression to be true")
        assert [s["metric"]["shard"] for s in firing] == ["b"]
        assert wait_until(lambda: prometheus.query(not_ready), 30, "not-ready to be true")
        pending = wait_until(lambda: [a for a in prometheus.api("alerts")["alerts"]
                                      if a["labels"]["alertname"] == "ReconcilerShardUnreachable"],
                             30, "the rule to evaluate it (pending: `for` 2m)")
        assert pending[0]["labels"]["shard"] == "b" and pending[0]["state"] == "pending"
    finally:
        valkey_b.start()
    wait_until(lambda: worker.get("/readyz")[0] == 200, 30, "/readyz to be ready again")
    wait_until(lambda: prometheus.query(unreachable) == [], 30,
               "the shard-unreachable expression to clear")
    wait_until(lambda: prometheus.query(not_ready) == [], 30, "not-ready to clear")


# --------------------------------------------------------------------------- exact lag


def recorded_tombstones() -> list[bytes]:
    """Keys of real tombstones the connector emitted (skipped by the worker: no cache
    writes, so the test cannot disturb anybody's keys)."""
    keys = []
    for line in (FIXTURES / "schemas_true.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["value"] is None and record["key"] is not None:
            keys.append(record["key"].encode())
    assert keys, "no tombstone among the recorded events"
    return keys


def test_lag_is_exact_while_paused_and_returns_to_zero(stack: Stack, tmp_path: Path,
                                                       uid: str) -> None:
    topic = create_topic(stack, f"obs-{uid}.public.posts", partitions=3)
    config = write_config(tmp_path, stack, group=f"test-lag-{uid}", topics=[topic])
    worker = WorkerProcess(config, tmp_path / "worker.log")
    partitions = [(topic, p) for p in range(3)]

    def lag() -> dict[tuple[str, int], float]:
        gauge = samples(str(worker.get("/metrics")[1]), "reconciler_consumer_lag_messages")
        return {(dict(k)["topic"], int(dict(k)["partition"])): v for k, v in gauge.items()}

    try:
        wait_until(lambda: worker.get("/readyz")[0] == 200
                   and worker.ready()["assigned_partitions"] == 3, 60, "3 partitions")
        wait_until(lambda: lag() == dict.fromkeys(partitions, 0.0), 30, "a lag of 0")
        worker.signal(signal.SIGUSR1)
        wait_until(lambda: worker.ready()["paused"], 30, "the worker to pause")

        before = end_offsets(stack, [topic])
        counts = {0: 7, 1: 0, 2: 18}  # one partition gets nothing
        keys = recorded_tombstones()
        producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
        for partition, n in counts.items():
            for i in range(n):
                producer.produce(topic, key=keys[i % len(keys)], value=None,
                                 partition=partition)
        assert producer.flush(30) == 0
        after = end_offsets(stack, [topic])
        expected = {tp: float(after[tp] - before[tp]) for tp in partitions}
        assert sum(expected.values()) == sum(counts.values()) == 25

        wait_until(lambda: lag() == expected, 30, f"the lag gauge to read {expected}")
        # It stays exact (no overshoot, no drift) while the worker is paused.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert lag() == expected
            time.sleep(0.2)
        assert worker.ready()["lag"] == {f"{t}[{p}]": int(v) for (t, p), v in expected.items()}
        print(f"\nlag while paused: {lag()} (expected {expected}, total "
              f"{sum(expected.values()):.0f})")

        worker.signal(signal.SIGUSR2)
        wait_until(lambda: not worker.ready()["paused"], 30, "the worker to resume")
        wait_until(lambda: lag() == dict.fromkeys(partitions, 0.0), 30,
                   "the lag to return to 0")
        print(f"lag after resuming: {lag()}")
    finally:
        assert worker.stop() == 0, worker.log_path.read_text()[-3000:]


def test_metrics_port_serves_probes_and_the_bundle(observed: Observed) -> None:
    worker = observed.worker
    assert worker.get("/healthz")[0] == 200
    status, body = worker.get("/readyz")
    assert status == 200 and body["joined_group"] and body["shards"] == {"a": "up", "b": "up"}
    text = observed.metrics()
    for name in ("reconciler_events_total", "reconciler_skipped_total",
                 "reconciler_invalidations_total", "reconciler_unresolved_keys_total",
                 "reconciler_dead_letters_total", "reconciler_consumer_lag_messages",
                 "reconciler_end_to_end_seconds_bucket", "reconciler_batch_seconds_bucket",
                 "reconciler_shard_map_version", "reconciler_freshness_watermark_seconds",
                 "reconciler_shard_up", "reconciler_ready", "reconciler_build_info"):
        assert samples(text, name), f"{name} missing from /metrics"
    results = {dict(k)["result"] for k in samples(text, "reconciler_invalidations_total")}
    assert results == {"repaired", "fresh", "absent", "fenced"}
