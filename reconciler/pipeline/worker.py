"""The group member: it joins the consumer group and drives a pipeline.

The worker owns what is about membership and the process: the subscription and the
rebalance callbacks (a revocation completes the batch in flight and commits
synchronously; callbacks run inside ``consume()``, between batches), the shard map's
reload, signals and the shutdown watchdog, health and the housekeeping thread (lag,
shard probes). A batch's life — and the offset rule — is the pipeline's
(`reconciler.pipeline.pipeline`). Auto-commit ships stored offsets every second; a
shutdown finishes the batch in flight, commits and leaves the group.

Signals: SIGTERM/SIGINT stop gracefully, within ``shutdown_timeout_seconds`` (past it
the worker says so and exits 2 by itself, before an orchestrator's SIGKILL can land in
the middle of a commit); SIGUSR1 pauses consumption (keeping the partitions), SIGUSR2
resumes.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from connectors.kafka import admin_config, consumer_config
from reconciler.errors import ConfigError, FatalError, RetryBudgetExceeded, TransientError
from reconciler.observe.gaps import RetentionGaps, low_watermark
from reconciler.observe.health import HealthServer, Status
from reconciler.observe.lag import REQUEST_TIMEOUT as LAG_REQUEST_TIMEOUT
from reconciler.observe.lag import LagMonitor
from reconciler.observe.metrics import Metrics
from reconciler.pipeline import faults
from reconciler.pipeline.clients import (
    cluster_topics,
    ensure_topic,
    kafka_security,
    subscription_topics,
)
from reconciler.pipeline.compose import (
    RDKAFKA_LOG,
    build_parts,
    consumer_error,
    kafka_error_callback,
)
from reconciler.pipeline.failover import FailoverGuard
from reconciler.pipeline.hooks import Hooks
from reconciler.pipeline.pipeline import Pipeline
from reconciler.pipeline.watchdog import Watchdog
from reconciler.settings import Settings
from reconciler.templates import overlapping_patterns
from shard_map import ShardMapError, ShardMapWatcher

log = logging.getLogger(__name__)

TP = tuple[str, int]
LIVENESS_SLACK = 60.0  # seconds the loop may stall beyond the retry budget before /healthz fails
EXIT_OK = 0  # clean shutdown
EXIT_FAILED = 2  # a dependency stayed unavailable, or refused us: see the last log line
METADATA_TIMEOUT_SECONDS = 10.0  # start-up: how long the cluster may take to answer


class Worker:
    """A member of the consumer group, driving one pipeline."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None,
                 serve_metrics: bool = True, hooks: Hooks | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics.create(registry or CollectorRegistry())
        self.group_id = settings.kafka.group_id
        try:
            self._watcher = ShardMapWatcher(settings.shard_map)
        except ShardMapError as exc:
            raise ConfigError(f"shard_map: {exc}") from exc
        shard_map = self._watcher.current
        self._next_reload = time.monotonic() + settings.shard_map_reload_seconds
        self.metrics.shard_map_version.set(shard_map.version)
        self._stopping = threading.Event()
        self._pause_wanted = False
        self._paused = False
        self._joined = False
        self._positions: dict[TP, int | None] = {}  # next offset to read, per partition
        self._tick = time.monotonic()
        hooks = hooks or faults.hooks()
        parts = build_parts(settings, shard_map, self.metrics, group_id=self.group_id,
                            hooks=hooks, stopping=self._stopping.is_set)
        self.shards = parts.shards
        self.consumer = parts.consumer
        self._parts = parts
        self._gaps = RetentionGaps(partial(low_watermark, self.consumer), self.metrics.unseen)
        self._failover = FailoverGuard(parts.shards, self.metrics,
                                       replay_seconds=settings.valkey.failover_replay_seconds)
        self.pipeline = Pipeline(
            parts.consumer, parts.decoder, parts.planner, parts.invalidator,
            parts.dead_letters, self.metrics, max_event_bytes=settings.max_event_bytes,
            heartbeat_table=settings.freshness.heartbeat_table, gaps=self._gaps,
            hooks=hooks, consumer_error=consumer_error,
            on_stored=self._stored, offset_metadata=self._failover.metadata,
            parking=parts.parking)
        self._parking = parts.parking
        self.freshness = self.pipeline.freshness
        kafka = settings.kafka
        security = kafka_security(settings)
        self._admin = AdminClient(admin_config(  # type: ignore[arg-type]
            kafka.bootstrap_servers, security, kafka.client, logger=RDKAFKA_LOG)
            | {"error_cb": kafka_error_callback(self._stopping.is_set)})
        # The lag monitor asks with a consumer of its own that never subscribes, not the
        # admin client: see reconciler.observe.lag about librdkafka's admin API.
        self._lag_client = Consumer(consumer_config(
            kafka.bootstrap_servers, self.group_id, security, kafka.client,
            logger=RDKAFKA_LOG, group_protocol=kafka.group_protocol)
            | {"enable.auto.commit": False, "client.id": f"cache-reconciler-{self.group_id}-lag"})
        self.lag = LagMonitor(self._lag_client, self.group_id, self.metrics, self.freshness,
                              lambda: dict(self._positions))
        self._http: HealthServer | None = None
        if serve_metrics:
            self._http = HealthServer(
                settings.metrics.host, settings.metrics.port, self.metrics.registry,
                live=self._live, ready=self._ready, freshness=self.freshness.as_json)
        self._housekeeper = threading.Thread(target=self._housekeeping, name="housekeeping",
                                             daemon=True)
        self._watchdog = Watchdog(settings.shutdown_timeout_seconds)  # bounds a shutdown

    # ------------------------------------------------------------------ lifecycle

    @property
    def metrics_port(self) -> int | None:
        return self._http.port if self._http else None

    def stop(self) -> None:
        """Finish the batch in flight, commit, leave the group (signal-safe)."""
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            log.info("%s: finishing the batch in flight, then stopping",
                     signal.Signals(signum).name)
            self._watchdog.arm()
            self.stop()

        def pause(_signum: int, _frame: Any) -> None:
            self._pause_wanted = True

        def resume(_signum: int, _frame: Any) -> None:
            self._pause_wanted = False

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGUSR1, pause)
        signal.signal(signal.SIGUSR2, resume)

    def run(self) -> int:
        """Consume until stopped; the exit code says whether it ended cleanly."""
        log.info("effective configuration: %s", json.dumps(self.settings.masked(), default=str))
        if faults.BROKEN:
            log.warning("RECONCILER_FAULT_BROKEN=%s: this worker is DELIBERATELY BROKEN for the "
                        "fault suite's negative controls; never run it anywhere else",
                        faults.BROKEN)
        for overlap in overlapping_patterns(
                {name: rules.templates for name, rules in self.pipeline.planner.tables.items()}):
            log.warning("key templates overlap: %s", overlap)
        try:
            self._start()
        except BaseException:
            # Released now, not by the interpreter's exit, where librdkafka's threads
            # (retrying a refused handshake, logging through Python) can crash it.
            self.close(commit=False)
            raise
        # Everything built so far lives as long as the worker: moved out of the
        # collector's reach, a full collection no longer walks it (one took 100-170 ms
        # at 20k/s, the p99's outliers) and only what the batches leave behind is seen.
        gc.collect()
        gc.freeze()
        code = EXIT_OK
        try:
            self.loop(self._stopping.is_set)
        except (RetryBudgetExceeded, FatalError) as exc:
            log.error("stopping: %s (offsets of the failed batch were not stored; "
                      "it is processed again after a restart)", exc)
            code = EXIT_FAILED
        except TransientError as exc:  # interrupted while retrying during shutdown
            log.warning("stopped while retrying: %s", exc)
        finally:
            self.close(commit=code == EXIT_OK)
        return code

    def _start(self) -> None:
        if self._http is not None:
            self._http.start()
            log.info("metrics, /healthz, /readyz and /freshness on %s:%d",
                     self.settings.metrics.host, self._http.port)
        topics = self._topics()
        ensure_topic(self._admin, self.settings.kafka.dead_letter_topic, topics,
                     purpose="dead-letter")
        self._parts.dead_letters.fit_topic(self._admin)
        if self._parking is not None:
            self._parking.prepare(self._admin, topics, list(self.shards.clients()))
        self.shards.probe()
        self._housekeeper.start()
        self.consumer.subscribe(self.subscription(), on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)

    def loop(self, until: Callable[[], bool]) -> None:
        """Drive the pipeline until `until()`, between batches reloading the shard map
        and pausing or resuming as asked."""
        batch_size = self.settings.kafka.batch_size
        timeout = self.settings.kafka.poll_timeout_seconds
        pipeline = self.pipeline
        while not until():
            self._tick = time.monotonic()
            if self._tick >= self._next_reload:
                pipeline.drain()  # never swap shard clients under a call
                self._reload_shard_map()
            if self._pause_wanted != self._paused:
                self._set_paused(self._pause_wanted)
            self._failover.replay_if_changed(self.consumer, pipeline)
            wait = timeout
            if self._parking is not None and self._parking.shards():
                self._parking.drain_answering(self.shards, pipeline.drain)
                if self._parking.truncating():
                    wait = 0.0  # a truncate runs in steps between batches: keep turning
            messages = pipeline.poll(batch_size, wait)
            if messages:
                pipeline.push(messages)
        # Stopping: the batch in flight completes. (On an error it is abandoned with its
        # offsets unstored, and processed again after a restart.)
        pipeline.drain()

    def close(self, *, commit: bool) -> None:
        self._stopping.set()  # also: a refusal seen while closing no longer raises
        if faults.SLOW_CLOSE:
            time.sleep(faults.SLOW_CLOSE)
        if commit:
            self._commit()
        with contextlib.suppress(Exception):
            self.consumer.close()  # leaves the group: its partitions move at once
        self.pipeline.abandon()  # a failed batch: its answers are never read
        if self._housekeeper.is_alive():
            self._housekeeper.join(2 * LAG_REQUEST_TIMEOUT)
        if not self._housekeeper.is_alive():  # never close it under the thread using it
            with contextlib.suppress(Exception):
                self._lag_client.close()
        self._parts.close()
        if self._http is not None:
            self._http.stop()
        self._watchdog.cancel()
        events, skipped, heartbeats, dead = self.metrics.tally()
        log.info("accounted for %d records: %d events, %d skipped (%d heartbeats), %d dead "
                 "letters", events + skipped + dead, events, skipped, heartbeats, dead)
        log.info("stopped")

    def subscription(self) -> list[str]:
        return subscription_topics(self.settings, self._topics())

    def _topics(self) -> dict[str, Any]:
        return cluster_topics(self._admin, METADATA_TIMEOUT_SECONDS)

    def _stored(self, stored: Sequence[TopicPartition]) -> None:
        for tp in stored:
            key = (tp.topic, tp.partition)
            if key in self._positions:
                self._positions[key] = tp.offset

    # ------------------------------------------------------------------ rebalances

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # A partition whose commit metadata names a shard that changed server since
        # starts early (see reconciler.pipeline.failover).
        starts, committed = self._failover.starts(consumer, partitions, self.pipeline)
        consumer.incremental_assign(starts)
        if self._paused:
            consumer.pause(partitions)
        self._gaps.assigned(committed)
        for tp in partitions:
            self._positions[tp.topic, tp.partition] = None
        self.freshness.assigned((tp.topic, tp.partition) for tp in partitions)
        self._joined = True
        self.metrics.assigned_partitions.set(len(self._positions))
        if partitions:
            log.info("assigned %s", _names(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Callbacks run inside consume(), between batches: complete the batch in flight,
        # so its offsets are stored, and commit before the partitions move.
        self.pipeline.drain()
        self._commit()
        self._forget(partitions)
        if partitions:
            log.info("revoked %s", _names(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost partitions may already belong to someone else: never commit for them.
        self._forget(partitions)
        log.warning("lost %s (group membership expired)", _names(partitions))

    def _forget(self, partitions: list[TopicPartition]) -> None:
        self._gaps.revoked((tp.topic, tp.partition) for tp in partitions)
        for tp in partitions:
            self.pipeline.floors.pop((tp.topic, tp.partition), None)
        for tp in partitions:
            self._positions.pop((tp.topic, tp.partition), None)
        self.freshness.revoked((tp.topic, tp.partition) for tp in partitions)
        self.metrics.assigned_partitions.set(len(self._positions))

    def _commit(self) -> None:
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError._NO_OFFSET:
                return
            log.warning("commit failed: %s", exc)

    # ------------------------------------------------------------------ housekeeping

    def _housekeeping(self) -> None:
        """Lag, shard probes and readiness every lag_refresh_seconds; the shards'
        servers' identities every valkey.identity_check_seconds (failover detection)."""
        refresh = self.settings.metrics.lag_refresh_seconds
        identities = self.settings.valkey.identity_check_seconds
        next_refresh = next_watch = time.monotonic()
        while not self._stopping.wait(max(0.0, min(next_refresh, next_watch) - time.monotonic())):
            now = time.monotonic()
            tasks: list[Callable[[], None]] = []
            if now >= next_watch:
                next_watch = now + identities
                tasks.append(self.shards.watch)
            refreshing = now >= next_refresh
            if refreshing:
                next_refresh = now + refresh
                tasks += [self.lag.refresh, self.shards.probe]
                if self._parking is not None:
                    tasks.append(self._parking.publish)
            for task in tasks:
                try:
                    task()
                except Exception as exc:  # noqa: BLE001 - housekeeping must go on
                    log.debug("housekeeping %s failed: %s", task.__qualname__, exc)
            if refreshing:
                self.metrics.ready.set(1 if self._ready().ok else 0)

    def _reload_shard_map(self) -> None:
        self._next_reload = time.monotonic() + self.settings.shard_map_reload_seconds
        reloaded = self._watcher.poll()
        if reloaded is None:
            return
        if not reloaded.ok:  # logged, then counted: whoever sees the count finds the line
            log.error("shard map %s rejected, keeping version %d: %s", self.settings.shard_map,
                      reloaded.shard_map.version, reloaded.error)
            self.metrics.shard_map_reloads.labels("error").inc()
            self.metrics.shard_map_reload_failed.set(1)
            return
        problems = self.shards.problems(reloaded.shard_map)
        if problems:
            log.error("shard map %s version %d rejected, keeping the one in use: %s",
                      self.settings.shard_map, reloaded.shard_map.version, "; ".join(problems))
            self.metrics.shard_map_reloads.labels("error").inc()
            self.metrics.shard_map_reload_failed.set(1)
            return
        self.pipeline.planner = self.pipeline.planner.with_shard_map(reloaded.shard_map)
        self.shards.update(reloaded.shard_map)
        self.metrics.shard_map_reloads.labels("ok").inc()
        self.metrics.shard_map_reload_failed.set(0)
        self.metrics.shard_map_version.set(reloaded.shard_map.version)
        log.info("shard map reloaded: version %d", reloaded.shard_map.version)

    def _set_paused(self, paused: bool) -> None:
        assignment = self.consumer.assignment()
        if paused:
            self.consumer.pause(assignment)
            log.warning("paused (SIGUSR1): consuming nothing until SIGUSR2")
        else:
            self.consumer.resume(assignment)
            log.warning("resumed (SIGUSR2)")
        self._paused = paused

    # ------------------------------------------------------------------ health

    def _live(self) -> Status:
        stalled = time.monotonic() - self._tick
        budget = max(self.settings.valkey.retry_budget_seconds,
                     self.settings.kafka.retry_budget_seconds) + LIVENESS_SLACK
        return Status(stalled < budget, {"loop_stalled_seconds": round(stalled, 1)})

    def _ready(self) -> Status:
        shards = self.shards.states()
        parked = set(self._parking.shards()) if self._parking is not None else set()
        # A parked shard does not make the worker unready: it reconciles the others, and
        # a restart would not help (the shard's own alert says it is parked).
        ok = self._joined and all(up or name in parked for name, up in shards.items()) \
            and not self._stopping.is_set()
        return Status(ok, {
            "joined_group": self._joined,
            "assigned_partitions": len(self._positions),
            "paused": self._paused,
            "shards": {name: "parked" if name in parked else "up" if up else "unreachable"
                       for name, up in shards.items()},
            "lag": {f"{t}[{p}]": lag for (t, p), lag in sorted(self.lag.last.items())},
        })


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions)


def run_worker(settings: Settings) -> int:
    worker = Worker(settings)
    worker.install_signal_handlers()
    return worker.run()
