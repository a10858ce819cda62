"""The auditor: finds a template's keys on a shard, reads them, classifies them
against Postgres, re-checks the candidates after a grace period, and repairs.

Keys come from ``SCAN MATCH`` (or a sample: RANDOMKEY while the template's keys are
common enough, else reservoir sampling over a SCAN) — on a cluster shard, on every
primary; their state is read in one pipelined round trip per chunk (TYPE, HGET v,
HEXISTS d; on a cluster, one per primary, routed by slot) and the rows' versions in
one statement per chunk, rate-limited. Valkey and Postgres errors stop the audit
(``FatalError``); an ACL refusal names the command, its categories and the grant
(``AUDIT_GRANT``). ``run_audit`` (``run``) builds the shard clients and the sessions.

With several sources (``sources:``, the same tables in each database), a key's row is
looked for in every source's database, each chunk one statement per source: found in
one, it is compared with that row; in none, an orphan; in several, ambiguous (the
sources share the key). Nothing in a cache entry says which source wrote it, so the
audit cannot tell a row that moved between sources from one that exists in both.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import valkey

from connectors.errors import ConnectorError
from connectors.postgres import Postgres, Table
from connectors.valkey.cluster import ClusterShard
from connectors.valkey.functions import translate
from connectors.valkey.protocols import (
    DATA_FIELD,
    OP_DELETE,
    OP_VERSIONED,
    VERSION_FIELD,
    parse_version,
)
from connectors.valkey.shard import Shard
from reconciler.errors import FatalError
from reconciler.ops.audit.findings import (
    AHEAD,
    AMBIGUOUS,
    FENCE,
    FRESH,
    ORPHAN,
    PROBLEMS,
    STALE,
    UNPARSED,
    Finding,
)
from reconciler.ops.audit.keyparse import key_pattern
from reconciler.ops.audit.targets import Target
from reconciler.ops.ratelimit import TokenBucket

log = logging.getLogger(__name__)

SCAN_COUNT = 1000  # SCAN COUNT hint: keys examined per SCAN call
READ_CHUNK = 500  # keys read from Valkey, and rows from Postgres, per round trip
RANDOMKEY_TRIES = 20  # RANDOMKEY calls per wanted sample key before falling back to SCAN
DEFAULT_ROWS_PER_SECOND = 5000.0  # Postgres rows read per second, by default
DEFAULT_GRACE_SECONDS = 2.0  # wait before re-checking stale/orphan candidates
GONE = "gone"  # a key that expired between SCAN and the read: not counted
_TYPE_NONE, _TYPE_HASH = b"none", b"hash"  # TYPE replies
_WRONGTYPE = "WRONGTYPE"  # HGET/HEXISTS on a key that is not a hash: expected, TYPE says so
# The ACL categories of each command audit sends (Valkey 8.1, ACL CAT), for its errors.
ACL_CATEGORIES = {
    "scan": "@keyspace @read @slow", "type": "@keyspace @read @fast",
    "hget": "@read @hash @fast", "hexists": "@read @hash @fast",
    "dbsize": "@keyspace @read @fast", "randomkey": "@keyspace @read @slow",
    "fcall": "@slow @scripting", "function|load": "@write @slow @scripting",
    "exists": "@keyspace @read @fast", "del": "@keyspace @write @slow",
    "hset": "@write @hash @fast", "pexpire": "@keyspace @write @fast",
}
# The least privilege of audit's ACL user, besides the template keys' patterns.
AUDIT_GRANT = ("-@all +scan +type +hget +hexists, +dbsize +randomkey for --sample, +fcall "
               "+function|load +exists +del +hset +pexpire for --repair")
_REFUSED_COMMAND = re.compile(r"run the '([^']+)' command")  # in a NOPERM message

T = TypeVar("T")
AnyShard = Shard | ClusterShard  # a standalone server, or a cluster (every primary)


class Auditor:
    """Runs an audit over some shards, reading Postgres through one session per source."""

    def __init__(self, shards: Mapping[str, AnyShard],
                 postgres: Postgres | Mapping[str, Postgres], *,
                 sample: int | None = None, rows_per_second: float = DEFAULT_ROWS_PER_SECOND,
                 grace_seconds: float = DEFAULT_GRACE_SECONDS, seed: int | None = None,
                 user: str = "default") -> None:
        self.shards = shards
        self.user = user  # the Valkey ACL user, named in refusals
        # source name → its database (one source: named ""); a row is looked for in each
        self.sources = {"": postgres} if isinstance(postgres, Postgres) else dict(postgres)
        self.sample = sample
        self.grace = grace_seconds
        self._bucket = TokenBucket(rows_per_second)
        self._random = random.Random(seed)
        self._tables: dict[str, dict[str, Table]] = {}  # table → source → its catalog entry

    def audit(self, chosen: Sequence[Target]) -> list[Finding]:
        findings = []
        for target in chosen:
            table = self._table(target.table)
            for shard_name, shard in self.shards.items():
                finding = Finding(target.table, target.template.source, shard_name)
                for keys in _chunks(self._keys(target, shard), READ_CHUNK):
                    for state in self._classify(target, table, shard, keys, finding).values():
                        if state != GONE:
                            finding.counts[state] += 1
                findings.append(finding)
                log.info("audit %s %s on %s: %s", target.table, target.template.source,
                         shard_name, dict(finding.counts) or "no entries")
        self._recheck(chosen, findings)
        return findings

    def repair(self, findings: Sequence[Finding]) -> None:
        """Stale → versioned op at the row's version; orphan and ahead → delete op."""
        for finding in findings:
            items = list(finding.problems.items())
            for start in range(0, len(items), READ_CHUNK):
                chunk = items[start:start + READ_CHUNK]
                keys = [key for key, _ in chunk]
                ops = [OP_VERSIONED if state == STALE else OP_DELETE for _, (state, _) in chunk]
                versions = [version or 0 for _, (_, version) in chunk]
                try:
                    results = self.shards[finding.shard].apply(keys, ops, versions)
                except ConnectorError as exc:
                    raise FatalError(f"audit repair on shard {finding.shard}: {exc}"
                                     f"{_categories(str(exc))}") from exc
                for (_, (state, _)), _result in zip(chunk, results, strict=True):
                    finding.repaired[state] += 1  # every result leaves nothing stale behind
            if items:
                log.info("audit %s %s on %s: repaired %s", finding.table, finding.template,
                         finding.shard, dict(finding.repaired))

    # ------------------------------------------------------------------ steps

    def _table(self, name: str) -> dict[str, Table]:
        """The table in each source's database."""
        if name not in self._tables:
            schema, _, table_name = name.partition(".")
            found = {}
            for source, postgres in self.sources.items():
                table = self._postgres(functools.partial(postgres.table, schema, table_name))
                if table is None:
                    where = f" (source {source})" if source else ""
                    raise FatalError(f"audit: table {name} does not exist in Postgres{where} "
                                     "(or is not visible to this role); run "
                                     "`reconciler doctor`")
                found[source] = table
            self._tables[name] = found
        return self._tables[name]

    def _keys(self, target: Target, shard: AnyShard) -> Iterator[str]:
        pattern = target.template.pattern()
        if self.sample is None:
            yield from self._scan(shard, pattern)
            return
        yield from self._sample(target, shard, pattern, self.sample)

    def _scan(self, shard: AnyShard, pattern: str) -> Iterator[str]:
        for client in self._servers(shard):
            cursor = 0
            while True:
                cursor, found = self._valkey(
                    shard, "SCAN", functools.partial(client.scan, cursor, match=pattern,
                                                     count=SCAN_COUNT), pattern)
                for raw in found:
                    yield raw.decode("utf-8", "surrogateescape")
                if int(cursor) == 0:
                    break

    @staticmethod
    def _servers(shard: AnyShard) -> list[Any]:
        """The servers holding the shard's keys: the server, or every primary."""
        if not isinstance(shard, ClusterShard):
            return [shard.client]
        try:
            return [shard.node(name) for name in shard.primaries()]
        except ConnectorError as exc:
            raise FatalError(f"audit: {exc}; no entry was counted") from exc

    def _sample(self, target: Target, shard: AnyShard, pattern: str, n: int) -> Iterator[str]:
        """n random keys of the template: RANDOMKEY (on a random primary of a cluster)
        while the template's keys are common enough in the keyspace, else reservoir
        sampling over a SCAN."""
        servers = self._servers(shard)
        size = sum(int(self._valkey(shard, "DBSIZE", client.dbsize, pattern))
                   for client in servers)
        matches = key_pattern(target.template).fullmatch
        found: set[str] = set()
        if size > RANDOMKEY_TRIES * n:
            for _ in range(RANDOMKEY_TRIES * n):
                raw = self._valkey(shard, "RANDOMKEY",
                                   self._random.choice(servers).randomkey, pattern)
                if raw is None:
                    break
                key = raw.decode("utf-8", "surrogateescape")
                if matches(key):
                    found.add(key)
                    if len(found) >= n:
                        yield from found
                        return
        reservoir: list[str] = []
        for seen, key in enumerate(self._scan(shard, pattern)):
            if len(reservoir) < n:
                reservoir.append(key)
            else:
                slot = self._random.randint(0, seen)
                if slot < n:
                    reservoir[slot] = key
        yield from reservoir

    def _classify(self, target: Target, tables: Mapping[str, Table], shard: AnyShard,
                  keys: list[str], finding: Finding) -> dict[str, str]:
        """The state of each key; findings (stale, orphan, ahead) are kept in
        `finding.problems` (with the row's version), the others removed from it."""
        states: dict[str, str] = {}
        lookups: list[tuple[str, int | None, tuple[str, ...]]] = []
        pattern = target.template.pattern()
        for key, (kind, version) in zip(keys, self._read(shard, keys, pattern), strict=True):
            values = target.parse(key) if kind == "data" else None
            if kind != "data":
                states[key] = kind
            elif values is None:
                states[key] = UNPARSED
            else:
                lookups.append((key, version, values))
        if lookups:
            wanted = [values for _, _, values in lookups]
            answers = []
            for source, postgres in self.sources.items():
                self._bucket.acquire(len(lookups))
                answers.append(self._postgres(functools.partial(
                    postgres.versions, tables[source], target.primary_key,
                    target.version_column, wanted)))
            for (key, cached, _), rows in zip(lookups, zip(*answers, strict=True),
                                              strict=True):
                found = [row for row in rows if isinstance(row, int)]
                row = found[0] if len(found) == 1 else None
                if len(found) > 1:  # the sources' rows share the key
                    states[key] = AMBIGUOUS
                elif isinstance(rows[0], str):  # INVALID: not a literal of the key's type
                    states[key] = UNPARSED
                elif row is None:
                    states[key] = ORPHAN
                elif cached is None or cached < row:
                    states[key] = STALE
                else:
                    states[key] = AHEAD if cached > row else FRESH
                if states[key] in PROBLEMS:
                    finding.problems[key] = (states[key], row if isinstance(row, int) else None)
        for key, state in states.items():
            if state not in PROBLEMS:
                finding.problems.pop(key, None)
        return states

    def _recheck(self, chosen: Sequence[Target], findings: list[Finding]) -> None:
        """Look at the candidate findings again after the grace period: a change in
        flight (the worker reconciles it within a second) is not a finding."""
        pending = [f for f in findings if f.problems]
        if not pending or self.grace <= 0:
            return
        log.info("audit: %d stale/orphan/ahead candidate(s); checking them again in %.1fs",
                 sum(len(f.problems) for f in pending), self.grace)
        time.sleep(self.grace)
        by_template = {(t.table, t.template.source): t for t in chosen}
        for finding in pending:
            target = by_template[finding.table, finding.template]
            before = {key: state for key, (state, _) in finding.problems.items()}
            for keys in _chunks(iter(before), READ_CHUNK):
                states = self._classify(target, self._tables[finding.table],
                                        self.shards[finding.shard], keys, finding)
                for key, state in states.items():
                    if state != before[key]:
                        log.debug("audit: %s was %s, now %s", key, before[key], state)
                        finding.counts[before[key]] -= 1
                        if state != GONE:
                            finding.counts[state] += 1

    def _read(self, shard: AnyShard, keys: list[str],
              pattern: str) -> list[tuple[str, int | None]]:
        """Per key: (GONE | FENCE | "data", the cached version or None when unknown).
        A non-hash value, or a hash without a valid version, is data of unknown
        version: the protocol treats it as stale. An error reply stops the audit
        (but HGET/HEXISTS on a key that is not a hash: WRONGTYPE, as TYPE said)."""
        def call() -> list[Any]:
            if isinstance(shard, ClusterShard):  # routed by slot; ConnectorError on failure
                return shard.execute([(key, command) for key in keys for command in (
                    ("TYPE", key), ("HGET", key, VERSION_FIELD), ("HEXISTS", key, DATA_FIELD))])
            pipe: Any = shard.client.pipeline(transaction=False)
            for key in keys:
                pipe.type(key)
                pipe.hget(key, VERSION_FIELD)
                pipe.hexists(key, DATA_FIELD)
            replies: list[Any] = pipe.execute(raise_on_error=False)
            return replies

        replies = self._valkey(shard, "TYPE/HGET/HEXISTS", call, pattern)
        out: list[tuple[str, int | None]] = []
        for index in range(len(keys)):
            kind, raw, has_data = replies[3 * index:3 * index + 3]
            for command, reply in (("TYPE", kind), ("HGET", raw), ("HEXISTS", has_data)):
                if isinstance(reply, Exception) and not str(reply).startswith(_WRONGTYPE):
                    raise self._error(shard, command, reply, pattern) from reply
            if kind == _TYPE_NONE:
                out.append((GONE, None))
            elif kind != _TYPE_HASH:
                out.append(("data", None))
            else:
                version = parse_version(raw) if isinstance(raw, bytes) else None
                has_data = has_data is True or has_data == 1
                out.append((FENCE if version is not None and not has_data else "data",
                            version))
        return out

    def _valkey(self, shard: AnyShard, command: str, call: Callable[[], T],
                pattern: str) -> T:
        try:
            return call()
        except (valkey.ValkeyError, OSError) as exc:
            raise self._error(shard, command, exc, pattern) from exc
        except ConnectorError as exc:
            raise FatalError(f"audit: {exc}; no entry was counted") from exc

    def _error(self, shard: AnyShard, command: str, error: Exception,
               pattern: str) -> FatalError:
        """An error reply or failure of `command`: what was refused and the grant, for an
        ACL refusal; otherwise the connectors' reading of it (timeout, unavailable…)."""
        text = str(error) or type(error).__name__
        if not isinstance(error, valkey.exceptions.NoPermissionError) and \
                not text.startswith("NOPERM") and "no permissions" not in text.lower():
            return FatalError(f"audit: {translate(error, shard=shard.name, command=command)}; "
                              "no entry was counted")
        where = f"audit: shard {shard.name} refused {command} to user {self.user} (NOPERM {text})"
        if "access a key" in text or "access one of the keys" in text:
            return FatalError(f"{where}: the ACL user may not access the template's keys; "
                              f"nothing was counted. Grant the pattern: ACL SETUSER "
                              f"{self.user} ~{pattern} (with {AUDIT_GRANT})")
        found = _REFUSED_COMMAND.search(text)
        name = found.group(1).lower() if found else command.lower()
        categories = ACL_CATEGORIES.get(name, "see ACL CAT")
        return FatalError(f"{where}: the ACL user lacks {name.upper()} (ACL categories "
                          f"{categories}); nothing was counted. Grant it: ACL SETUSER "
                          f"{self.user} +{name} (audit's least privilege: {AUDIT_GRANT}; "
                          "docs/operations.md)")

    @staticmethod
    def _postgres(call: Callable[[], T]) -> T:
        try:
            return call()
        except ConnectorError as exc:
            raise FatalError(f"audit: {exc}") from exc


def _categories(text: str) -> str:
    """ " (ACL categories …)" for the command a NOPERM message names, else nothing."""
    found = _REFUSED_COMMAND.search(text)
    categories = ACL_CATEGORIES.get(found.group(1).lower()) if found else None
    return f" ({found.group(1).upper()} is in the ACL categories {categories})" \
        if found and categories else ""


def _chunks(keys: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for key in keys:
        chunk.append(key)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
