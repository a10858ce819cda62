"""The writer helper applications use to read and fill the cache (SPEC section 2).

`CacheWriter.get(key)` reads an entry (a fence or nothing reads as None);
`set_if_newer(key, version, payload, ttl_seconds)` writes value and version in one
atomic call (`cr2_set_if_newer`) that refuses to overwrite newer data or to pass a
fence the reconciler put up for a newer change: that is what closes the
delete-then-stale-set race. Read the version together with the row, in the same
transaction, and pass that version.

Against a Valkey Cluster, pass a valkey-py `ValkeyCluster` (or use
`CacheWriter.for_cluster(seed_urls, …)`): both calls name one key, so valkey-py routes
each to the key's primary and follows MOVED and ASK; a missing library is loaded on
every primary.

Payload encoding: one codec-marker byte, then MessagePack bytes, zstd-compressed when
the MessagePack form is longer than `compress_threshold` (and compression helps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import valkey
import zstandard
from valkey import exceptions as vx
from valkey.cluster import ValkeyCluster

from connectors.errors import PayloadError
from connectors.valkey.connection import connection_pool
from connectors.valkey.functions import (
    SET_IF_NEWER_FUNCTION,
    call_with_reload,
    translate,
)
from connectors.valkey.protocols import DATA_FIELD, MAX_VERSION, VERSION_FIELD, parse_version
from connectors.valkey.routing import NON_LOCAL
from connectors.valkey.topology import cluster_client

CODEC_MSGPACK = 0x01  # marker: the rest is MessagePack
CODEC_MSGPACK_ZSTD = 0x02  # marker: the rest is a zstd frame of MessagePack
DEFAULT_COMPRESS_THRESHOLD = 1024  # bytes of MessagePack above which zstd is tried
ZSTD_LEVEL = 3  # zstd's default level: fast, and most of the gain
NON_LOCAL_RETRIES = 3  # set_if_newer sent again after stopping halfway in a migration


def encode_payload(payload: Any, *, compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD,
                   level: int = ZSTD_LEVEL) -> bytes:
    """Marker byte + MessagePack (zstd-compressed above `compress_threshold` bytes)."""
    packed: bytes = msgpack.packb(payload, use_bin_type=True)
    if len(packed) > compress_threshold:
        compressed: bytes = zstandard.ZstdCompressor(level=level).compress(packed)
        if len(compressed) < len(packed):
            return bytes((CODEC_MSGPACK_ZSTD,)) + compressed
    return bytes((CODEC_MSGPACK,)) + packed


def decode_payload(data: bytes, *, key: str = "?") -> Any:
    """The payload `encode_payload()` made; PayloadError for anything else."""
    if not data:
        raise PayloadError(f"cache key {key!r}: empty payload (no codec marker)")
    marker, body = data[0], data[1:]
    try:
        if marker == CODEC_MSGPACK:
            return msgpack.unpackb(body, raw=False, strict_map_key=False)
        if marker == CODEC_MSGPACK_ZSTD:
            return msgpack.unpackb(zstandard.ZstdDecompressor().decompress(body),
                                   raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, zstandard.ZstdError) as error:
        raise PayloadError(f"cache key {key!r}: corrupt payload (codec 0x{marker:02x}): "
                           f"{error}") from error
    raise PayloadError(
        f"cache key {key!r}: unknown codec marker 0x{marker:02x} (known: "
        f"0x{CODEC_MSGPACK:02x} msgpack, 0x{CODEC_MSGPACK_ZSTD:02x} msgpack+zstd); "
        "was it written by a newer writer or by something else? Treat it as a miss "
        "and overwrite it with set_if_newer")


class CacheWriter:
    """Read and version-safely write cache entries on one Valkey server (or cluster)."""

    def __init__(self, client_or_url: valkey.Valkey | ValkeyCluster | str, *,
                 name: str | None = None,
                 username: str | None = None, password: str | None = None,
                 tls_ca_file: str | None = None, tls_cert_file: str | None = None,
                 tls_key_file: str | None = None, socket_timeout: float = 5.0,
                 compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD,
                 zstd_level: int = ZSTD_LEVEL) -> None:
        client: valkey.Valkey | ValkeyCluster
        if isinstance(client_or_url, str):
            client = valkey.Valkey(connection_pool=connection_pool(
                client_or_url, username=username, password=password,
                tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file,
                tls_key_file=tls_key_file, socket_timeout=socket_timeout))
            self._owned = True
        else:
            client = client_or_url
            self._owned = False
        untyped: Any = client
        kwargs = (untyped.get_connection_kwargs() if isinstance(client, ValkeyCluster)
                  else client.connection_pool.connection_kwargs)
        if kwargs.get("decode_responses"):
            raise ValueError("CacheWriter needs a client with decode_responses=False: "
                             "payloads are binary")
        self.name = name or ("cluster" if isinstance(client, ValkeyCluster) else
                             f"{kwargs.get('host', 'valkey')}:{kwargs.get('port', '')}")
        self.compress_threshold = compress_threshold
        self.zstd_level = zstd_level
        self._client = client
        # valkey-py annotates sync calls with its async return types; see shard.py.
        self._sync: Any = client

    @classmethod
    def for_cluster(cls, urls: Sequence[str], *, name: str | None = None,
                    username: str | None = None, password: str | None = None,
                    tls_ca_file: str | None = None, tls_cert_file: str | None = None,
                    tls_key_file: str | None = None, socket_timeout: float = 5.0,
                    compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD,
                    zstd_level: int = ZSTD_LEVEL) -> CacheWriter:
        """A writer on the Valkey Cluster that `urls` (any of its nodes) lead to."""
        writer = cls(cluster_client(urls, username=username, password=password,
                                    tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file,
                                    tls_key_file=tls_key_file, socket_timeout=socket_timeout),
                     name=name, compress_threshold=compress_threshold, zstd_level=zstd_level)
        writer._owned = True
        return writer

    def get(self, key: str) -> Any | None:
        """The cached payload, or None for a miss (nothing, a fence, a foreign value)."""
        found = self.get_with_version(key)
        return None if found is None else found[1]

    def get_with_version(self, key: str) -> tuple[int, Any] | None:
        """(version, payload) of the cached data, or None for a miss."""
        try:
            raw_version, data = self._sync.hmget(key, VERSION_FIELD, DATA_FIELD)
        except vx.ResponseError as error:
            if str(error).startswith("WRONGTYPE"):
                return None  # a foreign non-hash value: a miss, set_if_newer replaces it
            raise translate(error, shard=self.name, command="HMGET") from error
        except (vx.ValkeyError, OSError) as error:
            raise translate(error, shard=self.name, command="HMGET") from error
        version = parse_version(raw_version)
        if data is None or version is None:
            return None
        return version, decode_payload(data, key=key)

    def set_if_newer(self, key: str, version: int, payload: Any,
                     ttl_seconds: float | None) -> bool:
        """Write `payload` at `version` unless the entry is newer data or a higher fence.

        `ttl_seconds` None means no expiry. With a TTL, the entry lives at least as long
        as the one it replaces had left (for ever if that had no TTL), so data written
        over a fence, or over data a change met, never ends its protection early (the
        writer's ACL user needs +pttl for this).
        Returns True if written.
        """
        if isinstance(version, bool) or not 0 <= version <= MAX_VERSION:
            raise ValueError(f"cache key {key!r}: version must be an int in [0, 2^63-1], "
                             f"got {version!r}")
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise ValueError(f"cache key {key!r}: ttl_seconds must be positive or None, "
                             f"got {ttl_seconds}")
        ttl_ms = 0 if ttl_seconds is None else max(1, round(ttl_seconds * 1000))
        data = encode_payload(payload, compress_threshold=self.compress_threshold,
                              level=self.zstd_level)
        def call() -> Any:
            for attempt in range(NON_LOCAL_RETRIES + 1):
                try:
                    return self._sync.fcall(SET_IF_NEWER_FUNCTION, 1, key, version, data,
                                            ttl_ms)
                except vx.ResponseError as error:
                    # On the source of a slot being migrated, replacing an entry stops
                    # halfway (the key deleted, not written yet: see routing): at once
                    # again, where the key now is (ASK), so nothing older gets in.
                    if NON_LOCAL not in str(error) or attempt == NON_LOCAL_RETRIES:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover

        written = call_with_reload(self._sync,  # a ValkeyCluster loads it on every primary
                                   call, shard=self.name,
                                   command="FCALL " + SET_IF_NEWER_FUNCTION)
        return bool(written)

    def close(self) -> None:
        """Close the connections, if this writer opened them."""
        if self._owned:
            self._sync.close()
