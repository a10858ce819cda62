"""`reconciler doctor` and `reconciler audit` with shard b behind the stack's real
Sentinels: doctor checks the Sentinels (they answer, agree on the primary, list a
replica) and then the primary as any shard; a missing Sentinel warns, a refused
password or an unknown service fails with the fix; audit reads and repairs entries
on the primary the Sentinels name."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.valkey.sentinel import close_sentinel_client, sentinel_client
from connectors.valkey.writer import CacheWriter
from reconciler.cli import main
from stack import security, sentinel
from tests.conftest import Stack
from tests.e2e.sentinel import Sentinels, fields, sentinels
from tests.e2e.support import COMMENTS, POSTS, PROFILES, Rows, write_config
from tests.e2e.test_doctor import line

pytestmark = pytest.mark.e2e
__all__ = ["sentinels"]  # the fixture
SHARD_B = 700  # a neighbourhood of shard b


def sentinel_config(stack: Stack, directory: Path, uid: str, urls: list[str],
                    service: str, prefix: str = "", **overrides: Any) -> Path:
    return write_config(directory, stack, group=f"sentinel-ops-{uid}",
                        topics=[POSTS, COMMENTS, PROFILES], key_prefix=prefix,
                        overrides=overrides,
                        shard_map={"shards": {"a": {"url": stack.valkey["valkey-a"]},
                                              "b": {"sentinel": urls, "service": service}}})


def doctor(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["doctor", "-c", str(config)])
    return code, capsys.readouterr().out.splitlines()


def test_doctor_checks_the_sentinels_then_the_primary(
        stack: Stack, sentinels: Sentinels, tmp_path: Path, uid: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = sentinel_config(stack, tmp_path / "ok", uid, sentinels.urls, sentinels.service)
    code, lines = doctor(config, capsys)
    primary, replica = sentinel.primary(), sentinel.replica()
    assert line(lines, "OK", "shard b sentinels").endswith("3 Sentinels answer for service "
                                                           "cache-s")
    assert line(lines, "OK", "shard b primary").endswith(f"agree on 127.0.0.1:{primary}")
    assert line(lines, "OK", "shard b replicas").endswith(f"1 replica(s): 127.0.0.1:{replica}")
    assert "reachable, version" in line(lines, "OK", "shard b")
    line(lines, "OK", "shard b functions")
    assert code == 0, "\n".join(lines)

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        unused = sock.getsockname()[1]
    missing = [*sentinels.urls, f"valkey://127.0.0.1:{unused}"]
    config = sentinel_config(stack, tmp_path / "missing", uid, missing, sentinels.service)
    code, lines = doctor(config, capsys)
    assert "3 of 4 Sentinels answer" in line(lines, "WARN", "shard b sentinels")
    line(lines, "OK", "shard b primary")
    assert code == 0, "a missing Sentinel is a warning"

    refused = sentinels.with_credentials(password="wrong")
    config = sentinel_config(stack, tmp_path / "refused", uid, refused, sentinels.service)
    code, lines = doctor(config, capsys)
    assert "refused us" in line(lines, "FAIL", "shard b sentinels")
    assert "refused us" in line(lines, "FAIL", "shard b")
    assert code == 1

    config = sentinel_config(stack, tmp_path / "unknown", uid, sentinels.urls, "cache-x")
    code, lines = doctor(config, capsys)
    assert "shards.b.service" in line(lines, "FAIL", "shard b sentinels")
    assert code == 1


def test_the_sentinels_credentials_can_come_from_the_settings(
        stack: Stack, sentinels: Sentinels, tmp_path: Path, uid: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    secret = security.secret_file(sentinel.SENTINEL_SECRET)
    auth = {"username": sentinel.SENTINEL_USER, "password_file": str(secret)}
    config = sentinel_config(stack, tmp_path / "ok", uid, sentinels.urls, sentinels.service,
                             **{"valkey.sentinel": auth})
    code, lines = doctor(config, capsys)
    line(lines, "OK", "shard b sentinels")
    assert code == 0, "\n".join(lines)
    wrong = tmp_path / "wrong.password"
    wrong.write_text("wrong\n")
    config = sentinel_config(stack, tmp_path / "wrong", uid, sentinels.urls,
                             sentinels.service, **{"valkey.sentinel": {
                                 **auth, "password_file": str(wrong)}})
    code, lines = doctor(config, capsys)
    assert "refused us" in line(lines, "FAIL", "shard b sentinels")
    assert code == 1


def test_audit_reads_and_repairs_the_primary_the_sentinels_name(
        stack: Stack, sentinels: Sentinels, tmp_path: Path, uid: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    prefix = f"audit-{uid}:"
    config = sentinel_config(stack, tmp_path, uid, sentinels.urls, sentinels.service, prefix)
    data = yaml.safe_load(config.read_text())
    data["tables"] = {"public.posts": data["tables"]["public.posts"]}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    db = Rows(stack.postgres_dsn)
    client = sentinel_client(sentinels.urls, sentinels.service)
    writer = CacheWriter(client, name="b")
    try:
        fresh, v_fresh = db.insert_post(SHARD_B)
        assert writer.set_if_newer(f"{prefix}post:{fresh}", v_fresh, {"t": "ok"}, 600)
        stale, v1 = db.insert_post(SHARD_B)
        v2 = db.update_post(stale)
        assert writer.set_if_newer(f"{prefix}post:{stale}", v1, {"t": "old"}, 600)

        def audit(*args: str) -> tuple[int, Any]:
            code = main(["audit", "-c", str(config), "--json", "--grace", "0", *args])
            return code, json.loads(capsys.readouterr().out)

        code, found = audit()
        assert code == 1
        assert found["tables"]["public.posts"]["shards"]["b"] == {
            "fresh": 1, "stale": 1, "orphan": 0, "ahead": 0, "fence": 0, "unparsed": 0}
        code, _ = audit("--repair")
        assert code == 0
        assert fields(sentinels.primary(), f"{prefix}post:{stale}") == {
            b"v": str(v2).encode()}
        assert writer.get(f"{prefix}post:{fresh}") == {"t": "ok"}
    finally:
        close_sentinel_client(client)
        db.close()
