"""Fixtures for the security tests: the secured services of the stack (stack/security.py),
their secrets, an unrelated CA, per-test Kafka ACLs for the reconciler's principal,
and a config that reaches Kafka over SASL_SSL and Valkey over TLS as the ACL users.

Every secret is read from `.stack/secrets/` and handed to the worker through the
environment or a file, never written into the config file.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import valkey
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from stack import security
from tests.conftest import Stack
from tests.e2e.support import create_topic, write_config
from tests.e2e.test_recorded_events import produce, recorded, renamed

TABLE_TOPICS = ("public.posts", "public.comments", "public.profiles")  # of the recording


@dataclass(frozen=True)
class Secured:
    """The secured endpoints and the secrets that open them."""

    ca_file: Path
    kafka_bootstrap: str  # the SASL_SSL listener
    kafka_user: str
    kafka_password: str = field(repr=False)
    valkey_url: str  # valkeys:// through stunnel
    valkey_user: str
    valkey_password: str = field(repr=False)
    valkey_admin: str
    valkey_admin_password: str = field(repr=False)

    def admin_client(self) -> valkey.Valkey:
        """valkey-acl as its admin user, over TLS."""
        return valkey.Valkey.from_url(self.valkey_url, username=self.valkey_admin,
                                      password=self.valkey_admin_password,
                                      ssl_ca_certs=str(self.ca_file))


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((security.HOST, port)) == 0


@pytest.fixture(scope="session")
def secured(stack: Stack) -> Secured:
    missing = [f"{what} on {security.HOST}:{port}" for what, port in (
        ("kafka's SASL_SSL listener", security.KAFKA_SASL_PORT),
        ("valkey-acl", security.VALKEY_ACL_PORT),
        ("valkey-tls (stunnel)", security.VALKEY_TLS_PORT)) if not _listening(port)]
    if missing:
        pytest.fail("the secured services are not running: " + "; ".join(missing) +
                    ". `python -m stack up` starts them, and `python -m stack up valkey-tls` "
                    "the TLS Valkey (scripts/test runs both; a broker started before the "
                    "SASL_SSL listener existed needs `python -m stack restart kafka connect`)",
                    pytrace=False)
    ends = security.endpoints()
    return Secured(
        ca_file=Path(str(ends["ca_file"])),
        kafka_bootstrap=str(ends["kafka_sasl_bootstrap"]),
        kafka_user=security.KAFKA_USER,
        kafka_password=security.secret(f"kafka-{security.KAFKA_USER}"),
        valkey_url=str(ends["valkey_tls_url"]),
        valkey_user=security.VALKEY_USER,
        valkey_password=security.secret(f"valkey-{security.VALKEY_USER}"),
        valkey_admin=security.VALKEY_ADMIN,
        valkey_admin_password=security.secret(f"valkey-{security.VALKEY_ADMIN}"),
    )


@pytest.fixture(scope="session")
def wrong_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second CA, unrelated to the one that signed the stack's certificates."""
    return security.make_ca(tmp_path_factory.mktemp("wrong-ca"), "an unrelated CA")


@pytest.fixture
def cache(secured: Secured) -> Iterator[valkey.Valkey]:
    """valkey-acl as admin, flushed before and after the test."""
    client = secured.admin_client()
    client.flushall()
    yield client
    client.flushall()
    client.close()


# --------------------------------------------------------------------------- Kafka


def plaintext_admin(stack: Stack) -> AdminClient:
    """The PLAINTEXT listener: User:ANONYMOUS, a super user on the local broker."""
    return AdminClient({"bootstrap.servers": stack.kafka_bootstrap})


def reconciler_acls(prefix: str, group: str, dead_letter_topic: str) -> list[AclBinding]:
    """The least privilege of docs/security.md for User:reconciler: read its topics and
    commit in its group, describe them for lag, create and write its dead-letter topic,
    create, write and read its shards' parking topics and commit their drain's group."""
    principal = f"User:{security.KAFKA_USER}"

    def allow(kind: Any, name: str, pattern: Any, operation: Any) -> AclBinding:
        return AclBinding(kind, name, pattern, principal, "*", operation,
                          AclPermissionType.ALLOW)

    topic, group_kind = ResourceType.TOPIC, ResourceType.GROUP
    prefixed, literal = ResourcePatternType.PREFIXED, ResourcePatternType.LITERAL
    return [
        allow(topic, prefix, prefixed, AclOperation.READ),
        allow(topic, prefix, prefixed, AclOperation.DESCRIBE),
        allow(group_kind, group, literal, AclOperation.READ),
        allow(topic, dead_letter_topic, literal, AclOperation.CREATE),
        allow(topic, dead_letter_topic, literal, AclOperation.WRITE),
        allow(topic, dead_letter_topic, literal, AclOperation.DESCRIBE),
        *(allow(topic, f"{group}.parked.", prefixed, operation) for operation in (
            AclOperation.CREATE, AclOperation.WRITE, AclOperation.READ, AclOperation.DESCRIBE)),
        allow(group_kind, f"{group}.parked", literal, AclOperation.READ),
    ]


