"""Doctor on flattened topics, from the config and a connector's config alone: which
tables lose move detection, and whether the connector's ExtractNewRecordState settings
agree with the formats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.ops.doctor.checklist import FAIL, OK, WARN, Check
from reconciler.ops.doctor.formats import connector_checks, flattened_tables, move_checks
from reconciler.settings import Settings, load_settings
from stack import flat
from tests.unit.reconciler.planning import CONFIG

FLAT_TOPICS = ["ndflat.public.posts", "ndflat.public.comments", "ndflat.public.profiles"]


def settings(tmp_path: Path, change: Any = None, **kafka: Any) -> Settings:
    raw = yaml.safe_load(CONFIG.read_text())
    raw["shard_map"] = str(CONFIG.parent / "shard_map.yaml")
    raw["kafka"].update(kafka)
    if change is not None:
        change(raw)
    path = tmp_path / "reconciler.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_settings(path)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_json_topics_have_no_format_line(tmp_path: Path) -> None:
    assert list(move_checks(settings(tmp_path))) == []


def test_a_template_built_from_the_shard_key_loses_move_detection(tmp_path: Path) -> None:
    found = by_name(list(move_checks(settings(tmp_path, format="flattened",
                                              topics=FLAT_TOPICS))))
    assert set(found) == {f"table public.{t} format" for t in ("posts", "comments",
                                                               "profiles")}
    posts = found["table public.posts format"]
    assert posts.status == WARN
    assert "loses move detection" in posts.detail
    assert "feed:{neighborhood_id}" in posts.detail and "TRUNCATE" in posts.detail
    assert "README: Formats" in posts.fix
    for table in ("comments", "profiles"):  # comment:{id}, post_comments:{post_id}; profile
        check = found[f"table public.{table} format"]
        assert check.status == OK and "new shard only" in check.detail


def test_per_topic_formats_name_the_flattened_tables(tmp_path: Path) -> None:
    config = settings(tmp_path, formats={"ndflat.public.posts": "flattened"})
    assert flattened_tables(config) == ["public.posts"]
    assert [c.name for c in move_checks(config)] == ["table public.posts format"]
    regex = settings(tmp_path, topics=[], topic_regex=r"^ndflat\..*", format="flattened")
    assert sorted(flattened_tables(regex)) == ["public.comments", "public.posts", "public.profiles"]


def test_rows_that_cannot_move_lose_nothing(tmp_path: Path) -> None:
    def shard_key_in_the_key(raw: dict[str, Any]) -> None:
        raw["tables"]["public.posts"]["primary_key"] = ["id", "neighborhood_id"]

    config = settings(tmp_path, shard_key_in_the_key, format="flattened", topics=FLAT_TOPICS)
    posts = by_name(list(move_checks(config)))["table public.posts format"]
    assert posts.status == OK and "never move" in posts.detail


def connector(**smt: str | None) -> dict[str, str]:
    config = {"name": "nd-flat", **flat.connector_config()}
    for name, value in smt.items():
        option = f"transforms.unwrap.{name.replace('_', '.')}"
        if value is None:
            config.pop(option, None)
        else:
            config[option] = value
    return config


def test_the_stacks_flattened_connector_agrees_with_flattened_topics(tmp_path: Path) -> None:
    [check] = connector_checks(settings(tmp_path, format="flattened", topics=FLAT_TOPICS),
                               connector())
    assert (check.status, check.name) == (OK, "connector nd-flat format")
    assert "delete.tombstone.handling.mode=rewrite" in check.detail
    assert "no op" not in check.detail and "no source.ts_ms" not in check.detail


def test_without_op_and_source_ts_ms_the_line_says_what_is_lost(tmp_path: Path) -> None:
    [check] = connector_checks(settings(tmp_path, format="flattened", topics=FLAT_TOPICS),
                               connector(add_fields="table"))
    assert check.status == OK
    assert "no op: rows are upserts" in check.detail and "no source.ts_ms" in check.detail


@pytest.mark.parametrize(("smt", "says"), [
    ({"delete_tombstone_handling_mode": "drop"}, "deletes never reach Kafka"),
    ({"add_fields_prefix": "meta_"}, "default prefix"),
])
def test_smt_settings_the_reconciler_cannot_read_fail(tmp_path: Path, smt: dict[str, str],
                                                      says: str) -> None:
    [check] = connector_checks(settings(tmp_path, format="flattened", topics=FLAT_TOPICS),
                               connector(**smt))
    assert check.status == FAIL and says in check.detail and check.fix


def test_a_format_the_connector_does_not_write_fails(tmp_path: Path) -> None:
    as_json = settings(tmp_path, topics=FLAT_TOPICS)
    [check] = connector_checks(as_json, connector())
    assert check.status == FAIL and "flattens its rows" in check.detail
    assert "ndflat.public.posts" in check.detail
    envelope = {"name": "nd-postgres", "topic.prefix": "nd"}
    [check] = connector_checks(settings(tmp_path, format="flattened"), envelope)
    assert check.status == FAIL and "writes change events" in check.detail
    assert list(connector_checks(settings(tmp_path), envelope)) == []  # JSON: nothing to say
