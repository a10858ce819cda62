"""Several sources and partitions in the config, the audit report and doctor's reading
of a partition tree: what is accepted, what each says, and what stays as it was with
one source."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from connectors.postgres import Partitioning, Publication
from reconciler.errors import ConfigError
from reconciler.ops.audit.findings import AMBIGUOUS, FRESH, STALE, AuditReport, Finding
from reconciler.ops.doctor.checklist import FAIL, OK, WARN
from reconciler.ops.doctor.partitions import partition_checks, suggest
from reconciler.settings import IMPLICIT_SOURCE, TableSpec, load_settings
from tests.unit.reconciler.test_settings import clean_environment, config_error, write_config

__all__ = ["clean_environment"]  # autouse: no RECONCILER_* variable of the shell leaks in

DSN = "postgresql://reconciler:secret-pw@db2:5432/nd2"


def two_sources(data: dict[str, Any]) -> None:
    data.pop("postgres")
    data["sources"] = [
        {"name": "nd", "topic_prefix": "nd", "postgres": {"dsn_file": "secrets/nd"}},
        {"name": "nd2", "topic_prefix": "nd2", "connector": "nd2-postgres",
         "postgres": {"dsn": DSN}}]


# --------------------------------------------------------------------------- settings


def test_without_sources_postgres_and_connect_are_the_one_implicit_source(
        tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path))
    [source] = settings.source_list()
    assert (source.name, source.topic_prefix, source.connector) == (IMPLICIT_SOURCE, "", None)
    assert source.postgres is settings.postgres


def test_sources_are_read_with_their_files_resolved_and_dsns_masked(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, two_sources))
    nd, nd2 = settings.source_list()
    assert nd.postgres.dsn_file == tmp_path / "secrets" / "nd"
    assert nd2.postgres.dsn_value() == DSN and nd2.connector == "nd2-postgres"
    masked = json.dumps(settings.masked())
    assert "secret-pw" not in masked and "**********" in masked


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["sources"].append(dict(d["sources"][0])), "sources: name nd given more than once"),
    (lambda d: d["sources"][1].update(topic_prefix="nd"),
     "sources: topic_prefix nd given more than once"),
    (lambda d: d.update(postgres={"dsn": DSN}), "postgres: with `sources`, give each source"),
    (lambda d: d.update(connect={"url": "http://c:8083", "connector": "x"}),
     "connect.connector: with `sources`, name each source's connector"),
    (lambda d: d["sources"][1].pop("topic_prefix"), "sources[1].topic_prefix: required"),
    (lambda d: d["sources"][1].update(name="has space"), "sources[1].name: String should match"),
])
def test_a_bad_sources_section_is_named(tmp_path: Path, change: Any, message: str) -> None:
    def both(data: dict[str, Any]) -> None:
        two_sources(data)
        change(data)

    assert message in config_error(tmp_path, both)


def test_partitions_must_be_regular_expressions(tmp_path: Path) -> None:
    message = config_error(tmp_path, lambda d: d["tables"]["public.posts"].update(
        partitions=["posts_(2026"]))
    assert "tables.public.posts.partitions: partitions: 'posts_(2026' is not a regular " \
           "expression" in message


# --------------------------------------------------------------------------- audit report


def test_one_sources_report_is_as_before_and_several_add_the_ambiguous_state() -> None:
    finding = Finding("public.posts", "post:{id}", "a", Counter({FRESH: 2, STALE: 1}))
    one = AuditReport(findings=[finding], sources=[IMPLICIT_SOURCE])
    assert AMBIGUOUS not in one.as_json()["totals"] and "sources" not in one.as_json()
    assert "ambiguous" not in one.text()
    ambiguous = Finding("public.posts", "post:{id}", "a", Counter({FRESH: 2, AMBIGUOUS: 1}))
    several = AuditReport(findings=[ambiguous], sources=["nd", "nd2"])
    data = several.as_json()
    assert data["totals"][AMBIGUOUS] == 1 and data["sources"] == ["nd", "nd2"]
    assert data["remaining"] == {"stale": 0, "orphan": 0, "ahead": 0, "ambiguous": 1}
    [line] = several.verdict()
    assert line.startswith("1 ambiguous entry (keys naming a row in more than one source")
    assert "1 ambiguous (" in several.text() and "sources nd, nd2" in several.text()


# --------------------------------------------------------------------------- doctor


EVENTS = TableSpec.model_validate({"primary_key": ["id", "day"], "shard_key": "hood",
                                   "keys": [{"template": "event:{id}"}]})
LEAVES = {"public.events_2026_11": "default", "public.events_2026_12": "default",
          "public.events_default": "default"}
TREE = Partitioning(True, LEAVES, None)
PER_LEAF = Publication("pub", False, frozenset(LEAVES))
VIA_ROOT = Publication("pub", True, frozenset({"public.events"}))


def checks(spec: TableSpec = EVENTS, found: Partitioning | None = TREE,
           publication: Publication | None = PER_LEAF, include: tuple[str, ...] = (),
           ) -> list[tuple[str, str, str, str]]:
    return [(c.status, c.name, c.detail, c.fix) for c in partition_checks(
        "public.events", spec, found, publication, include, {"public.events"})]


def with_partitions(*patterns: str, **more: Any) -> TableSpec:
    return EVENTS.model_copy(update={"partitions": list(patterns), **more})


def test_per_leaf_publishing_with_unmatched_leaves_fails_with_the_patterns_to_set() -> None:
    [(status, name, detail, fix)] = checks(with_partitions(r"events_\d{4}_\d{2}"))
    assert (status, name) == (FAIL, "table public.events partitions")
    assert "publication pub publishes per leaf partition" in detail
    assert "does not match public.events_default: their changes are skipped" in detail
    assert fix.startswith(r"set tables.public.events.partitions: ['events_\d{4}_\d{2}', "
                          "'events_default']")
    assert checks(with_partitions(r"events_.*"))[0][0] == OK


def test_via_the_root_is_ok_without_partitions_and_names_the_truncate_it_loses() -> None:
    [(status, _, detail, _)] = checks(publication=VIA_ROOT)
    assert status == OK and "publishes via the root" in detail
    assert "a TRUNCATE of one leaf is not published" in detail


def test_without_a_publication_unmatched_leaves_only_warn() -> None:
    assert checks(publication=None)[0][0] == WARN


def test_a_configured_leaf_under_a_root_publication_fails() -> None:
    leaf = Partitioning(False, {}, "public.events")
    [(status, _, detail, fix)] = checks(found=leaf, publication=VIA_ROOT)
    assert status == FAIL and "changes arrive under public.events" in detail
    assert fix == "configure public.events under `tables:` instead"
    assert checks(found=leaf, publication=PER_LEAF) == []


def test_partitions_on_a_plain_table_warn() -> None:
    plain = Partitioning(False, {}, None)
    assert checks(with_partitions("x"), found=plain)[0][:2] == (WARN,
                                                                "table public.events partitions")
    assert checks(found=plain) == []


def test_leaves_without_the_replica_identity_the_config_says_fail() -> None:
    full = with_partitions(r"events_.*", replica_identity="full")
    found = Partitioning(True, {**LEAVES, "public.events_2026_12": "full"}, None)
    failed = [c for c in checks(full, found) if c[0] == FAIL]
    assert [c[1] for c in failed] == ["table public.events partitions replica identity"]
    assert "public.events_2026_11, public.events_default are not FULL" in failed[0][2]
    assert failed[0][3] == ("ALTER TABLE public.events_2026_11 REPLICA IDENTITY FULL; "
                            "ALTER TABLE public.events_default REPLICA IDENTITY FULL;")


def test_the_include_list_must_capture_the_leaves_or_the_root() -> None:
    spec = with_partitions(r"events_.*")
    capture = [c for c in checks(spec, include=("public.posts",)) if c[1].endswith("capture")]
    assert capture and "does not capture public.events_2026_11" in capture[0][2]
    assert not [c for c in checks(spec, include=(r"public\.events_.*",))
                if c[1].endswith("capture")]
    assert not [c for c in checks(publication=VIA_ROOT, include=("public.events",))
                if c[1].endswith("capture")]


def test_suggested_patterns_generalise_digits_and_keep_other_schemas_qualified() -> None:
    assert suggest("public.events", ["public.events_2026_11", "public.events_2027_01",
                                     "archive.events_old"]) == \
        r"['events_\d{4}_\d{2}', 'archive\.events_old']"


def test_a_missing_table_has_no_partition_checks() -> None:
    assert checks(found=None) == []


def test_config_error_is_raised_for_an_unreadable_source_file(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, two_sources))
    with pytest.raises(ConfigError, match="cannot read"):
        settings.source_list()[0].postgres.dsn_value()
