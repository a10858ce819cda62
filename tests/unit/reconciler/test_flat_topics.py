"""Flattened topics from the settings down: `kafka.format`/`formats: flattened` build the
decoder that reads them (and leave a JSON-only config on the JSON decoder, its speed
untouched), and `reconciler plan` reads the recorded rows as the worker does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.debezium import Decoder
from connectors.debezium.avro import AvroDecoder
from connectors.debezium.flattened import FlattenedDecoder
from reconciler.cli import main
from reconciler.errors import ConfigError
from reconciler.pipeline.decoders import build_decoder
from reconciler.settings import load_settings
from tests.unit.connectors.debezium import recorded as r
from tests.unit.connectors.debezium.recorded_flat import (
    FLAT_DIR,
    REWRITE,
    TWIN,
    flat_line,
    record,
)
from tests.unit.reconciler.planning import CONFIG, LOCAL_PLANNER


def config(tmp_path: Path, **kafka: Any) -> Path:
    raw = yaml.safe_load(CONFIG.read_text())
    raw["shard_map"] = str(CONFIG.parent / "shard_map.yaml")
    raw["kafka"].update(kafka)
    path = tmp_path / "reconciler.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_json_topics_keep_the_json_decoder(tmp_path: Path) -> None:
    decoder = build_decoder(load_settings(config(tmp_path)), LOCAL_PLANNER.columns)
    assert type(decoder) is Decoder


def test_flattened_topics_are_read_as_rows_the_others_as_json(tmp_path: Path) -> None:
    settings = load_settings(config(tmp_path, formats={"capflat.public.posts": "flattened"}))
    decoder = build_decoder(settings, LOCAL_PLANNER.columns)
    assert isinstance(decoder, FlattenedDecoder)
    flat = record(REWRITE, flat_line(REWRITE, r.POSTS_INSERT) or 0)
    assert flat.decode(decoder).after is not None
    twin = record(TWIN, r.POSTS_INSERT)
    assert twin.decode(decoder) == twin.decode(Decoder(columns=LOCAL_PLANNER.columns))
    everything = load_settings(config(tmp_path, format="flattened"))
    assert flat.decode(build_decoder(everything, None)).op == "c"


def test_flattened_and_avro_topics_together(tmp_path: Path) -> None:
    settings = load_settings(config(
        tmp_path, format="avro", formats={"capflat.public.posts": "flattened"},
        schema_registry={"url": "http://registry.invalid:8081"}))
    decoder = build_decoder(settings, LOCAL_PLANNER.columns)
    assert isinstance(decoder, FlattenedDecoder)
    assert isinstance(decoder._inner, AvroDecoder)  # the other topics: Avro
    flat = record(REWRITE, flat_line(REWRITE, r.POSTS_INSERT) or 0)
    assert flat.decode(decoder).op == "c"  # no registry asked


def test_an_unknown_format_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="flattened"):
        load_settings(config(tmp_path, formats={"nd.public.posts": "unwrapped"}))


def plan_lines(capsys: pytest.CaptureFixture[str], path: Path, source: Path) -> list[Any]:
    code = main(["plan", "-c", str(path), "--input", str(source)])
    out = capsys.readouterr().out
    assert code == 0, out
    return [json.loads(line) for line in out.splitlines()]


def test_plan_reads_the_recorded_rows_as_their_twins_plan(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rows = plan_lines(capsys, config(tmp_path, format="flattened"), FLAT_DIR / REWRITE)
    twin = plan_lines(capsys, CONFIG, FLAT_DIR / TWIN)
    pairs = json.loads((FLAT_DIR / "lines.json").read_text())[REWRITE]
    assert len(rows) == len(pairs)
    for found, number in zip(rows, pairs, strict=True):
        found["topic"] = found["topic"].replace("capflat", "capftwin")
        assert found == twin[number - 1]
