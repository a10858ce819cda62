"""No secret ever leaves the worker: not in its log (text or JSON, at DEBUG), not in
/metrics, /readyz, /freshness or /healthz, in no encoding (base64 at any alignment,
URL encoding, JSON escaping), whether the secrets came from the environment or from
files."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import valkey

from tests.conftest import Stack
from tests.e2e.support import WorkerProcess
from tests.security.conftest import Pipeline, Secured, password_env, secure_config
from tests.security.support import learn_port, output, wait_committed

pytestmark = pytest.mark.e2e

ENDPOINTS = ("/metrics", "/readyz", "/freshness", "/healthz")


def encodings(secret: str) -> set[str]:
    """`secret` as it could show up in text: plain, URL-encoded, JSON-escaped, and the
    part of its base64 that does not depend on what surrounds it, at each alignment."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    raw = secret.encode()
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * pad + raw).decode()
            # Drop the characters mixed with the padding bytes, and the tail.
            start = (pad * 4 + 2) // 3
            stable = text[start:len(text) - 4]
            if len(stable) >= 8:
                forms.add(stable)
    return forms


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return sorted(f"{name} as {form!r}" for name, secret in secrets.items()
                  for form in encodings(secret) if form in text)


def test_encodings_catch_a_secret_embedded_anywhere() -> None:
    secret = "s3cr3t+/pass=@%word"
    for prefix in ("", "a", "ab", "abc"):
        framed = base64.b64encode(f"{prefix}\0user\0{secret}\0".encode()).decode()
        assert leaks(framed, {"it": secret}), prefix
    assert leaks(f"dsn={quote(secret, safe='')}", {"it": secret})
    assert not leaks("nothing to see here", {"it": secret})


def _serve_and_stop(stack: Stack, worker: WorkerProcess, pipeline: Pipeline) -> dict[str, Any]:
    try:
        learn_port(worker)
        wait_committed(stack, worker, pipeline.group, pipeline.topics)
        responses = {path: worker.get(path) for path in ENDPOINTS}
    finally:
        assert worker.stop() == 0, output(worker)[-3000:]
    assert responses["/readyz"][1]["shards"] == {"a": "up"}
    return responses


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_in_logs_or_endpoints_when_given_by_environment(
        stack: Stack, secured: Secured, pipeline: Pipeline, cache: valkey.Valkey,
        tmp_path: Path, log_format: str) -> None:
    dsn = stack.postgres_reconciler_dsn
    config = secure_config(tmp_path, stack, secured, pipeline.group, pipeline.topics,
                           overrides={"logging": {"level": "DEBUG", "format": log_format}})
    assert secured.kafka_password not in config.read_text()
    worker = WorkerProcess(config, tmp_path / "worker.log",
                           env={**password_env(secured), "RECONCILER_POSTGRES__DSN": dsn})

    responses = _serve_and_stop(stack, worker, pipeline)

    text = output(worker)
    assert "effective configuration" in text, "the log covers start-up"
    secrets = _secrets(secured, dsn)
    assert leaks(text, secrets) == []
    assert leaks(json.dumps(responses), secrets) == []


def test_no_secret_in_logs_or_endpoints_when_given_by_files(
        stack: Stack, secured: Secured, pipeline: Pipeline, cache: valkey.Valkey,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = stack.postgres_reconciler_dsn
    files = {}
    for name, value in (("kafka", secured.kafka_password), ("valkey", secured.valkey_password),
                        ("dsn", dsn)):
        path = tmp_path / "secrets" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(value + "\n")  # as a mounted Kubernetes Secret may end
        os.chmod(path, 0o600)
        files[name] = str(path)
    config = secure_config(
        tmp_path, stack, secured, pipeline.group, pipeline.topics,
        overrides={"logging": {"level": "DEBUG", "format": "json"},
                   "postgres": {"dsn_file": files["dsn"]}})
    _edit(config, lambda c: (c["kafka"]["security"].update(sasl_password_file=files["kafka"]),
                             c["valkey"].update(password_file=files["valkey"])))
    for name in [name for name in os.environ if name.startswith("RECONCILER_")]:
        monkeypatch.delenv(name)  # only the files hold the secrets
    worker = WorkerProcess(config, tmp_path / "worker.log")

    responses = _serve_and_stop(stack, worker, pipeline)

    text = output(worker)
    assert files["kafka"] in text, "the effective configuration names the file, not its content"
    secrets = _secrets(secured, dsn)
    assert leaks(text, secrets) == []
    assert leaks(json.dumps(responses), secrets) == []


def _secrets(secured: Secured, dsn: str) -> dict[str, str]:
    from urllib.parse import urlsplit

    return {"kafka password": secured.kafka_password,
            "valkey password": secured.valkey_password,
            "postgres dsn": dsn,
            "postgres password": urlsplit(dsn).password or ""}


def _edit(config: Path, change: Any) -> None:
    import yaml

    data = yaml.safe_load(config.read_text())
    change(data)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
