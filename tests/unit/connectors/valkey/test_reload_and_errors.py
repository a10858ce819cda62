"""Transparent reload of the library (FUNCTION FLUSH, restart) and the error mapping:
unavailable shards, ACL refusals, bad credentials."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
import valkey
from valkey import exceptions as vx

from connectors.errors import ValkeyRejected, ValkeyUnavailable
from connectors.valkey.functions import LIBRARY_NAME, translate
from connectors.valkey.shard import Shard
from connectors.valkey.writer import CacheWriter
from tests.unit.connectors.valkey.conftest import SHARD


def library_loaded(client: valkey.Valkey) -> bool:
    return bool(client.function_list(library=LIBRARY_NAME))


def test_function_flush_is_transparent(shard: Shard, writer: CacheWriter,
                                       client: valkey.Valkey, uid: str) -> None:
    client.function_flush("SYNC")
    assert not library_loaded(client)
    assert shard.apply([f"{uid}:a"], ["v"], [1]) == ["absent"]
    assert library_loaded(client)
    client.function_flush("SYNC")
    assert writer.set_if_newer(f"{uid}:b", 1, "x", None)
    assert library_loaded(client)


def test_a_library_flushed_again_right_after_its_reload_is_transient(
        shard: Shard, client: valkey.Valkey, uid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flushed between the reload and the retry (FUNCTION FLUSH or failovers in a row):
    not a refusal that stops the worker, but unavailable — the caller's retries reload
    it again."""
    from connectors.valkey import functions

    load = functions.load_functions

    def load_then_flushed(target: valkey.Valkey, *, shard: str = "valkey",
                          library: functions.Library = functions.PROTOCOL) -> None:
        load(target, shard=shard, library=library)
        client.function_flush("SYNC")

    client.function_flush("SYNC")
    monkeypatch.setattr(functions, "load_functions", load_then_flushed)
    with pytest.raises(ValkeyUnavailable, match="missing again right after it was reloaded"):
        shard.apply([f"{uid}:a"], ["v"], [1])
    with pytest.raises(ValkeyUnavailable, match="missing again"):
        shard.send([f"{uid}:a"], ["v"], [1]).result()
    monkeypatch.setattr(functions, "load_functions", load)
    assert shard.apply([f"{uid}:a"], ["v"], [1]) == ["absent"]


def test_restart_is_transparent(shard: Shard, writer: CacheWriter, client: valkey.Valkey,
                                uid: str) -> None:
    from stack import services

    service = services.SERVICES[SHARD]
    assert shard.apply([f"{uid}:a"], ["v"], [1]) == ["absent"]
    try:
        service.stop()
        with pytest.raises(ValkeyUnavailable, match="valkey shard 'valkey-b'"):
            shard.apply([f"{uid}:a"], ["v"], [2])
        assert shard.ping() is False
    finally:
        service.start()
    assert not library_loaded(client)  # no persistence: the restart dropped the library
    assert shard.apply([f"{uid}:a"], ["v"], [3]) == ["absent"]
    assert library_loaded(client)
    client.function_flush("SYNC")
    assert writer.set_if_newer(f"{uid}:b", 1, "x", None)
    assert shard.ping() is True


def test_down_server_is_unavailable(unused_port: int) -> None:
    url = f"valkey://127.0.0.1:{unused_port}/0"
    with Shard("down", url, socket_timeout=1) as down:
        with pytest.raises(ValkeyUnavailable, match="valkey shard 'down': FCALL cr2_apply"):
            down.apply(["k"], ["v"], [1])
        with pytest.raises(ValkeyUnavailable):
            down.truncate("k*")
        with pytest.raises(ValkeyUnavailable):
            down.ensure_functions()
        assert down.ping() is False
    writer = CacheWriter(url, name="down", socket_timeout=1)
    with pytest.raises(ValkeyUnavailable):
        writer.get("k")
    with pytest.raises(ValkeyUnavailable):
        writer.set_if_newer("k", 1, "x", None)


@pytest.fixture
def acl_user(client: valkey.Valkey, uid: str) -> Iterator[tuple[str, str]]:
    name, password = f"cr-test-{uid}", f"pw-{uid}"
    yield name, password
    client.acl_deluser(name)


