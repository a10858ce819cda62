"""`reconciler plan` and `reconciler shard-map`: output, exit codes, bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from connectors.debezium import Decoder
from reconciler.cli import main
from reconciler.pipeline.batch import DeadLetter, plan_record
from tests.unit.connectors.debezium import recorded as r
from tests.unit.connectors.debezium.recorded import FILES, FIXTURES, Recorded, record, records
from tests.unit.reconciler.planning import CONFIG, LOCAL_PLANNER, SHARD_MAP

RECONCILER = Path(sys.executable).parent / "reconciler"  # the console script of this venv
pytestmark = pytest.mark.usefixtures("restore_process_logging")  # main() configures it


def plan_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(["plan", "-c", str(CONFIG), *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def write_input(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "input.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def expected_line(rec: Recorded) -> dict[str, Any]:
    """What SPEC §5 says `plan` prints for a record: the planner's answer."""
    result = plan_record(Decoder(), LOCAL_PLANNER, 8 * 1024 * 1024, rec.topic, rec.partition,
                         rec.offset, rec.key_bytes(), rec.value_bytes())
    if isinstance(result, DeadLetter):
        return {"topic": rec.topic, "dead_letter": result.message, "reason": result.reason}
    return result.as_json()


# --------------------------------------------------------------------------- plan


@pytest.mark.parametrize("file", FILES)
def test_plan_prints_one_json_line_per_record_in_input_order(
        capsys: pytest.CaptureFixture[str], file: str) -> None:
    code, lines, _ = plan_cli(capsys, "--input", str(FIXTURES / file))
    assert code == 0
    assert len(lines) == r.LINE_COUNT
    printed = [json.loads(line) for line in lines]  # nothing but JSON on stdout
    assert [p["topic"] for p in printed] == [rec.topic for rec in records(file)]


@pytest.mark.parametrize("file", FILES)
def test_plan_prints_what_the_planner_decides(capsys: pytest.CaptureFixture[str],
                                              file: str) -> None:
    _, lines, _ = plan_cli(capsys, "--input", str(FIXTURES / file))
    assert [json.loads(line) for line in lines] == [expected_line(rec) for rec in records(file)]


def test_plan_output_has_the_spec_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    _, lines, _ = plan_cli(capsys, "--input", str(FIXTURES / r.SCHEMAS_TRUE))
    printed = [json.loads(line) for line in lines]
    assert printed[r.POSTS_DELETE - 1]["unresolved"] == ["feed:{neighborhood_id}"]
    assert printed[r.HEARTBEATS[0] - 1] == {"topic": "__debezium-heartbeat.capjson",
                                            "skip": "heartbeat"}
    assert {a["kind"] for a in printed[r.COMMENTS_TRUNCATE - 1]["actions"]} == {"truncate"}


