"""Avro topics end to end without Kafka: the settings that ask for them, the registry's
retry policy, and `reconciler plan` on base64 input read through a real HTTP registry
(a tiny Confluent-API server serving the recorded schemas), planning what the JSON
twin plans."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from connectors.errors import RegistryRejected, RegistryUnavailable
from reconciler.cli import main
from reconciler.errors import ConfigError, FatalError, RetryBudgetExceeded, TransientError
from reconciler.pipeline.decoders import RegistryRetry
from reconciler.settings import load_settings
from tests.unit.connectors.debezium.recorded_avro import AVRO_DIR, schemas
from tests.unit.reconciler.planning import CONFIG


class Registry(BaseHTTPRequestHandler):
    """GET /schemas/ids/<id>: the recorded schema, 404 for others, 503 when `down`."""

    down = False
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:  # http.server's name
        Registry.asked.append(self.path)
        schema_id = self.path.rsplit("/", 1)[-1].split("?")[0]
        known = schemas()
        if Registry.down:
            code, body = 503, {"error_code": 50301, "message": "down for the test"}
        elif schema_id.isdigit() and int(schema_id) in known:
            code, body = 200, {"schema": known[int(schema_id)]}
        else:
            code, body = 404, {"error_code": 40403, "message": f"no schema {schema_id}"}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Registry.down, Registry.asked = False, []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def avro_config(tmp_path: Path, url: str, **kafka: Any) -> Path:
    config = yaml.safe_load(CONFIG.read_text())
    config["shard_map"] = str(CONFIG.parent / "shard_map.yaml")
    config["kafka"].update({"format": "avro", "schema_registry": {"url": url,
                            "timeout_seconds": 2}, "retry_budget_seconds": 1, **kafka})
    path = tmp_path / "reconciler.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def plan_lines(capsys: pytest.CaptureFixture[str], config: Path, source: Path) -> list[Any]:
    code = main(["plan", "-c", str(config), "--input", str(source)])
    out = capsys.readouterr().out
    assert code == 0, out
    return [json.loads(line) for line in out.splitlines()]


# --------------------------------------------------------------------------- settings


def test_avro_topics_need_a_schema_registry(tmp_path: Path) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    config["kafka"]["format"] = "avro"
    path = tmp_path / "reconciler.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="schema_registry"):
        load_settings(path)
    config["kafka"]["format"] = "json"
    config["kafka"]["formats"] = {"nd.public.posts": "avro"}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="schema_registry"):
        load_settings(path)


def test_the_registry_password_is_never_printed(tmp_path: Path) -> None:
    path = avro_config(tmp_path, "https://reader:hunter2@registry:8081")
    raw = yaml.safe_load(path.read_text())
    raw["kafka"]["schema_registry"]["password"] = "s3cret-password"
    (tmp_path / "pw").write_text("from-a-file\n")
    path.write_text(yaml.safe_dump(raw))
    settings = load_settings(path)
    shown = json.dumps(settings.masked()) + repr(settings)
    assert "s3cret-password" not in shown and "hunter2" not in shown
    registry = settings.kafka.schema_registry
    assert registry is not None
    assert registry.client_config()["basic.auth.user.info"] == ":s3cret-password"


def test_registry_files_are_read_relative_to_the_config(tmp_path: Path) -> None:
    path = avro_config(tmp_path, "http://registry:8081")
    raw = yaml.safe_load(path.read_text())
    raw["kafka"]["schema_registry"].update(username="reader", password_file="pw")
    (tmp_path / "pw").write_text("from-a-file\n")
    path.write_text(yaml.safe_dump(raw))
    registry = load_settings(path).kafka.schema_registry
    assert registry is not None and registry.password_file == tmp_path / "pw"
    assert registry.client_config()["basic.auth.user.info"] == "reader:from-a-file"


# --------------------------------------------------------------------------- retries


def test_a_registry_down_is_retried_then_stops_the_worker_past_the_budget() -> None:
    slept: list[float] = []

    def down() -> str:
        raise RegistryUnavailable("connection refused")

    retry = RegistryRetry(0.05, should_stop=lambda: False, sleep=slept.append)
    with pytest.raises(RetryBudgetExceeded, match=r"kafka\.retry_budget_seconds"):
        retry(down)
    assert slept  # it waited before giving up


def test_a_registry_that_comes_back_is_answered() -> None:
    answers: Iterator[Exception | str] = iter(
        [RegistryUnavailable("503"), RegistryUnavailable("timeout"), "schema"])
    retried: list[int] = []

    def flaky() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    retry = RegistryRetry(60, should_stop=lambda: False, sleep=lambda s: None,
                          on_retry=lambda: retried.append(1))
    assert retry(flaky) == "schema"
    assert len(retried) == 2


def test_a_refusal_is_fatal_and_a_stop_ends_the_retries() -> None:
    def refused() -> str:
        raise RegistryRejected("HTTP 401")

    def down() -> str:
        raise RegistryUnavailable("connection refused")

    with pytest.raises(FatalError):
        RegistryRetry(60, should_stop=lambda: False)(refused)
    with pytest.raises(TransientError):
        RegistryRetry(60, should_stop=lambda: True, sleep=lambda s: None)(down)


# --------------------------------------------------------------------------- plan


def test_plan_reads_base64_avro_records_as_json_plans_their_twins(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, registry: str) -> None:
    avro = plan_lines(capsys, avro_config(tmp_path, registry), AVRO_DIR / "avro.jsonl")
    twin = plan_lines(capsys, CONFIG, AVRO_DIR / "twin.jsonl")
    assert len(avro) == len(twin) == 61
    for found, expected in zip(avro, twin, strict=True):
        found["topic"] = found["topic"].replace("capavro", "captwin")
        assert found == expected
    # One request per schema id, not per record.
    assert len(Registry.asked) == len(set(Registry.asked))


def test_plan_dead_letters_an_unknown_id_and_a_body_that_is_not_avro(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, registry: str) -> None:
    first = json.loads((AVRO_DIR / "avro.jsonl").read_text().splitlines()[4])  # posts insert
    body = base64.b64decode(first["value_b64"])
    unknown = {**first, "value_b64": base64.b64encode(
        b"\x00" + (999_999).to_bytes(4, "big") + body[5:]).decode()}
    not_avro = {**first, "value_b64": "eyJhIjogMX0="}  # {"a": 1}
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(unknown) + "\n" + json.dumps(not_avro) + "\n")
    out = plan_lines(capsys, avro_config(tmp_path, registry), source)
    assert [line["reason"] for line in out] == ["unknown_schema", "not_avro"]
    assert "not in the schema registry" in out[0]["dead_letter"]
    assert out[0]["actions"]  # the key still decodes: the key-only delete


def test_plan_input_lines_with_bad_base64_are_reported(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, registry: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"topic": "capavro.public.posts", "value_b64": "%%%"}) + "\n"
                      + json.dumps({"topic": "t", "value": "{}", "value_b64": "e30="}) + "\n")
    code = main(["plan", "-c", str(avro_config(tmp_path, registry)), "--input", str(source)])
    errors = [json.loads(line)["error"] for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert "not base64" in errors[0] and "not both" in errors[1]


def test_plan_with_the_registry_down_fails_past_the_budget_without_a_dead_letter(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, registry: str) -> None:
    Registry.down = True
    code = main(["plan", "-c", str(avro_config(tmp_path, registry)), "--input",
                 str(AVRO_DIR / "avro.jsonl")])
    captured = capsys.readouterr()
    assert code == 2
    assert "retry_budget_seconds" in captured.err
    assert "dead_letter" not in captured.out
