"""The Valkey Functions library of the cache protocol, and how it is (re)loaded.

The Lua source lives next to this module (`functions.lua`). `load_functions()` installs
it with FUNCTION LOAD REPLACE; `call_with_reload()` runs a call and, when the server
answers that the function does not exist (a restart without persistence, FUNCTION
FLUSH, a failover to an empty replica), reloads the library and retries once, so that
callers never see it. Missing again right after the reload (flushed twice in a row)
it is `ValkeyUnavailable`: the caller's retries reload it again. `translate()` maps
valkey-py exceptions onto `ValkeyUnavailable` (transient, retry) and `ValkeyRejected`
(do not retry), with a message that names the shard, the command and what to do.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import valkey
from valkey import exceptions as vx

from connectors.errors import ValkeyRejected, ValkeyShardError, ValkeyUnavailable

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 2  # cache protocol version: the N in cache_reconciler_N / crN_*
LIBRARY_NAME = f"cache_reconciler_{PROTOCOL_VERSION}"  # the Functions library name
APPLY_FUNCTION = f"cr{PROTOCOL_VERSION}_apply"  # reconciler: one op per key, in order
SET_IF_NEWER_FUNCTION = f"cr{PROTOCOL_VERSION}_set_if_newer"  # writer compare-and-set
LUA_SOURCE: str = (
    resources.files("connectors.valkey").joinpath("functions.lua").read_text(encoding="utf-8")
)  # the library source, as shipped in the package


@dataclass(frozen=True, slots=True)
class Library:
    """A Functions library of the cache protocol: its name, source and function names.
    `PROTOCOL` is the one shipped; a test builds a deliberately broken variant under
    names of its own (`reconciler.pipeline.faults`), never replacing this one."""

    name: str
    source: str
    apply: str
    set_if_newer: str


PROTOCOL = Library(LIBRARY_NAME, LUA_SOURCE, APPLY_FUNCTION, SET_IF_NEWER_FUNCTION)

# Error prefixes (after valkey-py strips a known code) meaning "the function is gone".
_MISSING_MARKERS = ("Function not found", "NOSCRIPT")
# Reply codes of transient server states that valkey-py reports as plain ResponseError.
_TRANSIENT_CODES = ("BUSY", "MASTERDOWN", "TRYAGAIN", "LOADING", "READONLY", "CLUSTERDOWN")
# "User x has no permissions to run the 'fcall' command" -> fcall
_NOPERM_COMMAND = re.compile(r"run the '([^']+)' command")

T = TypeVar("T")


def is_missing_function(error: BaseException) -> bool:
    """True if `error` says the library or function is not loaded on the server."""
    if isinstance(error, vx.NoScriptError):
        return True
    return isinstance(error, vx.ResponseError) and str(error).startswith(_MISSING_MARKERS)


def _noperm_advice(message: str) -> str:
    match = _NOPERM_COMMAND.search(message)
    if match:
        command = match.group(1)
        return (f"grant the ACL user the '{command}' command, e.g. "
                f"`ACL SETUSER <user> +{command}`; the reconciler needs +fcall, "
                "+function|load, +ping, +info, +scan, +unlink and, called from the "
                "functions, +hget +hset +hexists +exists +del +pexpire; an "
                "application's writer needs +fcall, +hmget, those called from the "
                "functions and +pttl")
    if "key" in message.lower():
        return ("grant the ACL user read and write access to the cache keys, e.g. "
                "`ACL SETUSER <user> ~*` or `%RW~<prefix>*` for each key prefix")
    return "check the ACL user's permissions (`ACL GETUSER <user>`)"


def translate(error: Exception, *, shard: str, command: str) -> ValkeyShardError:
    """The connectors error for a valkey-py (or socket) exception raised by `command`."""
    text = (str(error) or type(error).__name__).rstrip(".")
    where = f"valkey shard {shard!r}: {command}"
    if isinstance(error, vx.AuthenticationError | vx.AuthorizationError):
        return ValkeyRejected(
            f"{where} failed authentication ({text}); check the username and password "
            "configured for this shard", shard=shard, command=command)
    if isinstance(error, vx.NoPermissionError):
        return ValkeyRejected(f"{where} refused by ACL (NOPERM {text}); "
                              f"{_noperm_advice(text)}", shard=shard, command=command)
    if _certificate_error(error) is not None:
        return ValkeyRejected(
            f"{where} refused: the shard's TLS certificate could not be verified ({text}); "
            "check valkey.tls.ca_file (the CA that signed the shard's certificate) and that "
            "the certificate names the host in the shard map URL",
            shard=shard, command=command)
    if isinstance(error, vx.OutOfMemoryError):
        return ValkeyRejected(
            f"{where} refused: out of memory (OOM {text}); raise maxmemory (or give the "
            "cached data a TTL) and keep maxmemory-policy noeviction: allkeys-* and "
            "volatile-* (every fence has a TTL) can evict a fence before its TTL and let "
            "a slow writer put back stale data; `reconciler doctor` checks the policy",
            shard=shard, command=command)
    if isinstance(error, vx.ConnectionError | vx.TimeoutError | vx.ReadOnlyError
                  | vx.TryAgainError | vx.ClusterDownError | OSError):
        return ValkeyUnavailable(f"{where} failed, shard unavailable: {text}",
                                 shard=shard, command=command)
    if is_missing_function(error):  # still missing after a reload: flushed again
        return ValkeyUnavailable(
            f"{where} failed: library {LIBRARY_NAME} missing again right after it was "
            f"reloaded ({text}; FUNCTION FLUSH or failovers in a row?): retrying",
            shard=shard, command=command)
    if isinstance(error, vx.ResponseError):
        if "WAITAOF" in text:
            return ValkeyRejected(f"{where} refused WAITAOF ({text}): the shard map asks this "
                                  "shard to wait for its append-only file (wait.aof): turn on "
                                  "`appendonly yes` on the server, or set wait.aof false",
                                  shard=shard, command=command)
        if text.startswith(_TRANSIENT_CODES):
            return ValkeyUnavailable(f"{where} failed, shard busy or not ready: {text}",
                                     shard=shard, command=command)
        if text.startswith(("NOPERM", "ACL failure")) or "no permissions" in text:
            return ValkeyRejected(f"{where} refused by ACL ({text}); {_noperm_advice(text)}",
                                  shard=shard, command=command)
        return ValkeyRejected(
            f"{where} rejected: {text}. This is a bug or a version mismatch between the "
            f"worker and library {LIBRARY_NAME}; report it with this message",
            shard=shard, command=command)
    return ValkeyRejected(f"{where} failed unexpectedly: {type(error).__name__}: {text}",
                          shard=shard, command=command)


def _certificate_error(error: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind `error` (valkey-py wraps it in a
    ConnectionError), if any: no retry can fix it, unlike a refused connection."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def load_functions(client: valkey.Valkey, *, shard: str = "valkey",
                   library: Library = PROTOCOL) -> None:
    """Install (or replace) `library` on the server behind `client`."""
    try:
        client.function_load(library.source, replace=True)
    except (vx.ValkeyError, OSError) as error:
        raise translate(error, shard=shard, command="FUNCTION LOAD") from error
    log.info("valkey shard %s: loaded functions library %s", shard, library.name)


def call_with_reload(client: valkey.Valkey, call: Callable[[], T], *, shard: str,
                     command: str, missing: Callable[[T], bool] | None = None,
                     library: Library = PROTOCOL) -> T:
    """Run `call()`; if the function is missing on the server, load it and retry once.

    `missing(result)` lets a pipelined call, whose errors come back as values, report
    that one of its replies was "Function not found". valkey-py errors are translated.
    """
    for attempt in (1, 2):
        try:
            result = call()
        except (vx.ValkeyError, OSError) as error:
            if attempt == 1 and is_missing_function(error):
                log.warning("valkey shard %s: library %s missing (restart or FUNCTION "
                            "FLUSH?); reloading it", shard, library.name)
                load_functions(client, shard=shard, library=library)
                continue
            raise translate(error, shard=shard, command=command) from error
        if attempt == 1 and missing is not None and missing(result):
            log.warning("valkey shard %s: library %s missing (restart or FUNCTION FLUSH?); "
                        "reloading it", shard, library.name)
            load_functions(client, shard=shard, library=library)
            continue
        return result
    raise AssertionError("unreachable")  # pragma: no cover


def first_error(replies: list[Any]) -> Exception | None:
    """The first exception among pipeline replies, or None."""
    for reply in replies:
        if isinstance(reply, Exception):
            return reply
    return None
