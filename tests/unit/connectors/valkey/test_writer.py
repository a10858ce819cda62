"""CacheWriter: the payload codec and get/set_if_newer against a real server."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest
import valkey

from connectors.errors import PayloadError
from connectors.valkey.protocols import MAX_VERSION
from connectors.valkey.writer import (
    CODEC_MSGPACK,
    CODEC_MSGPACK_ZSTD,
    CacheWriter,
    decode_payload,
    encode_payload,
)

SMALL = {"id": 1, "title": "hello", "tags": ["a", "b"], "score": 1.5, "blob": b"\x00\x01"}
LARGE = {"id": 2, "body": "lorem ipsum " * 500, "n": list(range(200))}


@pytest.mark.parametrize(("payload", "marker"), [
    (SMALL, CODEC_MSGPACK), (LARGE, CODEC_MSGPACK_ZSTD), (None, CODEC_MSGPACK),
    ("", CODEC_MSGPACK), ({1: "int keys"}, CODEC_MSGPACK),
    (os.urandom(4000), CODEC_MSGPACK),  # incompressible: stays uncompressed
])
def test_codec_round_trip(payload: Any, marker: int) -> None:
    encoded = encode_payload(payload, compress_threshold=1024)
    assert encoded[0] == marker
    assert decode_payload(encoded) == payload


def test_threshold() -> None:
    payload = "x" * 2000
    assert encode_payload(payload, compress_threshold=4096)[0] == CODEC_MSGPACK
    assert encode_payload(payload, compress_threshold=10)[0] == CODEC_MSGPACK_ZSTD


@pytest.mark.parametrize(("data", "message"), [
    (b"\x07" + msgpack.packb(1), "unknown codec marker 0x07"),
    (b"", "empty payload"),
    (b"\x02not zstd", "corrupt payload"),
    (b"\x01\xc1", "corrupt payload"),
])
def test_bad_payloads(data: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        decode_payload(data, key="post:1")


@pytest.mark.parametrize("payload", [SMALL, LARGE])
def test_set_and_get(writer: CacheWriter, client: valkey.Valkey, uid: str,
                     payload: Any) -> None:
    key = f"{uid}:post:1"
    assert writer.get(key) is None
    assert writer.set_if_newer(key, 3, payload, ttl_seconds=120)
    assert writer.get(key) == payload
    assert writer.get_with_version(key) == (3, payload)
    assert 110_000 < client.pttl(key) <= 120_000
    assert client.hget(key, "v") == b"3"


def test_compare_and_set_rules(writer: CacheWriter, client: valkey.Valkey, uid: str) -> None:
    key = f"{uid}:post:1"
    assert writer.set_if_newer(key, 5, "v5", None)
    assert client.pttl(key) == -1  # no TTL asked: none set
    assert not writer.set_if_newer(key, 5, "again", None)  # data v >= version
    assert not writer.set_if_newer(key, 4, "older", None)
    assert writer.set_if_newer(key, 6, "v6", 60)
    assert writer.get(key) == "v6"
    assert writer.set_if_newer(key, 7, "v7", None)
    assert client.pttl(key) == -1  # the old TTL went with the old entry
    fence = f"{uid}:post:2"
    client.hset(fence, "v", "8")
    client.pexpire(fence, 60_000)
    assert not writer.set_if_newer(fence, 7, "older", None)  # fence v > version
    assert writer.get(fence) is None  # a fence reads as a miss
    assert writer.set_if_newer(fence, 8, "v8", None)  # fence v <= version
    assert writer.get_with_version(fence) == (8, "v8")
    big = f"{uid}:post:3"
    assert writer.set_if_newer(big, 2**53, "a", None)
    assert writer.set_if_newer(big, 2**53 + 1, "b", None)
    assert not writer.set_if_newer(big, 2**53, "c", None)
    assert writer.get_with_version(big) == (2**53 + 1, "b")
    deleted = f"{uid}:post:4"
    client.hset(deleted, "v", str(MAX_VERSION))
    assert not writer.set_if_newer(deleted, MAX_VERSION - 1, "x", None)


@pytest.mark.parametrize("arrange", ["string", "list", "hash-garbage-v", "hash-no-v"])
def test_foreign_values_read_as_a_miss_and_are_replaced(
        writer: CacheWriter, client: valkey.Valkey, uid: str, arrange: str) -> None:
    key = f"{uid}:post:1"
    if arrange == "string":
        client.set(key, "legacy")
    elif arrange == "list":
        client.rpush(key, "a")
    elif arrange == "hash-garbage-v":
        client.hset(key, mapping={"v": "x1", "d": b"\x01\x01"})
    else:
        client.hset(key, mapping={"d": b"\x01\x01", "other": "y"})
    assert writer.get(key) is None
    assert writer.set_if_newer(key, 0, "fresh", None)
    assert client.hgetall(key) == {b"v": b"0", b"d": encode_payload("fresh")}


def test_unknown_marker_on_get(writer: CacheWriter, client: valkey.Valkey, uid: str) -> None:
    key = f"{uid}:post:1"
    client.hset(key, mapping={"v": "1", "d": b"\x09rest"})
    with pytest.raises(PayloadError, match=f"cache key '{key}': unknown codec marker 0x09"):
        writer.get(key)


@pytest.mark.parametrize(("version", "ttl"), [(-1, None), (2**63, None), (True, None),
                                               (1, 0.0), (1, -3.0)])
def test_bad_arguments(writer: CacheWriter, version: int, ttl: float | None) -> None:
    with pytest.raises(ValueError):
        writer.set_if_newer("k", version, "x", ttl)


def test_accepts_a_client_but_not_a_decoding_one(url: str, uid: str) -> None:
    raw = valkey.Valkey.from_url(url)
    shared = CacheWriter(raw)
    assert shared.set_if_newer(f"{uid}:a", 1, [1, 2], None)
    assert shared.get(f"{uid}:a") == [1, 2]
    shared.close()  # not ours: left open
    assert raw.ping()
    raw.close()
    with pytest.raises(ValueError, match="decode_responses=False"):
        CacheWriter(valkey.Valkey.from_url(url, decode_responses=True))
