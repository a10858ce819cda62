"""One Valkey shard: the reconciler's side of the cache protocol.

`Shard.apply()` is the hot path: every key of a batch goes out in ONE network round
trip (a pipeline of `cr2_apply` calls, `APPLY_CHUNK` keys each so that no single call
holds the server for long), with the per-key Python work kept to slicing and a dict
lookup. `truncate()` removes a table's keys by pattern (SCAN + UNLINK, rate-limited).

Credentials passed separately are never logged: the shard is described by its name
and a URL with the user information removed. The commands themselves are built in
`commands`, the connection pool in `connection`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import valkey
from valkey import exceptions as vx

from connectors.errors import ValkeyRejected, ValkeyUnavailable
from connectors.valkey.commands import WaitFor, apply_commands, check_apply, read_labels
from connectors.valkey.connection import connection_pool, redact
from connectors.valkey.functions import (
    PROTOCOL,
    Library,
    call_with_reload,
    first_error,
    is_missing_function,
    load_functions,
    translate,
)
from connectors.valkey.pacing import UnlinkPace
from connectors.valkey.protocols import PendingApply, ShardClient

log = logging.getLogger(__name__)

DEFAULT_FENCE_TTL_MS = 60_000  # SPEC fence_ttl default: 60 s

T = TypeVar("T")


class Shard:
    """A Valkey server holding part of the cache (implements `ShardClient`)."""

    def __init__(self, name: str, url: str, *, username: str | None = None,
                 password: str | None = None, tls_ca_file: str | None = None,
                 tls_cert_file: str | None = None, tls_key_file: str | None = None,
                 socket_timeout: float = 5.0,
                 fence_ttl_ms: int = DEFAULT_FENCE_TTL_MS, library: Library = PROTOCOL,
                 wait: WaitFor | None = None,
                 pool: valkey.ConnectionPool | None = None) -> None:
        """`pool`, if given, replaces the one `url` and the credentials would make (a
        Sentinel-managed pool: `connectors.valkey.sentinel`); `url` then only names it."""
        if fence_ttl_ms <= 0:
            raise ValueError(f"shard {name!r}: fence_ttl_ms must be positive, "
                             f"got {fence_ttl_ms}")
        self._name = name
        self.library = library
        self.wait = wait  # acknowledged only once replicas (and AOF) have a call
        self.apply_function = library.apply.encode()  # the function name, pre-encoded
        self._apply_command = "FCALL " + library.apply  # how errors name the call
        self.url = redact(url)  # safe to log: no credentials
        self.fence_ttl_ms = fence_ttl_ms
        if pool is None:
            pool = connection_pool(url, username=username, password=password,
                                   tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file,
                                   tls_key_file=tls_key_file, socket_timeout=socket_timeout)
        self._client = valkey.Valkey(connection_pool=pool)
        # valkey-py annotates the sync client with its async return types
        # (`Awaitable[Any] | Any`); this untyped view keeps the call sites honest.
        self._sync: Any = self._client
        self._last_refusal = ""  # the last ValkeyRejected ping() logged

    def __repr__(self) -> str:
        return f"Shard({self._name!r}, {self.url!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def client(self) -> valkey.Valkey:
        """The underlying valkey-py client (bytes responses)."""
        return self._client

    # ------------------------------------------------------------------ hot path

    def apply(self, keys: Sequence[str], ops: Sequence[str],
              versions: Sequence[int]) -> list[str]:
        """Apply one op per key in ONE round trip; one result label per key, in order.

        ops: `v` change, `s` snapshot read, `d` delete, `u` unversioned (see
        `protocols`); `versions[i]` in [0, 2^63-1] (ignored for `d`/`u`).
        """
        self._check(keys, ops, versions)
        if not keys:
            return []
        commands = self.commands(keys, ops, versions)
        replies = self._call(lambda: self._pipeline(commands), self._apply_command,
                             missing=_any_missing)
        return self._labels(replies, len(keys))

    def commands(self, keys: Sequence[str], ops: Sequence[str],
                 versions: Sequence[int]) -> list[tuple[Any, ...]]:
        """The pipeline of one call: its FCALLs, then the WAIT (or WAITAOF) asked for."""
        commands = apply_commands(keys, ops, versions, self.fence_ttl_ms, self.apply_function)
        if self.wait is not None:
            commands.append(self.wait.command())
        return commands

    def send(self, keys: Sequence[str], ops: Sequence[str],
             versions: Sequence[int]) -> PendingApply:
        """`apply()` in two halves: the commands go out now, on a connection of their
        own, and `result()` reads the answers — meanwhile the caller decodes the next
        batch or sends to the other shards, with no thread and no lock. Whatever goes
        wrong before every answer is read (the connection, a missing library, an error
        reply) makes `result()` discard that connection and run the whole `apply()`,
        with its reload and its errors: every op is idempotent, so sending it twice is
        safe."""
        self._check(keys, ops, versions)
        return _Pending(self, keys, ops, versions)

    def _check(self, keys: Sequence[str], ops: Sequence[str],
               versions: Sequence[int]) -> None:
        check_apply(self._name, keys, ops, versions)

    def _labels(self, replies: list[Any], n: int) -> list[str]:
        """The result labels of `commands()`' replies, for `n` keys."""
        command = self._apply_command
        error = first_error(replies)
        if error is not None:  # still missing after a reload
            raise translate(error, shard=self._name, command=command)
        if self.wait is not None:
            self.wait.check(replies.pop(), shard=self._name)
        return read_labels(replies, n, shard=self._name, command=command,
                           library=self.library.name)

    def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe: Any = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        error = first_error(replies)
        if error is not None and not is_missing_function(error):
            raise error
        return replies

    # ------------------------------------------------------------------ the rest

    def truncate(self, pattern: str, *, count: int = 1000,
                 max_keys_per_second: float | None = None) -> int:
        """Remove every key matching the glob `pattern` (SCAN MATCH + UNLINK in batches
        of about `count`), at most `max_keys_per_second` on average; return the number
        removed. Interrupted, it can simply be run again."""
        pace = UnlinkPace(self._name, count, max_keys_per_second)
        client = self._sync
        removed = 0
        cursor = 0
        while True:
            cursor, found = self._call(
                partial(client.scan, cursor, match=pattern, count=count), "SCAN")
            cursor = int(cursor)
            for piece in pace.pieces(found):
                removed += int(self._call(partial(client.unlink, *piece), "UNLINK"))
            if cursor == 0:
                break
        log.info("valkey shard %s: truncate %r removed %d keys in %.1fs", self._name,
                 pattern, removed, time.monotonic() - pace.started)
        return removed

    def truncate_step(self, pattern: str, cursor: int = 0, *,
                      count: int = 1000) -> tuple[int | None, int]:
        """One step of a truncate that is spread over time: one SCAN MATCH from `cursor`
        (0 to begin) and an UNLINK of what it found. Returns the next cursor (None when
        the scan is complete) and the keys removed."""
        client = self._sync
        next_cursor, found = self._call(
            partial(client.scan, cursor, match=pattern, count=count), "SCAN")
        removed = int(self._call(partial(client.unlink, *found), "UNLINK")) if found else 0
        next_cursor = int(next_cursor)
        return (None if next_cursor == 0 else next_cursor), removed

    def ping(self) -> bool:
        """True if the shard answers PING; False otherwise (for readiness probes).

        Never raises: a refusal (bad credentials, ACL) is logged, once per distinct
        reason, and reads as False; `ensure_functions()` or `server_version()` raise it.
        """
        try:
            return bool(self._call(self._client.ping, "PING"))
        except ValkeyUnavailable:
            return False
        except ValkeyRejected as error:
            if str(error) != self._last_refusal:
                self._last_refusal = str(error)
                log.warning("%s", error)
            return False

    def identity(self) -> str:
        """Which incarnation of the server holds the shard's data: its run_id, new after
        every restart and different on a promoted replica. A change means writes it
        acknowledged may be gone (asynchronous replication, a restart from an older
        snapshot): the worker then re-applies what it may have lost."""
        info: dict[str, Any] = self._call(lambda: self._sync.info("server"), "INFO")
        return str(info.get("run_id") or "unknown")

    def server_version(self) -> str:
        """The server's version (`valkey_version`, else `redis_version` of INFO)."""
        info: dict[str, Any] = self._call(lambda: self._sync.info("server"), "INFO")
        return str(info.get("valkey_version") or info.get("redis_version") or "unknown")

    def ensure_functions(self) -> None:
        """Load (or replace) the functions library now rather than on first use."""
        load_functions(self._client, shard=self._name, library=self.library)

    def close(self) -> None:
        """Close every connection to the shard."""
        self._sync.close()
        self._client.connection_pool.disconnect()

    def __enter__(self) -> Shard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, call: Callable[[], T], command: str,
              missing: Callable[[T], bool] | None = None) -> T:
        return call_with_reload(self._client, call, shard=self._name, command=command,
                                missing=missing, library=self.library)


