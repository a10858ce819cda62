"""Doctor's shard checks: each Valkey shard of the shard map.

Each shard answers, runs Valkey/Redis ≥ 7 (Functions), has an eviction policy that
keeps fences (`eviction`), has (or accepts) the functions
library, and lets the ACL user run every command the reconciler and the functions need
(ACL DRYRUN, else a harmless probe); what only audit needs is a WARN. Loading the
library where it is missing is the one write doctor makes (what the worker does on
first use).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry
from valkey import exceptions as vx

from connectors.errors import ConnectorError, ValkeyRejected, ValkeyShardError
from connectors.valkey.cluster import ClusterShard
from connectors.valkey.functions import APPLY_FUNCTION, LIBRARY_NAME, LUA_SOURCE
from connectors.valkey.sentinel import SentinelShard
from reconciler.observe.metrics import Metrics
from reconciler.ops.doctor.checklist import FAIL, OK, WARN, Check
from reconciler.ops.doctor.cluster import Server, cluster_checks
from reconciler.ops.doctor.eviction import eviction_check
from reconciler.ops.doctor.sentinel import sentinel_checks
from reconciler.pipeline.shards import ShardPool
from reconciler.settings import Settings
from shard_map import ShardMapError, load_shard_map

log = logging.getLogger(__name__)

MIN_VERSION = (7, 0)  # Valkey/Redis Functions (FUNCTION LOAD, FCALL) arrived in 7.0
PROBE_VALUE = "doctor-probe"  # placeholder value used to render template keys for ACL checks
# Commands on a cache key: the reconciler's FCALL and what the functions call inside it
# (ACLs apply there too), and UNLINK (truncate).
KEY_COMMANDS = (("FCALL", APPLY_FUNCTION, "1", "{key}", "60000", "u", "0"),
                ("HGET", "{key}", "v"), ("HSET", "{key}", "v", "1"), ("HEXISTS", "{key}", "d"),
                ("EXISTS", "{key}"), ("DEL", "{key}"), ("PEXPIRE", "{key}", "1000"),
                ("UNLINK", "{key}"))
SERVER_COMMANDS = (("PING",), ("INFO", "server"), ("SCAN", "0"), ("FUNCTION", "LOAD", "x"))
# What `reconciler audit` needs besides those: a WARN only, since audit may run as a user
# of its own (docs/operations.md), and the worker's least privilege lacks them.
AUDIT_KEY_COMMANDS = (("TYPE", "{key}"),)
AUDIT_SERVER_COMMANDS = (("DBSIZE",), ("RANDOMKEY",))
PROBE_KEY = "__cache-reconciler:doctor-probe"  # a key nothing else uses, for probes


def shard_checks(settings: Settings) -> Iterator[Check]:
    """Each shard of the shard map: reachable, its version, the functions library, the
    ACL user's commands."""
    try:
        shard_map = load_shard_map(settings.shard_map)
    except ShardMapError as exc:
        yield Check(FAIL, "shard map", str(exc), f"fix {settings.shard_map}")
        return
    pool = ShardPool(settings, Metrics.create(CollectorRegistry()))
    pool.update(shard_map)
    try:
        for name, shard in sorted(pool.clients().items()):
            if isinstance(shard, ClusterShard):
                yield from cluster_checks(name, shard, user=settings.valkey.username or
                                          "default", node_checks=partial(_shard, settings))
            else:
                yield from _shard(settings, name, shard)
    finally:
        pool.close()


def _shard(settings: Settings, name: str, shard: Server, *,
           library: bool = True) -> Iterator[Check]:
    check = f"shard {name}"
    if isinstance(shard, SentinelShard):  # the Sentinels first, then their primary
        yield from sentinel_checks(name, shard)
    try:
        version = shard.server_version()
    except ValkeyRejected as exc:
        yield Check(FAIL, check, f"{shard.url} refused us: {exc}",
                    "check valkey.username/password and the ACL user")
        return
    except ValkeyShardError as exc:
        yield Check(FAIL, check, f"{shard.url} unreachable: {exc}",
                    "check the URL in the shard map, the network, and that the server "
                    "is up; the worker cannot invalidate keys routed there")
        return
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if len(numbers) == 2 and numbers < MIN_VERSION:
        yield Check(FAIL, check, f"{shard.url} runs {version}: Functions need 7.0 or "
                                 "later", "upgrade to Valkey 7.2+ (or Redis 7+)")
        return
    yield Check(OK, check, f"{shard.url} reachable, version {version}")
    yield eviction_check(name, shard.url, shard.client)
    client: Any = shard.client
    if not library:  # a cluster's replica: it copies its primary's library
        yield _acl(settings, name, shard)
        return
    try:
        libraries = client.function_list(library=LIBRARY_NAME, withcode=True)
        found = [_pairs(entry) for entry in libraries
                 if _pairs(entry).get(b"library_name") == LIBRARY_NAME.encode()]
    except Exception as exc:  # noqa: BLE001 - FUNCTION LIST refused: try loading
        log.debug("FUNCTION LIST on %s failed: %s", name, exc)
        found = []
    code = found[0].get(b"library_code") if found else None
    if code is not None and code.decode() == LUA_SOURCE:
        yield Check(OK, f"{check} functions", f"{LIBRARY_NAME} loaded")
    elif code is not None:
        yield Check(WARN, f"{check} functions", f"{LIBRARY_NAME} is loaded but differs "
                                                "from this build's code",
                    "a worker of another build loaded it; it is replaced when that "
                    f"build is gone (FUNCTION DELETE {LIBRARY_NAME}, then any worker "
                    "reloads its own)")
    else:
        try:
            shard.ensure_functions()
            yield Check(OK, f"{check} functions", f"{LIBRARY_NAME} was missing; loaded "
                                                  "it")
        except ConnectorError as exc:
            yield Check(FAIL, f"{check} functions", f"cannot load {LIBRARY_NAME}: {exc}",
                        "allow FUNCTION LOAD for the ACL user, or load "
                        "connectors/valkey/functions.lua once as an admin")
    yield _acl(settings, name, shard)


