"""The worker's metrics, as one bundle created against an injected registry.

Names and labels are a contract (SPEC §6): the Grafana dashboard and the alert rules
query them. Labels stay low-cardinality: never a key or a row id. Nothing is
registered at import time; tests pass a fresh ``CollectorRegistry``.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from reconciler import __version__


def _end_to_end_buckets() -> tuple[float, ...]:
    """End-to-end delay buckets (seconds): a factor of 2^(1/4) from ~1 ms to ~11 s (the
    boundaries of a native histogram of schema 2, to 3 significant figures), so that a
    p50 or p99 read with histogram_quantile() is within ~10% of the true quantile
    anywhere in that range; one bucket below (0.5 ms), and doublings above up to 34
    minutes for backlogs and replays. 64 buckets."""
    fine = [2 ** (k / 4) for k in range(-40, 15)]  # 0.977 ms … 11.3 s
    return tuple(float(f"{bound:.3g}") for bound in (2 ** -11, *fine)) + tuple(
        2.0 ** k for k in range(4, 12))


END_TO_END_BUCKETS = _end_to_end_buckets()
# Batch processing time buckets (seconds).
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RESULTS = ("repaired", "fresh", "absent", "fenced")  # invalidation results (SPEC §2)
# Label values known in advance, created at zero so that `increase()` sees the first
# occurrence (a series born at 1 looks like no increase) and panels show before traffic.
# tests/unit/reconciler/test_metrics.py checks them against the code that raises them.
SKIP_REASONS = ("tombstone", "heartbeat", "transaction", "message", "unknown_table",
                "dead_letter_topic")
DEAD_LETTER_REASONS = ("empty_record", "invalid_json", "invalid_key", "invalid_envelope",
                       "unknown_op", "oversized", "unknown_table", "invalid_version",
                       "invalid_shard_key", "unroutable", "key_too_large", "schema_too_large",
                       # Avro topics (connectors/debezium/avro.py)
                       "not_avro", "unknown_schema", "invalid_schema", "avro_mismatch")
RELOAD_RESULTS = ("ok", "error")  # reconciler_shard_map_reloads_total{result}
RETRY_TARGETS = ("valkey", "registry")  # reconciler_retries_total{target} that the worker counts


class Children:
    """A labelled metric's children by label values, each looked up once:
    prometheus_client's ``labels()`` validates and locks on every call, which the worker
    would pay per label set per batch. For metrics whose series are never removed."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Counter] = {}

    def __call__(self, *labels: str) -> Counter:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child