@dataclass(frozen=True)
class Pipeline:
    """A fresh group and topics holding the recorded events, readable by the reconciler."""

    group: str
    topics: list[str]
    records: list[dict[str, Any]]


@pytest.fixture
def pipeline(stack: Stack, uid: str) -> Iterator[Pipeline]:
    prefix, group = f"sec{uid}", f"sec{uid}"
    records = [{**r, "topic": renamed(r["topic"], prefix)} for r in recorded()
               if r["topic"].split(".", 1)[-1] in TABLE_TOPICS]
    topics = sorted({r["topic"] for r in records})
    for topic in topics:
        create_topic(stack, topic, partitions=1)  # one partition keeps the recorded order
    produce(stack, records)
    admin = plaintext_admin(stack)
    acls = reconciler_acls(f"{prefix}.", group, f"{group}.dlq")
    for future in admin.create_acls(acls).values():
        future.result(timeout=30)
    yield Pipeline(group, topics, records)
    for binding in acls:
        pattern = AclBindingFilter(binding.restype, binding.name, binding.resource_pattern_type,
                                   binding.principal, binding.host, binding.operation,
                                   binding.permission_type)
        admin.delete_acls([pattern])[pattern].result(timeout=30)


def secure_config(directory: Path, stack: Stack, secured: Secured, group: str,
                  topics: list[str], *, ca_file: Path | None = None,
                  valkey_ca_file: Path | None = None,
                  overrides: dict[str, Any] | None = None) -> Path:
    """A config for Kafka over SASL_SSL and one Valkey shard over TLS, as the ACL users;
    no password in it (pass them through the environment or *_file settings)."""
    return write_config(
        directory, stack, group=group, topics=topics,
        shard_map={"shards": {"a": {"url": secured.valkey_url}},
                   "ranges": [{"from": 1, "to": 1000, "shard": "a"}], "moving": []},
        overrides={
            "kafka.bootstrap_servers": secured.kafka_bootstrap,
            "kafka.security": {"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                               "sasl_username": secured.kafka_user,
                               "ssl_ca_file": str(ca_file or secured.ca_file)},
            "valkey": {"username": secured.valkey_user,
                       "tls": {"enabled": True,
                               "ca_file": str(valkey_ca_file or secured.ca_file)},
                       "retry_budget_seconds": 20},
            "postgres": {},
            **(overrides or {}),
        })


def password_env(secured: Secured, *, kafka: str | None = None,
                 valkey_password: str | None = None) -> dict[str, str]:
    """The secrets as the environment variables a Kubernetes Secret would set."""
    return {"RECONCILER_KAFKA__SECURITY__SASL_PASSWORD": kafka or secured.kafka_password,
            "RECONCILER_VALKEY__PASSWORD": valkey_password or secured.valkey_password}


# --------------------------------------------------------------------------- expectations


MAX_VERSION = 2**63 - 1  # the delete fence


def expected_versions(records: list[dict[str, Any]]) -> dict[str, int | None]:
    """The `v` each post:/profile: key must hold after the recording is reconciled
    (None: no entry), by the cache protocol: a change fences at its version, a snapshot
    read never creates an entry, a delete fences at 2^63-1."""
    templates = {"public.posts": ("post:{}", "id"), "public.profiles": ("profile:{}", "user_id")}
    state: dict[str, int | None] = {}
    for record in records:
        table = record["topic"].split(".", 1)[-1]
        if table not in templates or record["value"] is None:
            continue
        template, column = templates[table]
        key = template.format(json.loads(record["key"])["payload"][column])
        payload = json.loads(record["value"])["payload"]
        current = state.get(key)
        if payload["op"] == "d":
            state[key] = MAX_VERSION
        elif payload["op"] in ("c", "u"):
            state[key] = max(current or 0, payload["after"]["system_version"])
        elif payload["op"] == "r" and current is not None:
            state[key] = max(current, payload["after"]["system_version"])
        else:
            state.setdefault(key, None)
    return state
