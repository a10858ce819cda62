"""The long-running worker: consume, decode, plan, invalidate, then store offsets.

Batch by batch: ``consume()`` up to ``kafka.batch_size`` records; decode and plan them
(``reconciler.batch``); send every action, one pipelined call per shard; produce and
confirm the dead letters; only then store the batch's offsets — a batch completes
whole, so stored offsets are contiguous by construction. All on one thread: while a
batch's calls run on the shards the next batch is consumed, decoded and planned, then
the first one's answers are read and it completes before the next one is sent.
Auto-commit ships stored offsets every second; a revocation completes the batch in
flight and commits synchronously (rebalance callbacks run inside ``consume()``); a
shutdown finishes the batch in flight, commits and leaves the group.

Signals: SIGTERM/SIGINT stop gracefully, within ``shutdown_timeout_seconds`` (past it
the worker says so and exits 2 by itself, before an orchestrator's SIGKILL can land in
the middle of a commit); SIGUSR1 pauses consumption (keeping the partitions), SIGUSR2
resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from connectors.debezium.decode import Decoder
from connectors.kafka import (
    admin_config,
    consumer_config,
    is_fatal,
    producer_config,
)
from reconciler import faults
from reconciler.batch import BatchMetrics, BatchResult, Prepared, prepare_batch
from reconciler.clients import ensure_topic, kafka_security, subscription_topics
from reconciler.deadletter import DeadLetters
from reconciler.errors import (
    ConfigError,
    FatalError,
    RetryBudgetExceeded,
    TransientError,
)
from reconciler.freshness import Freshness
from reconciler.gaps import RetentionGaps
from reconciler.health import HealthServer, Status
from reconciler.hooks import Hooks
from reconciler.invalidator import Flight, Invalidator, Outcome
from reconciler.lag import REQUEST_TIMEOUT as LAG_REQUEST_TIMEOUT
from reconciler.lag import LagMonitor
from reconciler.metrics import Metrics
from reconciler.planner import KEY_ONLY, MISSING, Planner
from reconciler.settings import Settings
from reconciler.shards import ShardPool
from reconciler.templates import overlapping_patterns
from shard_map import ShardMapError, ShardMapWatcher

log = logging.getLogger(__name__)

TP = tuple[str, int]
LIVENESS_SLACK = 60.0  # seconds the loop may stall beyond the retry budget before /healthz fails
DEAD_LETTER_LOGS_PER_BATCH = 10  # dead letters logged one by one per batch; the rest summed
EXIT_OK = 0  # clean shutdown
EXIT_FAILED = 2  # a dependency stayed unavailable, or refused us: see the last log line
METADATA_TIMEOUT_SECONDS = 10.0  # start-up: how long the cluster may take to answer


class Worker:
    """The reconciler's consume loop and everything it runs beside it."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None,
                 group_id: str | None = None, serve_metrics: bool = True,
                 dry_run: bool = False, count_actions: bool = False,
                 hooks: Hooks | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics.create(registry or CollectorRegistry())
        self.hooks = hooks or faults.hooks()
        self.group_id = group_id or settings.kafka.group_id
        self.dry_run = dry_run
        self.count_actions = dry_run or count_actions  # per table/shard/kind, for replay
        try:
            self._watcher = ShardMapWatcher(settings.shard_map)
        except ShardMapError as exc:
            raise ConfigError(f"shard_map: {exc}") from exc
        shard_map = self._watcher.current
        self._next_reload = time.monotonic() + settings.shard_map_reload_seconds
        self.metrics.shard_map_version.set(shard_map.version)
        self.planner = Planner.for_settings(
            settings, shard_map, tombstones=not faults.broken("ignore_tombstones"))
        for name, rules in self.planner.tables.items():  # series at zero, for the alerts
            for template in rules.templates:
                self.metrics.unresolved.labels(name, template.source, MISSING)
                if template not in rules.key_templates:
                    self.metrics.unresolved.labels(name, template.source, KEY_ONLY)
        self.decoder = Decoder(heartbeat_prefix=settings.kafka.heartbeat_topic_prefix,
                               columns=self.planner.columns)
        self.shards = ShardPool(settings, self.metrics)
        problems = self.shards.problems(shard_map)
        if problems:
            raise ConfigError(f"shard_map {settings.shard_map}: " + "; ".join(problems))
        self.shards.update(shard_map)
        self.freshness = Freshness()
        self._stopping = threading.Event()
        self._pause_wanted = False
        self._paused = False
        self._joined = False
        self._positions: dict[TP, int | None] = {}
        self._tick = time.monotonic()
        self._batch_metrics = BatchMetrics(self.metrics)
        self._rdkafka_log = logging.getLogger("kafka")
        security = kafka_security(settings)
        kafka = settings.kafka
        self._security = security
        refused = {"error_cb": self._on_kafka_error}
        self.consumer = Consumer(consumer_config(
            kafka.bootstrap_servers, self.group_id, security, kafka.client,
            logger=self._rdkafka_log) | refused)
        self._producer = Producer(producer_config(
            kafka.bootstrap_servers, security, kafka.client, logger=self._rdkafka_log) | {
            "message.timeout.ms": int(kafka.retry_budget_seconds * 1000)} | refused)
        self.dead_letters = DeadLetters(self._producer, kafka.dead_letter_topic, self.group_id,
                                        retry_budget_seconds=kafka.retry_budget_seconds)
        self._admin = AdminClient(admin_config(  # type: ignore[arg-type]
            kafka.bootstrap_servers, security, kafka.client, logger=self._rdkafka_log)
            | refused)
        # The lag monitor asks with a consumer of its own that never subscribes, not the
        # admin client: see reconciler.lag about librdkafka's admin API and broker restarts.
        self._lag_client = Consumer(consumer_config(
            kafka.bootstrap_servers, self.group_id, security, kafka.client,
            logger=self._rdkafka_log) | {"enable.auto.commit": False,
                                         "client.id": f"cache-reconciler-{self.group_id}-lag"})
        self.lag = LagMonitor(self._lag_client, self.group_id, self.metrics, self.freshness,
                              lambda: dict(self._positions))
        self.invalidator = Invalidator(
            self.shards.clients, retry_budget_seconds=settings.valkey.retry_budget_seconds,
            truncate_max_keys_per_second=settings.valkey.truncate_max_keys_per_second,
            on_shard_state=self.shards.mark,
            on_retry=self.metrics.retries.labels("valkey").inc,
            should_stop=self._stopping.is_set, hooks=self.hooks,
            fences=not faults.broken("no_fences"))
        self.gaps = RetentionGaps(self._low_watermark, self.metrics.unseen)
        self._http: HealthServer | None = None
        if serve_metrics:
            self._http = HealthServer(
                settings.metrics.host, settings.metrics.port, self.metrics.registry,
                live=self._live, ready=self._ready, freshness=self.freshness.as_json)
        self._housekeeper = threading.Thread(target=self._housekeeping, name="housekeeping",
                                             daemon=True)
        # The batch whose Valkey calls are out while the next one is planned (its
        # Flight is None when it sent nothing).
        self._in_flight: tuple[Prepared, Flight | None] | None = None
        self._watchdog: threading.Timer | None = None  # bounds a signalled shutdown

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
            self._arm_watchdog()
            self.stop()

        def pause(_signum: int, _frame: Any) -> None:
            self._pause_wanted = True

        def resume(_signum: int, _frame: Any) -> None:
            self._pause_wanted = False

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGUSR1, pause)
        signal.signal(signal.SIGUSR2, resume)

    def _arm_watchdog(self) -> None:
        """Give a signalled shutdown `shutdown_timeout_seconds`, then end the process."""
        if self._watchdog is not None:
            return
        budget = self.settings.shutdown_timeout_seconds
        self._watchdog = threading.Timer(budget, self._shutdown_overrun, args=(budget,))
        self._watchdog.daemon = True
        self._watchdog.start()

    @staticmethod
    def _shutdown_overrun(budget: float) -> None:
        log.error("shutdown took longer than shutdown_timeout_seconds (%gs): exiting now "
                  "(offsets not committed yet are processed again after a restart)", budget)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(EXIT_FAILED)

    def run(self) -> int:
        """Consume until stopped; the exit code says whether it ended cleanly."""
        log.info("effective configuration: %s", json.dumps(self.settings.masked(), default=str))
        if faults.BROKEN:
            log.warning("RECONCILER_FAULT_BROKEN=%s: this worker is DELIBERATELY BROKEN for the "
                        "fault suite's negative controls; never run it anywhere else",
                        faults.BROKEN)
        for overlap in overlapping_patterns({name: rules.templates
                                             for name, rules in self.planner.tables.items()}):
            log.warning("key templates overlap: %s", overlap)
        if self._http is not None:
            self._http.start()
            log.info("metrics, /healthz, /readyz and /freshness on %s:%d",
                     self.settings.metrics.host, self._http.port)
        self._ensure_dead_letter_topic()
        self.shards.probe()
        self._housekeeper.start()
        self.consumer.subscribe(self.subscription(), on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
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

    def loop(self, until: Callable[[], bool]) -> None:
        """Consume until `until()`. A batch is in flight while the next is consumed,
        decoded and planned: its Valkey calls are sent, and it completes (answers read,
        dead letters confirmed, offsets stored) before the next one's calls are sent —
        so each shard sees every key's operations in order, and no offset is stored
        before its work is acknowledged. When nothing is waiting to be consumed the
        batch in flight completes before the worker blocks for more."""
        batch_size = self.settings.kafka.batch_size
        timeout = self.settings.kafka.poll_timeout_seconds
        while not until():
            self._tick = time.monotonic()
            if self._tick >= self._next_reload:
                self._finish_in_flight()  # never swap shard clients under a call
                self._reload_shard_map()
            if self._pause_wanted != self._paused:
                self._set_paused(self._pause_wanted)
            messages = self._next_batch(batch_size, timeout)
            if not messages:
                continue
            prepared = self.prepare(messages)
            self.gaps.check(prepared.firsts, prepared.jumps, prepared.positions)
            self._finish_in_flight()
            if faults.broken("early_offsets"):  # stored and committed before any call
                self._store(prepared.positions)
                self._commit()
            self.hooks.decoded()
            self._in_flight = (prepared, self._start(prepared))
        # Stopping: the batch in flight completes. (On an error it is abandoned with its
        # offsets unstored, and processed again after a restart.)
        self._finish_in_flight()

    def _start(self, prepared: Prepared) -> Flight | None:
        """Send the batch's Valkey calls (None: nothing to send)."""
        if not prepared.actions or self.dry_run:
            return None
        return self.invalidator.start(prepared.actions)

    def _finish(self, flight: Flight | None) -> Outcome | None:
        """Read a started batch's answers (None: it sent nothing)."""
        return None if flight is None else self.invalidator.finish(flight)

    def _finish_in_flight(self) -> None:
        if self._in_flight is not None:
            prepared, flight = self._in_flight
            self._in_flight = None
            self.complete(prepared, self._finish(flight))

    def _next_batch(self, batch_size: int, timeout: float) -> list[Message]:
        """Whatever is ready now, up to batch_size; else wait up to `timeout` for one
        record and take whatever arrived with it. consume(n, timeout) alone waits the
        whole timeout for a full batch: half a second of delay on a quiet topic."""
        messages = self.consumer.consume(batch_size, 0)
        if messages:
            return messages
        self._finish_in_flight()  # nothing waiting: complete the batch in flight, then block
        messages = self.consumer.consume(1, timeout)
        if messages and batch_size > 1:
            messages += self.consumer.consume(batch_size - 1, 0)
        return messages

    def close(self, *, commit: bool) -> None:
        self._stopping.set()  # also: a refusal seen while closing no longer raises
        if faults.SLOW_CLOSE:
            time.sleep(faults.SLOW_CLOSE)
        if commit:
            self._commit()
        with contextlib.suppress(Exception):
            self.consumer.close()  # leaves the group: its partitions move at once
        self._producer.flush(5)
        if self._in_flight is not None:  # a failed batch: its answers are never read
            flight = self._in_flight[1]
            self._in_flight = None
            if flight is not None:
                self.invalidator.abandon(flight)
        if self._housekeeper.is_alive():
            self._housekeeper.join(2 * LAG_REQUEST_TIMEOUT)
        if not self._housekeeper.is_alive():  # never close it under the thread using it
            with contextlib.suppress(Exception):
                self._lag_client.close()
        self.invalidator.close()
        self.shards.close()
        if self._http is not None:
            self._http.stop()
        if self._watchdog is not None:
            self._watchdog.cancel()
        events, skipped, heartbeats, dead = self.metrics.tally()
        log.info("accounted for %d records: %d events, %d skipped (%d heartbeats), %d dead "
                 "letters", events + skipped + dead, events, skipped, heartbeats, dead)
        log.info("stopped")

    def subscription(self) -> list[str]:
        return subscription_topics(self.settings, self._topics())

    # ------------------------------------------------------------------ one batch

    def process(self, messages: list[Message]) -> BatchResult:
        """One batch, start to finish (what replay and the tests call)."""
        prepared = self.prepare(messages)
        self.hooks.decoded()
        return self.complete(prepared, self._finish(self._start(prepared)))

    def prepare(self, messages: list[Message]) -> Prepared:
        """Decode and plan a batch: CPU only, nothing sent anywhere."""
        return prepare_batch(
            messages, self.decoder, self.planner, max_bytes=self.settings.max_event_bytes,
            dead_letter_topic=self.dead_letters.topic,
            heartbeat_table=self.settings.freshness.heartbeat_table,
            count_actions=self.count_actions, consumer_error=self._consumer_error)

    def complete(self, prepared: Prepared, outcome: Outcome | None) -> BatchResult:
        """With the batch's invalidations acknowledged (`outcome`, None when nothing was
        sent), confirm its dead letters, then publish its counts and store its offsets."""
        result = prepared.result
        if outcome is not None:
            result.invalidations = outcome.results
            result.coalesced = outcome.coalesced
            for shard, removed in outcome.truncated.items():
                self.metrics.truncated_keys.labels(shard).inc(removed)
            for shard, saved in outcome.coalesced.items():
                self.metrics.coalesced.labels(shard).inc(saved)
        if prepared.dead:
            self._dead_letter(prepared.dead, result)
        acknowledged = time.time()
        self.hooks.acknowledged()
        # Counted before the offsets are stored: once an offset is committed, the work
        # before it shows in the metrics.
        self._batch_metrics.publish(result, prepared.commits, acknowledged,
                                    observe_delay=not self.dry_run)
        if not self.dry_run:
            self._store(prepared.positions)
            self.hooks.stored()
        for tp, (commit_ms, source_table) in prepared.latest.items():
            self.freshness.reconciled(tp, commit_ms, source_table)
        if prepared.heartbeat is not None:
            self.freshness.heartbeat(prepared.heartbeat)
        self.metrics.batch.observe(time.perf_counter() - prepared.started)
        return result

    def _dead_letter(self, dead: list[tuple[Message, str, str]], result: BatchResult) -> None:
        for index, (message, reason, error) in enumerate(dead):
            if index < DEAD_LETTER_LOGS_PER_BATCH:
                log.warning("%s[%d]@%d: dead-lettered (%s): %s", message.topic(),
                            message.partition(), message.offset(), reason, error)
            result.dead_letters[reason] += 1
            if not self.dry_run:
                self.dead_letters.send(message, reason, error)
        if len(dead) > DEAD_LETTER_LOGS_PER_BATCH:
            log.warning("%d more records dead-lettered in this batch",
                        len(dead) - DEAD_LETTER_LOGS_PER_BATCH)
        if not self.dry_run:
            self.dead_letters.confirm()

    def _store(self, positions: dict[TP, int]) -> None:
        if not positions:
            return
        offsets = [TopicPartition(topic, partition, offset)
                   for (topic, partition), offset in positions.items()]
        try:
            self.consumer.store_offsets(offsets=offsets)
            stored = offsets
        except KafkaException:
            # A partition was revoked while the batch ran: store the others; the new
            # owner re-processes the rest from the committed offset (idempotent).
            stored = []
            for tp in offsets:
                try:
                    self.consumer.store_offsets(offsets=[tp])
                    stored.append(tp)
                except KafkaException as exc:
                    log.info("%s[%d]@%d: offset not stored (partition no longer assigned: "
                             "%s)", tp.topic, tp.partition, tp.offset, exc)
        for tp in stored:
            key = (tp.topic, tp.partition)
            if key in self._positions:
                self._positions[key] = tp.offset

    # ------------------------------------------------------------------ rebalances

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.incremental_assign(partitions)
        if self._paused:
            consumer.pause(partitions)
        self.gaps.assigned(self._starts(consumer, partitions))
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
        self._finish_in_flight()
        self._commit()
        self._forget(partitions)
        if partitions:
            log.info("revoked %s", _names(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost partitions may already belong to someone else: never commit for them.
        self._forget(partitions)
        log.warning("lost %s (group membership expired)", _names(partitions))

    def _starts(self, consumer: Consumer, partitions: list[TopicPartition]
                ) -> dict[TP, int | None]:
        """Where each assigned partition continues: its committed offset, or 0 for one
        without (a new group starts at the earliest offset); None when the broker does
        not say (the retention-gap check then starts from the first batch)."""
        starts: dict[TP, int | None] = {(tp.topic, tp.partition): None for tp in partitions}
        if not partitions:
            return starts
        try:
            for tp in consumer.committed(partitions, timeout=METADATA_TIMEOUT_SECONDS):
                if tp.error is None:
                    # OFFSET_INVALID (-1001): nothing committed; auto.offset.reset=earliest
                    starts[tp.topic, tp.partition] = tp.offset if tp.offset >= 0 else 0
        except KafkaException as exc:
            log.warning("committed offsets of the assigned partitions unavailable (%s): the "
                        "retention-gap check starts after their first batch", exc)
        return starts

    def _low_watermark(self, tp: TP) -> int | None:
        """A partition's log start offset: librdkafka's, from its last fetch, else the
        broker's."""
        partition = TopicPartition(*tp)
        try:
            low, _ = self.consumer.get_watermark_offsets(partition, cached=True)
            if low is None or low < 0:
                low, _ = self.consumer.get_watermark_offsets(partition, timeout=5,
                                                             cached=False)
        except KafkaException as exc:
            log.warning("%s[%d]: log start offset unavailable (%s): a retention gap may go "
                        "uncounted", tp[0], tp[1], exc)
            return None
        return low if low is not None and low >= 0 else None

    def _forget(self, partitions: list[TopicPartition]) -> None:
        self.gaps.revoked((tp.topic, tp.partition) for tp in partitions)
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
        interval = self.settings.metrics.lag_refresh_seconds
        while not self._stopping.wait(interval):
            for task in (self.lag.refresh, self.shards.probe):
                try:
                    task()
                except Exception as exc:  # noqa: BLE001 - housekeeping must go on
                    log.debug("housekeeping %s failed: %s", task.__qualname__, exc)
            self.metrics.ready.set(1 if self._ready().ok else 0)

    def _reload_shard_map(self) -> None:
        self._next_reload = time.monotonic() + self.settings.shard_map_reload_seconds
        reloaded = self._watcher.poll()
        if reloaded is None:
            return
        if not reloaded.ok:
            self.metrics.shard_map_reloads.labels("error").inc()
            self.metrics.shard_map_reload_failed.set(1)
            log.error("shard map %s rejected, keeping version %d: %s", self.settings.shard_map,
                      reloaded.shard_map.version, reloaded.error)
            return
        problems = self.shards.problems(reloaded.shard_map)
        if problems:
            self.metrics.shard_map_reloads.labels("error").inc()
            self.metrics.shard_map_reload_failed.set(1)
            log.error("shard map %s version %d rejected, keeping the one in use: %s",
                      self.settings.shard_map, reloaded.shard_map.version, "; ".join(problems))
            return
        self.planner = self.planner.with_shard_map(reloaded.shard_map)
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

    def _consumer_error(self, error: KafkaError) -> None:
        if is_fatal(error):
            raise FatalError(f"kafka: {error.str()} (check the credentials, ACLs and "
                             "kafka.security settings)")
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            log.warning("kafka: %s (is the topic created? `reconciler doctor` checks)",
                        error.str())
            return
        log.warning("kafka: %s", error.str())

    def _on_kafka_error(self, error: KafkaError) -> None:
        """librdkafka's error_cb, served on this thread inside consume(), flush() and
        poll(). librdkafka retries a failed authentication or TLS handshake forever,
        telling only this callback; such an error (see `is_fatal`) stops the worker: the
        FatalError raised here comes out of that consume(), flush() or poll(). Others
        librdkafka retries, and logs through the `kafka` logger itself."""
        if is_fatal(error) and not self._stopping.is_set():
            raise FatalError(f"kafka refused the connection: {error.str()} (check "
                             "kafka.security: the credentials, the CA, the ACLs)")
        log.debug("kafka: %s", error.str())

    def _topics(self) -> dict[str, Any]:
        """The topics the cluster shows us. A refused authentication or TLS handshake
        stops start-up at once (FatalError from `_on_kafka_error`) rather than ending
        as a metadata timeout that does not say why."""
        deadline = time.monotonic() + METADATA_TIMEOUT_SECONDS
        while True:
            try:
                return dict(self._admin.list_topics(timeout=1).topics)
            except KafkaException:
                self._admin.poll(0)  # serves error_cb: raises FatalError if refused
                if time.monotonic() >= deadline:
                    raise

    def _ensure_dead_letter_topic(self) -> None:
        ensure_topic(self._admin, self.settings.kafka.dead_letter_topic, self._topics(),
                     purpose="dead-letter")

    # ------------------------------------------------------------------ health

    def _live(self) -> Status:
        stalled = time.monotonic() - self._tick
        budget = max(self.settings.valkey.retry_budget_seconds,
                     self.settings.kafka.retry_budget_seconds) + LIVENESS_SLACK
        return Status(stalled < budget, {"loop_stalled_seconds": round(stalled, 1)})

    def _ready(self) -> Status:
        shards = self.shards.states()
        ok = self._joined and all(shards.values()) and not self._stopping.is_set()
        return Status(ok, {
            "joined_group": self._joined,
            "assigned_partitions": len(self._positions),
            "paused": self._paused,
            "shards": {name: "up" if up else "unreachable" for name, up in shards.items()},
            "lag": {f"{t}[{p}]": lag for (t, p), lag in sorted(self.lag.last.items())},
        })


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions)


def run_worker(settings: Settings) -> int:
    worker = Worker(settings)
    worker.install_signal_handlers()
    return worker.run()
