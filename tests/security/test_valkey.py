"""Valkey over TLS (stunnel in front of valkey-server) as the least-privileged ACL user
of stack/security.py: it can do the reconciler's work and nothing else, and a wrong
password, a wrong CA or a command outside its ACL are refused with errors that say
what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import valkey
from valkey import exceptions as vx

from connectors.errors import ValkeyRejected
from connectors.valkey.functions import LIBRARY_NAME, translate
from connectors.valkey.shard import Shard
from stack import security
from tests.conftest import Stack
from tests.e2e.support import WorkerProcess
from tests.security.conftest import Pipeline, Secured, password_env, secure_config
from tests.security.support import exit_of

pytestmark = pytest.mark.e2e


def reconciler_shard(secured: Secured, *, password: str | None = None,
                     ca_file: Path | None = None) -> Shard:
    return Shard("a", secured.valkey_url, username=secured.valkey_user,
                 password=password or secured.valkey_password,
                 tls_ca_file=str(ca_file or secured.ca_file), socket_timeout=5)


def reconciler_client(secured: Secured) -> valkey.Valkey:
    return valkey.Valkey.from_url(secured.valkey_url, username=secured.valkey_user,
                                  password=secured.valkey_password,
                                  ssl_ca_certs=str(secured.ca_file))


def test_the_acl_user_does_the_reconcilers_work(secured: Secured,
                                                cache: valkey.Valkey) -> None:
    cache.function_flush()
    cache.hset("post:1", mapping={"v": "3", "d": "payload"})
    cache.set("feed:7", "derived")
    cache.hset("comment:9", mapping={"v": "1", "d": "c"})
    with reconciler_shard(secured) as shard:
        shard.ensure_functions()  # FUNCTION LOAD as the restricted user
        assert cache.function_list(library=LIBRARY_NAME)
        assert shard.apply(["post:1", "feed:7", "profile:u1", "post_comments:1"],
                           ["v", "u", "d", "u"], [4, 0, 0, 0]) == [
            "repaired", "repaired", "absent", "absent"]
        assert shard.truncate("comment:*") == 1
        assert shard.ping() is True
        assert shard.server_version()
    assert cache.hget("post:1", "v") == b"4" and not cache.hexists("post:1", "d")
    assert not cache.exists("feed:7") and not cache.exists("comment:9")


@pytest.mark.parametrize(("command", "denied"), [
    (("FLUSHALL",), "flushall"),
    (("FLUSHDB",), "flushdb"),
    (("FUNCTION", "FLUSH"), "function|flush"),
    (("FUNCTION", "DELETE", LIBRARY_NAME), "function|delete"),
    (("CONFIG", "GET", "requirepass"), "config|get"),
    (("KEYS", "*"), "keys"),
    (("EVAL", "return 1", "0"), "eval"),
    (("ACL", "LIST"), "acl|list"),
    (("GET", "post:1"), "get"),
])
def test_commands_outside_the_acl_are_refused_naming_the_command(
        secured: Secured, cache: valkey.Valkey, command: tuple[str, ...], denied: str) -> None:
    cache.hset("post:1", mapping={"v": "1", "d": "x"})
    client = reconciler_client(secured)
    try:
        with pytest.raises(vx.NoPermissionError) as caught:
            client.execute_command(*command)
    finally:
        client.close()
    assert f"no permissions to run the '{denied}' command" in str(caught.value)
    translated = translate(caught.value, shard="a", command=command[0])
    assert isinstance(translated, ValkeyRejected)
    assert "refused by ACL (NOPERM" in str(translated)
    assert f"`ACL SETUSER <user> +{denied}`" in str(translated)
    assert cache.hget("post:1", "v") == b"1", "nothing was changed"


def test_without_function_load_a_flushed_library_stops_with_the_reason(
        secured: Secured, cache: valkey.Valkey, uid: str) -> None:
    """The stricter set-up of docs/security.md: functions loaded by an admin only."""
    user, password = f"noload{uid}", f"pw-{uid}"
    rule = ["resetchannels", *(f"~{p}" for p in security.VALKEY_KEY_PATTERNS), "-@all",
            *(f"+{c}" for c in security.VALKEY_COMMANDS if c != "function|load")]
    cache.execute_command("ACL", "SETUSER", user, "on", f">{password}", *rule)
    try:
        cache.function_flush()
        with Shard("a", secured.valkey_url, username=user, password=password,
                   tls_ca_file=str(secured.ca_file)) as shard, \
                pytest.raises(ValkeyRejected, match=r"FUNCTION LOAD refused by ACL .*"
                                                    r"'function\|load' command"):
            shard.apply(["post:1"], ["v"], [1])
    finally:
        cache.acl_deluser(user)


def test_keys_outside_the_patterns_are_refused(secured: Secured,
                                               cache: valkey.Valkey) -> None:
    cache.set("session:42", "someone else's data")
    with reconciler_shard(secured) as shard:
        with pytest.raises(ValkeyRejected, match=r"refused by ACL \(NOPERM.*access a key.*"
                                                 r"read and write access to the cache keys"):
            shard.apply(["post:1", "session:42"], ["v", "d"], [2, 0])
        with pytest.raises(ValkeyRejected, match="refused by ACL"):
            shard.truncate("session:*")
    assert cache.get("session:42") == b"someone else's data"
    assert not cache.exists("post:1"), "the refused call changed nothing"


def test_the_documented_acl_rule_is_the_one_in_force(secured: Secured,
                                                     cache: valkey.Valkey) -> None:
    rule = security.valkey_acl_rule()
    assert rule in (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    user = cache.acl_getuser(secured.valkey_user)
    assert user["keys"] == [f"~{p}" for p in security.VALKEY_KEY_PATTERNS]
    assert user["categories"] == ["-@all"]
    assert user["commands"] == [f"+{c}" for c in security.VALKEY_COMMANDS]
    assert user["channels"] == [] and user["selectors"] == []


def test_wrong_password_is_refused(secured: Secured) -> None:
    with reconciler_shard(secured, password="not-the-valkey-password") as shard:
        assert shard.ping() is False
        with pytest.raises(ValkeyRejected, match=r"failed authentication.*check the username "
                                                 r"and password") as caught:
            shard.apply(["post:1"], ["v"], [1])
    assert "not-the-valkey-password" not in str(caught.value)


def test_wrong_ca_is_refused_at_once(secured: Secured, wrong_ca: Path) -> None:
    with reconciler_shard(secured, ca_file=wrong_ca) as shard, \
            pytest.raises(ValkeyRejected, match=r"TLS certificate could not be verified.*"
                                                r"CERTIFICATE_VERIFY_FAILED.*valkey\.tls\.ca_file"):
        shard.apply(["post:1"], ["v"], [1])


def test_worker_with_a_wrong_valkey_password_exits_with_the_reason(
        stack: Stack, secured: Secured, pipeline: Pipeline, cache: valkey.Valkey,
        tmp_path: Path) -> None:
    wrong = "not-the-valkey-password-4242"
    config = secure_config(tmp_path, stack, secured, pipeline.group, pipeline.topics)
    worker = WorkerProcess(config, tmp_path / "worker.log",
                           env=password_env(secured, valkey_password=wrong))

    code, text = exit_of(worker)

    assert code == 2, text[-3000:]
    assert "stopping: shard a: valkey shard 'a'" in text
    assert "failed authentication (invalid username-password pair" in text
    assert wrong not in text and secured.valkey_password not in text


def test_worker_with_a_wrong_valkey_ca_exits_with_the_reason(
        stack: Stack, secured: Secured, pipeline: Pipeline, cache: valkey.Valkey,
        wrong_ca: Path, tmp_path: Path) -> None:
    config = secure_config(tmp_path, stack, secured, pipeline.group, pipeline.topics,
                           valkey_ca_file=wrong_ca)
    worker = WorkerProcess(config, tmp_path / "worker.log", env=password_env(secured))

    code, text = exit_of(worker)

    assert code == 2, text[-3000:]
    assert "stopping: shard a: valkey shard 'a'" in text
    assert "TLS certificate could not be verified" in text
    assert "unavailable (attempt" not in text, "a certificate error is not retried"
