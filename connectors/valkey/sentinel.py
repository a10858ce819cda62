"""A shard whose primary is found, and followed, through Valkey Sentinel.

`SentinelShard` is a `Shard` whose connection pool is valkey-py's
`SentinelConnectionPool`: every new connection asks the Sentinels which node is the
service's primary, so all of `Shard` — the pipelined send/result, the library reload,
the error translation, truncate, identity — works unchanged on whichever node is the
primary now. Following a failover:

- the old primary, demoted, answers READONLY: the pool closes that connection and
  raises a connection error; killed, it refuses connections. Both are
  `ValkeyUnavailable`, so the invalidator retries, and the retry connects to the
  primary the Sentinels name (the functions library is reloaded there if missing);
- until the Sentinels have promoted a replica (``down-after-milliseconds``, then the
  election) they report the primary down: `ValkeyUnavailable` too, retried;
- after ``SENTINEL FAILOVER`` the old primary goes on answering as a primary for
  some 10 s, until the Sentinels convert it: writes there would be lost, and reads
  stale. So the pool asks the Sentinels again when it hands out a connection, at most
  every `FOLLOW_SECONDS` (and at once after a failure), and closes its idle
  connections to a primary they no longer name. The writer helper's client
  (`sentinel_client`) has the same pool.

Credentials and TLS. The primary: `username`/`password` and the TLS files, exactly as
for a standalone shard (the settings' ``valkey.*``). The Sentinels: the user
information of their URLs (``valkey://user:password@host:26379``), else
`sentinel_username`/`sentinel_password` (the settings' ``valkey.sentinel.*``), else
none: Sentinels often have no password, or one of their own. A TLS scheme
(``valkeys://``) on the Sentinel URLs means TLS to the Sentinels and to the primary,
both verified against the same CA (and the same client certificate, if any).
Sentinels that all refuse our credentials, or that do not know the service, are
`ValkeyRejected`: no retry fixes a configuration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import valkey
from valkey import exceptions as vx
from valkey.connection import SSLConnection
from valkey.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from connectors.errors import ValkeyRejected, ValkeyShardError, ValkeyUnavailable
from connectors.valkey.commands import WaitFor
from connectors.valkey.connection import connection_pool, redact
from connectors.valkey.functions import PROTOCOL, Library
from connectors.valkey.shard import DEFAULT_FENCE_TTL_MS, Shard

log = logging.getLogger(__name__)

FOLLOW_SECONDS = 1.0  # at most this often the pool asks the Sentinels for the primary
_REFUSALS = (vx.AuthenticationError, vx.AuthorizationError, vx.NoPermissionError)
T = TypeVar("T")


class SentinelMisconfigured(MasterNotFoundError):
    """Every Sentinel refused our credentials or does not monitor the service."""


class _Sentinels(Sentinel):
    """valkey-py's `Sentinel` over one client per URL (each with the credentials of its
    URL), whose `discover_master` says why no primary was found."""

    def __init__(self, urls: Sequence[str], clients: Sequence[valkey.Valkey],
                 **connection_kwargs: Any) -> None:
        super().__init__([], sentinel_kwargs={}, **connection_kwargs)  # type: ignore[no-untyped-call]
        self.sentinels = list(clients)
        self.urls = {id(client): url for client, url in zip(clients, urls, strict=True)}

    def discover_master(self, service_name: str) -> tuple[str, int]:
        problems: list[str] = []
        misconfigured = 0
        for index, sentinel in enumerate(self.sentinels):
            url = self.urls[id(sentinel)]
            client: Any = sentinel
            try:
                masters = client.sentinel_masters()
            except _REFUSALS as error:
                misconfigured += 1
                problems.append(f"{url} refused us ({error})")
                continue
            except (vx.ConnectionError, vx.TimeoutError, OSError) as error:
                problems.append(f"{url} unreachable ({error})")
                continue
            state = masters.get(service_name)
            if state is None:
                misconfigured += 1
                problems.append(f"{url} does not monitor {service_name!r} (it monitors "
                                f"{', '.join(sorted(masters)) or 'nothing'})")
                continue
            if self.check_master_state(state, service_name):  # type: ignore[no-untyped-call]
                # The Sentinel that answered is asked first next time.
                self.sentinels[0], self.sentinels[index] = sentinel, self.sentinels[0]
                return state["ip"], state["port"]
            problems.append(f"{url} reports primary {state['ip']}:{state['port']} "
                            f"{state['flags']}")
        detail = "; ".join(problems)
        if any("refused us" in problem for problem in problems):
            detail += " (a Sentinel URL's user information is the user and password sent "
            detail += "to that Sentinel)"
        if misconfigured == len(self.sentinels):
            raise SentinelMisconfigured(f"no primary for service {service_name!r}: {detail}")
        raise MasterNotFoundError(f"no primary for service {service_name!r} now: {detail}")

    def close(self) -> None:
        for sentinel in self.sentinels:
            client: Any = sentinel
            client.close()
            sentinel.connection_pool.disconnect()


class FollowingPool(SentinelConnectionPool):
    """A `SentinelConnectionPool` that asks the Sentinels for the primary again when it
    hands out a connection, at most every `FOLLOW_SECONDS` (at once after `follow_now`),
    and closes idle connections to a primary they no longer name."""

    def __init__(self, service: str, sentinels: _Sentinels, **kwargs: Any) -> None:
        super().__init__(service, sentinels, **kwargs)  # type: ignore[no-untyped-call]
        self.sentinels = sentinels
        self._next_follow = 0.0  # monotonic time of the next look at the Sentinels

    def follow_now(self) -> None:
        """Ask the Sentinels before the next connection is handed out."""
        self._next_follow = 0.0

    def get_connection(self, command_name: str, *keys: Any, **options: Any) -> Any:
        if time.monotonic() >= self._next_follow:
            self.follow()
        return super().get_connection(command_name, *keys, **options)

    def follow(self) -> tuple[str, int] | None:
        """Ask the Sentinels for the primary now (idle connections to another node are
        closed); its address, or None if they name none (logged at debug level: the
        connection that needs one raises it)."""
        self._next_follow = time.monotonic() + FOLLOW_SECONDS
        before = self.master_address
        try:
            address: tuple[str, int] = self.get_master_address()  # type: ignore[no-untyped-call]
        except (vx.ValkeyError, OSError) as error:
            log.debug("sentinel service %s: %s", self.service_name, error)
            return None
        if before is not None and address != before:
            log.warning("sentinel service %s: the Sentinels name a new primary, %s:%s "
                        "(was %s:%s)", self.service_name, *address, *before)
        return address


def sentinel_pool(sentinels: Sequence[str], service: str, *, username: str | None = None,
                  password: str | None = None, sentinel_username: str | None = None,
                  sentinel_password: str | None = None, tls_ca_file: str | None = None,
                  tls_cert_file: str | None = None, tls_key_file: str | None = None,
                  socket_timeout: float = 5.0) -> FollowingPool:
    """A bytes-in, bytes-out pool of connections to `service`'s primary, found through
    `sentinels` (their URLs; credentials and TLS as the module docstring says)."""
    if not sentinels:
        raise ValueError(f"sentinel service {service!r}: give at least one Sentinel URL")
    if not service:
        raise ValueError("a sentinel shard needs the service name the Sentinels monitor")
    tls = {"tls_ca_file": tls_ca_file, "tls_cert_file": tls_cert_file,
           "tls_key_file": tls_key_file}
    if len({urlsplit(url).scheme.lower() in ("valkeys", "rediss") for url in sentinels}) > 1:
        raise ValueError(f"sentinel service {service!r}: the Sentinel URLs mix TLS and plain "
                         "schemes; use valkeys:// for all of them, or for none")
    clients = []
    for url in sentinels:
        own = "@" in urlsplit(url).netloc  # the URL's user information wins
        clients.append(valkey.Valkey(connection_pool=connection_pool(
            url, username=None if own else sentinel_username,
            password=None if own else sentinel_password, socket_timeout=socket_timeout,
            **tls)))
    # The primary's connections: the first Sentinel URL's scheme and options, without
    # its address and credentials, with the primary's credentials.
    first = urlsplit(sentinels[0])
    bare = first._replace(netloc=first.netloc.rpartition("@")[2]).geturl()
    template = connection_pool(bare, username=username, password=password,
                               socket_timeout=socket_timeout, **tls)
    kwargs = {key: value for key, value in template.connection_kwargs.items()
              if key not in ("host", "port")}
    kwargs["db"] = 0
    kwargs["ssl"] = issubclass(template.connection_class, SSLConnection)
    manager = _Sentinels([redact(url) for url in sentinels], clients)
    return FollowingPool(service, manager, **kwargs)


def sentinel_client(sentinels: Sequence[str], service: str, **options: Any) -> valkey.Valkey:
    """A valkey-py client (bytes responses) of `service`'s primary, for the writer
    helper: ``CacheWriter(sentinel_client(urls, "cache-c", password=...), name="c")``.
    `options` as `sentinel_pool`'s. Close it with `close_sentinel_client`."""
    return valkey.Valkey(connection_pool=sentinel_pool(sentinels, service, **options))


