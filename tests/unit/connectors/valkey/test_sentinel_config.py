"""How a sentinel shard's connections are configured, without a server: the Sentinels
get the user information of their own URLs and nothing else, the primary gets the
shard's credentials and nothing of the URLs', and a TLS scheme means TLS (verified)
to both. How Sentinels' answers are read: all refusing or not knowing the service is
a configuration error (not retried), anything else an outage (retried). The same
against real Sentinels: tests/e2e/test_sentinel_shard.py."""

from __future__ import annotations

from typing import Any

import pytest
from valkey.connection import SSLConnection
from valkey.exceptions import AuthenticationError, ConnectionError
from valkey.sentinel import (
    MasterNotFoundError,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from connectors.valkey.sentinel import SentinelMisconfigured, _Sentinels, sentinel_pool

URLS = ["valkey://watcher:s3cret@10.0.2.1:26379", "valkey://10.0.2.2:26379"]


def kwargs_of(client: Any) -> dict[str, Any]:
    return dict(client.connection_pool.connection_kwargs)


def test_sentinels_get_their_urls_credentials_and_the_primary_the_shards() -> None:
    pool = sentinel_pool(URLS, "cache-c", username="reconciler", password="primary-pw",
                         socket_timeout=2.5)
    first, second = (kwargs_of(client) for client in pool.sentinels.sentinels)
    assert (first["host"], first["port"]) == ("10.0.2.1", 26379)
    assert (first.get("username"), first.get("password")) == ("watcher", "s3cret")
    assert (second.get("username"), second.get("password")) == (None, None)
    primary = pool.connection_kwargs
    assert (primary["username"], primary["password"]) == ("reconciler", "primary-pw")
    assert "host" not in primary and "port" not in primary and primary["db"] == 0
    assert primary["socket_timeout"] == primary["socket_connect_timeout"] == 2.5
    assert primary["decode_responses"] is False
    assert pool.connection_class is SentinelManagedConnection
    assert pool.service_name == "cache-c"


def test_the_sentinel_credentials_apply_where_a_url_carries_none() -> None:
    pool = sentinel_pool(URLS, "cache-c", sentinel_username="sentinel-user",
                         sentinel_password="sentinel-pw")
    first, second = (kwargs_of(client) for client in pool.sentinels.sentinels)
    assert (first["username"], first["password"]) == ("watcher", "s3cret")  # its URL's
    assert (second["username"], second["password"]) == ("sentinel-user", "sentinel-pw")
    assert "username" not in pool.connection_kwargs  # never the primary's


def test_without_shard_credentials_the_primary_gets_none_of_the_sentinels() -> None:
    pool = sentinel_pool(URLS, "cache-c")
    assert "username" not in pool.connection_kwargs
    assert "password" not in pool.connection_kwargs


def test_a_tls_scheme_means_verified_tls_to_the_sentinels_and_the_primary() -> None:
    urls = ["valkeys://10.0.2.1:26379", "valkeys://10.0.2.2:26379"]
    pool = sentinel_pool(urls, "cache-c", tls_ca_file="/ca.pem", tls_cert_file="/c.pem",
                         tls_key_file="/c.key")
    assert pool.connection_class is SentinelManagedSSLConnection
    primary = pool.connection_kwargs
    assert (primary["ssl_ca_certs"], primary["ssl_certfile"], primary["ssl_keyfile"]) == (
        "/ca.pem", "/c.pem", "/c.key")
    assert primary["ssl_check_hostname"] is True
    for client in pool.sentinels.sentinels:
        assert client.connection_pool.connection_class is SSLConnection
        assert kwargs_of(client)["ssl_ca_certs"] == "/ca.pem"
        assert kwargs_of(client)["ssl_check_hostname"] is True


@pytest.mark.parametrize(("urls", "service", "tls_ca_file", "message"), [
    ([], "cache-c", None, "at least one Sentinel URL"),
    (URLS, "", None, "service name"),
    (["valkeys://h:1", "valkey://h:2"], "cache-c", None, "mix TLS and plain"),
    (URLS, "cache-c", "/ca.pem", "TLS files were given but the scheme is valkey://"),
    (["http://h:26379"], "cache-c", None, "scheme must be one of"),
])
def test_bad_configurations_say_what_to_fix(urls: list[str], service: str,
                                            tls_ca_file: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sentinel_pool(urls, service, tls_ca_file=tls_ca_file)


class FakeSentinel:
    """What one Sentinel answers to SENTINEL MASTERS (or the error it raises)."""

    def __init__(self, answer: dict[str, Any] | Exception) -> None:
        self.answer = answer

    def sentinel_masters(self) -> dict[str, Any]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def state(port: int, *, down: bool = False) -> dict[str, Any]:
    return {"cache-c": {"ip": "10.0.0.1", "port": port, "is_master": True,
                        "is_sdown": down, "is_odown": False, "flags":
                        "s_down,master" if down else "master", "num-other-sentinels": 2}}


def discover(*answers: dict[str, Any] | Exception) -> tuple[str, int]:
    fakes: Any = [FakeSentinel(answer) for answer in answers]
    manager = _Sentinels([f"valkey://s{i}:26379" for i in range(len(fakes))], fakes)
    return manager.discover_master("cache-c")


def test_the_first_sentinel_that_names_a_primary_up_is_believed() -> None:
    assert discover(ConnectionError("refused"), state(6379, down=True), state(6380)) == (
        "10.0.0.1", 6380)


def test_sentinels_that_all_refuse_or_do_not_know_the_service_are_misconfigured() -> None:
    with pytest.raises(SentinelMisconfigured) as caught:
        discover(AuthenticationError("WRONGPASS invalid username-password pair"),
                 {"other": state(1)["cache-c"]})
    assert "valkey://s0:26379 refused us (WRONGPASS" in str(caught.value)
    assert "user information is the user and password sent to that Sentinel" in str(
        caught.value)
    assert "valkey://s1:26379 does not monitor 'cache-c' (it monitors other)" in str(
        caught.value)


@pytest.mark.parametrize("answers", [
    (ConnectionError("refused"), AuthenticationError("WRONGPASS")),  # one may come back
    (state(6379, down=True),),  # down, not promoted yet
])
def test_no_primary_for_now_is_an_outage(answers: tuple[Any, ...]) -> None:
    with pytest.raises(MasterNotFoundError) as caught:
        discover(*answers)
    assert not isinstance(caught.value, SentinelMisconfigured)
    assert "no primary for service 'cache-c' now" in str(caught.value)