class BatchHistogram:
    """A histogram observed a batch at a time: one lock per batch instead of one per
    value (prometheus_client's Histogram.observe locks per call — a microsecond per
    event on the worker's hot path). Exposed exactly as a Histogram is."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = (*sorted(buckets), math.inf)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._created = time.time()
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def observe_many(self, values: Iterable[float]) -> None:
        bounds, counts = self._bounds, self._counts
        total = 0.0
        with self._lock:  # a batch's few values: binned in place, not via a scratch list
            for value in values:
                counts[bisect_left(bounds, value)] += 1  # the first bucket whose le >= value
                total += value
            self._sum += total

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, n in zip(self._bounds, counts, strict=True):
            cumulative += n
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        family = HistogramMetricFamily(self._name, self._documentation, buckets=buckets,
                                       sum_value=total)
        family.add_sample(self._name + "_created", {}, self._created)
        yield family


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The q-quantile (0..1) of a histogram given as (le, cumulative count) pairs in
    order, the last le infinite, interpolated linearly inside its bucket as Prometheus's
    histogram_quantile() does (the lowest bucket starts at 0; a quantile in the +Inf
    bucket is the highest finite le). None when nothing was observed."""
    if not buckets or not buckets[-1][1]:
        return None
    target = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= target:
            if math.isinf(upper):
                return lower
            inside = count - below
            return lower + (upper - lower) * ((target - below) / inside if inside else 0.0)
        lower, below = upper, count
    return lower


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    events: Counter
    skipped: Counter
    invalidations: Counter
    unresolved: Counter
    dead_letters: Counter
    lag: Gauge
    end_to_end: BatchHistogram
    batch: Histogram
    shard_map_version: Gauge
    shard_map_reloads: Counter
    shard_map_reload_failed: Gauge
    shard_up: Gauge
    freshness: Gauge
    truncated_keys: Counter
    coalesced: Counter
    retries: Counter
    unseen: Counter
    shard_changes: Counter
    parked: Gauge
    parked_actions: Counter
    parked_oldest: Gauge
    failover_replayed: Counter
    assigned_partitions: Gauge
    ready: Gauge
    build_info: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        metrics = cls(
            registry=registry,
            events=counter("reconciler_events_total",
                           "Change events processed, by table and op (c, u, d, r, t).",
                           ("table", "op")),
            skipped=counter("reconciler_skipped_total",
                            "Records that cause no cache action, by reason.", ("reason",)),
            invalidations=counter(
                "reconciler_invalidations_total",
                "Cache invalidations acknowledged by Valkey, by shard and result "
                "(repaired, fresh, absent, fenced).", ("shard", "result")),
            unresolved=counter(
                "reconciler_unresolved_keys_total",
                "Key templates that could not be built from a record, by table, template and "
                "cause: key_only (only the key is known: a REPLICA IDENTITY DEFAULT delete, a "
                "tombstone — expected) or missing (the event lacks a column the template "
                "needs: renamed, NULL, an unchanged TOAST value).",
                ("table", "template", "cause")),
            dead_letters=counter("reconciler_dead_letters_total",
                                 "Records sent to the dead-letter topic, by reason.",
                                 ("reason",)),
            lag=gauge("reconciler_consumer_lag_messages",
                      "High watermark minus the group's position, per assigned partition.",
                      ("topic", "partition")),
            end_to_end=BatchHistogram(
                "reconciler_end_to_end_seconds",
                "Source commit (source.ts_ms) to invalidation acknowledged by Valkey.",
                END_TO_END_BUCKETS, registry),
            batch=Histogram("reconciler_batch_seconds",
                            "Time to decode, plan, invalidate and store one consumed batch.",
                            buckets=BATCH_BUCKETS, registry=registry),
            shard_map_version=gauge("reconciler_shard_map_version",
                                    "The `version` of the shard map in use."),
            shard_map_reloads=counter("reconciler_shard_map_reloads_total",
                                      "Shard map file changes seen, by result (ok, error).",
                                      ("result",)),
            shard_map_reload_failed=gauge(
                "reconciler_shard_map_reload_failed",
                "1 while the shard map file on disk is rejected (the previous version "
                "stays in use), else 0."),
            shard_up=gauge("reconciler_shard_up",
                           "1 when the shard answered its last call or probe, else 0.",
                           ("shard",)),
            freshness=gauge(
                "reconciler_freshness_watermark_seconds",
                "Source commit time (unix seconds) up to which every change of the "
                "partition has been reconciled.", ("topic", "partition")),
            truncated_keys=counter("reconciler_truncated_keys_total",
                                   "Keys removed because their table was truncated.",
                                   ("shard",)),
            coalesced=counter(
                "reconciler_coalesced_deletes_total",
                "Deletes of a derived (unversioned) key not sent because a later delete of "
                "the same key in the same batch supersedes them, by shard.", ("shard",)),
            retries=counter("reconciler_retries_total",
                            "Retries of transient failures, by dependency (valkey, kafka).",
                            ("target",)),
            unseen=counter(
                "reconciler_unseen_records_total",
                "Records deleted (retention, DeleteRecords) before this group read them: "
                "changes never reconciled. Repair with `reconciler audit --repair`.",
                ("topic", "partition")),
            shard_changes=counter(
                "reconciler_shard_changes_total",
                "Times a shard's server changed under the worker (a failover, a restart: its "
                "run id differs), each followed by a replay of the recent changes.",
                ("shard",)),
            parked=gauge(
                "reconciler_parked_records",
                "Calls parked on a shard's parking topic (the shard stayed unavailable) and "
                "not applied yet, per shard; 0 when it is not parked.", ("shard",)),
            parked_actions=counter(
                "reconciler_parked_actions_total",
                "Cache actions parked because their shard stayed unavailable.", ("shard",)),
            parked_oldest=gauge(
                "reconciler_parked_oldest_seconds",
                "Age of the oldest parked call of a shard still to apply (0: none).",
                ("shard",)),
            failover_replayed=counter(
                "reconciler_failover_replayed_records_total",
                "Records processed again because a shard's server changed "
                "(valkey.failover_replay_seconds)."),
            assigned_partitions=gauge("reconciler_assigned_partitions",
                                      "Partitions currently assigned to this worker."),
            ready=gauge("reconciler_ready", "1 when /readyz answers ready, else 0."),
            build_info=gauge("reconciler_build_info",
                             "Always 1; the labels say which version is running.",
                             ("version",)),
        )
        metrics.build_info.labels(__version__).set(1)
        for reason in SKIP_REASONS:
            metrics.skipped.labels(reason)
        for reason in DEAD_LETTER_REASONS:
            metrics.dead_letters.labels(reason)
        for result in RELOAD_RESULTS:
            metrics.shard_map_reloads.labels(result)
        for target in RETRY_TARGETS:
            metrics.retries.labels(target)
        return metrics

    def tally(self) -> tuple[int, int, int, int]:
        """Records accounted for so far: events, skipped, of those heartbeats, and dead
        letters (what a stopping worker logs: its counters go with the process)."""
        def total(counter: Counter, reason: str | None = None) -> int:
            return int(sum(sample.value for family in counter.collect()
                           for sample in family.samples if sample.name.endswith("_total")
                           and (reason is None or sample.labels.get("reason") == reason)))

        return (total(self.events), total(self.skipped), total(self.skipped, "heartbeat"),
                total(self.dead_letters))

    def init_shard(self, shard: str) -> None:
        """Create a shard's series at zero so dashboards show them before traffic."""
        for result in RESULTS:
            self.invalidations.labels(shard, result)
        self.truncated_keys.labels(shard)
        self.coalesced.labels(shard)
        self.shard_changes.labels(shard)
        self.parked.labels(shard)
        self.parked_actions.labels(shard)
        self.parked_oldest.labels(shard)