def close_sentinel_client(client: valkey.Valkey) -> None:
    """Close the client's connections to the primary and to the Sentinels."""
    pool = client.connection_pool
    pool.disconnect()
    if isinstance(pool, FollowingPool):
        pool.sentinels.close()


@dataclass(frozen=True, slots=True)
class SentinelView:
    """What one Sentinel says of the service (doctor reads it). `error` set: the rest
    is empty; `refused` or `unknown`: a configuration error rather than an outage."""

    url: str  # without credentials
    error: str | None = None
    refused: bool = False  # our credentials, or the ACL user's permissions
    unknown: bool = False  # it does not monitor the service
    primary: str | None = None  # "ip:port"
    flags: str = ""  # the primary's, as this Sentinel sees it: "master", "s_down,master"…
    quorum: int = 0
    other_sentinels: int = 0
    replicas: tuple[tuple[str, str], ...] = ()  # ("ip:port", flags) each


class SentinelShard(Shard):
    """The primary of a Sentinel-monitored service (implements `ShardClient`)."""

    def __init__(self, name: str, sentinels: Sequence[str], service: str, *,
                 username: str | None = None, password: str | None = None,
                 sentinel_username: str | None = None, sentinel_password: str | None = None,
                 tls_ca_file: str | None = None, tls_cert_file: str | None = None,
                 tls_key_file: str | None = None, socket_timeout: float = 5.0,
                 fence_ttl_ms: int = DEFAULT_FENCE_TTL_MS, library: Library = PROTOCOL,
                 wait: WaitFor | None = None) -> None:
        pool = sentinel_pool(sentinels, service, username=username, password=password,
                             sentinel_username=sentinel_username,
                             sentinel_password=sentinel_password, tls_ca_file=tls_ca_file,
                             tls_cert_file=tls_cert_file, tls_key_file=tls_key_file,
                             socket_timeout=socket_timeout)
        super().__init__(name, sentinels[0], fence_ttl_ms=fence_ttl_ms, library=library,
                         wait=wait, pool=pool)
        self._pool = pool
        self._sentinels = pool.sentinels
        self.service = service
        self.sentinel_urls = tuple(redact(url) for url in sentinels)
        self.url = f"sentinel {', '.join(self.sentinel_urls)} service {service}"

    def __repr__(self) -> str:
        return f"SentinelShard({self.name!r}, {self.url!r})"

    def follow(self) -> tuple[str, int] | None:
        """Ask the Sentinels for the primary now (see `FollowingPool.follow`)."""
        return self._pool.follow()

    def primary(self) -> tuple[str, int] | None:
        """The primary's address as last asked of the Sentinels (None before any call)."""
        address: tuple[str, int] | None = self._pool.master_address
        return address

    def ensure_functions(self) -> None:
        with self._sentinel_errors("FUNCTION LOAD"):
            super().ensure_functions()

    def views(self) -> list[SentinelView]:
        """What each Sentinel says of the service, in URL order."""
        return [self._view(client) for client in self._clients_in_order()]

    def close(self) -> None:
        super().close()
        self._sentinels.close()

    def _clients_in_order(self) -> list[valkey.Valkey]:
        order = {url: i for i, url in enumerate(self.sentinel_urls)}
        return sorted(self._sentinels.sentinels,
                      key=lambda client: order[self._sentinels.urls[id(client)]])

    def _view(self, client: valkey.Valkey) -> SentinelView:
        url = self._sentinels.urls[id(client)]
        sync: Any = client
        try:
            state = sync.sentinel_master(self.service)
            replicas = sync.sentinel_slaves(self.service)
        except _REFUSALS as error:
            return SentinelView(url, f"refused us: {error}", refused=True)
        except vx.ResponseError as error:
            if "no such master" in str(error).lower():
                return SentinelView(url, f"does not monitor {self.service!r}", unknown=True)
            return SentinelView(url, f"answered {error}")
        except (vx.ValkeyError, OSError) as error:
            return SentinelView(url, f"unreachable: {error}")
        return SentinelView(
            url, primary=f"{state['ip']}:{state['port']}", flags=str(state["flags"]),
            quorum=int(state["quorum"]), other_sentinels=int(state["num-other-sentinels"]),
            replicas=tuple((f"{r['ip']}:{r['port']}", str(r["flags"])) for r in replicas))

    def _call(self, call: Callable[[], T], command: str,
              missing: Callable[[T], bool] | None = None) -> T:
        with self._sentinel_errors(command):
            try:
                return super()._call(call, command, missing)
            except ValkeyUnavailable:
                self._pool.follow_now()  # the retry goes where the Sentinels say then
                raise

    @contextmanager
    def _sentinel_errors(self, command: str) -> Iterator[None]:
        """Sentinels that refuse us or do not know the service: `ValkeyRejected`."""
        try:
            yield
        except ValkeyShardError as error:
            if not isinstance(error.__cause__, SentinelMisconfigured):
                raise
            raise ValkeyRejected(
                f"valkey shard {self.name!r}: {command} failed: {error.__cause__}. Fix the "
                "shard map's sentinel URLs or its service", shard=self.name,
                command=command) from error.__cause__
