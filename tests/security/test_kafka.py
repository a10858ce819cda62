"""Kafka over SASL_SSL with SCRAM-SHA-512, as a principal limited by ACLs; the cache
over TLS as a Valkey ACL user. The whole path works with exactly the documented
privileges, and a wrong password, a wrong CA or a topic outside the ACLs stop the
worker at once with an error that says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import valkey

from connectors.valkey.functions import LIBRARY_NAME
from tests.conftest import Stack
from tests.e2e.support import WorkerProcess, create_topic, read_topic
from tests.e2e.test_recorded_events import produce
from tests.security.conftest import (
    Pipeline,
    Secured,
    expected_versions,
    password_env,
    secure_config,
)
from tests.security.support import exit_of, output, sample_sum, versions, wait_committed

pytestmark = pytest.mark.e2e


def test_worker_reconciles_over_sasl_ssl_and_tls_with_least_privilege(
        stack: Stack, secured: Secured, pipeline: Pipeline, cache: valkey.Valkey,
        tmp_path: Path) -> None:
    cache.function_flush()  # the restricted user must load the functions itself
    expected = expected_versions(pipeline.records)
    assert any(v is not None for v in expected.values()), "the recording must leave entries"
    # One poison record: the dead-letter producer must work with its ACLs too.
    posts = next(t for t in pipeline.topics if t.endswith(".posts"))
    produce(stack, [{"topic": posts, "key": None, "value": "{not json", "headers": []}])
    config = secure_config(tmp_path, stack, secured, pipeline.group, pipeline.topics)

    worker = WorkerProcess(config, tmp_path / "worker.log", env=password_env(secured))
    try:
        wait_committed(stack, worker, pipeline.group, pipeline.topics)
        ready = worker.ready()
        metrics = worker.get("/metrics")[1]
    finally:
        code = worker.stop()

    assert code == 0, output(worker)[-3000:]
    assert ready["shards"] == {"a": "up"}
    assert sample_sum(metrics, "reconciler_dead_letters_total") == 1
    [letter] = read_topic(stack, f"{pipeline.group}.dlq", expected=1)
    assert letter.value() == b"{not json"
    # Every record of the tables' topics is an event: the changes, and the tombstones
    # (key-only deletes of their tables).
    assert sample_sum(metrics, "reconciler_events_total") == len(pipeline.records)
    assert versions(cache, sorted(expected)) == expected
    assert cache.function_list(library=LIBRARY_NAME), "loaded by the ACL user"


def test_wrong_password_stops_the_worker_with_an_authentication_error(
        stack: Stack, secured: Secured, pipeline: Pipeline, tmp_path: Path) -> None:
    wrong = "not-the-kafka-password-4242"
    config = secure_config(tmp_path, stack, secured, pipeline.group, pipeline.topics)
    worker = WorkerProcess(config, tmp_path / "worker.log",
                           env=password_env(secured, kafka=wrong))

    code, text = exit_of(worker)

    assert code == 2, text[-3000:]
    assert "kafka refused the connection" in text
    assert "SASL authentication error" in text and "invalid credentials" in text
    assert "Traceback" not in text
    assert wrong not in text and secured.kafka_password not in text


def test_wrong_ca_stops_the_worker_with_a_certificate_error(
        stack: Stack, secured: Secured, pipeline: Pipeline, wrong_ca: Path,
        tmp_path: Path) -> None:
    config = secure_config(tmp_path, stack, secured, pipeline.group, pipeline.topics,
                           ca_file=wrong_ca)
    worker = WorkerProcess(config, tmp_path / "worker.log", env=password_env(secured))

    code, text = exit_of(worker)

    assert code == 2, text[-3000:]
    assert "kafka refused the connection" in text
    assert "SSL handshake failed" in text and "certificate verify failed" in text
    assert "Traceback" not in text
    # Its clients closed before the exit, not left to the interpreter's teardown (where
    # one crashed it with SIGSEGV, exit -11, in CI).
    assert " stopped\n" in text


def test_a_topic_outside_the_acls_stops_the_worker_with_an_authorization_error(
        stack: Stack, secured: Secured, pipeline: Pipeline, uid: str,
        tmp_path: Path) -> None:
    forbidden = create_topic(stack, f"forbidden{uid}.public.posts", partitions=1)
    config = secure_config(tmp_path, stack, secured, pipeline.group,
                           [*pipeline.topics, forbidden])
    worker = WorkerProcess(config, tmp_path / "worker.log", env=password_env(secured))

    code, text = exit_of(worker)

    assert code == 2, text[-3000:]
    assert "Topic authorization failed" in text
    assert "Traceback" not in text