def test_plan_reads_stdin_without_input(capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = [record(r.SCHEMAS_FALSE, n) for n in (r.POSTS_INSERT, r.POSTS_DELETE, 60)]
    monkeypatch.setattr(sys, "stdin", io.StringIO(
        "".join(rec.as_input_line() + "\n" for rec in chosen)))
    code, lines, _ = plan_cli(capsys)
    assert code == 0
    assert [json.loads(line) for line in lines] == [expected_line(rec) for rec in chosen]


def test_plan_skips_blank_lines(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rec = record(r.SCHEMAS_FALSE, r.POSTS_INSERT)
    path = write_input(tmp_path, ["", rec.as_input_line(), "   ", ""])
    code, lines, _ = plan_cli(capsys, "--input", str(path))
    assert code == 0
    assert len(lines) == 1


def test_plan_accepts_records_without_partition_offset_or_headers(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rec = record(r.SCHEMAS_FALSE, r.POSTS_INSERT)
    path = write_input(tmp_path, [json.dumps({"topic": rec.topic, "key": rec.key,
                                              "value": rec.value})])
    code, lines, _ = plan_cli(capsys, "--input", str(path))
    assert code == 0
    assert json.loads(lines[0]) == expected_line(rec)


@pytest.mark.parametrize(
    ("bad", "says"),
    [("not json", "is not JSON"), ("[1, 2]", "expected an object with a string `topic`"),
     ('{"key": null, "value": null}', "string `topic`"),
     ('{"topic": 5, "key": null, "value": null}', "string `topic`"),
     ('{"topic": "t", "key": {"id": 1}, "value": null}', "`key` must be a string"),
     ('{"topic": "t", "key": null, "value": 5}', "`value` must be a string")],
)
def test_bad_input_line_gives_a_line_error_and_exit_code_1(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, bad: str, says: str) -> None:
    good = record(r.SCHEMAS_FALSE, r.POSTS_INSERT)
    path = write_input(tmp_path, [good.as_input_line(), bad, good.as_input_line()])
    code, lines, err = plan_cli(capsys, "--input", str(path))
    assert code == 1
    assert len(lines) == 3
    error = json.loads(lines[1])
    assert set(error) == {"line", "error"}
    assert error["line"] == 2
    assert says in error["error"]
    assert json.loads(lines[0]) == json.loads(lines[2]) == expected_line(good)
    assert "1 input line(s) were not records" in err


def test_line_error_counts_physical_lines(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    good = record(r.SCHEMAS_FALSE, r.POSTS_INSERT).as_input_line()
    path = write_input(tmp_path, [good, "", "", "garbage"])
    _, lines, _ = plan_cli(capsys, "--input", str(path))
    error = json.loads(lines[1])
    assert error["line"] == 4
    assert "input line 4" in error["error"]


def test_value_with_an_unencodable_surrogate_is_a_line_error(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    rec = record(r.SCHEMAS_FALSE, r.POSTS_INSERT)
    bad = json.dumps({"topic": rec.topic, "key": rec.key, "value": "\ud800"})
    path = write_input(tmp_path, [bad, rec.as_input_line()])
    code, lines, _ = plan_cli(capsys, "--input", str(path))
    assert code == 1
    assert json.loads(lines[0])["line"] == 1
    assert json.loads(lines[1]) == expected_line(rec)


def test_escaped_raw_bytes_reach_the_decoder(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    # A raw value captured with surrogateescape: the byte 0xff is not UTF-8.
    rec = record(r.SCHEMAS_FALSE, r.POSTS_INSERT)
    value = rec.text().replace("first title", "first \udcff")
    path = write_input(tmp_path, [rec.with_raw(value=value).as_input_line()])
    code, lines, _ = plan_cli(capsys, "--input", str(path))
    assert code == 0
    out = json.loads(lines[0])
    assert out["reason"] == "invalid_json"
    assert "UTF-8" in out["dead_letter"]


def test_dead_letter_record_prints_topic_reason_and_message(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    rec = record(r.SCHEMAS_TRUE, r.POSTS_INSERT)
    broken = rec.with_raw(value=rec.text()[:100])
    unroutable = record(r.SCHEMAS_FALSE, r.POSTS_INSERT).with_payload(
        lambda p: p["after"].__setitem__("neighborhood_id", 5000))
    path = write_input(tmp_path, [broken.as_input_line(), unroutable.as_input_line()])
    code, lines, _ = plan_cli(capsys, "--input", str(path))
    assert code == 0  # a dead letter is an answer, not bad input
    first, second = (json.loads(line) for line in lines)
    # With the key-only delete its key still allows (a dead letter never swallows one).
    assert set(first) == {"topic", "dead_letter", "reason", "table", "actions", "unresolved"}
    assert first["topic"] == rec.topic and first["reason"] == "invalid_json"
    assert {(a["shard"], a["key"], a["kind"]) for a in first["actions"]} == {
        ("a", "post:19", "delete"), ("b", "post:19", "delete")}
    assert second["reason"] == "unroutable" and "5000" in second["dead_letter"]
    no_key = rec.with_raw(key=None, value=rec.text()[:100])
    path = write_input(tmp_path, [no_key.as_input_line()])
    _, lines, _ = plan_cli(capsys, "--input", str(path))
    assert set(json.loads(lines[0])) == {"topic", "dead_letter", "reason"}


def test_missing_input_file_is_an_error_without_a_traceback(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    code, lines, err = plan_cli(capsys, "--input", str(tmp_path / "missing.jsonl"))
    assert code == 1
    assert lines == []
    assert "missing.jsonl" in err
    assert "Traceback" not in err


def test_plan_with_a_bad_config_exits_1_naming_the_problem(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    config = tmp_path / "reconciler.yaml"
    config.write_text(CONFIG.read_text().replace("bootstrap_servers", "bootstrap_server"))
    code = main(["plan", "-c", str(config), "--input", str(FIXTURES / r.SCHEMAS_TRUE)])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert "configuration error" in err and "kafka.bootstrap_server" in err


def test_plan_with_a_bad_shard_map_exits_1(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    (tmp_path / "reconciler.yaml").write_text(CONFIG.read_text())
    (tmp_path / "shard_map.yaml").write_text(
        SHARD_MAP.read_text().replace("from: 501", "from: 499"))
    code = main(["plan", "-c", str(tmp_path / "reconciler.yaml"),
                 "--input", str(FIXTURES / r.SCHEMAS_TRUE)])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert "shard_map" in err


def test_plan_as_a_subprocess_prints_only_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    fixture = FIXTURES / r.SCHEMAS_TRUE
    done = subprocess.run([str(RECONCILER), "plan", "-c", str(CONFIG), "--input", str(fixture)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    _, lines, _ = plan_cli(capsys, "--input", str(fixture))
    assert done.stdout.splitlines() == lines
    assert done.stdout.endswith("\n")


def test_plan_into_a_closed_pipe_ends_quietly_with_141(tmp_path: Path) -> None:
    """`reconciler plan ... | head -1`: the reader leaves after one line; plan stops
    without a traceback, with the exit status a shell gives a process killed by SIGPIPE."""
    fixture = tmp_path / "many.jsonl"  # far more output than a pipe holds (64 KiB)
    fixture.write_text((FIXTURES / r.SCHEMAS_TRUE).read_text() * 40)
    plan = subprocess.Popen([str(RECONCILER), "plan", "-c", str(CONFIG), "--input", str(fixture)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert plan.stdout is not None and plan.stderr is not None
    first = plan.stdout.readline()
    plan.stdout.close()  # the reader goes away with most of the output unread
    code = plan.wait(timeout=60)
    errors = plan.stderr.read().decode()
    assert json.loads(first)["topic"]
    assert code == 141, errors
    assert errors == ""


# --------------------------------------------------------------------------- shard-map


def test_shard_map_check_accepts_the_local_map(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["shard-map", "check", str(SHARD_MAP)])
    out, _ = capsys.readouterr()
    assert code == 0
    assert out == f"{SHARD_MAP}: OK — version 1, shards a, b\n"


def test_shard_map_check_rejects_overlapping_ranges(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    bad = tmp_path / "shard_map.yaml"
    bad.write_text(SHARD_MAP.read_text().replace("from: 501", "from: 499"))
    code = main(["shard-map", "check", str(bad)])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert "ranges[0]" in err and "ranges[1]" in err


def test_shard_map_check_of_a_missing_file_exits_1(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    assert main(["shard-map", "check", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("neighbourhood", "shards", "matched"),
    [(7, ["a"], "range"), (420, ["a", "b"], "moving"), (600, ["b"], "range")],
)
def test_shard_map_lookup_says_where_a_neighbourhood_lives(
        capsys: pytest.CaptureFixture[str], neighbourhood: int, shards: list[str],
        matched: str) -> None:
    code = main(["shard-map", "lookup", str(SHARD_MAP), str(neighbourhood)])
    out, _ = capsys.readouterr()
    assert code == 0
    answer = json.loads(out)
    assert (answer["neighbourhood_id"], answer["shards"], answer["matched"]) == (
        neighbourhood, shards, matched)
    assert answer["map_version"] == 1


def test_shard_map_lookup_outside_every_range_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["shard-map", "lookup", str(SHARD_MAP), "5000"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert "5000" in err and "outside every range" in err


def test_shard_map_lookup_uses_the_default_shard(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    with_default = tmp_path / "shard_map.yaml"
    with_default.write_text(SHARD_MAP.read_text().replace("default: null", "default: b"))
    code = main(["shard-map", "lookup", str(with_default), "5000"])
    answer = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (answer["shards"], answer["matched"]) == (["b"], "default")


def test_shard_map_lookup_needs_an_integer_id(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["shard-map", "lookup", str(SHARD_MAP), "seven"])
    assert exited.value.code == 2
    assert "invalid int value" in capsys.readouterr().err