def test_user_without_fcall_is_rejected_with_the_fix(shard: Shard, url: str,
                                                     client: valkey.Valkey, uid: str,
                                                     acl_user: tuple[str, str]) -> None:
    name, password = acl_user
    client.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"],
                       commands=["+@all", "-fcall"])
    with Shard("limited", url, username=name, password=password) as limited:
        assert limited.ping() is True
        with pytest.raises(ValkeyRejected) as caught:
            limited.apply([f"{uid}:a"], ["v"], [1])
    message = str(caught.value)
    assert "valkey shard 'limited': FCALL cr2_apply refused by ACL" in message
    assert "+fcall" in message
    assert password not in message


def test_user_without_function_load_is_rejected_with_the_fix(
        url: str, client: valkey.Valkey, uid: str, acl_user: tuple[str, str]) -> None:
    name, password = acl_user
    client.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"],
                       commands=["+@all", "-function"])
    client.function_flush("SYNC")
    with Shard("limited", url, username=name, password=password) as limited:
        with pytest.raises(ValkeyRejected, match=r"FUNCTION LOAD refused by ACL.*"
                                                 r"\+function\|load"):
            limited.apply([f"{uid}:a"], ["v"], [1])
        with pytest.raises(ValkeyRejected, match="FUNCTION LOAD"):
            limited.ensure_functions()


def test_user_without_key_access_is_rejected(shard: Shard, url: str, client: valkey.Valkey,
                                             uid: str, acl_user: tuple[str, str]) -> None:
    name, password = acl_user
    client.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["other:*"],
                       commands=["+@all"])
    with Shard("limited", url, username=name, password=password) as limited, \
            pytest.raises(ValkeyRejected, match=r"refused by ACL.*access to the cache keys"):
        limited.apply([f"{uid}:a"], ["v"], [1])


def test_wrong_password_is_rejected(url: str, client: valkey.Valkey,
                                    acl_user: tuple[str, str]) -> None:
    name, password = acl_user
    client.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"],
                       commands=["+@all"])
    with Shard("limited", url, username=name, password="not-it") as limited:
        with pytest.raises(ValkeyRejected, match="failed authentication") as caught:
            limited.apply(["k"], ["v"], [1])
        assert "not-it" not in str(caught.value)
        assert limited.ping() is False
        with pytest.raises(ValkeyRejected, match="failed authentication"):
            limited.server_version()


def _wrapped(cause: OSError) -> vx.ConnectionError:
    """A TLS failure as valkey-py raises it: a ConnectionError raised in `except OSError`."""
    error = vx.ConnectionError(f"Error 1 connecting to 127.0.0.1:6390. {cause}.")
    error.__context__ = cause
    return error