def _acl(settings: Settings, name: str, shard: Server) -> Check:
    check = f"shard {name} acl"
    user = settings.valkey.username or "default"
    client: Any = shard.client
    keys = sorted({t.render(dict.fromkeys(t.columns, PROBE_VALUE))
                   for spec in settings.tables.values() for t in spec.templates()})

    def on_keys(templates: tuple[tuple[str, ...], ...]) -> list[tuple[str, ...]]:
        return [tuple(part.replace("{key}", key) for part in command)
                for key in keys for command in templates]

    worker = list(SERVER_COMMANDS) + on_keys(KEY_COMMANDS)
    audit = list(AUDIT_SERVER_COMMANDS) + on_keys(AUDIT_KEY_COMMANDS)
    try:
        pipe = client.pipeline(transaction=False)
        for command in worker + audit:
            pipe.execute_command("ACL", "DRYRUN", user, *command)
        replies = pipe.execute(raise_on_error=False)
    except Exception as exc:  # noqa: BLE001 - the shard answered a moment ago
        return Check(WARN, check, f"could not check: {exc}", "run doctor again")
    if isinstance(replies[0], Exception):  # ACL DRYRUN itself not allowed: probe
        return _probe(check, user, shard, keys[0] if keys else PROBE_KEY)

    def refused(commands: list[tuple[str, ...]], answers: list[Any]) -> list[tuple[str, str]]:
        return [(" ".join(command[:2] if command[0] == "FUNCTION" else command[:1]),
                 str(reply) if isinstance(reply, Exception) else reply.decode())
                for command, reply in zip(commands, answers, strict=True)
                if reply != b"OK"]

    denied = refused(worker, replies[:len(worker)])
    audit_denied = refused(audit, replies[len(worker):])
    if denied:
        first = "; ".join(sorted({f"{cmd}: {reason}" for cmd, reason in denied})[:4])
        needed = sorted({cmd.lower().replace(" ", "|") for cmd, _ in denied})
        return Check(FAIL, check, f"user {user} is refused {len(denied)} command(s): "
                                  f"{first}",
                     f"ACL SETUSER {user} " + " ".join(f"+{c}" for c in needed)
                     + " and key patterns for " + ", ".join(keys))
    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    if audit_denied:
        needed = sorted({cmd.lower() for cmd, _ in audit_denied})
        return Check(WARN, check, f"user {user} may run every command the worker needs "
                                  f"(ACL DRYRUN on {shown}), but `reconciler audit` as "
                                  f"this user would be refused {', '.join(needed).upper()}",
                     "run audit as a user of its own (its ACL: docs/operations.md), or "
                     f"ACL SETUSER {user} " + " ".join(f"+{c}" for c in needed))
    return Check(OK, check, f"user {user} may run every command needed (ACL DRYRUN "
                            f"on {shown})")


def _probe(check: str, user: str, shard: Server, key: str) -> Check:
    """Without ACL DRYRUN: harmless calls on a template's key (the FCALL removes a
    key of a row that cannot exist, `doctor-probe`)."""
    client: Any = shard.client
    try:
        client.ping()
        client.info("server")
        client.scan(0, count=1)
        _on_key(lambda: client.fcall(APPLY_FUNCTION, 1, key, 60000, "u", 0))
    except Exception as exc:  # noqa: BLE001 - any refusal is the finding
        return Check(FAIL, check, f"user {user}: {exc}",
                     "grant +fcall +function|load +ping +info +scan +unlink +hget +hset "
                     "+hexists +exists +del +pexpire and the key patterns of every "
                     "template")
    passed = (f"user {user}: probes passed on {key} (ACL DRYRUN not permitted, so "
              "only one key was checked)")
    try:
        _on_key(lambda: client.type(key))
    except Exception as exc:  # noqa: BLE001 - audit's command only: a warning
        return Check(WARN, check, f"{passed}, but `reconciler audit` as this user "
                                  f"would be refused: {exc}",
                     "run audit as a user of its own (its ACL: docs/operations.md), or "
                     f"ACL SETUSER {user} +type")
    return Check(OK, check, passed)


def _on_key(call: Callable[[], object]) -> None:
    """A probe on a key. On a cluster node that does not serve the key, MOVED (or ASK)
    also says the ACL allowed it: the server checks the ACL first."""
    try:
        call()
    except vx.ResponseError as exc:
        if not str(exc).startswith(("MOVED ", "ASK ")):
            raise


def _pairs(entry: Any) -> dict[bytes, Any]:
    items = list(entry)
    return {items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)}
