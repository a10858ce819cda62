"""configure_logging: JSON lines a log pipeline can parse (whatever happens) or text
for a terminal; and every log call about a message names it topic[partition]@offset."""

from __future__ import annotations

import ast
import json
import logging
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.logs import configure_logging

RECONCILER = Path(__file__).resolve().parents[3] / "reconciler"
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    hooks = sys.excepthook, threading.excepthook
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    sys.excepthook, threading.excepthook = hooks
    logging.captureWarnings(False)


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    err = capsys.readouterr().err
    return [json.loads(line) for line in err.splitlines()]  # every line is one object


def test_json_records_have_the_standard_fields_and_extras(
        capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_format=True)
    log = logging.getLogger("reconciler.pipeline.worker")
    log.debug("not shown")
    log.warning("%s[%d]@%d: dead-lettered (%s)", "nd.public.posts", 2, 1841, "invalid_json",
                extra={"reason": "invalid_json"})
    [record] = lines(capsys)
    assert record["level"] == "WARNING" and record["logger"] == "reconciler.pipeline.worker"
    assert record["message"] == "nd.public.posts[2]@1841: dead-lettered (invalid_json)"
    assert record["reason"] == "invalid_json"
    assert record["ts"].endswith("Z") and len(record["ts"]) == len("2026-01-01T00:00:00.000Z")


def test_an_exception_stays_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_format=True)
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logging.getLogger("x").exception("failed")
    [record] = lines(capsys)
    assert "ValueError: boom" in record["exception"] and record["message"] == "failed"


def test_warnings_and_uncaught_thread_exceptions_are_json_too(
        capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_format=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)

    def crash() -> None:
        raise RuntimeError("housekeeping broke")

    thread = threading.Thread(target=crash, name="housekeeping")
    thread.start()
    thread.join()
    records = lines(capsys)
    assert [r["logger"] for r in records] == ["py.warnings", "reconciler"]
    assert "deprecated thing" in records[0]["message"]
    assert records[1]["message"] == "thread housekeeping died: housekeeping broke"
    assert "RuntimeError" in records[1]["exception"]


def test_text_format_for_terminals(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG", json_format=False)
    logging.getLogger("reconciler.observe.lag").debug("hello %s", "there")
    err = capsys.readouterr().err
    assert err.rstrip().endswith("DEBUG   reconciler.observe.lag: hello there")
    assert len(logging.getLogger().handlers) == 1  # configure replaces, never stacks


def _log_calls(tree: ast.AST) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"):
            yield node


def _mentions_offset(node: ast.AST) -> bool:
    return any((isinstance(n, ast.Name) and n.id == "offset")
               or (isinstance(n, ast.Attribute) and n.attr == "offset")
               for n in ast.walk(node))


def test_every_log_call_about_a_message_names_it_topic_partition_offset() -> None:
    checked = 0
    for path in sorted(RECONCILER.rglob("*.py")):
        for call in _log_calls(ast.parse(path.read_text())):
            if not any(_mentions_offset(arg) for arg in call.args[1:]):
                continue
            checked += 1
            fmt = call.args[0]
            assert isinstance(fmt, ast.Constant) and isinstance(fmt.value, str)
            assert fmt.value.startswith("%s[%d]@%d"), (
                f"{path.name}:{call.lineno}: say topic[partition]@offset first: {fmt.value!r}")
    assert checked >= 2  # the dead letter and the unstored offset, at least