@pytest.mark.parametrize(("error", "kind"), [
    (vx.ConnectionError("Connection refused"), ValkeyUnavailable),
    (vx.TimeoutError("Timeout reading from socket"), ValkeyUnavailable),
    (vx.BusyLoadingError("Valkey is loading the dataset in memory"), ValkeyUnavailable),
    (vx.ReadOnlyError("You can't write against a read only replica."), ValkeyUnavailable),
    (vx.ResponseError("MASTERDOWN Link with MASTER is down"), ValkeyUnavailable),
    (vx.ResponseError("TRYAGAIN Multiple keys request during rehashing"), ValkeyUnavailable),
    (vx.ResponseError("BUSY Valkey is busy running a script."), ValkeyUnavailable),
    (ConnectionResetError(104, "Connection reset by peer"), ValkeyUnavailable),
    (vx.NoPermissionError("this user has no permissions to run the 'fcall' command"),
     ValkeyRejected),
    (vx.AuthenticationError("invalid username-password pair"), ValkeyRejected),
    (vx.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
     ValkeyRejected),
    (vx.ResponseError("cr2_apply: op for key #1 must be one of v, s, d, u"), ValkeyRejected),
    (vx.ResponseError("Function not found"), ValkeyUnavailable),  # gone again after a reload
    (_wrapped(ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED]")),
     ValkeyRejected),
    (_wrapped(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")), ValkeyUnavailable),
])
def test_translate(error: Exception, kind: type[Exception]) -> None:
    translated = translate(error, shard="a", command="FCALL cr2_apply")
    assert type(translated) is kind
    assert str(translated).startswith("valkey shard 'a': FCALL cr2_apply")
    assert (translated.shard, translated.command) == ("a", "FCALL cr2_apply")


def test_tls_files_need_a_tls_url(url: str) -> None:
    with pytest.raises(ValueError, match="use valkeys://"):
        Shard("a", url, tls_ca_file="/ca.pem")
    with pytest.raises(ValueError, match="scheme must be one of"):
        Shard("a", "http://127.0.0.1:1/0")


def test_urls_are_logged_without_credentials(url: str) -> None:
    with Shard("a", url.replace("valkey://", "redis://user:secret@")) as redis_scheme:
        assert "secret" not in repr(redis_scheme)
        assert "user" not in redis_scheme.url


def test_user_without_a_command_the_functions_call_is_rejected(
        shard: Shard, url: str, client: valkey.Valkey, uid: str,
        acl_user: tuple[str, str]) -> None:
    name, password = acl_user
    client.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"],
                       commands=["+@all", "-hset"])
    with Shard("limited", url, username=name, password=password) as limited, \
            pytest.raises(ValkeyRejected, match=r"refused by ACL.*\+hset"):
        limited.apply([f"{uid}:a"], ["v"], [1])


def test_tls_urls_use_tls_with_the_given_files() -> None:
    from valkey.connection import SSLConnection

    for scheme in ("valkeys", "rediss"):
        with Shard("a", f"{scheme}://[::1]:6390/2", tls_ca_file="/ca.pem",
                   tls_cert_file="/c.pem", tls_key_file="/k.pem", password="pw") as tls:
            pool = tls.client.connection_pool
            assert pool.connection_class is SSLConnection
            assert pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
            assert pool.connection_kwargs["ssl_certfile"] == "/c.pem"
            assert pool.connection_kwargs["ssl_keyfile"] == "/k.pem"
            assert pool.connection_kwargs["db"] == 2
            assert pool.connection_kwargs["ssl_check_hostname"] is True
            assert tls.url == f"{scheme}://[::1]:6390/2"


def test_a_library_answering_something_else_is_rejected(
        shard: Shard, client: valkey.Valkey, uid: str) -> None:
    client.function_load("#!lua name=cache_reconciler_2\n"
                         "redis.register_function('cr2_apply', function() "
                         "return {'gone'} end)\n", replace=True)
    try:
        with pytest.raises(ValkeyRejected, match="not one label per key"):
            shard.apply([f"{uid}:a"], ["v"], [1])
    finally:
        shard.ensure_functions()


def test_out_of_memory(shard: Shard, writer: CacheWriter, client: valkey.Valkey,
                       uid: str) -> None:
    key = f"{uid}:post:1"
    assert writer.set_if_newer(key, 1, "v1", None)
    saved = client.config_get("maxmemory")["maxmemory"]
    client.config_set("maxmemory", "1")  # policy is noeviction: every write is refused
    try:
        with pytest.raises(ValkeyRejected, match=r"out of memory.*raise maxmemory"):
            writer.set_if_newer(f"{uid}:post:2", 1, "x", None)
        # Invalidation still works on a full cache (cr2_apply is flagged allow-oom).
        assert shard.apply([key], ["v"], [2]) == ["repaired"]
    finally:
        client.config_set("maxmemory", saved)
    assert writer.get(key) is None


def test_a_refused_read_inside_the_function_is_not_mistaken_for_stale_data(
        shard: Shard, url: str, client: valkey.Valkey, uid: str,
        acl_user: tuple[str, str]) -> None:
    name, password = acl_user
    client.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"],
                       commands=["+@all", "-hget"])
    key = f"{uid}:post:1"
    client.hset(key, mapping={"v": "9", "d": "x"})
    with Shard("limited", url, username=name, password=password) as limited, \
            pytest.raises(ValkeyRejected, match=r"refused by ACL.*\+hget"):
        limited.apply([key], ["v"], [1])
    assert client.hgetall(key) == {b"v": b"9", b"d": b"x"}  # fresh data untouched
