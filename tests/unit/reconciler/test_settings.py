"""`load_settings`: the config file, its validation, the environment and secrets."""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from reconciler.errors import ConfigError, ReconcilerError
from reconciler.settings import Settings, load_settings

LOCAL = Path(__file__).resolve().parents[3] / "config" / "local"
LOCAL_YAML: dict[str, Any] = yaml.safe_load((LOCAL / "reconciler.yaml").read_text())
LOCAL_DSN: str = LOCAL_YAML["postgres"]["dsn"]
LOCAL_DSN_PASSWORD = urlsplit(LOCAL_DSN).password
assert LOCAL_DSN_PASSWORD, "the local postgres dsn is expected to hold a password"
SECRETS = ("hunter2-client", "hunter2-sasl", "hunter2-valkey", "hunter2-ssl-key",
           LOCAL_DSN_PASSWORD)

Change = Callable[[dict[str, Any]], None]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RECONCILER_* variable of the shell running the tests leaks in."""
    for name in list(os.environ):
        if name.startswith("RECONCILER_"):
            monkeypatch.delenv(name)


def write_config(folder: Path, change: Change | None = None) -> Path:
    """The local config (and its shard map) in `folder`, passed through `change`."""
    data = copy.deepcopy(LOCAL_YAML)
    if change is not None:
        change(data)
    shutil.copy(LOCAL / "shard_map.yaml", folder / "shard_map.yaml")
    path = folder / "reconciler.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def config_error(folder: Path, change: Change) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(folder, change))
    return str(caught.value)


def posts(data: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = data["tables"]["public.posts"]
    return table


# --------------------------------------------------------------------------- valid


def test_local_config_loads() -> None:
    settings = load_settings(LOCAL / "reconciler.yaml")
    assert settings.kafka.topics == ["nd.public.posts", "nd.public.comments",
                                     "nd.public.profiles"]
    assert set(settings.tables) == {"public.posts", "public.comments", "public.profiles"}
    assert settings.tables["public.comments"].replica_identity == "full"
    assert settings.fence_ttl_seconds == 60
    assert settings.unknown_tables == "skip"


def test_defaults_fill_what_the_file_leaves_out(tmp_path: Path) -> None:
    def minimal(data: dict[str, Any]) -> None:
        for name in ("metrics", "postgres", "logging", "fence_ttl_seconds", "unknown_tables"):
            data.pop(name)

    settings = load_settings(write_config(tmp_path, minimal))
    assert settings.fence_ttl_seconds == 60
    assert settings.metrics.port == 9400
    assert settings.postgres.dsn is None
    assert settings.kafka.dead_letter_topic == "cache-reconciler.dlq"


def test_templates_compile_with_their_kind() -> None:
    spec = load_settings(LOCAL / "reconciler.yaml").tables["public.posts"]
    assert [(t.source, t.versioned) for t in spec.templates()] == [
        ("post:{id}", True), ("feed:{neighborhood_id}", False)]


def test_topic_regex_subscription_is_anchored(tmp_path: Path) -> None:
    def regex(data: dict[str, Any]) -> None:
        data["kafka"].pop("topics")
        data["kafka"]["topic_regex"] = r"nd\.public\..*"

    settings = load_settings(write_config(tmp_path, regex))
    assert settings.kafka.subscription() == [r"^nd\.public\..*"]


def test_settings_are_frozen() -> None:
    settings = load_settings(LOCAL / "reconciler.yaml")
    with pytest.raises(Exception, match="frozen"):
        settings.fence_ttl_seconds = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- invalid


def test_config_error_is_a_reconciler_error() -> None:
    assert issubclass(ConfigError, ReconcilerError)


def test_unknown_field_is_named(tmp_path: Path) -> None:
    message = config_error(tmp_path, lambda d: d.__setitem__("fence_tll_seconds", 5))
    assert "fence_tll_seconds: unknown field" in message


def test_unknown_nested_field_is_named_with_its_path(tmp_path: Path) -> None:
    message = config_error(tmp_path, lambda d: d["kafka"].__setitem__("group", "x"))
    assert "kafka.group: unknown field" in message


def test_unknown_table_field_is_named_with_its_path(tmp_path: Path) -> None:
    message = config_error(tmp_path, lambda d: posts(d).__setitem__("shardkey", "x"))
    assert "tables.public.posts.shardkey: unknown field" in message


def test_missing_bootstrap_servers_is_named(tmp_path: Path) -> None:
    message = config_error(tmp_path, lambda d: d["kafka"].pop("bootstrap_servers"))
    assert "kafka.bootstrap_servers: required field is missing" in message


def test_missing_tables_is_named(tmp_path: Path) -> None:
    assert "tables: required field is missing" in config_error(tmp_path, lambda d: d.pop("tables"))


def test_error_message_names_the_file(tmp_path: Path) -> None:
    message = config_error(tmp_path, lambda d: d["kafka"].pop("bootstrap_servers"))
    assert str(tmp_path / "reconciler.yaml") in message


def test_both_topics_and_topic_regex_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, lambda d: d["kafka"].__setitem__("topic_regex", "^nd"))
    assert "kafka: set exactly one of topics (a list) or topic_regex" in message


def test_neither_topics_nor_topic_regex_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, lambda d: d["kafka"].pop("topics"))
    assert "kafka: set exactly one of topics" in message


def test_bad_topic_regex_is_named(tmp_path: Path) -> None:
    def bad(data: dict[str, Any]) -> None:
        data["kafka"].pop("topics")
        data["kafka"]["topic_regex"] = "nd\\.public\\.(posts"

    message = config_error(tmp_path, bad)
    assert "kafka: topic_regex" in message
    assert "missing )" in message


@pytest.mark.parametrize(
    "name", ["auto.offset.reset", "enable.auto.offset.store", "group.id", "bootstrap.servers",
             "enable.partition.eof", "partition.assignment.strategy", "group.protocol"],
)
def test_reserved_client_property_is_refused(tmp_path: Path, name: str) -> None:
    message = config_error(tmp_path, lambda d: d["kafka"].__setitem__("client", {name: "x"}))
    assert f"client.{name} cannot be set" in message


@pytest.mark.parametrize("name", ["session.timeout.ms", "heartbeat.interval.ms"])
def test_the_consumer_group_protocol_refuses_what_the_broker_owns(tmp_path: Path,
                                                                   name: str) -> None:
    def kip848(data: dict[str, Any]) -> None:
        data["kafka"]["group_protocol"] = "consumer"
        data["kafka"]["client"] = {name: 6000}

    message = config_error(tmp_path, kip848)
    assert f"client.{name} cannot be set with group_protocol: consumer (KIP-848)" in message
    classic = write_config(tmp_path, lambda d: d["kafka"].__setitem__("client", {name: 6000}))
    assert load_settings(classic).kafka.group_protocol == "classic"


def test_the_consumer_group_protocol_builds_a_consumer_the_broker_runs() -> None:
    from confluent_kafka import Consumer

    from connectors.kafka import Security, consumer_config

    kip848 = consumer_config("127.0.0.1:1", "g", Security(), group_protocol="consumer")
    assert kip848["group.protocol"] == "consumer"
    assert not {"session.timeout.ms", "partition.assignment.strategy"} & kip848.keys()
    Consumer(kip848).close()  # librdkafka accepts it (the classic defaults it refuses)
    classic = consumer_config("127.0.0.1:1", "g", Security())
    assert classic["partition.assignment.strategy"] == "cooperative-sticky"
    assert "group.protocol" not in classic


def test_a_fetch_is_bounded_whatever_the_partitions() -> None:
    from confluent_kafka import Consumer

    from connectors.kafka import Security, consumer_config

    config = consumer_config("127.0.0.1:1", "g", Security())
    # librdkafka's own bound (50 MB) lets one response outgrow the prefetch queue's on a
    # topic of many partitions (1 MB each): the worker's is a fraction of the queue's.
    assert isinstance(config["fetch.max.bytes"], int)
    assert isinstance(config["queued.max.messages.kbytes"], int)
    assert config["fetch.max.bytes"] <= config["queued.max.messages.kbytes"] * 1024 // 2
    Consumer(config).close()  # librdkafka accepts it beside its other limits
    mine = consumer_config("127.0.0.1:1", "g", Security(), {"fetch.max.bytes": 1 << 20})
    assert mine["fetch.max.bytes"] == 1 << 20  # kafka.client still decides


def test_ordinary_client_property_passes_through(tmp_path: Path) -> None:
    path = write_config(tmp_path, lambda d: d["kafka"].__setitem__(
        "client", {"fetch.min.bytes": 1024, "security.protocol": "SSL"}))
    assert load_settings(path).kafka.client == {"fetch.min.bytes": 1024,
                                                "security.protocol": "SSL"}


def test_dead_letter_topic_must_not_be_consumed(tmp_path: Path) -> None:
    message = config_error(tmp_path, lambda d: d["kafka"].__setitem__(
        "dead_letter_topic", "nd.public.posts"))
    assert "dead_letter_topic must not be one of the consumed topics" in message


@pytest.mark.parametrize(
    ("template", "problem"),
    [("post:{id:>5}", "not a column name"), ("post:{id", "unbalanced brace"),
     ("post:{}", "not a column name"), ("", "empty")],
)
def test_bad_template_is_named(tmp_path: Path, template: str, problem: str) -> None:
    message = config_error(tmp_path, lambda d: posts(d)["keys"][0].__setitem__(
        "template", template))
    assert "tables.public.posts.keys[0].template" in message
    assert problem in message


def test_template_without_a_placeholder_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, lambda d: posts(d)["keys"][1].__setitem__(
        "template", "all_posts"))
    assert "tables.public.posts: template 'all_posts' has no {column} placeholder" in message


def test_table_without_keys_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, lambda d: posts(d).__setitem__("keys", []))
    assert "tables.public.posts.keys" in message


@pytest.mark.parametrize("name", ["posts", "public.posts.extra", "public.", "1x.posts"])
def test_table_name_must_be_schema_dot_table(tmp_path: Path, name: str) -> None:
    def rename(data: dict[str, Any]) -> None:
        data["tables"][name] = data["tables"].pop("public.posts")

    message = config_error(tmp_path, rename)
    assert f"table {name!r}: write tables as schema.table" in message


@pytest.mark.parametrize("kind", ["decimal", "decimal:x", "money", "timestamp-s", ""])
def test_bad_column_type_is_named(tmp_path: Path, kind: str) -> None:
    message = config_error(tmp_path, lambda d: posts(d).__setitem__(
        "column_types", {"score": kind}))
    assert f"column_types.score: {kind!r} is not one of" in message


def test_bad_replica_identity_is_named(tmp_path: Path) -> None:
    message = config_error(tmp_path, lambda d: posts(d).__setitem__("replica_identity", "fll"))
    assert "tables.public.posts.replica_identity" in message


@pytest.mark.parametrize("ttl", [-1, 0])
def test_fence_ttl_must_be_positive(tmp_path: Path, ttl: int) -> None:
    message = config_error(tmp_path, lambda d: d.__setitem__("fence_ttl_seconds", ttl))
    assert "fence_ttl_seconds:" in message
    assert "greater than or equal to 1" in message


def test_unknown_tables_must_be_skip_or_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, lambda d: d.__setitem__("unknown_tables", "ignore"))
    assert "unknown_tables:" in message


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_sasl_protocol_without_mechanism_is_an_error(tmp_path: Path, protocol: str) -> None:
    message = config_error(tmp_path, lambda d: d["kafka"].__setitem__(
        "security", {"protocol": protocol}))
    assert f"kafka.security: protocol {protocol} needs sasl_mechanism" in message


def test_sasl_password_and_password_file_together_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, lambda d: d["kafka"].__setitem__("security", {
        "protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_password": "x",
        "sasl_password_file": "pw"}))
    assert "kafka.security: set sasl_password or sasl_password_file, not both" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    def broken(data: dict[str, Any]) -> None:
        data["kafka"].pop("bootstrap_servers")
        data["fence_ttl_seconds"] = -5

    message = config_error(tmp_path, broken)
    assert "2 problem(s)" in message
    assert "kafka.bootstrap_servers" in message and "fence_ttl_seconds" in message


def test_invalid_yaml_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "reconciler.yaml"
    path.write_text("kafka:\n  bootstrap_servers: [unclosed\nshard_map: x\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "not valid YAML at line" in message
    assert ", column " in message


def test_tab_indentation_is_invalid_yaml_with_its_position(tmp_path: Path) -> None:
    path = tmp_path / "reconciler.yaml"
    path.write_text("kafka:\n\tbootstrap_servers: x\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line 2, column 1"):
        load_settings(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_that_is_not_a_mapping_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "reconciler.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_settings(path)


@pytest.mark.parametrize("key", ["yes", "on", "1", "null"])
def test_top_level_key_that_yaml_reads_as_no_string_is_named(tmp_path: Path, key: str) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text() + f"{key}: 5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(path) in str(caught.value)


def test_empty_file_reports_the_missing_fields(tmp_path: Path) -> None:
    path = tmp_path / "reconciler.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match="kafka: required field is missing"):
        load_settings(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(tmp_path / "nope.yaml")


def test_config_env_names_the_file_when_no_path_is_given(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, lambda d: d["kafka"].__setitem__("group_id", "from-env-file"))
    monkeypatch.setenv("RECONCILER_CONFIG", str(path))
    assert load_settings(None).kafka.group_id == "from-env-file"


# --------------------------------------------------------------------------- paths


def test_relative_shard_map_resolves_against_the_config_folder(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    path = write_config(tmp_path)
    monkeypatch.chdir("/")
    assert load_settings(path).shard_map == tmp_path / "shard_map.yaml"


def test_absolute_shard_map_is_kept(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "map.yaml"
    path = write_config(tmp_path, lambda d: d.__setitem__("shard_map", str(elsewhere)))
    assert load_settings(path).shard_map == elsewhere


def test_relative_tls_and_secret_files_resolve_against_the_config_folder(tmp_path: Path) -> None:
    def files(data: dict[str, Any]) -> None:
        data["kafka"]["security"] = {
            "protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_password_file": "secrets/sasl", "ssl_ca_file": "tls/ca.pem",
            "ssl_cert_file": "tls/cert.pem", "ssl_key_file": "tls/key.pem"}
        data["valkey"] = {"password_file": "secrets/valkey",
                          "tls": {"enabled": True, "ca_file": "tls/vca.pem",
                                  "cert_file": "tls/vcert.pem", "key_file": "tls/vkey.pem"}}
        data["postgres"] = {"dsn_file": "secrets/dsn"}

    settings = load_settings(write_config(tmp_path, files))
    security, valkey = settings.kafka.security, settings.valkey
    assert security.sasl_password_file == tmp_path / "secrets/sasl"
    assert (security.ssl_ca_file, security.ssl_cert_file, security.ssl_key_file) == (
        tmp_path / "tls/ca.pem", tmp_path / "tls/cert.pem", tmp_path / "tls/key.pem")
    assert valkey.password_file == tmp_path / "secrets/valkey"
    assert (valkey.tls.ca_file, valkey.tls.cert_file, valkey.tls.key_file) == (
        tmp_path / "tls/vca.pem", tmp_path / "tls/vcert.pem", tmp_path / "tls/vkey.pem")
    assert settings.postgres.dsn_file == tmp_path / "secrets/dsn"


def test_absolute_tls_and_secret_files_are_kept(tmp_path: Path) -> None:
    def files(data: dict[str, Any]) -> None:
        data["kafka"]["security"] = {"protocol": "SSL", "ssl_ca_file": "/etc/ssl/ca.pem"}
        data["valkey"] = {"password_file": "/run/secrets/valkey"}
        data["postgres"] = {"dsn_file": "/run/secrets/dsn"}

    settings = load_settings(write_config(tmp_path, files))
    assert settings.kafka.security.ssl_ca_file == Path("/etc/ssl/ca.pem")
    assert settings.valkey.password_file == Path("/run/secrets/valkey")
    assert settings.postgres.dsn_file == Path("/run/secrets/dsn")


def test_password_files_are_read_from_the_config_folder(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "valkey.pw").write_text("hunter2-valkey\n")
    (tmp_path / "dsn").write_text("postgresql://u:p@h/db\n")

    def files(data: dict[str, Any]) -> None:
        data["valkey"] = {"password_file": "valkey.pw"}
        data["postgres"] = {"dsn_file": "dsn"}

    settings = load_settings(write_config(tmp_path, files))
    monkeypatch.chdir("/")
    assert settings.valkey.password_value() == "hunter2-valkey"
    assert settings.postgres.dsn_value() == "postgresql://u:p@h/db"


def test_unreadable_password_file_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    path = write_config(tmp_path, lambda d: d.__setitem__("valkey", {"password_file": "gone"}))
    with pytest.raises(ConfigError, match=r"valkey\.password_file: cannot read"):
        load_settings(path).valkey.password_value()


# --------------------------------------------------------------------------- environment


def test_environment_overrides_a_nested_field(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_KAFKA__GROUP_ID", "from-env")
    settings = load_settings(write_config(tmp_path))
    assert settings.kafka.group_id == "from-env"
    # The rest of the section still comes from the file.
    assert settings.kafka.bootstrap_servers == LOCAL_YAML["kafka"]["bootstrap_servers"]
    assert settings.kafka.topics == LOCAL_YAML["kafka"]["topics"]


def test_environment_overrides_a_top_level_field(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_FENCE_TTL_SECONDS", "5")
    assert load_settings(write_config(tmp_path)).fence_ttl_seconds == 5


def test_environment_value_is_validated_and_named(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_FENCE_TTL_SECONDS", "-5")
    with pytest.raises(ConfigError, match="fence_ttl_seconds"):
        load_settings(write_config(tmp_path))


def test_secret_from_the_environment_is_used(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_VALKEY__PASSWORD", "hunter2-valkey")
    settings = load_settings(write_config(tmp_path))
    assert settings.valkey.password_value() == "hunter2-valkey"


# --------------------------------------------------------------------------- secrets


def with_secrets(data: dict[str, Any]) -> None:
    data["kafka"]["client"] = {"sasl.password": "hunter2-client", "fetch.min.bytes": 1}
    data["kafka"]["security"] = {"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                                 "sasl_username": "svc", "sasl_password": "hunter2-sasl",
                                 "ssl_key_password": "hunter2-ssl-key"}
    data["valkey"] = {"password": "hunter2-valkey"}


@pytest.fixture
def secret_settings(tmp_path: Path) -> Settings:
    return load_settings(write_config(tmp_path, with_secrets))


def test_secrets_are_readable_where_they_are_used(secret_settings: Settings) -> None:
    assert secret_settings.kafka.security.sasl_password is not None
    assert secret_settings.kafka.security.sasl_password.get_secret_value() == "hunter2-sasl"
    assert secret_settings.postgres.dsn_value() == LOCAL_DSN


def test_masked_settings_hold_no_secret(secret_settings: Settings) -> None:
    text = str(secret_settings.masked())
    assert [secret for secret in SECRETS if secret in text] == []


def test_masked_settings_keep_what_is_not_secret(secret_settings: Settings) -> None:
    masked = secret_settings.masked()
    assert masked["kafka"]["client"]["fetch.min.bytes"] == 1
    assert masked["kafka"]["client"]["sasl.password"] == "**********"
    assert masked["kafka"]["security"]["sasl_username"] == "svc"
    assert masked["kafka"]["group_id"] == "cache-reconciler"


def test_repr_of_settings_holds_no_secret(secret_settings: Settings) -> None:
    text = repr(secret_settings)
    assert [secret for secret in SECRETS if secret in text] == []


def test_str_of_settings_holds_no_secret(secret_settings: Settings) -> None:
    text = str(secret_settings)
    assert [secret for secret in SECRETS if secret in text] == []


def test_validation_error_does_not_echo_a_secret(tmp_path: Path) -> None:
    def bad(data: dict[str, Any]) -> None:
        with_secrets(data)
        data["valkey"]["password"] = ["hunter2-valkey"]  # wrong type

    message = config_error(tmp_path, bad)
    assert "valkey.password" in message
    assert "hunter2-valkey" not in message


def test_masked_hides_oauthbearer_jaas_and_connect_userinfo(tmp_path: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        data["kafka"]["client"] = {"sasl.oauthbearer.config": "clientSecret=s3cr3t-oauth",
                                   "sasl.jaas.config": "password=s3cr3t-jaas"}
        data["connect"] = {"url": "http://admin:s3cr3t-connect@connect:8083"}

    text = json.dumps(load_settings(write_config(tmp_path, change)).masked())
    for secret in ("s3cr3t-oauth", "s3cr3t-jaas", "s3cr3t-connect"):
        assert secret not in text
    assert "connect:8083" in text


def test_a_template_without_literal_text_is_refused(tmp_path: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        posts(data)["keys"] = [{"template": "{id}", "versioned": True}]

    message = config_error(tmp_path, change)
    assert "tables.public.posts" in message and "no literal text" in message