def _any_missing(replies: list[Any]) -> bool:
    return any(isinstance(reply, Exception) for reply in replies)


class _Pending:
    """`Shard.send()`'s commands, sent on a connection held until their answers are read
    (implements `PendingApply`)."""

    __slots__ = ("_connection", "_count", "_keys", "_ops", "_shard", "_versions")

    def __init__(self, shard: Shard, keys: Sequence[str], ops: Sequence[str],
                 versions: Sequence[int]) -> None:
        self._shard = shard
        self._keys, self._ops, self._versions = keys, ops, versions
        self._connection: Any = None  # None: nothing in flight, result() runs apply()
        if not keys:
            self._count = 0
            return
        commands = shard.commands(keys, ops, versions)
        self._count = len(commands)
        pool = shard.client.connection_pool
        try:
            connection = pool.get_connection("FCALL")
        except (vx.ValkeyError, OSError):
            return  # result() retries the whole call and reports the failure
        try:
            connection.send_packed_command(connection.pack_commands(commands))
        except (vx.ValkeyError, OSError):
            connection.disconnect()
            pool.release(connection)
            return
        self._connection = connection

    def result(self) -> list[str]:
        if not self._keys:
            return []
        connection, self._connection = self._connection, None
        if connection is None:
            return self._again()
        pool = self._shard.client.connection_pool
        replies: list[Any] = []
        try:
            for _ in range(self._count):
                try:
                    replies.append(connection.read_response())
                except vx.ResponseError as error:  # an answer: the next ones still come
                    replies.append(error)
        except (vx.ValkeyError, OSError):
            connection.disconnect()  # answers may still be on their way: never reuse it
            pool.release(connection)
            return self._again()
        pool.release(connection)
        if first_error(replies) is not None:  # a missing library, a refusal: apply() knows
            return self._again()
        return self._shard._labels(replies, len(self._keys))

    def _again(self) -> list[str]:
        """The whole call once more, as `apply()`: its reload, its errors."""
        return self._shard.apply(self._keys, self._ops, self._versions)

    def discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()
            self._shard.client.connection_pool.release(connection)



if TYPE_CHECKING:
    _implements: type[ShardClient] = Shard
